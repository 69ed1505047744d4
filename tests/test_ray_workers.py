"""Generation on Ray workers (`launch.py --workers 2`): the real server, a local Ray with two CPU worker processes,
driven over HTTP by two users.

The oracle for every image is the engine itself, run in this test process on the same checkpoint file with the
seeds and settings the response reports: a worker's image must be bit-identical to it. Which worker ran what, and
what happened to a killed one, is read from `/sdapi/v1/workers`, as a user or an admin would.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from gradio_client import Client

from tests.server_process import AppServer
from webui.engine.generation import SamplingParams, txt2img
from webui.engine.loader import load_checkpoint
from webui.engine.samplers import SamplerRegistry
from webui.engine.synthetic import write_synthetic_checkpoint

pytest.importorskip("ray", reason="the Ray tests need requirements-ray.txt (the test command installs it)")

USERS = {"alice": "pw-alice-1", "bob": "pw-bob-22"}
WORKER_UNIT = "latent_studio_worker"  # what a CPU node advertises to get a worker (docs/scaling.md)
SMALL = {"width": 64, "height": 64, "steps": 4, "sampler_name": "Euler", "cfg_scale": 5.0, "save_images": True}


@pytest.fixture(scope="module")
def app_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ray")
    checkpoints = root / "models" / "Stable-diffusion"
    for name, seed in (("tiny", 7), ("tiny2", 8)):
        write_synthetic_checkpoint(checkpoints / f"{name}.safetensors", "sd1", seed=seed,
                                   metadata={"modelspec.resolution": "64x64"})
    return root / "models", root / "outputs"


@pytest.fixture(scope="module")
def server(app_dirs: tuple[Path, Path]):
    auth = ",".join(f"{user}:{password}" for user, password in USERS.items())
    app = AppServer(*app_dirs, "--auth", auth, "--admin", "alice", "--workers", "2").wait_ready()
    try:
        _wait_for_workers(app, lambda workers: all(w["state"] == "idle" for w in workers), 600)
        yield app
    finally:
        app.stop()


@pytest.fixture(scope="module")
def engine(app_dirs: tuple[Path, Path]):
    """The oracle: each checkpoint loaded in this process, sampled by the engine directly."""
    models, _ = app_dirs
    loaded = {name: load_checkpoint(models / "Stable-diffusion" / f"{name}.safetensors") for name in ("tiny", "tiny2")}
    return loaded, SamplerRegistry()


def _http(server: AppServer, user: str) -> httpx.Client:
    return httpx.Client(base_url=server.url + "sdapi/v1/", auth=(user, USERS[user]), timeout=600)


def _workers(server: AppServer) -> list[dict]:
    with _http(server, "alice") as client:
        return client.get("workers").json()["workers"]


def _wait_for_workers(server: AppServer, condition, timeout: float) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        workers = _workers(server)
        if condition(workers):
            return workers
        time.sleep(0.5)
    raise AssertionError(f"workers never reached the expected state: {_workers(server)}")


def _decode(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))


def _expected(engine, response: dict, checkpoint: str = "tiny") -> list[np.ndarray]:
    """The images the engine makes in this process for the response's prompt, settings and seeds."""
    models, samplers = engine
    info = json.loads(response["info"])
    images = []
    seeds, size = info["all_seeds"], info["batch_size"]
    for start in range(0, len(seeds), size):  # batch by batch, as the job samples them
        params = SamplingParams(prompt=info["prompt"], negative_prompt=info["negative_prompt"],
                                sampler=info["sampler_name"], steps=info["steps"], cfg_scale=info["cfg_scale"],
                                width=info["width"], height=info["height"], seeds=seeds[start:start + size],
                                rng_source="GPU")
        images += [np.asarray(image.convert("RGB")) for image in txt2img(models[checkpoint], params, samplers)]
    return images


def _txt2img_in_background(server: AppServer, user: str, body: dict) -> tuple[threading.Thread, dict]:
    """Post a txt2img request on a thread; its response lands in the returned dict under "reply"."""
    result: dict[str, httpx.Response] = {}

    def generate() -> None:
        with _http(server, user) as client:
            result["reply"] = client.post("txt2img", json=body)

    thread = threading.Thread(target=generate)
    thread.start()
    return thread, result


def _jobs_done(workers: list[dict]) -> dict[str, int]:
    return {w["name"]: w["jobs_done"] for w in workers}


def test_two_users_jobs_run_on_both_workers_and_equal_the_in_process_images(server, engine, app_dirs) -> None:
    _, outputs = app_dirs
    before = _jobs_done(_workers(server))
    responses: dict[str, dict] = {}

    posts = {user: _txt2img_in_background(server, user, {**SMALL, "prompt": f"a red circle for {user}", "seed": seed,
                                                         "batch_size": 2})
             for user, seed in (("alice", 11), ("bob", 22))}
    for user, (thread, result) in posts.items():
        thread.join()
        assert result["reply"].status_code == 200, result["reply"].text
        responses[user] = result["reply"].json()

    for user in USERS:
        got = [_decode(image) for image in responses[user]["images"]]
        expected = _expected(engine, responses[user])
        assert len(got) == 2
        for image, reference in zip(got, expected):
            assert np.array_equal(image, reference), f"{user}'s worker image differs from the in-process one"
        saved = sorted((outputs / user).rglob("*.png"))  # written by the front end, into the owner's folder
        assert len(saved) == 2
        assert np.array_equal(np.asarray(Image.open(saved[0]).convert("RGB")), expected[0])
        assert f"for {user}" in Image.open(saved[0]).info["parameters"]
    after = _jobs_done(_workers(server))
    assert all(after[name] == before[name] + 1 for name in before), f"jobs did not spread: {before} -> {after}"


def test_routing_prefers_the_worker_that_already_holds_the_checkpoint(server, engine) -> None:
    tiny2 = {**SMALL, "override_settings": {"sd_model_checkpoint": "tiny2"}, "prompt": "a blue square"}
    with _http(server, "alice") as client:
        first = client.post("txt2img", json={**tiny2, "seed": 1})
        assert first.status_code == 200, first.text
        holder = [w["name"] for w in _workers(server) if "tiny2" in w["holds"]]
        assert len(holder) == 1
        before = _jobs_done(_workers(server))
        # The other worker has been free longer, so only the model preference sends the job back to the holder
        for seed in (2, 3):
            reply = client.post("txt2img", json={**tiny2, "seed": seed})
            assert reply.status_code == 200, reply.text
    after = _jobs_done(_workers(server))
    assert after[holder[0]] == before[holder[0]] + 2
    assert sum(after.values()) == sum(before.values()) + 2
    assert np.array_equal(_decode(reply.json()["images"][0]), _expected(engine, reply.json(), "tiny2")[0])


def test_progress_previews_and_cancel_cross_the_process_boundary(server, app_dirs) -> None:
    _, outputs = app_dirs
    thread, result = _txt2img_in_background(server, "alice", {**SMALL, "prompt": "a long job", "steps": 60,
                                                               "n_iter": 50, "seed": 500})
    with _http(server, "alice") as alice, _http(server, "bob") as bob:
        deadline = time.time() + 120
        seen_preview = False
        while time.time() < deadline and not (seen_preview and list((outputs / "alice").rglob("*-500.png"))):
            progress = alice.get("progress").json()
            seen_preview = seen_preview or (progress["state"]["sampling_step"] > 0 and bool(progress["current_image"]))
            time.sleep(0.2)
        assert seen_preview, "no step count or preview came back from the worker"
        assert bob.post("interrupt").json()["interrupted"] == 0  # bob cannot stop alice's job
        assert alice.post("interrupt").json()["interrupted"] == 1
    thread.join(120)
    reply = result["reply"].json()
    info = json.loads(reply["info"])
    assert info["interrupted"] and 1 <= len(reply["images"]) < 50
    assert len(list((outputs / "alice").rglob("*-5[0-9][0-9].png"))) == len(reply["images"])  # all kept, no more
    _wait_for_workers(server, lambda workers: all(w["state"] == "idle" for w in workers), 60)


def test_a_killed_worker_has_its_job_rerun_elsewhere_and_loses_nothing(server, engine, app_dirs) -> None:
    _, outputs = app_dirs
    thread, result = _txt2img_in_background(server, "bob", {**SMALL, "prompt": "a green star", "steps": 30,
                                                             "n_iter": 4, "seed": 900})
    deadline = time.time() + 120
    while time.time() < deadline and not list((outputs / "bob").rglob("*-900.png")):
        time.sleep(0.1)
    running = [w for w in _workers(server) if w["job"]]
    assert len(running) == 1, running
    victim = running[0]
    os.kill(victim["pid"], signal.SIGKILL)  # mid-job: its first batch is saved, the rest is not
    thread.join(300)
    reply = result["reply"]
    assert reply.status_code == 200, reply.text
    response = reply.json()
    info = json.loads(response["info"])
    assert info["all_seeds"] == [900, 901, 902, 903]
    assert any("retried" in warning for warning in info["warnings"]), info["warnings"]
    for image, reference in zip((_decode(i) for i in response["images"]), _expected(engine, response)):
        assert np.array_equal(image, reference)
    saved = sorted(path.name for path in (outputs / "bob").rglob("*-90[0-9].png"))
    assert [name.split("-")[1] for name in saved] == ["900.png", "901.png", "902.png", "903.png"]  # once each
    workers = _wait_for_workers(server, lambda ws: all(w["state"] == "idle" for w in ws), 300)
    killed = next(w for w in workers if w["name"] == victim["name"])
    assert killed["failures"] == 1 and killed["pid"] != victim["pid"]  # Ray started it again; it is back in rotation


def test_the_models_tab_shows_the_workers(server) -> None:
    """The UI's table (Models tab, "Generation workers") through Gradio's API, as the browser fetches it."""
    client = Client(server.url, auth=("bob", USERS["bob"]), verbose=False)
    table = client.predict(api_name="/models_workers")
    rows = {row[0]: row for row in table["data"]}
    assert set(rows) == {"worker-1", "worker-2"}
    assert all(row[1] == "idle" and row[3] == "cpu" for row in rows.values())
    assert sum(int(row[6]) for row in rows.values()) == 1  # the worker killed above
    assert any("tiny" in row[7] for row in rows.values())  # the checkpoints each holds


def test_a_node_that_joins_the_cluster_gets_a_worker_that_takes_jobs(tmp_path: Path, app_dirs, engine) -> None:
    """`--ray-address`: the app joins a running cluster (here a test cluster of one head node with two worker
    units), starts a worker per unit, and a node that joins later gets a worker within seconds."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {WORKER_UNIT: 1}})
    app = None
    try:
        auth = ",".join(f"{user}:{password}" for user, password in USERS.items())
        app = AppServer(app_dirs[0], tmp_path / "outputs", "--auth", auth, "--nowebui", "--ray-address",
                        cluster.address).wait_ready()
        _wait_for_workers(app, lambda workers: [w["state"] for w in workers] == ["idle"], 300)
        cluster.add_node(num_cpus=1, resources={WORKER_UNIT: 1})  # a machine joins
        workers = _wait_for_workers(app, lambda ws: len(ws) == 2 and all(w["state"] == "idle" for w in ws), 300)
        joined = workers[1]["name"]
        body = {**SMALL, "prompt": "a purple cross", "seed": 70, "steps": 20}
        posts = [_txt2img_in_background(app, user, body) for user in USERS]
        for thread, _ in posts:
            thread.join()
        assert _jobs_done(_workers(app))[joined] >= 1
        for _, result in posts:
            reply = result["reply"]
            assert reply.status_code == 200, reply.text
            assert np.array_equal(_decode(reply.json()["images"][0]), _expected(engine, reply.json())[0])
    finally:
        if app is not None:
            app.stop()
        cluster.shutdown()

"""`/sdapi/v1` on the real server, driven by the unmodified `webuiapi` client and by raw HTTP.

Two users share one server: alice (admin) and bob. Each image's own PNG infotext is the oracle for what was
generated (seed, size, model); the output folders on disk show where it was saved.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import httpx
import pytest
import webuiapi
from PIL import Image

from tests.server_process import AppServer
from webui.engine.synthetic import write_synthetic_checkpoint, write_synthetic_controlnet
from webui.services.infotext import parse_infotext

USERS = {"alice": "pw-alice-1", "bob": "pw-bob-22"}
SMALL = {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler", "cfg_scale": 5.0}


@pytest.fixture(scope="module")
def app_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("sdapi")
    checkpoints = root / "models" / "Stable-diffusion"
    for name, seed in (("tiny", 7), ("tiny2", 8)):
        model = write_synthetic_checkpoint(checkpoints / f"{name}.safetensors", "sd1", seed=seed,
                                           metadata={"modelspec.resolution": "64x64"})
        if name == "tiny":
            write_synthetic_controlnet(root / "models" / "ControlNet" / "control_tiny.safetensors", model,
                                       "cldm-1.1", seed=41)
    return root / "models", root / "outputs"


@pytest.fixture(scope="module")
def server(app_dirs: tuple[Path, Path]):
    auth = ",".join(f"{user}:{password}" for user, password in USERS.items())
    app = AppServer(*app_dirs, "--auth", auth, "--admin", "alice", "--no-preload",
                    "--api-max-steps", "60", "--api-max-side", "256").wait_ready()
    yield app
    app.stop()


def _http(server: AppServer, user: str | None) -> httpx.Client:
    auth = (user, USERS[user]) if user else None
    return httpx.Client(base_url=server.url + "sdapi/v1/", auth=auth, timeout=300)


def _client(server: AppServer, user: str) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, username=user, password=USERS[user])


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _saved_pngs(outputs: Path) -> set[Path]:
    return set(outputs.rglob("*.png")) if outputs.exists() else set()


def test_webuiapi_txt2img_returns_images_carrying_their_infotext(server, app_dirs) -> None:
    _, outputs = app_dirs
    before = _saved_pngs(outputs)
    result = _client(server, "alice").txt2img(prompt="a red circle", seed=4242, batch_size=2, **SMALL)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [4242, 4243] and result.info["seed"] == 4242
    assert result.parameters["prompt"] == "a red circle"
    for image, seed, infotext in zip(result.images, (4242, 4243), result.info["infotexts"]):
        stored = parse_infotext(image.info["parameters"])
        assert stored["Seed"] == seed and stored["Size-1"] == 64 and stored["Prompt"] == "a red circle"
        assert image.info["parameters"] == infotext
    assert _saved_pngs(outputs) == before  # A1111's API default: save_images false


def test_saved_images_land_in_the_users_own_folder(server, app_dirs) -> None:
    _, outputs = app_dirs
    before = _saved_pngs(outputs)
    _client(server, "bob").txt2img(prompt="a blue square", seed=77, save_images=True, **SMALL)
    new = _saved_pngs(outputs) - before
    assert len(new) == 1
    (path,) = new
    assert path.relative_to(outputs).parts[0] == "bob"
    with Image.open(path) as saved:
        assert parse_infotext(saved.info["parameters"])["Seed"] == 77


def test_img2img_inpaint_through_webuiapi(server) -> None:
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = _client(server, "alice").img2img(images=[source], mask_image=mask, inpainting_fill=1,
                                              inpaint_full_res=False, denoising_strength=0.6, prompt="a circle",
                                              seed=9, **SMALL)
    (image,) = result.images
    assert image.size == (64, 64)
    assert result.info["denoising_strength"] == 0.6
    outside = image.crop((0, 0, 64, 12)).getcolors(64 * 12)
    # only the masked square is repainted: the top rows keep the source colour (A1111 pastes the original back)
    assert max(outside)[1] == (200, 30, 30)


def test_each_user_chooses_their_own_checkpoint(server) -> None:
    alice, bob = _client(server, "alice"), _client(server, "bob")
    titles = alice.util_get_model_names()  # "name [hash]", as A1111 lists them
    assert {title.split(" [")[0] for title in titles} == {"tiny", "tiny2"}
    alice.util_set_model("tiny2")
    assert alice.get_options()["sd_model_checkpoint"].startswith("tiny2 [")
    assert not bob.get_options()["sd_model_checkpoint"].startswith("tiny2")
    from_alice = alice.txt2img(prompt="x", seed=1, **SMALL)
    from_bob = bob.txt2img(prompt="x", seed=1, **SMALL)
    assert from_alice.info["sd_model_name"] == "tiny2" and from_bob.info["sd_model_name"] == "tiny"
    alice.util_set_model("tiny")


def test_case_26_progress_and_interrupt_belong_to_the_caller(server) -> None:
    outcome: dict[str, object] = {}
    body = {**SMALL, "prompt": "slow", "seed": 5, "steps": 40, "n_iter": 30, "save_images": False}

    def generate() -> None:
        with _http(server, "alice") as http:
            outcome["response"] = http.post("txt2img", json=body)

    worker = threading.Thread(target=generate)
    worker.start()
    with _http(server, "alice") as alice, _http(server, "bob") as bob:
        deadline = time.time() + 120
        while time.time() < deadline and alice.get("progress").json()["state"]["sampling_step"] < 2:
            time.sleep(0.1)
        mine = alice.get("progress").json()
        assert mine["state"]["job"] and mine["state"]["sampling_steps"] == 40 and mine["progress"] > 0
        theirs = bob.get("progress").json()
        assert theirs["state"]["job"] == "" and theirs["progress"] == 0 and theirs["current_image"] is None
        assert bob.post("interrupt").json() == {"interrupted": 0}
        assert bob.post(f"jobs/{mine['state']['job']}/cancel").status_code == 404  # not bob's to see
        time.sleep(0.3)
        assert alice.get("progress").json()["state"]["job"] == mine["state"]["job"]  # still running
        assert alice.post("interrupt").json() == {"interrupted": 1}
    worker.join(120)
    response = outcome["response"]
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert info["interrupted"] is True and len(info["all_seeds"]) < 30


@pytest.mark.parametrize(("body", "field"), [
    ('{"prompt": "x", "cfg_scale": NaN, "width": 64, "height": 64}', "cfg_scale"),
    ('{"prompt": "x", "cfg_scale": Infinity, "width": 64, "height": 64}', "cfg_scale"),
    ('{"prompt": "x", "cfg_scale": -1e9, "width": 64, "height": 64}', "cfg_scale"),
    ('{"prompt": "x", "steps": 0, "width": 64, "height": 64}', "steps"),
    ('{"prompt": "x", "seed": 1180591620717411303424, "width": 64, "height": 64}', "seed"),
    ('{"prompt": "x", "width": -64, "height": 64}', "width"),
    ('{"prompt": "x", "width": 65, "height": 64}', "width"),
    ('{"prompt": "x", "batch_size": 0, "width": 64, "height": 64}', "batch_size"),
    ('{"prompt": "x", "steps": 61, "width": 64, "height": 64}', "steps"),
    ('{"prompt": "x", "enable_hr": true, "hr_upscaler": "Magic 9x", "width": 64, "height": 64}', "hr_upscaler"),
    ('{"prompt": "x", "enable_hr": true, "hr_scale": 8, "width": 64, "height": 64}', "hr_scale"),
    ('{"prompt": "x", "alwayson_scripts": {"no-such": {"args": []}}, "width": 64, "height": 64}', "no-such"),
])
def test_case_04_bad_txt2img_requests_get_422_naming_the_field(server, body: str, field: str) -> None:
    with _http(server, "bob") as http:
        response = http.post("txt2img", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in response.text


def test_case_19_img2img_refuses_urls_and_missing_images(server) -> None:
    with _http(server, "bob") as http:
        url = http.post("img2img", json={**SMALL, "init_images": ["http://169.254.169.254/latest"]})
        missing = http.post("img2img", json={**SMALL, "init_images": []})
    assert url.status_code == 422 and "not fetched" in url.text
    assert missing.status_code == 422 and "init_images" in missing.text


def test_auth_admin_and_secrets(server) -> None:
    with _http(server, None) as anonymous:
        assert anonymous.get("sd-models").status_code == 401
        assert anonymous.post("txt2img", json=SMALL).status_code == 401
    with _http(server, "bob") as bob, _http(server, "alice") as alice:
        assert bob.post("refresh-checkpoints").status_code == 403
        assert alice.post("refresh-checkpoints").status_code == 200
        setting = next(iter(k for k in alice.get("options").json() if k not in ("sd_model_checkpoint", "sd_vae")))
        assert bob.post("options", json={setting: alice.get("options").json()[setting]}).status_code == 403
        assert bob.post("options", json={"no.such.setting": 1}).status_code == 403
        assert alice.post("options", json={"no.such.setting": 1}).status_code == 422
        flags = bob.get("cmd-flags").json()
        assert flags["auth"] in (None, "<redacted>") and "pw-alice-1" not in json.dumps(flags)


def test_listings(server) -> None:
    with _http(server, "bob") as http:
        models = http.get("sd-models").json()
        assert {m["model_name"] for m in models} == {"tiny", "tiny2"}
        assert all(Path(m["filename"]).suffix == ".safetensors" for m in models)
        samplers = [s["name"] for s in http.get("samplers").json()]
        assert "Euler a" in samplers and "DPM++ 2M" in samplers
        assert "Karras" in [s["label"] for s in http.get("schedulers").json()]
        assert http.get("loras").json() == []
        assert set(http.get("embeddings").json()) >= {"loaded", "skipped"}
        assert http.get("memory").json()["ram"]["total"] > 0
        extensions = {e["name"]: e for e in http.get("extensions").json()}
        assert extensions["controlnet"]["status"] == "active" and extensions["controlnet"]["error"] is None
        assert "controlnet" in http.get("scripts").json()["txt2img"]


def test_png_info_reads_back_what_txt2img_wrote(server) -> None:
    with _http(server, "bob") as http:
        generated = http.post("txt2img", json={**SMALL, "prompt": "a green star", "seed": 31}).json()
        info = http.post("png-info", json={"image": "data:image/png;base64," + generated["images"][0]}).json()
        broken = http.post("png-info", json={"image": base64.b64encode(b"not an image").decode()})
    assert info["parameters"]["Seed"] == 31 and info["parameters"]["Prompt"] == "a green star"
    assert info["info"].startswith("a green star")
    assert broken.status_code == 422


def test_controlnet_units_in_sd_webui_controlnet_shape_through_webuiapi(server) -> None:
    """webuiapi's own ControlNetUnit objects, sent as `alwayson_scripts.ControlNet.args`."""
    alice = _client(server, "alice")
    control = Image.new("RGB", (64, 64), (0, 0, 0))
    control.paste((255, 255, 255), (20, 8, 44, 56))
    plain = alice.txt2img(prompt="a red circle", seed=12, **SMALL)
    unit = webuiapi.ControlNetUnit(image=control, module="none", model="control_tiny", weight=1.0)
    controlled = alice.txt2img(prompt="a red circle", seed=12, controlnet_units=[unit], **SMALL)
    silent = alice.txt2img(prompt="a red circle", seed=12, **SMALL,
                           controlnet_units=[webuiapi.ControlNetUnit(image=control, module="none",
                                                                     model="control_tiny", weight=0.0)])
    assert "ControlNet 0" in controlled.info["infotexts"][0]
    assert list(controlled.image.getdata()) != list(plain.image.getdata())  # the unit steered the image
    assert list(silent.image.getdata()) == list(plain.image.getdata())  # weight 0 changes nothing
    with _http(server, "bob") as http:
        missing = http.post("txt2img", json={**SMALL, "alwayson_scripts": {"controlnet": {"args": [
            {"enabled": True, "module": "none", "model": "no_such_model", "image": _png(control)}]}}})
    assert missing.status_code == 422 and "no_such_model" in missing.text


def test_nowebui_serves_the_api_without_the_ui(app_dirs) -> None:
    api_only = AppServer(*app_dirs, "--nowebui", "--api", "--no-preload").wait_ready()
    try:
        with httpx.Client(base_url=api_only.url, timeout=120) as http:
            assert {m["model_name"] for m in http.get("sdapi/v1/sd-models").json()} == {"tiny", "tiny2"}
            generated = http.post("sdapi/v1/txt2img", json={**SMALL, "prompt": "a red circle", "seed": 3})
            assert generated.status_code == 200 and len(generated.json()["images"]) == 1
            assert http.get("").status_code == 404  # no Gradio page
            assert "/sdapi/v1/txt2img" in http.get("openapi.json").json()["paths"]
    finally:
        api_only.stop()


def test_infotext_field_fills_what_the_request_leaves_unset(server) -> None:
    """A1111's `infotext` request field: every field the body does not send comes from the infotext (Clip skip and
    RNG as override settings), so an infotext alone remakes its image; fields sent explicitly win."""
    first = {**SMALL, "prompt": "a (blue:1.2) square", "negative_prompt": "blurry", "seed": 77, "steps": 4,
             "subseed": 5, "subseed_strength": 0.3, "sampler_name": "DPM++ 2M", "scheduler": "Karras",
             "override_settings": {"CLIP_stop_at_last_layers": 2, "randn_source": "CPU"}}
    with _http(server, "bob") as http:
        original = http.post("txt2img", json=first).json()
        infotext = json.loads(original["info"])["infotexts"][0]
        assert "Clip skip: 2" in infotext and "RNG: CPU" in infotext and "Variation seed: 5" in infotext
        remade = http.post("txt2img", json={"infotext": infotext}).json()
        changed = http.post("txt2img", json={"infotext": infotext, "seed": 78}).json()
        broken = http.post("txt2img", json={"infotext": infotext.replace("Steps: 4", "Steps: many")}).json()
    remade_info = json.loads(remade["info"])
    assert remade_info["infotexts"][0] == infotext
    assert _pixels(remade["images"][0]) == _pixels(original["images"][0])
    changed_info = parse_infotext(json.loads(changed["info"])["infotexts"][0])
    assert changed_info["Seed"] == 78 and changed_info["Steps"] == 4 and changed_info["Clip skip"] == 2
    assert _pixels(changed["images"][0]) != _pixels(original["images"][0])
    broken_info = json.loads(broken["info"])
    assert any("infotext Steps: 'many'" in warning for warning in broken_info["warnings"]), broken_info["warnings"]
    assert parse_infotext(broken_info["infotexts"][0])["Steps"] == 50  # A1111's API default, as the field was unset


def _pixels(data: str) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB").tobytes()


def test_offload_setting_runs_the_model_offloaded_with_the_same_image(server) -> None:
    """`core.offload` set through the options endpoint: the next job runs the model with --medvram's hooks, says so
    in `memory`, and draws the same pixels (fp32 on the CPU: the moves change nothing numerically)."""
    body = {**SMALL, "prompt": "a red dot", "seed": 5}
    with _http(server, "alice") as http:
        whole = http.post("txt2img", json=body).json()["images"][0]
        try:
            assert http.post("options", json={"core.offload": "medvram"}).status_code == 200
            offloaded = http.post("txt2img", json=body).json()["images"][0]
            models = {entry["name"]: entry for entry in http.get("memory").json()["models"]}
            assert http.post("options", json={"core.offload": "sometimes"}).status_code == 422
        finally:
            http.post("options", json={"core.offload": "auto"}).raise_for_status()
        after = http.post("txt2img", json=body).json()["images"][0]
        placed = {entry["name"]: entry for entry in http.get("memory").json()["models"]}
        flags = http.get("cmd-flags").json()
    assert models["tiny"]["offload"].startswith("medvram") and placed["tiny"]["offload"] == ""
    assert _pixels(offloaded) == _pixels(whole) == _pixels(after)
    assert flags["medvram"] is False and flags["lowvram"] is False and flags["offload"] == "auto"


def test_memory_lists_the_loaded_checkpoints_and_an_admin_unloads_them(server) -> None:
    with _http(server, "bob") as http:
        http.post("txt2img", json={**SMALL, "prompt": "a dot", "seed": 3}).raise_for_status()
        memory = http.get("memory").json()
        refused = http.post("unload-checkpoint")
    assert {"ram", "cuda", "models"} <= set(memory)
    loaded = {entry["name"]: entry for entry in memory["models"]}
    assert "tiny" in loaded and loaded["tiny"]["bytes"] > 1000 and loaded["tiny"]["where"] in ("device", "ram")
    assert loaded["tiny"]["shared_bytes"] == 0  # one checkpoint loaded: nothing to share
    assert refused.status_code == 403
    with _http(server, "alice") as http:
        unloaded = http.post("unload-checkpoint").json()["unloaded"]
        after = http.get("memory").json()["models"]
        again = http.post("txt2img", json={**SMALL, "prompt": "a dot", "seed": 3})
    assert "tiny" in unloaded and after == []
    assert again.status_code == 200  # the next job loads the checkpoint again

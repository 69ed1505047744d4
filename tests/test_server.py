"""The real Gradio server, driven through gradio_client and plain HTTP."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from tests.server_process import ROOT, AppServer
from webui.engine.synthetic import write_synthetic_checkpoint
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext


@pytest.fixture(scope="module")
def app_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("app")
    checkpoints = root / "models" / "Stable-diffusion"
    write_synthetic_checkpoint(checkpoints / "tiny.safetensors", "sd1", seed=7,
                               metadata={"modelspec.resolution": "64x64"})
    return root / "models", root / "outputs"


@pytest.fixture(scope="module")
def server(app_dirs: tuple[Path, Path]):
    app = AppServer(*app_dirs).wait_ready()
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(server: AppServer) -> Client:
    return Client(server.url, verbose=False)


def _refresh(client: Client) -> dict:
    """The refresh endpoint returns a dropdown update: {'choices': [[title, title], ...], 'value': title}."""
    update = client.predict(api_name="/refresh_checkpoints")
    assert isinstance(update, dict), update
    return update


def _title(client: Client, prefix: str = "tiny") -> str:
    return next(choice[0] for choice in _refresh(client)["choices"] if choice[0].startswith(prefix))


def test_generate_through_gradio_client_saves_pngs_with_infotext(client: Client, app_dirs) -> None:
    title = _title(client)
    gallery, _, infotext, status = client.predict(
        title, "a red circle", "blurry", "Euler a", "Automatic", 4, 6, 64, 64, 1234, 2, 2, api_name="/txt2img"
    )
    assert ">4 image(s) in " in status  # the status line is the tab's progress HTML; idle, it says what was made
    assert len(gallery) == 4
    assert parse_infotext(infotext)["Seed"] == 1234
    saved = sorted((app_dirs[1] / "txt2img").glob("*/*.png"))
    assert [parse_infotext(read_infotext(p))["Seed"] for p in saved[-4:]] == [1234, 1235, 1236, 1237]
    assert all(parse_infotext(read_infotext(p))["Size"] == "64x64" for p in saved)


def test_case_02_bad_size_gets_clear_message_and_server_stays_up(client: Client) -> None:
    title = _title(client)
    with pytest.raises(AppError, match="width: 70 is not a multiple of 8"):
        client.predict(title, "x", "", "Euler", "Automatic", 2, 6, 70, 64, 1, 1, 1, api_name="/txt2img")
    with pytest.raises(AppError, match="does not support schedule type 'Karras'"):
        client.predict(title, "x", "", "DDIM", "Karras", 2, 6, 64, 64, 1, 1, 1, api_name="/txt2img")
    gallery, *_ = client.predict(title, "x", "", "Euler", "Automatic", 2, 6, 64, 64, 1, 1, 1, api_name="/txt2img")
    assert len(gallery) == 1


def test_case_06_broken_checkpoint_is_reported_and_previous_model_still_works(client: Client, app_dirs) -> None:
    good = _title(client)
    client.predict(good, api_name="/select_checkpoint")
    broken = app_dirs[0] / "Stable-diffusion" / "broken.safetensors"
    broken.write_bytes((app_dirs[0] / "Stable-diffusion" / "tiny.safetensors").read_bytes()[:4096])
    try:
        bad_title = _title(client, "broken")
        selected, _, _, message = client.predict(bad_title, api_name="/select_checkpoint")
        assert "broken.safetensors: corrupt or incomplete" in message
        assert selected["value"] == good  # the dropdown goes back to the working model
        gallery, *_ = client.predict(good, "x", "", "Euler", "Automatic", 2, 6, 64, 64, 5, 1, 1, api_name="/txt2img")
        assert len(gallery) == 1
    finally:
        broken.unlink()
        client.predict(api_name="/refresh_checkpoints")


def test_case_16_no_file_outside_allowed_folders_is_served(server: AppServer, app_dirs) -> None:
    for path in ["/etc/passwd", str(app_dirs[0] / "Stable-diffusion" / "tiny.safetensors"), str(ROOT / "launch.py")]:
        response = httpx.get(f"{server.url}gradio_api/file={path}")
        assert response.status_code in (403, 404), path
    traversal = httpx.get(f"{server.url}gradio_api/file=../../../../etc/passwd")
    assert traversal.status_code in (403, 404)


def test_case_17_a_link_out_of_outputs_is_not_followed_without_logins(server: AppServer, app_dirs) -> None:
    from PIL import Image

    models, outputs = app_dirs
    folder = outputs / "links"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "passwd.png").symlink_to("/etc/passwd")
    (folder / "model.png").symlink_to(models / "Stable-diffusion" / "tiny.safetensors")
    (folder / "models").symlink_to(models, target_is_directory=True)
    own = folder / "own.png"
    Image.new("RGB", (8, 8)).save(own)
    assert httpx.get(f"{server.url}gradio_api/file={own}").status_code == 200  # the control: a real output
    for path in (folder / "passwd.png", folder / "model.png",
                 folder / "models" / "Stable-diffusion" / "tiny.safetensors"):
        answer = httpx.get(f"{server.url}gradio_api/file={path}")
        assert answer.status_code == 403 and "root:" not in answer.text, path


def test_case_30_listen_without_auth_refuses_to_start(tmp_path: Path) -> None:
    for flag in ("--listen", "--share"):
        result = subprocess.run([sys.executable, str(ROOT / "launch.py"), flag, "--models-dir", str(tmp_path)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0
        assert f"Start it with {flag} --auth user:password" in result.stderr


def test_case_23_auth_protects_ui_and_api(app_dirs, tmp_path: Path) -> None:
    credentials = tmp_path / "users.txt"
    credentials.write_text("alice:secret\n")
    app = AppServer(*app_dirs, "--auth-file", str(credentials)).wait_ready()
    try:
        assert httpx.get(app.url + "gradio_api/info").status_code == 401
        blocked = httpx.post(app.url + "gradio_api/call/refresh_checkpoints", json={"data": []})
        assert blocked.status_code == 401
        with pytest.raises(Exception):
            Client(app.url, verbose=False).predict(api_name="/refresh_checkpoints")
        authed = Client(app.url, auth=("alice", "secret"), verbose=False)
        assert _title(authed).startswith("tiny [")
    finally:
        app.stop()


def _previews(job) -> list[str]:
    """Intermediate yields carry the live preview as an Image update with a file value."""
    return [o[1]["value"] for o in job.outputs() if isinstance(o[1], dict) and o[1].get("value")]


def test_interrupt_stops_own_job_keeps_finished_images_and_previews_stream(server: AppServer, client: Client) -> None:
    import time

    title = _title(client)
    other = Client(server.url, verbose=False)
    job = client.submit(title, "a red circle", "", "Euler", "Automatic", 10, 6, 64, 64, 77, 50, 1, api_name="/txt2img")
    deadline = time.time() + 120
    while time.time() < deadline and len(_previews(job)) < 4:
        time.sleep(0.1)  # previews come every 3 steps, so 4 of them means the first image is finished
    assert "Nothing to interrupt" in other.predict(api_name="/interrupt")  # another session cannot stop it
    assert client.predict(api_name="/interrupt") == "Interrupting…"
    gallery, _, _, status = job.result(timeout=120)
    assert "interrupted" in status
    assert 1 <= len(gallery) < 50
    assert Path(_previews(job)[0]).suffix in (".png", ".webp")

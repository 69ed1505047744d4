"""Extensions against the real app: tabs appear, hooks change images, settings persist, broken ones are reported."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from tests.extension_folders import (
    HELLO_TAB, NEGATE_HOOK, RAISES_IN_REGISTER, RAISES_IN_UI, RAISES_ON_IMPORT, write_extension,
)
from tests.server_process import AppServer
from webui.engine.synthetic import write_synthetic_checkpoint


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ext-server")
    write_synthetic_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1", seed=3,
                               metadata={"modelspec.resolution": "64x64"})
    extensions = root / "extensions"
    write_extension(extensions, "flip", NEGATE_HOOK)
    write_extension(extensions, "hello", HELLO_TAB)
    write_extension(extensions, "bad-import", RAISES_ON_IMPORT)
    write_extension(extensions, "bad-register", RAISES_IN_REGISTER)
    write_extension(extensions, "bad-ui", RAISES_IN_UI)
    return {"models": root / "models", "outputs": root / "outputs", "extensions": extensions, "data": root / "data"}


def _start(dirs: dict[str, Path]) -> AppServer:
    app = AppServer(dirs["models"], dirs["outputs"], "--extensions-dir", str(dirs["extensions"]),
                    "--data-dir", str(dirs["data"]), "--no-preload").wait_ready()
    # Extension routes are mounted just after Gradio starts answering: wait for them, or a test may race to a 404.
    deadline = time.monotonic() + 30
    while httpx.get(app.url + "ext/hello/ping").status_code == 404:
        if time.monotonic() > deadline:
            app.stop()
            raise RuntimeError("extension routes were never mounted")
        time.sleep(0.2)
    return app


@pytest.fixture(scope="module")
def server(dirs):
    app = _start(dirs)
    yield app
    app.stop()


def _config(server: AppServer) -> dict:
    return httpx.get(server.url + "config").json()


def _tab_labels(config: dict) -> list[str]:
    return [c["props"].get("label") for c in config["components"] if c["type"] == "tabitem"]


def test_tabs_routes_and_failures_are_visible(server: AppServer) -> None:
    config = _config(server)
    labels = _tab_labels(config)
    assert {"Hello Tab", "PNG Info", "Models", "Settings", "Extensions"} <= set(labels)
    assert httpx.get(server.url + "ext/hello/ping").json() == {"pong": "hello"}
    assert httpx.get(server.url + "ext/models/list").json()[0]["name"] == "tiny"
    status = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "extensions_status")
    assert "this extension needs a package that is not installed" in status
    assert "registration exploded" in status
    assert "tab build exploded" in status
    assert "numpy&gt;=1" in status  # requirements are listed for the user, not installed


def test_section_control_reaches_the_hook_by_name(server: AppServer) -> None:
    client = Client(server.url, verbose=False)
    title = client.predict(api_name="/refresh_checkpoints")["value"]
    common = (title, "a red circle", "", "Euler", "Automatic", 3, 7, 64, 64, 9, 1, 1)
    off = client.predict(*common, flip_enabled=False, api_name="/txt2img")
    # by name, as docs/extensions.md shows it
    on = client.predict(checkpoint=title, prompt="a red circle", negative_prompt="", sampler_name="Euler",
                        scheduler="Automatic", steps=3, cfg_scale=7, width=64, height=64, seed=9, n_iter=1,
                        batch_size=1, flip_enabled=True, api_name="/txt2img")
    assert len(on) == 4 and on[0][0]["caption"] == "seed 9" and on[1]["visible"] is False and ">1 image(s) in " in on[3]
    assert Image.open(on[0][0]["image"]).format == "PNG"
    assert "Flipped: yes" in on[2] and "Flipped" not in off[2]
    image_on = np.asarray(Image.open(on[0][0]["image"]).convert("RGB"), dtype=int)
    image_off = np.asarray(Image.open(off[0][0]["image"]).convert("RGB"), dtype=int)
    assert np.abs(image_on - image_off).max() > 20


def test_models_tab_shows_the_loaded_checkpoint_and_unloads_it(server: AppServer) -> None:
    client = Client(server.url, verbose=False)
    title = client.predict(api_name="/refresh_checkpoints")["value"]
    client.predict(title, "a dot", "", "Euler", "Automatic", 2, 7, 64, 64, 4, 1, 1, api_name="/txt2img")
    rows = client.predict(api_name="/models_loaded")["data"]
    assert [row[:2] for row in rows] == [["tiny", "active, on the device"]] and rows[0][4] > 0
    assert rows[0][5] == 0 and rows[0][6] == "not compiled"  # nothing shared; --compile is off
    assert httpx.get(server.url + "ext/models/loaded").json()[0]["name"] == "tiny"
    table, message = client.predict("tiny", api_name="/models_unload")
    assert table["data"] == [] and "tiny: unloaded" in message
    assert "was not loaded" in client.predict("tiny", api_name="/models_unload")[1]


def test_settings_persist_across_restart(server: AppServer, dirs) -> None:
    client = Client(server.url, verbose=False)
    config = _config(server)
    setting_ids = [c["props"].get("elem_id") for c in config["components"]
                   if (c["props"].get("elem_id") or "").startswith("setting_")]
    assert "setting_flip_strength" in setting_ids
    values = {"setting_flip_strength": 0.25}
    args = [values.get(elem, next(c["props"]["value"] for c in config["components"]
                                  if c["props"].get("elem_id") == elem))
            for elem in setting_ids]
    saved = client.predict(*args, api_name="/settings_apply")
    assert saved.startswith("Settings saved. 1 changed:") and "`flip.strength`" in saved and "0.25" in saved
    restarted = _start(dirs)  # a second process on the same data folder: what a restart reads back
    try:
        config = _config(restarted)
        value = next(c["props"]["value"] for c in config["components"]
                     if c["props"].get("elem_id") == "setting_flip_strength")
        assert value == 0.25
    finally:
        restarted.stop()


def test_sections_are_offered_in_img2img_and_inpaint_too(server: AppServer) -> None:
    api = Client(server.url, verbose=False).view_api(return_format="dict")["named_endpoints"]
    for endpoint in ("/txt2img", "/img2img", "/inpaint"):
        names = [p["parameter_name"] for p in api[endpoint]["parameters"]]
        assert "flip_enabled" in names and "cfg_rescale_enabled" in names, endpoint

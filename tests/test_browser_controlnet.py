"""ControlNet in the real app: a headless browser uploads a control image, previews the map, enables a unit and
generates; gradio_client runs the workbench; the result's infotext records the unit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.server_process import AppServer
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, require_chromium
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    require_chromium()  # skips on a developer machine without it, fails under CI


@pytest.fixture(scope="module")
def server(browser_app: AppServer) -> AppServer:
    return browser_app  # shared by the browser modules (tests/conftest.py); it has control_tiny.safetensors


def _control(path: Path) -> Path:
    array = np.zeros((64, 64, 3), np.uint8)
    array[12:52, 20:44] = 255
    Image.fromarray(array).save(path)
    return path


def test_upload_preview_map_enable_unit_and_generate(server: AppServer, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    control = _control(tmp_path / "control.png")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(server.url, wait_until="domcontentloaded")
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            unit = "#txt2img_controlnet_unit0"
            page.locator(f"{unit}_image input[type=file]").first.set_input_files(str(control))
            page.wait_for_selector(f"{unit}_image img", timeout=30_000)
            # canny preview: the map appears beside the upload
            page.locator(f"{unit}_module input").first.fill("canny")
            page.locator(f"{unit}_module input").first.press("Enter")
            page.click(f"{unit}_run")
            page.wait_for_selector(f"{unit}_preview img", timeout=60_000)
            page.locator(f"{unit}_model input").first.fill("control_tiny")
            page.locator(f"{unit}_model input").first.press("Enter")
            page.wait_for_function(  # the dropdown has committed the choice before generating
                f"() => document.querySelector('{unit}_model input').value === 'control_tiny'", timeout=10_000)
            page.locator(f"{unit}_enabled input").check()

            page.fill("#txt2img_prompt textarea", "a red circle")
            page.fill("#txt2img_steps input[type=number]", "3")
            page.locator("#txt2img_steps input[type=number]").press("Enter")
            page.click("#txt2img_generate")
            page.wait_for_function(
                "() => document.querySelector('#txt2img_infotext textarea').value.includes('ControlNet 0')",
                timeout=120_000,
            )
            infotext = page.input_value("#txt2img_infotext textarea")
        finally:
            browser.close()
    assert 'ControlNet 0: "Module: canny, Model: control_tiny [' in infotext  # the previewed preprocessor stays
    saved = [read_infotext(path) for path in (server.root / "outputs" / "txt2img").rglob("*.png")]
    assert any("ControlNet 0" in parse_infotext(text) for text in saved)


def test_workbench_through_gradio_client(server: AppServer, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    control = _control(tmp_path / "control.png")
    client = Client(server.url, verbose=False)
    result = client.predict(handle_file(str(control)), "canny", 64, 100, 200, api_name="/controlnet_preprocess")
    detected, message = result
    assert message == ""
    edges = np.asarray(Image.open(detected["path"] if isinstance(detected, dict) else detected).convert("L"))
    import cv2

    expected = cv2.Canny(np.asarray(Image.open(control).convert("RGB")), 100, 200)
    assert edges.shape == expected.shape and (edges > 127).sum() > 0
    assert np.mean((edges > 127) == (expected > 127)) > 0.98
    # A preprocessor without its weights says which file to put where.
    _, message = client.predict(handle_file(str(control)), "depth_midas", 64, None, None,
                                api_name="/controlnet_preprocess")
    assert "dpt_hybrid-midas-501f0c75.pt" in message and "ControlNetPreprocessor" in message

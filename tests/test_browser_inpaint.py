"""A real headless browser paints a mask stroke with the brush and runs an inpaint; send-to from txt2img."""

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
    return browser_app  # shared by the browser modules (tests/conftest.py)


@pytest.fixture()
def page(server: AppServer):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url, wait_until="domcontentloaded")
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            yield page
        finally:
            browser.close()


def test_paint_a_mask_stroke_and_inpaint(server: AppServer, page, tmp_path: Path) -> None:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[..., 2] = 200  # plain blue: any repainted pixel shows
    source = tmp_path / "blue.png"
    Image.fromarray(pixels).save(source)

    before = set((server.root / "outputs" / "img2img").glob("*/*.png"))  # the server is shared with other modules
    page.get_by_role("tab", name="Inpaint", exact=True).click()
    page.wait_for_timeout(1000)  # an upload before the editor has sized its canvas lands on an 800x800 blank
    page.locator("#inpaint_editor input[type=file]").first.set_input_files(str(source))
    canvas = page.locator("#inpaint_editor canvas").first
    canvas.wait_for(timeout=30_000)
    page.wait_for_timeout(3000)  # let the editor place the uploaded background before painting
    page.locator("#inpaint_editor button[aria-label='Brush']").first.click()
    box = canvas.bounding_box()
    assert box is not None
    # A short horizontal stroke through the middle of the image (the image is centred in the canvas).
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 10, cy)
    page.mouse.down()
    for step in range(5):
        page.mouse.move(cx - 10 + step * 5, cy, steps=2)
    page.mouse.up()

    page.fill("#inpaint_prompt textarea", "a red circle")
    page.fill("#inpaint_steps input[type=number]", "3")
    page.locator("#inpaint_steps input[type=number]").press("Enter")
    page.fill("#inpaint_denoise input[type=number]", "1")
    page.locator("#inpaint_denoise input[type=number]").press("Enter")
    page.click("#inpaint_generate")
    page.wait_for_selector("#inpaint_gallery img", timeout=120_000)
    page.wait_for_function(
        "() => (document.querySelector('#inpaint_infotext textarea') || {value: ''}).value.includes('Seed:')",
        timeout=60_000,
    )
    infotext = page.input_value("#inpaint_infotext textarea")
    assert "Denoising strength: 1" in infotext and "Mask blur: 4" in infotext

    saved = sorted(set((server.root / "outputs" / "img2img").glob("*/*.png")) - before)
    assert len(saved) == 1 and parse_infotext(read_infotext(saved[0]))["Mask blur"] == 4
    out = np.asarray(Image.open(saved[0]).convert("RGB"), int)
    assert out.shape == (64, 64, 3)
    same = (out == pixels.astype(int)).all(-1)
    assert same[:2, :2].all() and same[-2:, -2:].all()  # corners, far from the stroke: untouched, pixel for pixel
    assert np.abs(out[30:34, 28:36] - pixels[30:34, 28:36].astype(int)).max() > 20  # under the stroke: repainted


def test_send_txt2img_result_to_inpaint(page) -> None:
    page.fill("#txt2img_prompt textarea", "a green square")
    page.fill("#txt2img_steps input[type=number]", "2")
    page.locator("#txt2img_steps input[type=number]").press("Enter")
    page.click("#txt2img_generate")
    page.wait_for_selector("#txt2img_gallery img", timeout=120_000)
    page.click("#txt2img_send_inpaint")
    page.wait_for_function(
        "() => (document.querySelector('#inpaint_prompt textarea') || {}).value === 'a green square'", timeout=30_000
    )
    page.locator("#inpaint_editor canvas").first.wait_for(state="visible", timeout=30_000)  # the Inpaint tab is open
    page.get_by_role("tab", name="txt2img", exact=True).click()
    page.click("#txt2img_send_img2img")
    page.wait_for_selector("#img2img_image img", timeout=30_000)
    assert page.input_value("#img2img_prompt textarea") == "a green square"

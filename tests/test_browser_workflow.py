"""A1111's workflow in a real headless Chromium (desktop viewport) against the real app server (`browser_app`):
pasting an infotext into the prompt box and ↙ fill every txt2img field, dropping a PNG on the prompt box does the same
from the image's own parameters, plain text is never taken apart; the Image Browser finds a saved image by its prompt.
Each test saves its screenshot (tests/ui_artifacts.py).
"""

from __future__ import annotations

import base64
import io
import uuid
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from tests.server_process import AppServer
from tests.ui_artifacts import open_app_page, open_tab, save_screenshot

TIMEOUT_MS = 60_000

# A Civitai-style infotext: every key below maps to a txt2img field; the values differ from the tab's defaults.
PASTED = ("a hexagon on a hill, (sunset:1.2)\nNegative prompt: blurry, lowres\n"
          "Steps: 7, Sampler: Euler, Schedule type: Karras, CFG scale: 4.5, Seed: 424242, Size: 128x192, "
          "Model hash: 0123456789, Model: tiny, Batch size: 2, Version: v1.10.1")
EXPECTED = {"prompt": "a hexagon on a hill, (sunset:1.2)", "neg_prompt": "blurry, lowres", "steps": "7",
            "sampler": "Euler", "schedule": "Karras", "cfg_scale": "4.5", "seed": "424242", "width": "128",
            "height": "192", "batch_size": "2"}


@pytest.fixture(scope="module")
def page(ui_browser, browser_app: AppServer):
    page = open_app_page(ui_browser, browser_app.url, "desktop")
    yield page
    page.context.close()


def _fields(page) -> dict[str, str]:
    """What the txt2img fields show, read from the DOM as the user sees them."""
    values = {}
    for name in ("prompt", "neg_prompt"):
        values[name] = page.input_value(f"#txt2img_{name} textarea")
    for name in ("steps", "cfg_scale", "width", "height", "batch_size"):
        values[name] = page.input_value(f"#txt2img_{name} input[type=number]")
    values["seed"] = page.input_value("#txt2img_seed input")
    for name in ("sampler", "schedule"):
        values[name] = page.input_value(f"#txt2img_{name} input")
    return values


def _message(page) -> str:
    return page.inner_text("#txt2img_job_message")


def _wait_message(page, text: str) -> None:
    page.wait_for_function("(t) => document.querySelector('#txt2img_job_message').innerText.includes(t)", arg=text,
                           timeout=TIMEOUT_MS)


def _reset(page) -> None:
    page.fill("#txt2img_prompt textarea", "")
    for name, value in (("steps", 3), ("width", 64), ("height", 64), ("batch_size", 1)):
        box = page.locator(f"#txt2img_{name} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    page.fill("#txt2img_seed input", "-1")


def _png_with(text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def test_pasted_infotext_and_dropped_png_fill_every_field(page) -> None:
    open_tab(page, "txt2img")
    before = _fields(page)
    assert all(before[key] != value for key, value in EXPECTED.items() if key not in ("sampler", "schedule"))

    # Plain text is never taken apart: a paste of it is left to the browser, and ↙ on it changes nothing.
    plain = "a cat: cute, colour: red"  # two `key: value` pairs only
    page.fill("#txt2img_prompt textarea", plain)
    page.click("#txt2img_paste")
    _wait_message(page, "holds no generation parameters")
    assert _fields(page) == {**before, "prompt": plain}

    # Pasting an infotext (a real paste event, as Ctrl+V sends) fills every field through ↙.
    page.fill("#txt2img_prompt textarea", "")
    page.evaluate("""(text) => {
        const box = document.querySelector('#txt2img_prompt textarea');
        box.focus();
        const data = new DataTransfer();
        data.setData('text/plain', text);
        box.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
    }""", PASTED)
    _wait_message(page, "field(s) from the prompt box")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '424242'",
                           timeout=TIMEOUT_MS)
    assert _fields(page) == EXPECTED
    save_screenshot(page, "workflow_paste_infotext-desktop")

    # Dropping a PNG on the prompt box reads the image's own `parameters` chunk on the server.
    _reset(page)
    dropped = PASTED.replace("Steps: 7", "Steps: 9").replace("Seed: 424242", "Seed: 99")
    page.evaluate("""(data) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        const box = document.querySelector('#txt2img_prompt textarea');
        box.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }""", base64.b64encode(_png_with(dropped)).decode())
    _wait_message(page, "from the dropped image")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '99'", timeout=TIMEOUT_MS)
    assert _fields(page) == {**EXPECTED, "steps": "9", "seed": "99"}
    _reset(page)

    # img2img has its own table (denoising strength too)
    open_tab(page, "img2img")
    page.fill("#img2img_prompt textarea", PASTED + ", Denoising strength: 0.35")
    page.click("#img2img_paste")
    page.wait_for_function("() => document.querySelector('#img2img_job_message').innerText.includes('Filled')",
                           timeout=TIMEOUT_MS)
    page.wait_for_function("() => document.querySelector('#img2img_denoise input[type=number]').value === '0.35'",
                           timeout=TIMEOUT_MS)
    shown = {name: page.input_value(f"#img2img_{name} input[type=number]")
             for name in ("steps", "width", "height", "batch_size", "cfg_scale")}
    assert shown == {"steps": "7", "width": "128", "height": "192", "batch_size": "2", "cfg_scale": "4.5"}
    assert page.input_value("#img2img_prompt textarea") == EXPECTED["prompt"]
    assert page.input_value("#img2img_sampler input") == "Euler"
    page.fill("#img2img_prompt textarea", "")


OVERRIDES = ("a red circle, (blue background:1.3)\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 5, Size: 64x64, "
             "Clip skip: 2, Emphasis: No norm, Batch size: 1")


def test_pasted_clip_skip_and_emphasis_become_the_tabs_override_settings(page) -> None:
    """A1111's "Override settings": an infotext's Clip skip and Emphasis apply to this tab's jobs (the image's own
    infotext records them), and an infotext without them clears the box."""
    open_tab(page, "txt2img")
    assert not page.locator("#txt2img_override_settings").is_visible()
    page.fill("#txt2img_prompt textarea", OVERRIDES)
    page.click("#txt2img_paste")
    _wait_message(page, "field(s) from the prompt box")
    page.wait_for_selector("#txt2img_override_settings", state="visible", timeout=TIMEOUT_MS)
    shown = page.inner_text("#txt2img_override_settings")
    assert "Clip skip: 2" in shown and "Emphasis: No norm" in shown, shown
    save_screenshot(page, "workflow_override_settings-desktop")
    page.click("#txt2img_generate")
    page.wait_for_function("() => document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 5')",
                           timeout=TIMEOUT_MS)
    infotext = page.input_value("#txt2img_infotext textarea")
    assert "Clip skip: 2" in infotext and "Emphasis: No norm" in infotext, infotext

    page.fill("#txt2img_prompt textarea", PASTED)
    page.click("#txt2img_paste")
    page.wait_for_selector("#txt2img_override_settings", state="hidden", timeout=TIMEOUT_MS)
    _reset(page)


def test_image_browser_finds_a_saved_image_by_its_prompt(page, browser_app: AppServer) -> None:
    word = f"zebra{uuid.uuid4().hex[:8]}"
    infotext = f"a {word} in the snow\nSteps: 5, Sampler: Euler, CFG scale: 6, Seed: 31337, Size: 16x16, Model: tiny"
    folder = Path(browser_app.root) / "outputs" / "txt2img" / "2001-01-01"
    folder.mkdir(parents=True, exist_ok=True)
    saved = folder / f"00000-{word}.png"
    saved.write_bytes(_png_with(infotext))  # now the newest image of this (single-user) server
    try:
        _paste_last_then_browse(page, word, infotext)
    finally:  # the server is shared: later modules look for their own newest image
        saved.unlink()


def _paste_last_then_browse(page, word: str, infotext: str) -> None:
    # ↙ with an empty prompt box reads the last image's parameters (A1111 reads params.txt)
    open_tab(page, "txt2img")
    page.fill("#txt2img_prompt textarea", "")
    page.click("#txt2img_paste")
    _wait_message(page, "from your last generation")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '31337'",
                           timeout=TIMEOUT_MS)
    assert page.input_value("#txt2img_prompt textarea") == f"a {word} in the snow"
    _reset(page)

    open_tab(page, "Image Browser")
    page.fill("#image_browser_search textarea, #image_browser_search input", word)
    page.locator("#image_browser_search textarea, #image_browser_search input").press("Enter")
    page.wait_for_function("(w) => document.querySelector('#image_browser_summary')"
                           ".innerText.includes('of 1 matching')",
                           arg=word, timeout=TIMEOUT_MS)
    thumbs = page.locator("#image_browser_gallery button.thumbnail-item, #image_browser_gallery .thumbnail-item")
    thumbs.first.click()
    page.wait_for_function("(w) => document.querySelector('#image_browser_infotext textarea').value.includes(w)",
                           arg=word, timeout=TIMEOUT_MS)
    assert page.input_value("#image_browser_infotext textarea") == infotext
    save_screenshot(page, "workflow_image_browser-desktop")
    # send to txt2img: the parameters arrive in the txt2img tab
    page.click("#image_browser_send_txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '31337'",
                           timeout=TIMEOUT_MS)
    assert page.input_value("#txt2img_prompt textarea") == f"a {word} in the snow"
    _reset(page)


def test_style_saved_in_the_editor_applies_to_the_prompt(page) -> None:
    open_tab(page, "txt2img")
    name = f"framed{uuid.uuid4().hex[:6]}"
    page.fill("#txt2img_prompt textarea", "a lighthouse")
    page.fill("#txt2img_neg_prompt textarea", "")
    page.click("#txt2img_edit_style")
    page.wait_for_selector("#txt2img_style_editor", state="visible", timeout=TIMEOUT_MS)
    name_box = page.locator("#txt2img_style_name input")
    name_box.fill(name)
    name_box.press("Enter")
    page.fill("#txt2img_style_prompt textarea", "oil painting of {prompt}, gold frame")
    page.fill("#txt2img_style_negative textarea", "photo")
    page.click("#txt2img_style_save")
    _wait_message(page, f"Saved the style {name}")

    styles = page.locator("#txt2img_styles input")
    styles.click()
    page.locator("[role=listbox] [role=option]", has_text=name).first.click()
    page.keyboard.press("Escape")
    page.click("#txt2img_apply_styles")
    _wait_message(page, "Applied 1 style(s)")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value.startsWith('oil')",
                           timeout=TIMEOUT_MS)
    assert page.input_value("#txt2img_prompt textarea") == "oil painting of a lighthouse, gold frame"
    assert page.input_value("#txt2img_neg_prompt textarea") == "photo"
    save_screenshot(page, "workflow_styles-desktop")
    page.click("#txt2img_style_close")
    _reset(page)

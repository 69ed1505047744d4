"""The extra-networks picker in the real app: a headless browser opens the LoRA cards, a click puts the tag in the
prompt, the job runs with the LoRA and its infotext records it; an embedding card adds its name."""

from __future__ import annotations

import pytest

from tests.server_process import AppServer
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, require_chromium
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext


@pytest.fixture(scope="module", autouse=True)
def chromium() -> None:
    require_chromium()  # skips on a developer machine without it, fails under CI


def test_click_a_lora_card_then_generate_with_it(browser_app: AppServer) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(browser_app.url, wait_until="domcontentloaded")
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            page.fill("#txt2img_prompt textarea", "a red circle")
            page.click("#txt2img_lora_picker button:has-text('LoRA (')")  # the training tests may add one
            page.wait_for_selector("#txt2img_lora_cards img", timeout=30_000)
            page.locator("#txt2img_lora_cards img").first.click()
            page.wait_for_function(
                "() => document.querySelector('#txt2img_prompt textarea').value.includes('<lora:tiny_style:1>')",
                timeout=30_000)
            assert page.input_value("#txt2img_prompt textarea") == "a red circle <lora:tiny_style:1>"
            assert "hexagon" in page.inner_text("#txt2img_lora_message")  # trigger words from ss_tag_frequency

            page.click("#txt2img_ti_picker button:has-text('Textual Inversion (1)')")
            page.wait_for_selector("#txt2img_ti_cards img", timeout=30_000)
            page.locator("#txt2img_ti_cards img").first.click()
            page.wait_for_function(
                "() => document.querySelector('#txt2img_prompt textarea').value.endsWith('tiny_emb')", timeout=30_000)

            page.fill("#txt2img_steps input[type=number]", "3")
            page.locator("#txt2img_steps input[type=number]").press("Enter")
            page.click("#txt2img_generate")
            page.wait_for_function(
                "() => document.querySelector('#txt2img_infotext textarea').value.includes('Lora hashes')",
                timeout=120_000)
            infotext = page.input_value("#txt2img_infotext textarea")
        finally:
            browser.close()
    params = parse_infotext(infotext)
    assert params["Prompt"] == "a red circle <lora:tiny_style:1> tiny_emb"
    assert params["Lora hashes"].startswith("tiny_style: ") and params["TI hashes"].startswith("tiny_emb: ")
    saved = [parse_infotext(read_infotext(p)) for p in (browser_app.root / "outputs" / "txt2img").rglob("*.png")]
    assert any(s.get("Lora hashes") == params["Lora hashes"] for s in saved)

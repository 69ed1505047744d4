"""A real headless browser uses the Settings tab at 1400x900 and at 390 px: the groups, the extension greeting shown as
text (not `['...']`), Apply with nothing changed, a refused value, Apply reporting old -> new and the restart, the dark
theme, and saving settings acting on the next image generated in the browser.

The app is the shared `browser_app`; every setting changed here is put back through `POST /sdapi/v1/options`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Iterator

import pytest

from tests.server_process import AppServer
from tests.ui_artifacts import VIEWPORTS, save_screenshot
from webui.services.outputs import read_infotext

SECTIONS = ["Saving images", "Live previews", "User interface", "Sampler parameters", "Model cache"]
TOUCHED = {  # every key this module may change -> its default, put back after each test
    "core.default_steps": 20, "core.theme": "system", "core.samples_filename_pattern": "[seed]",
    "core.samples_format": "png", "core.outdir_txt2img_samples": "txt2img",
}


@pytest.fixture(scope="module")
def server(browser_app: AppServer) -> AppServer:
    return browser_app  # shared by the browser modules (tests/conftest.py)


@pytest.fixture(scope="module")
def browser(ui_browser) -> Any:
    return ui_browser


def post_options(server: AppServer, changes: dict[str, Any]) -> tuple[int, str]:
    request = urllib.request.Request(server.url + "sdapi/v1/options", data=json.dumps(changes).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture()
def restored(server: AppServer) -> Iterator[None]:
    assert post_options(server, TOUCHED)[0] == 200
    yield
    assert post_options(server, TOUCHED)[0] == 200


def open_tab(page: Any, name: str) -> None:
    """Click a top-level tab; on a narrow screen Gradio moves the last tabs into its overflow menu."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.locator(".overflow-menu > button").first.click()
    page.locator(".overflow-dropdown button", has_text=name).first.click()


def text_of(page: Any, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def apply_and_wait(page: Any, words: str) -> str:
    page.click("#settings_apply")
    page.wait_for_function("(w) => (document.querySelector('#settings_message')?.innerText || '').includes(w)",
                           arg=words, timeout=30_000)
    return page.locator("#settings_message").inner_text()


def choose(page: Any, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
def test_settings_tab_apply_theme_and_saving(browser: Any, server: AppServer, restored: None, viewport: str) -> None:
    config = server.root / f"data-{server.port}" / "config.json"
    page = browser.new_page(viewport=VIEWPORTS[viewport])
    try:
        page.goto(server.url, wait_until="domcontentloaded")
        page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
        open_tab(page, "Settings")
        page.wait_for_selector("#settings_section_saving_images", state="visible", timeout=30_000)

        # Grouped as A1111's, then each extension under its name; the greeting is text, not a list's repr.
        sections = page.locator("[id^=settings_section_]")
        headings = [sections.nth(i).get_attribute("id") for i in range(sections.count())]
        assert headings[:5] == [f"settings_section_{s.lower().replace(' ', '_')}" for s in SECTIONS]
        assert "settings_section_example_tab" in headings and "settings_section_controlnet" in headings
        assert text_of(page, "setting_example_tab_greeting") == "Hello from an extension"
        assert text_of(page, "setting_core_samples_filename_pattern") == "[seed]"
        assert page.locator("#setting_core_enable_pnginfo input[type=checkbox]").is_checked()
        assert page.locator("#setting_core_default_steps").get_by_text("Needs a restart.").is_visible()

        # Apply with nothing changed: says so, and config.json stays as it was.
        before = config.read_bytes() if config.exists() else None
        assert apply_and_wait(page, "Nothing changed").startswith("Nothing changed")
        assert (config.read_bytes() if config.exists() else None) == before

        # A refused value names the setting and what is allowed; nothing of that Apply is saved.
        page.fill("#setting_core_samples_filename_pattern textarea, #setting_core_samples_filename_pattern input",
                  "[seed]-[bogus]")
        refused = apply_and_wait(page, "Nothing was saved")
        assert "File-name pattern" in refused and "unknown token(s) [bogus]" in refused and "[prompt_words]" in refused
        assert (config.read_bytes() if config.exists() else None) == before

        # Real changes: Apply lists old -> new and the one that waits for a restart; the theme turns dark at once.
        page.fill("#setting_core_samples_filename_pattern textarea, #setting_core_samples_filename_pattern input",
                  "[seed]-[prompt_words]")
        page.fill("#setting_core_outdir_txt2img_samples textarea, #setting_core_outdir_txt2img_samples input",
                  f"browser-settings/{viewport}")
        page.fill("#setting_core_default_steps input[type=number]", "25")
        page.locator("#setting_core_default_steps input[type=number]").press("Enter")
        choose(page, "setting_core_samples_format", "jpg")
        choose(page, "setting_core_theme", "dark")
        report = apply_and_wait(page, "Settings saved.")
        assert "5 changed" in report
        assert "Default sampling steps (core.default_steps): 20 → 25 (needs a restart)" in report
        assert "Theme (core.theme): 'system' → 'dark'" in report
        assert "Restart the server for these to take effect: Default sampling steps." in report
        page.wait_for_function("() => document.body.classList.contains('dark')", timeout=10_000)
        saved = json.loads(config.read_text(encoding="utf-8"))
        assert {k: saved[k] for k in TOUCHED} == {
            "core.default_steps": 25, "core.theme": "dark", "core.samples_filename_pattern": "[seed]-[prompt_words]",
            "core.samples_format": "jpg", "core.outdir_txt2img_samples": f"browser-settings/{viewport}"}
        save_screenshot(page, f"settings-applied-{viewport}")

        # A new page load keeps the dark theme and shows the saved values.
        page.reload(wait_until="domcontentloaded")
        page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
        page.wait_for_function("() => document.body.classList.contains('dark')", timeout=20_000)
        assert page.evaluate("document.documentElement.dataset.latentTheme") == "dark"

        # The saving settings act on the next image: its folder, file-name pattern, format and infotext.
        page.fill("#txt2img_prompt textarea", "a red circle")
        page.fill("#txt2img_steps input[type=number]", "2")
        page.locator("#txt2img_steps input[type=number]").press("Enter")
        page.fill("#txt2img_seed input", "7")
        page.click("#txt2img_generate")
        try:
            page.wait_for_selector("#txt2img_gallery img", timeout=120_000)
        except Exception as exc:  # say what the page said, and keep what it looked like
            save_screenshot(page, f"settings-no-image-{viewport}")
            raise AssertionError(f"no image: status {page.locator('#txt2img_status').inner_text()!r}, message "
                                 f"{page.locator('#txt2img_job_message').inner_text()!r}") from exc
        page.wait_for_function(
            "() => document.querySelector('#txt2img_infotext textarea').value.includes('Seed:')", timeout=60_000)
        infotext = page.input_value("#txt2img_infotext textarea")
        files = sorted((server.root / "outputs" / "browser-settings" / viewport).rglob("*.jpg"))
        assert [f.name for f in files] == ["00000-7-a red circle.jpg"]
        assert read_infotext(files[0]) == infotext and "Steps: 2" in infotext
        save_screenshot(page, f"settings-generated-{viewport}")
    finally:
        page.close()


def test_the_api_cannot_point_outputs_outside_the_outputs_folder(server: AppServer, restored: None) -> None:
    status, body = post_options(server, {"core.outdir_txt2img_samples": "/tmp/elsewhere"})
    assert status == 422 and "core.outdir_txt2img_samples" in body and "inside the outputs folder" in body
    status, body = post_options(server, {"core.jpeg_quality": 0})
    assert status == 422 and "allowed: a whole number from 1 to 100" in body

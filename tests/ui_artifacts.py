"""Browser-test helpers for the UI checks: the two viewports every UI test runs at, and screenshots kept as artifacts.

Screenshots go to `$LATENT_STUDIO_ARTIFACTS/screenshots/` (default `tests/artifacts/screenshots/`, git-ignored), named
`<test>-<viewport>.png`, so a reviewer (or CI's artifact upload) can look at what each assertion looked at.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

VIEWPORTS: dict[str, dict[str, int]] = {
    "desktop": {"width": 1400, "height": 900},
    "phone": {"width": 390, "height": 844},
}


def artifacts_dir() -> Path:
    root = Path(os.environ.get("LATENT_STUDIO_ARTIFACTS") or Path(__file__).resolve().parent / "artifacts")
    folder = root / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_screenshot(page, name: str, full_page: bool = True, element=None) -> Path:
    """Save a screenshot of the page (or of one locator) and return its path."""
    safe = re.sub(r"[^\w.-]+", "_", name).strip("_")
    path = artifacts_dir() / f"{safe}.png"
    if element is not None:
        element.screenshot(path=str(path))
    else:
        page.screenshot(path=str(path), full_page=full_page)
    return path


def open_tab(page, name: str, attempts: int = 3) -> None:
    """Click a top-level tab until it is the selected one; on a phone Gradio moves the tabs that do not fit into an
    overflow menu. Retried because an event still in flight (a "send to" answer) may select another tab after the
    click."""
    for _ in range(attempts):
        tab = page.get_by_role("tab", name=name, exact=True)
        if tab.count() and tab.first.is_visible():
            tab.first.click()
        else:
            page.locator("#tabs .overflow-menu > button").first.click()
            page.locator("#tabs .overflow-dropdown button",
                         has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).first.click()
        page.wait_for_timeout(500)
        selected = page.locator("#tabs button[role=tab][aria-selected=true]")
        if selected.count() and selected.first.inner_text().strip() == name:
            return
    raise AssertionError(f"the {name!r} tab did not open")


def launch_chromium(playwright):
    """The Debian Chromium every browser test drives (skips without it on a developer machine, fails under CI)."""
    from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, require_chromium

    require_chromium()
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)


def open_app_page(browser, url: str, viewport: str):
    """A fresh browser context at one of VIEWPORTS with the app loaded; `page.viewport_name` names the viewport for
    screenshot file names. Close it with `page.context.close()`."""
    page = browser.new_context(viewport=VIEWPORTS[viewport]).new_page()
    page.viewport_name = viewport
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
    return page

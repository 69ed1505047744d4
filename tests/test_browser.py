"""A real headless browser (Debian Chromium driven by Playwright) types a prompt and gets an image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.server_process import AppServer
from webui.engine.synthetic import write_synthetic_checkpoint

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--disable-dev-shm-usage",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Chromium not found: install it with `apt-get install -y chromium chromium-driver` (.ci/run does this)",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("browser")
    write_synthetic_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1", seed=9,
                               metadata={"modelspec.resolution": "64x64"})
    app = AppServer(root / "models", root / "outputs").wait_ready()
    yield app
    app.stop()


def test_prompt_generate_and_see_image_in_gallery(server: AppServer) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(server.url, wait_until="domcontentloaded")
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            assert page.locator("#txt2img_gallery img").count() == 0
            page.fill("#txt2img_prompt textarea", "a red circle on a blue background")
            page.fill("#txt2img_steps input[type=number]", "4")
            page.locator("#txt2img_steps input[type=number]").press("Enter")
            page.click("#txt2img_generate")
            page.wait_for_selector("#txt2img_gallery img", timeout=120_000)
            page.wait_for_function(
                "() => document.querySelector('#txt2img_infotext textarea').value.includes('Seed:')", timeout=60_000
            )
            infotext = page.input_value("#txt2img_infotext textarea")
            assert infotext.startswith("a red circle on a blue background\nSteps: 4, ")
            assert "Size: 64x64" in infotext
        finally:
            browser.close()

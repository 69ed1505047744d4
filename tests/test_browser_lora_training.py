"""The LoRA training tab in the real app: through gradio_client (start, watch the status, the file is a LoRA the
app then generates with) and through a headless browser (start, the loss plot and progress move, interrupt, resume
state kept, refusals shown)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.server_process import AppServer
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, require_chromium
from webui.shapes import concept_scenes, write_captioned_folder
from webui.ui.lora_training import _DEFAULTS, _FIELDS


@pytest.fixture(scope="module")
def dataset(browser_app: AppServer) -> Path:
    folder = browser_app.root / "training-data" / "4_rectangle"
    write_captioned_folder(folder, concept_scenes(6))
    return folder.parent


def start_arguments(**changes) -> list:
    """The start call's inputs in the tab's order, from the tab's defaults."""
    values = []
    for field, _ in _FIELDS:
        value = changes.get(field, getattr(_DEFAULTS, field))
        values.append("\n".join(value) if isinstance(value, list) else str(value) if isinstance(value, Path) else value)
    return values


def wait_for_state(client, states: set[str], timeout: float = 240.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.predict(api_name="/lora_training_status")
        if status["state"] in states:
            return status
        time.sleep(0.5)
    raise AssertionError(f"training did not reach {states}: {status}")


# LoRA names start with zz_ so that they sort after the shared server's tiny_style card (test_browser_lora clicks the
# first card).
def test_train_through_gradio_client_then_generate_with_the_lora(browser_app: AppServer, dataset: Path) -> None:
    from gradio_client import Client

    client = Client(browser_app.url, verbose=False)
    title = next(c[0] for c in client.predict(api_name="/refresh_checkpoints")["choices"] if c[0].startswith("tiny"))
    client.predict(title, *start_arguments(name="zz_api_trained", data=dataset, max_steps=6, batch_size=2, rank=4,
                                           sample_every=3, sample_steps=3), api_name="/lora_training_start")
    status = wait_for_state(client, {"done", "failed", "interrupted"})
    assert status["state"] == "done", status
    # a small model trains two runs by default (Runs to average: automatic), and the progress counts across both
    assert [step for step, _ in status["losses"]] == list(range(1, 13))
    assert len(status["samples"]) == 8  # two prompts (the dataset's first captions), at steps 3 and 6 of each run
    output = browser_app.root / "models" / "Lora" / "zz_api_trained.safetensors"
    assert Path(status["output"]) == output and output.exists()
    from safetensors import safe_open

    with safe_open(str(output), "pt") as handle:
        assert handle.metadata()["latent_studio.average_of_runs"] == "2"
    assert not list((browser_app.root / "models" / "Lora").glob(".*partial"))

    # the app generates with it at once, by name, and records its hash (the picker's library was rescanned)
    _, _, infotext, _ = client.predict(title, "a red rectangle <lora:zz_api_trained:1>", "", "Euler", "Automatic", 3, 6,
                                       64, 64, 7, 1, 1, api_name="/txt2img")
    from webui.services.infotext import parse_infotext

    assert parse_infotext(infotext)["Lora hashes"].startswith("zz_api_trained: ")

    # a second start while nothing runs but with the same name is refused with a message naming the file
    with pytest.raises(Exception, match="zz_api_trained.safetensors already exists"):
        client.predict(title, *start_arguments(name="zz_api_trained", data=dataset), api_name="/lora_training_start")
    with pytest.raises(Exception, match="rank must be at least 1"):
        client.predict(title, *start_arguments(name="bad", data=dataset, rank=0), api_name="/lora_training_start")
    with pytest.raises(Exception, match="has no usable images"):
        client.predict(title, *start_arguments(name="bad", data=browser_app.root), api_name="/lora_training_start")


@pytest.fixture(scope="module")
def chromium() -> None:
    require_chromium()  # skips on a developer machine without it, fails under CI


def test_browser_start_watch_the_loss_plot_interrupt(browser_app: AppServer, dataset: Path, chromium: None) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.goto(browser_app.url, wait_until="domcontentloaded")
            page.wait_for_selector("#txt2img_prompt textarea", timeout=60_000)
            page.get_by_role("tab", name="LoRA training").click()
            page.locator("#lora_train_name textarea, #lora_train_name input").first.fill("zz_browser_trained")
            page.locator("#lora_train_data textarea, #lora_train_data input").first.fill(str(dataset))
            page.get_by_text("Optimizer and schedule").click()
            page.fill("#lora_train_max_steps input[type=number]", "400")
            page.fill("#lora_train_batch_size input[type=number]", "2")
            page.get_by_text("Samples and saving").click()
            page.fill("#lora_train_save_every input[type=number]", "5")
            page.fill("#lora_train_sample_every input[type=number]", "0")
            page.click("#lora_train_start")
            step_of = "() => Number(document.querySelector('#lora_train_status [data-step]')?.dataset.step || 0)"
            page.wait_for_function(f"() => ({step_of})() >= 3", timeout=180_000)
            plot = page.locator("#lora_train_loss")
            first_plot = plot.inner_html()
            first_step = page.evaluate(step_of)
            page.wait_for_function(f"() => ({step_of})() >= {first_step + 3}", timeout=120_000)
            page.wait_for_function(
                "(before) => document.querySelector('#lora_train_loss').innerHTML !== before", arg=first_plot,
                timeout=30_000)
            assert page.locator("#lora_train_status progress").count() == 1
            assert "ETA" in page.inner_text("#lora_train_status")
            page.click("#lora_train_interrupt")
            page.wait_for_function(
                "() => document.querySelector('#lora_train_status [data-state]')?.dataset.state === 'interrupted'",
                timeout=120_000)
            status_text = page.inner_text("#lora_train_status")
            stopped_at = page.evaluate(step_of)
        finally:
            browser.close()
    assert "interrupted at step" in status_text and stopped_at < 400
    # the shipped model trains two runs by default (*Runs to average*: automatic); the first one was interrupted
    run = browser_app.root / "outputs" / "lora-training" / "zz_browser_trained" / "run1"
    import torch

    assert torch.load(run / "checkpoint-latest.pt", weights_only=True)["step"] == stopped_at
    assert not (browser_app.root / "models" / "Lora" / "zz_browser_trained.safetensors").exists()

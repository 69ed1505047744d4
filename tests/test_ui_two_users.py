"""Two logins on one real server (`launch.py --auth alice:...,bob:... --admin alice`).

Through gradio_client: each user's `/txt2img` images land in their own outputs folder with their own infotext, and
Gradio's file route serves a file only to its owner. Through a headless browser with two contexts (two logged-in
users): a user never sees another's progress, another user's Interrupt and Skip leave a job alone, a job behind
another user's shows its place in line and runs after it, each gallery shows only its owner's images, and a user's
own Interrupt and Skip stop their job or drop the batch being sampled, keeping the finished images.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.server_process import AppServer
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, require_chromium
from webui.services.outputs import read_infotext
from webui.ui.job_stream import SamplingPace

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

ACCOUNTS = {"alice": "pw-a1", "bob": "pw-b2"}
# The "long" job: 0.05-0.1 s a step at 64x64 on two busy cores once the model is warm (measured), so 6-12 s of
# sampling: long enough for the other user's clicks to land while it runs, short enough for the default suite.
LONG_STEPS, LONG_BATCHES = 10, 12
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    from webui.engine.synthetic import write_synthetic_checkpoint

    root = tmp_path_factory.mktemp("two-users")
    write_synthetic_checkpoint(root / "models" / "Stable-diffusion" / "tiny.safetensors", "sd1", seed=7,
                               metadata={"modelspec.resolution": "64x64"})
    logins = ",".join(f"{name}:{password}" for name, password in ACCOUNTS.items())
    app = AppServer(root / "models", root / "outputs", "--auth", logins, "--admin", "alice", "--no-preload",
                    "--data-dir", str(root / "data"))
    app.wait_ready()
    app.root = root
    yield app
    app.stop()


def saved(server: AppServer, user: str, seed: int) -> list[Path]:
    """The user's txt2img files for this seed (A1111 names them `<counter>-<seed>.png`); seeds differ per test."""
    return sorted((server.root / "outputs" / user / "txt2img").glob(f"*/*-{seed}.png"))


# --- gradio_client ---------------------------------------------------------------------------------------------------

def test_each_users_images_land_in_their_folder_and_only_they_can_fetch_them(server: AppServer) -> None:
    from gradio_client import Client

    alice = Client(server.url, auth=("alice", ACCOUNTS["alice"]), verbose=False)
    bob = Client(server.url, auth=("bob", ACCOUNTS["bob"]), verbose=False)
    # the checkpoint dropdown's choice as the page was built (refreshing is for admins, and changes only that session)
    config = httpx.get(f"{server.url}config", cookies=bob.cookies).json()
    title = next(c for c in config["components"] if c["props"].get("elem_id") == "checkpoint")["props"]["value"]
    gallery, _, infotext, status = alice.predict(title, "alice's red circle", "", "Euler", "Automatic", 2, 6, 64, 64,
                                                 1234, 1, 1, api_name="/txt2img")
    assert ">1 image(s) in " in status and len(gallery) == 1
    assert infotext.startswith("alice's red circle\nSteps: 2, Sampler: Euler, ") and "Seed: 1234," in infotext
    [alice_png] = saved(server, "alice", 1234)
    assert read_infotext(alice_png) == infotext == read_infotext(Path(gallery[0]["image"]))

    _, _, bob_infotext, _ = bob.predict(title, "bob's blue square", "", "Euler", "Automatic", 2, 6, 64, 64, 5678, 1, 1,
                                        api_name="/txt2img")
    [bob_png] = saved(server, "bob", 5678)
    assert read_infotext(bob_png) == bob_infotext and bob_infotext.startswith("bob's blue square\n")
    assert saved(server, "alice", 5678) == [] and saved(server, "bob", 1234) == []

    route = f"{server.url}gradio_api/file="
    refused = httpx.get(f"{route}{alice_png}", cookies=bob.cookies)
    assert refused.status_code == 403 and refused.content != alice_png.read_bytes()
    own = httpx.get(f"{route}{alice_png}", cookies=alice.cookies)
    assert own.status_code == 200 and own.content == alice_png.read_bytes()
    assert httpx.get(f"{route}{bob_png}", cookies=bob.cookies).status_code == 200

    # with nothing running, the buttons' endpoints say so instead of doing anything
    assert bob.predict(api_name="/skip") == "Nothing of yours is running"
    assert bob.predict(api_name="/interrupt") == "Nothing to interrupt"


def test_the_eta_comes_from_the_sampling_pace_not_the_model_load() -> None:
    pace = SamplingPace()
    assert pace.eta(0.1, now=100.0) is None  # the first step seen starts the clock (whatever came before it)
    assert pace.eta(0.1, now=101.0) is None  # no progress since: no estimate yet
    assert pace.eta(0.3, now=102.0) == pytest.approx(7.0)  # 0.2 in 2 s; 0.7 left at that pace


# --- two users in one browser ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pages(server: AppServer) -> Iterator[dict[str, Page]]:
    """One headless Chromium, one context (own cookies) per user, each logged in through Gradio's login page."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield {name: _log_in(browser.new_context().new_page(), server, name) for name in ACCOUNTS}
        finally:
            browser.close()


def _log_in(page: Page, server: AppServer, name: str) -> Page:
    page.goto(server.url, wait_until="domcontentloaded")
    page.get_by_label("username").fill(name)
    page.get_by_label("password").fill(ACCOUNTS[name])
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#txt2img_prompt textarea", timeout=TIMEOUT_MS)
    return page


def _set_job(page: Page, prompt: str, steps: int, batch_count: int, seed: int) -> None:
    page.fill("#txt2img_prompt textarea", prompt)
    for elem_id, value in (("txt2img_steps", steps), ("txt2img_batch_count", batch_count)):
        field = page.locator(f"#{elem_id} input[type=number]")
        field.fill(str(value))
        field.press("Enter")
    page.fill("#txt2img_seed input", str(seed))


def _progress(page: Page) -> Locator:
    """The one progress bar's text in the status line: "queued: ...", "batch 2/8, step 3/10, 2 s elapsed, ETA 4 s"."""
    return page.locator("#txt2img_status .ls-progress:not([data-state=idle]) .ls-progress-text")


def _wait_for_sampling(page: Page) -> None:
    """Until the page shows its job's step count. Checked on every animation frame: a slower poll can miss a short
    job's progress altogether."""
    page.wait_for_function(
        "() => /batch \\d+\\/\\d+, step \\d+\\/\\d+/.test("
        "document.querySelector('#txt2img_status .ls-progress-text')?.innerText ?? '')",
        polling="raf", timeout=TIMEOUT_MS)


def _wait_for_file(server: AppServer, user: str, seed: int, timeout: float = TIMEOUT_MS / 1000) -> None:
    """Until the image of this seed is saved: the job has finished that batch and started the next one. The server
    saves each image as soon as it exists, so this times a click more closely than the page can."""
    deadline = time.monotonic() + timeout
    while not saved(server, user, seed):
        if time.monotonic() > deadline:
            raise AssertionError(f"{user}'s image for seed {seed} never appeared")
        time.sleep(0.02)


def _press(page: Page, elem_id: str) -> None:
    """Click a button while a job runs. The page's own click event goes to Gradio's handler as a mouse click's would;
    Playwright's mouse click took 1.7-5.4 s to land while a page drew progress and previews on two busy cores
    (measured), longer than a batch, so a Skip meant for batch 2 hit batch 3."""
    page.locator(f"#{elem_id}").dispatch_event("click")


def _status(page: Page) -> Locator:
    """The job's status line once it is idle again ("3 image(s) in 4.2 s", ...)."""
    return page.locator("#txt2img_status .ls-progress[data-state=idle] .ls-progress-text")


def _answer(page: Page) -> Locator:
    """Where Interrupt and Skip answer."""
    return page.locator("#txt2img_job_message [data-testid=markdown]")


def _captions(page: Page) -> list[str]:
    return page.locator("#txt2img_gallery .thumbnail-item .caption-label").all_inner_texts()


def test_another_user_neither_sees_nor_stops_a_job_and_waits_behind_it(
    server: AppServer, pages: dict[str, Page]
) -> None:
    from playwright.sync_api import expect

    alice, bob = pages["alice"], pages["bob"]
    _set_job(alice, "alice's long job", LONG_STEPS, LONG_BATCHES, 100)
    _set_job(bob, "bob's short job", 2, 1, 900)
    alice.click("#txt2img_generate")
    _wait_for_sampling(alice)

    # bob's tab shows nothing of alice's job: no progress bar, no step counts, no preview
    assert _progress(bob).count() == 0
    assert not re.search(r"step \d+/\d+", bob.inner_text("body"))
    assert bob.locator("#txt2img_preview img").count() == 0

    # bob's Interrupt and Skip do not reach alice's job
    _press(bob, "txt2img_interrupt")
    expect(_answer(bob)).to_have_text("Nothing to interrupt")
    _press(bob, "txt2img_skip")
    expect(_answer(bob)).to_have_text("Nothing of yours is running")

    # bob's job waits behind alice's running one, and says so. Only alice's job can be ahead of it, so it was still
    # running after bob's Interrupt and Skip above had been answered.
    _press(bob, "txt2img_generate")
    expect(_progress(bob)).to_contain_text("queued: 1 job(s) ahead", timeout=10_000)

    expect(_status(alice)).to_have_text(re.compile(rf"^{LONG_BATCHES} image\(s\) in [\d.]+ s$"),
                                        timeout=TIMEOUT_MS)  # complete, not interrupted
    expect(_status(bob)).to_have_text(re.compile(r"^1 image\(s\) in [\d.]+ s$"), timeout=TIMEOUT_MS)
    assert _captions(alice) == [f"seed {100 + i}" for i in range(LONG_BATCHES)]
    assert _captions(bob) == ["seed 900"]  # each gallery holds its owner's images only

    alice_files = [path for i in range(LONG_BATCHES) for path in saved(server, "alice", 100 + i)]
    [bob_file] = saved(server, "bob", 900)
    assert len(alice_files) == LONG_BATCHES and saved(server, "alice", 900) == []
    assert bob_file.stat().st_mtime >= max(path.stat().st_mtime for path in alice_files)  # bob's ran after alice's


def test_a_users_interrupt_stops_their_job_and_keeps_the_finished_images(
    server: AppServer, pages: dict[str, Page]
) -> None:
    from playwright.sync_api import expect

    alice = pages["alice"]
    _set_job(alice, "alice's interrupted job", LONG_STEPS, LONG_BATCHES, 300)
    alice.click("#txt2img_generate")
    _wait_for_file(server, "alice", 300)  # one image is done
    _press(alice, "txt2img_interrupt")
    expect(_status(alice)).to_contain_text("interrupted; finished images were kept", timeout=TIMEOUT_MS)
    expect(_answer(alice)).to_have_text("")  # back to idle: no "Interrupting…" left to carry into the next run
    assert _progress(alice).count() == 0
    kept = int(_status(alice).inner_text().split()[0])
    assert 1 <= kept < LONG_BATCHES
    assert _captions(alice) == [f"seed {300 + i}" for i in range(kept)]
    files_per_seed = [len(saved(server, "alice", 300 + i)) for i in range(LONG_BATCHES)]
    assert files_per_seed == [1] * kept + [0] * (LONG_BATCHES - kept)


def test_skip_during_the_second_batch_drops_only_that_batch(server: AppServer, pages: dict[str, Page]) -> None:
    from playwright.sync_api import expect

    alice = pages["alice"]
    # 100 steps a batch: Skip's answer showed 0.5-1.8 s after the press on two busy cores (measured), and batch 2
    # must still be sampling when the press arrives; at 30 steps (2-3 s) it sometimes had finished when the other test
    # worker kept the second core busy
    _set_job(alice, "alice's skipped batch", 100, 3, 500)
    alice.click("#txt2img_generate")
    expect(_answer(alice)).to_have_text("")
    _wait_for_file(server, "alice", 500)  # batch 1 is saved: batch 2 is being sampled
    _press(alice, "txt2img_skip")
    expect(_answer(alice)).to_have_text("Skipping the current batch…")
    expect(_status(alice)).to_have_text(re.compile(r"^2 image\(s\) in [\d.]+ s$"), timeout=TIMEOUT_MS)
    expect(_answer(alice)).to_have_text("")  # the finished job leaves the message line idle
    assert _captions(alice) == ["seed 500", "seed 502"]
    assert [len(saved(server, "alice", seed)) for seed in (500, 501, 502)] == [1, 0, 1]

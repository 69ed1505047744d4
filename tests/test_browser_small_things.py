"""Small things A1111 users reach for (issue #16, item 7), in a real headless Chromium at 1400x900 and at 390 px wide
against the real app server (tests/conftest.py `browser_app`); each test saves its screenshot (tests/ui_artifacts.py).

- Ctrl+Enter generates and Esc interrupts; the seed's reuse and random buttons; icons drawn without an emoji font;
- a token counter under each prompt box; a one-sentence tooltip on every control of the generating tabs;
- Refresh says what it found; "open outputs folder" on a local server only;
- PNG Info shows only the keys the file holds; an embedding or LoRA the model cannot use is reported.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.server_process import AppServer
from tests.ui_artifacts import VIEWPORTS, open_app_page, save_screenshot

TIMEOUT_MS = 120_000
ONE_SENTENCE = re.compile(r"^[A-Z0-9][^\n]*[.]$")


@pytest.fixture(scope="module")
def browser(ui_browser):
    return ui_browser


@pytest.fixture(scope="module")
def pages(browser, browser_app: AppServer) -> Iterator[dict]:
    """One page per viewport for the whole module (a page load costs seconds on 2 cores); tests leave them usable."""
    opened: dict = {}
    yield opened
    for page in opened.values():
        page.context.close()


@pytest.fixture(params=list(VIEWPORTS))
def page(request: pytest.FixtureRequest, pages: dict, browser, browser_app: AppServer):
    name = request.param
    if name not in pages:
        pages[name] = open_app_page(browser, browser_app.url, name)
    page = pages[name]
    _open_tab(page, "txt2img")
    yield page


def _open_tab(page, name: str) -> None:
    """Click a top-level tab; on a phone Gradio moves the tabs that do not fit into an overflow menu."""
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.locator("#tabs .overflow-menu > button").first.click()
    page.locator("#tabs .overflow-dropdown button", has_text=re.compile(rf"^\s*{re.escape(name)}\s*$")).first.click()


def _set(page, elem_id: str, value: object) -> None:
    field = page.locator(f"#{elem_id} input[type=number]").first
    field.fill(str(value))
    field.press("Enter")


def _infotext(page) -> str:
    return page.input_value("#txt2img_infotext textarea")


def _wait_infotext_change(page, before: str) -> str:
    page.wait_for_function("(before) => { const v = document.querySelector('#txt2img_infotext textarea').value;"
                           " return v.includes('Seed:') && v !== before; }", arg=before, timeout=TIMEOUT_MS)
    return _infotext(page)


def _wait_idle(page) -> None:
    page.wait_for_function("() => document.querySelector('#txt2img_status .ls-progress')?.dataset.state === 'idle'",
                           timeout=TIMEOUT_MS)


def _toasts(page) -> str:
    return " | ".join(page.locator('[data-testid="toast-body"]').all_inner_texts())


def _close_toasts(page) -> None:
    for close in page.locator('[data-testid="toast-close"]').all():
        if close.is_visible():
            close.click()


def _is_emoji(ch: str) -> bool:
    """Codepoints drawn from an emoji font: pictographs, misc symbols and dingbats, misc technical (the media keys
    such as U+23F8), the emoji variation selector. Geometric shapes such as Gradio's own accordion caret are text."""
    code = ord(ch)
    return (code >= 0x1F000 or 0x2600 <= code <= 0x27BF or 0x2300 <= code <= 0x23FF or 0x2B00 <= code <= 0x2BFF
            or code == 0xFE0F)


def _no_emoji(text: str) -> bool:
    return not any(_is_emoji(ch) for ch in text)


def _screenshot(page, test: str) -> None:
    save_screenshot(page, f"{test}-{page.viewport_name}")


# ---- keyboard ------------------------------------------------------------------------------------------------------


def test_ctrl_enter_generates_and_esc_interrupts(page) -> None:
    before = _infotext(page)
    page.fill("#txt2img_prompt textarea", f"a blue square {page.viewport_name}")
    _set(page, "txt2img_steps", 3)
    _set(page, "txt2img_batch_count", 1)
    page.locator("#txt2img_prompt textarea").press("Control+Enter")
    info = _wait_infotext_change(page, before)
    assert info.startswith(f"a blue square {page.viewport_name}\nSteps: 3, ")
    assert page.input_value("#txt2img_prompt textarea") == f"a blue square {page.viewport_name}"  # no newline typed
    _wait_idle(page)

    # A long job: Esc stops it within a step and the finished images are kept.
    _set(page, "txt2img_steps", 150)
    _set(page, "txt2img_batch_count", 6)
    page.locator("#txt2img_prompt textarea").press("Control+Enter")
    page.wait_for_selector("#txt2img_status .ls-progress[data-state=running]", timeout=TIMEOUT_MS)
    # Esc clicks the Interrupt button if it is on screen: on a busy machine the page may draw the running bar before
    # the button, and the server must be sampling (a step in the bar), so that there is a job to interrupt
    page.wait_for_selector("#txt2img_interrupt", state="visible", timeout=TIMEOUT_MS)
    page.wait_for_function("() => /step \\d+/.test(document.querySelector('#txt2img_status').innerText)",
                           timeout=TIMEOUT_MS)
    page.keyboard.press("Escape")
    try:
        page.wait_for_function("() => /interrupted/.test(document.querySelector('#txt2img_status').innerText)",
                               timeout=TIMEOUT_MS)
    except PlaywrightTimeoutError:  # say what the page showed: the button's answer tells a lost key from a lost job
        raise AssertionError(f"not interrupted; status {page.inner_text('#txt2img_status')!r}, answer "
                             f"{page.inner_text('#txt2img_job_message')!r}, focus "
                             f"{page.evaluate('() => document.activeElement?.outerHTML.slice(0, 120)')!r}") from None
    status = page.inner_text("#txt2img_status")
    done = int(re.search(r"(\d+) image\(s\)", status).group(1))
    assert done < 6, status
    _screenshot(page, "ctrl_enter_and_esc")
    _set(page, "txt2img_steps", 3)
    _set(page, "txt2img_batch_count", 1)


# ---- seed row ------------------------------------------------------------------------------------------------------


def test_seed_reuse_and_random_buttons_with_svg_icons(page) -> None:
    page.fill("#txt2img_seed input", "-1")
    page.locator("#txt2img_seed input").press("Enter")
    before = _infotext(page)
    page.fill("#txt2img_prompt textarea", f"a green ring {page.viewport_name}")
    _set(page, "txt2img_steps", 2)
    page.click("#txt2img_generate")
    info = _wait_infotext_change(page, before)
    _wait_idle(page)
    drawn_seed = int(re.search(r"Seed: (\d+)", info).group(1))
    assert page.input_value("#txt2img_seed input") == "-1"

    page.click("#txt2img_reuse_seed")
    page.wait_for_function("(s) => document.querySelector('#txt2img_seed input').value === String(s)",
                           arg=drawn_seed, timeout=30_000)
    page.click("#txt2img_random_seed")
    page.wait_for_function("() => document.querySelector('#txt2img_seed input').value === '-1'", timeout=30_000)

    seed_box = page.locator("#txt2img_seed input").bounding_box()
    width = VIEWPORTS[page.viewport_name]["width"]
    for elem_id in ("txt2img_random_seed", "txt2img_reuse_seed"):
        button = page.locator(f"#{elem_id}")
        assert _no_emoji(button.inner_text()), elem_id
        assert button.evaluate("b => { const i = b.querySelector('img'); return !!i && i.complete && "
                               "i.naturalWidth > 0 && i.getAttribute('src').includes('.svg'); }"), elem_id
        box = button.bounding_box()
        # beside the seed box, on the same line, inside the screen
        assert box["x"] >= seed_box["x"] + seed_box["width"] - 1, (elem_id, box, seed_box)
        assert box["y"] < seed_box["y"] + seed_box["height"] and box["y"] + box["height"] > seed_box["y"], elem_id
        assert box["x"] + box["width"] <= width, (elem_id, box)
    _screenshot(page, "seed_row")


def test_no_icon_is_an_emoji_codepoint(page) -> None:
    """Every button, tab and label on the page, Gradio's own included: no emoji codepoint."""
    texts = page.evaluate("() => Array.from(document.querySelectorAll('button, [role=tab], label, "
                          "[data-testid=block-info]')).map(e => e.innerText || '')")
    offending = [t for t in texts if not _no_emoji(t)]
    assert texts and not offending, offending
    refresh = page.locator("#refresh_checkpoints")
    assert refresh.inner_text().strip() == "Refresh"
    assert refresh.evaluate("b => { const i = b.querySelector('img'); return !!i && i.naturalWidth > 0; }")
    _screenshot(page, "no_emoji")


# ---- token counter -------------------------------------------------------------------------------------------------


def test_token_counters_under_the_prompt_boxes(page) -> None:
    page.fill("#txt2img_prompt textarea", "cat " * 80)
    page.wait_for_function("() => document.querySelector('#txt2img_token_counter').innerText.trim() === '80/150'",
                           timeout=30_000)
    page.fill("#txt2img_prompt textarea", "<lora:tiny_style:0.5> a cat")  # tags are not tokens the encoder sees
    page.wait_for_function("() => document.querySelector('#txt2img_token_counter').innerText.trim() === '2/75'",
                           timeout=30_000)
    page.fill("#txt2img_neg_prompt textarea", "blurry, ugly")
    page.wait_for_function("() => document.querySelector('#txt2img_neg_token_counter').innerText.trim() === '3/75'",
                           timeout=30_000)
    for box_id, counter_id in (("txt2img_prompt", "txt2img_token_counter"),
                               ("txt2img_neg_prompt", "txt2img_neg_token_counter")):
        box = page.locator(f"#{box_id} textarea").bounding_box()
        counter = page.locator(f"#{counter_id} .token-count").bounding_box()
        assert counter["y"] >= box["y"] + box["height"] - 2, (counter_id, counter, box)  # under its box
        assert counter["y"] < box["y"] + box["height"] + 40, (counter_id, counter, box)  # right under it
        assert abs((counter["x"] + counter["width"]) - (box["x"] + box["width"])) < 30, (counter_id, counter, box)
    _open_tab(page, "img2img")
    page.wait_for_selector("#img2img_token_counter", state="visible")
    assert page.inner_text("#img2img_token_counter").strip() == "0/75"
    _open_tab(page, "txt2img")
    page.fill("#txt2img_neg_prompt textarea", "")
    _screenshot(page, "token_counter")


# ---- tooltips ------------------------------------------------------------------------------------------------------

# Every shown control of the checkpoint bar and the tab: buttons with ids, labels, token counters. Sections of the
# example extensions in `extensions/` are theirs to describe; the built-in ones (LoRA, ControlNet, depth) are ours.
_UNTITLED_CONTROLS = """(prefix) => {
  const foreign = (e) => {
    const group = e.closest(`[id^="${prefix}_ext_"]`);
    return !!group && !/_ext_(lora|controlnet|depth)(_[0-9]+)?$/.test(group.id);
  };
  const shown = (e) => e.offsetParent !== null && !foreign(e);
  const titled = (e) => (e.title || e.closest('[title]')?.title || '').trim();
  const found = [];
  const scopes = [document.querySelector('#checkpoint')?.closest('.row') ?? document.body,
                  document.getElementById(prefix + '_prompt').closest('.tabitem') ?? document.body];
  for (const scope of scopes) {
    for (const b of scope.querySelectorAll('button[id]')) if (shown(b)) found.push([b.id, titled(b)]);
    for (const l of scope.querySelectorAll('[data-testid=block-info], [data-testid=block-label], label > span'))
      if (shown(l) && l.innerText.trim()) found.push([l.innerText.trim(), titled(l)]);
    for (const t of scope.querySelectorAll('[id$=token_counter]')) if (shown(t)) found.push([t.id, titled(t)]);
  }
  return found;
}"""


@pytest.mark.parametrize("tab, prefix", [("txt2img", "txt2img"), ("img2img", "img2img"), ("Inpaint", "inpaint")])
def test_every_control_has_a_one_sentence_tooltip(page, tab: str, prefix: str) -> None:
    _open_tab(page, tab)
    page.wait_for_selector(f"#{prefix}_prompt textarea", state="visible")
    page.wait_for_function(f"() => document.getElementById('{prefix}_reuse_seed')?.title", timeout=10_000)
    controls = page.evaluate(_UNTITLED_CONTROLS, prefix)
    names = {name for name, _ in controls}
    assert {f"{prefix}_generate", f"{prefix}_reuse_seed", f"{prefix}_random_seed", "refresh_checkpoints",
            "Sampling steps", "CFG Scale", "Seed (-1 = random)", f"{prefix}_token_counter"} <= names, names
    missing = [name for name, title in controls if not title]
    assert not missing, f"controls without a tooltip: {missing}"
    long = [(name, title) for name, title in controls if not ONE_SENTENCE.match(title) or ". " in title]
    assert not long, f"tooltips that are not one sentence: {long}"
    assert page.locator(f"#{prefix}_reuse_seed").get_attribute("aria-label")  # icon-only: named for screen readers
    _screenshot(page, f"tooltips_{prefix}")
    _open_tab(page, "txt2img")


# ---- refresh, outputs folder ---------------------------------------------------------------------------------------


def test_refresh_says_what_it_found(page, browser_app: AppServer) -> None:
    extra = browser_app.root / "models" / "Stable-diffusion" / f"extra_{page.viewport_name}.safetensors"
    extra.write_bytes((browser_app.root / "models" / "Stable-diffusion" / "tiny.safetensors").read_bytes())
    try:
        page.click("#refresh_checkpoints")
        page.wait_for_function("(n) => document.querySelector('#model_status').innerText.includes('new: ' + n)",
                               arg=extra.stem, timeout=30_000)
        text = page.inner_text("#model_status")
        assert re.search(r"Refresh found \d+ checkpoints: .*tiny", text), text
        assert "VAE file" in text, text
        _screenshot(page, "refresh")
    finally:
        extra.unlink()
    page.click("#refresh_checkpoints")
    page.wait_for_function("(n) => document.querySelector('#model_status').innerText.includes('gone: ' + n)",
                           arg=extra.stem, timeout=30_000)


def test_open_outputs_folder_answers_on_a_local_server(page, browser_app: AppServer) -> None:
    button = page.locator("#open_outputs")
    assert button.is_visible()
    assert _no_emoji(button.inner_text())
    outputs = str(browser_app.root / "outputs")
    assert outputs not in page.inner_text("#model_status")
    button.click()
    page.wait_for_function("(p) => document.querySelector('#model_status').innerText.includes(p)", arg=outputs,
                           timeout=30_000)
    text = page.inner_text("#model_status")
    # headless here: no desktop, so it says what it would have opened; on a desktop it opens it
    assert text.startswith("Opened the outputs folder") or "not opened:" in text, text
    _screenshot(page, "open_outputs")


@pytest.fixture(scope="module", autouse=True)
def public_process(browser_app: AppServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    """The same models served with --listen (so with a login), where "open outputs folder" would act on a machine the
    user is not sitting at. Started with the module, so its start-up overlaps the tests before the one using it."""
    root = tmp_path_factory.mktemp("public")
    app = AppServer(browser_app.root / "models", root / "outputs", "--listen", "--auth", "ann:pw-for-ann",
                    "--no-preload")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def public_server(public_process: AppServer) -> AppServer:
    return public_process.wait_ready()


def test_no_open_outputs_button_on_a_public_server(page, browser, public_server: AppServer) -> None:
    public = browser.new_context(viewport=VIEWPORTS[page.viewport_name]).new_page()
    try:
        public.goto(public_server.url, wait_until="domcontentloaded")
        public.get_by_label("username").fill("ann")
        public.get_by_label("password").fill("pw-for-ann")
        public.get_by_role("button", name="Login").click()
        public.wait_for_selector("#refresh_checkpoints", timeout=TIMEOUT_MS)
        assert public.locator("#txt2img_reuse_seed").count() == 1  # the page is fully built...
        assert public.locator("#open_outputs").count() == 0  # ...and has no folder button
        public.viewport_name = page.viewport_name  # type: ignore[attr-defined]
        _screenshot(public, "public_no_open_outputs")
    finally:
        public.context.close()


# ---- PNG Info ------------------------------------------------------------------------------------------------------


def test_png_info_shows_only_what_the_file_holds(page, tmp_path: Path) -> None:
    from PIL import Image, PngImagePlugin

    text = ("a small cat\nNegative prompt: dog\nSteps: 4, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 5, "
            "Size: 96x80, Model: tiny")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    path = tmp_path / "with-params.png"
    Image.new("RGB", (96, 80), (20, 40, 60)).save(path, pnginfo=info)

    _open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    page.wait_for_selector("#pnginfo_table table tr", timeout=30_000)
    keys = [k.strip() for k in page.locator("#pnginfo_table th").all_inner_texts()]
    assert keys == ["Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size", "Model"], keys
    assert "DPM++ 2M Karras" in page.inner_text("#pnginfo_table")  # as written, not split
    _screenshot(page, "pnginfo")
    # "Send to txt2img" still uses the parsed values (Size-1/Size-2 become width and height)
    page.click("#pnginfo_send_txt2img")
    page.wait_for_function("() => document.querySelector('#txt2img_width input[type=number]').value === '96'",
                           timeout=30_000)
    assert page.input_value("#txt2img_prompt textarea") == "a small cat"
    _set(page, "txt2img_width", 64)
    _set(page, "txt2img_height", 64)


# ---- what the app cannot apply -------------------------------------------------------------------------------------


def test_unusable_embedding_and_unknown_lora_are_reported(page, browser_app: AppServer) -> None:
    import torch

    wide = browser_app.root / "models" / "embeddings" / f"wide_{page.viewport_name}.pt"
    torch.save({"string_to_param": {"*": torch.randn(1, 1280)}}, str(wide))  # made for a 1280-wide text encoder
    try:
        _close_toasts(page)
        _set(page, "txt2img_steps", 2)
        before = _infotext(page)
        page.fill("#txt2img_prompt textarea", f"a cat {wide.stem} <hypernet:tiny:1>")
        page.click("#txt2img_generate")
        _wait_infotext_change(page, before)
        # Gradio groups warnings in one toast ("Warning (2)")
        page.wait_for_function("(n) => { const t = Array.from(document.querySelectorAll('[data-testid=toast-body]'))"
                               ".map(e => e.innerText).join(' '); return t.includes(n) && t.includes('hypernet'); }",
                               arg=wide.stem, timeout=30_000)
        toasts = _toasts(page)
        assert f"Embedding '{wide.stem}' was not applied" in toasts, toasts
        assert "pick a checkpoint it fits, or remove it from the prompt" in toasts, toasts
        # a tag no extension handles is named whole (toasts render HTML, so it must not vanish as a tag)
        assert "<hypernet:tiny:1>: no extension handles <hypernet:...> tags" in toasts, toasts
        _screenshot(page, "embedding_warning")
    finally:
        wide.unlink()
    _wait_idle(page)
    _close_toasts(page)

    page.fill("#txt2img_prompt textarea", "a cat <lora:no_such_lora:1>")
    page.click("#txt2img_generate")
    # the job stops with an error that names the LoRA and what to do (shown as Gradio's error toast)
    page.wait_for_function("() => Array.from(document.querySelectorAll('[data-testid=toast-body]'))"
                           ".some(t => t.innerText.includes('no_such_lora'))", timeout=TIMEOUT_MS)
    toasts = _toasts(page)
    assert "LoRA 'no_such_lora' not found" in toasts and "put the file there, or fix the name" in toasts, toasts
    _screenshot(page, "lora_not_found")
    _wait_idle(page)
    _close_toasts(page)

"""Small tools A1111 users reach for, shared by the generating tabs and the checkpoint bar: the seed row (random and
reuse buttons), a token counter under each prompt box, "open outputs folder" on a local server, and the icons they use.

Icons are SVG files (`assets/icons/`), not emoji codepoints: a machine without an emoji font shows an emoji as an empty
box, while an SVG draws the same everywhere.
"""

from __future__ import annotations

import html
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from webui.context import AppContext
from webui.services.extensions import ExtensionAPI
from webui.services.extra_networks import extract_tags
from webui.services.infotext import parse_infotext
from webui.ui.session import owner_of

ICONS = Path(__file__).resolve().parent / "assets" / "icons"
OPENER_WAIT_S = 3.0  # an opener that fails (no file manager) exits at once; one that works may keep running


def icon(name: str) -> str:
    """Path of an SVG icon in `assets/icons/` (Gradio serves it from its cache)."""
    return str(ICONS / f"{name}.svg")


def tool_button(name: str, elem_id: str, text: str = "") -> gr.Button:
    """A small icon button in A1111's tool-button style; its tooltip and accessible name come from hints.js."""
    return gr.Button(text, icon=icon(name), elem_id=elem_id, elem_classes=["tool-button"], scale=0,
                     min_width=44 if not text else 100)


# ---- seed row ------------------------------------------------------------------------------------------------------


@dataclass
class SeedRow:
    """The seed box and its two buttons: random (-1) and reuse (the seed of the image shown in the infotext box)."""

    seed: gr.Number
    random: gr.Button
    reuse: gr.Button


def seed_row(prefix: str) -> SeedRow:
    """Build the seed box with its buttons beside it (A1111's layout); call where the seed box was."""
    with gr.Row(elem_id=f"{prefix}_seed_row", elem_classes=["seed-row"]):
        seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id=f"{prefix}_seed", scale=4,
                         min_width=120)
        random = tool_button("random", f"{prefix}_random_seed")
        reuse = tool_button("reuse", f"{prefix}_reuse_seed")
    return SeedRow(seed, random, reuse)


def seed_from_infotext(text: str | None) -> int | None:
    """The `Seed:` of an infotext, or None when the text has none (nothing generated or selected yet)."""
    if not text or not text.strip():
        return None
    seed = parse_infotext(text).get("Seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def wire_seed_row(row: SeedRow, infotext: gr.Textbox) -> None:
    """Random sets -1; reuse reads the seed from the infotext box, which shows the selected gallery image's infotext
    (or the first image's right after a run), so it is the seed of the image the user is looking at."""

    def reuse(text: str | None, current: float | None) -> float | None:
        seed = seed_from_infotext(text)
        if seed is None:
            gr.Warning("No image to take the seed from: generate one or click one in the gallery first.")
            return current
        return seed

    row.random.click(lambda: -1, outputs=[row.seed], queue=False, api_name=False, show_progress="hidden")
    # queued (Gradio shows gr.Warning only for queued events); no limit, so it never waits behind a generation
    row.reuse.click(reuse, inputs=[infotext, row.seed], outputs=[row.seed], concurrency_limit=None, api_name=False,
                    show_progress="hidden")


# ---- token counter -------------------------------------------------------------------------------------------------


def token_count_text(prompt: str | None) -> str:
    """A1111's `n/75`: tokens the text encoder sees (extra-network tags such as `<lora:...>` are removed first, as
    they are before encoding) and the room in the prompt's 75-token chunks."""
    text, _ = extract_tags(prompt or "")
    used, capacity = ExtensionAPI.count_tokens(text)
    return f"{used}/{capacity}"


def _counter_html(prompt: str | None) -> str:
    return f"<span class='token-count'>{html.escape(token_count_text(prompt))}</span>"


def token_counter(prompt: gr.Textbox, elem_id: str) -> gr.HTML:
    """A counter under a prompt box, updated as the prompt changes (typing, paste, "send to", picker cards); call
    right after the box. Counting needs the CLIP tokenizer, so it runs on the server."""
    counter = gr.HTML(_counter_html(prompt.value if isinstance(prompt.value, str) else ""), elem_id=elem_id,
                      elem_classes=["token-counter"])
    prompt.change(_counter_html, inputs=[prompt], outputs=[counter], queue=False, show_progress="hidden",
                  trigger_mode="always_last", api_name=False)
    return counter


# ---- open outputs folder -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FolderOpener:
    """How this machine shows a folder: a command (`path` appended), os.startfile (Windows), or why it cannot."""

    command: tuple[str, ...] = ()
    startfile: bool = False
    missing: str = ""


def folder_opener(platform: str = sys.platform, environ: Mapping[str, str] = os.environ,
                  which: Callable[[str], str | None] = shutil.which) -> FolderOpener:
    """The OS's own opener, as A1111's "open folder" uses: os.startfile, `open`, or `xdg-open` (which needs a desktop
    session; on a headless server it would fail or start a text browser)."""
    if platform == "win32":
        return FolderOpener(startfile=True)
    if platform == "darwin":
        found = which("open")
        return FolderOpener(command=(found,)) if found else FolderOpener(missing="no `open` command on this machine")
    if not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        return FolderOpener(missing="the server has no desktop session (DISPLAY is not set)")
    found = which("xdg-open")
    return FolderOpener(command=(found,)) if found else FolderOpener(missing="xdg-open is not installed")


def open_folder(path: Path, opener: FolderOpener) -> str:
    """Show `path` in the server machine's file manager; returns the line for the user, which always names the path
    (with no desktop it says what it would have opened)."""
    path.mkdir(parents=True, exist_ok=True)  # before the first image the folder may not exist yet
    if opener.missing:
        return f"Outputs folder: `{path}` (not opened: {opener.missing})"
    if opener.startfile:
        os.startfile(path)  # type: ignore[attr-defined]  # Windows only
        return f"Opened the outputs folder `{path}`"
    try:
        process = subprocess.Popen([*opener.command, str(path)], stdin=subprocess.DEVNULL,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        return f"Outputs folder: `{path}` (not opened: {exc})"
    try:
        code = process.wait(timeout=OPENER_WAIT_S)
    except subprocess.TimeoutExpired:
        return f"Opened the outputs folder `{path}`"
    if code:
        return f"Outputs folder: `{path}` (not opened: {Path(opener.command[0]).name} exited with status {code})"
    return f"Opened the outputs folder `{path}`"


def outputs_folder(context: AppContext, owner: str) -> Path:
    """The caller's outputs folder: the root, or with several logins the user's own folder under it."""
    store = context.outputs
    return store.root / owner if store.per_user else store.root


def open_outputs_button() -> gr.Button:
    """The button; build it only on a local server (not --listen/--share): it acts on the server's desktop."""
    return tool_button("folder", "open_outputs", "Outputs")


def wire_open_outputs(context: AppContext, button: gr.Button, message: gr.Markdown) -> None:
    def on_open(request: gr.Request) -> str:
        return open_folder(outputs_folder(context, owner_of(request)), folder_opener())

    button.click(on_open, outputs=[message], queue=False, api_name=False)

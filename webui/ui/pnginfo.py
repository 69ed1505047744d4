"""PNG Info: show the A1111 parameters stored in any uploaded image (ours, A1111's, ComfyUI's A1111-style ones)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from webui.services.infotext import infotext_fields, parse_infotext
from webui.services.outputs import read_infotext
from webui.services.uploads import UploadError, UploadLimits, check_header


def describe_image(path: str | None) -> tuple[str, str, dict]:
    """(raw infotext, escaped HTML table, parsed dict) for an uploaded file.

    The table shows only what the file holds; the parsed dict (for "send to") also has A1111's defaults and derived
    keys (`Size-1`, `Clip skip`, `RNG`), which the file does not say and the table must not claim it does."""
    if not path:
        return "", "", {}
    try:
        check_header(path, "image", UploadLimits.from_env())  # the same upload check as every other field
    except UploadError as exc:
        return "", f"<p>{html.escape(str(exc))}</p>", {}
    text = read_infotext(Path(path))
    if not text:
        return "", "<p>No generation parameters found in this image.</p>", {}
    rows = "".join(
        f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>"
        for key, value in infotext_fields(text).items()
    )
    return text, f"<table class='pnginfo'>{rows}</table>", parse_infotext(text)


def build_pnginfo_tab(ui: Any = None) -> tuple[gr.Image, gr.Textbox, gr.State]:
    """The tab body; with a UI bridge it also gets "Send to ..." buttons for every registered target."""
    with gr.Row():
        image = gr.Image(label="Source", type="filepath", image_mode=None, sources=["upload"],
                         elem_id="pnginfo_image")
        with gr.Column():
            raw = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="pnginfo_text")
            table = gr.HTML(elem_id="pnginfo_table")
    parsed = gr.State({})
    image.change(describe_image, inputs=[image], outputs=[raw, table, parsed], queue=False, api_name="pnginfo")
    if ui is not None:
        ui.send_buttons(image, parsed, "pnginfo")
    return image, raw, parsed

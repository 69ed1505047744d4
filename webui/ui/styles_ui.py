"""The tool row under Generate (A1111's top row): ↙ paste parameters, the Styles dropdown, "apply styles to prompt"
and the style editor, plus the hidden field an image dropped on the prompt box arrives in.

Selected styles apply when the tab generates (the prompt box keeps what the user typed, as in A1111); "apply"
writes them into the prompt boxes instead and clears the selection, so they are not applied twice. The editor saves
to the install's `styles.csv` (webui/services/styles.py).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.services.requests import RequestError
from webui.services.styles import PromptStyle, StyleStore
from webui.ui.prompt_tools import tool_button


@dataclass
class PromptTools:
    paste: gr.Button
    styles: gr.Dropdown
    apply_styles: gr.Button
    edit_style: gr.Button
    drop: gr.File  # hidden: assets/dragdrop.js puts an image dropped on the prompt box here
    editor: gr.Column
    style_name: gr.Dropdown
    style_prompt: gr.Textbox
    style_negative: gr.Textbox
    copy_prompts: gr.Button
    save_style: gr.Button
    delete_style: gr.Button
    close_editor: gr.Button


def prompt_tools(prefix: str, store: StyleStore) -> PromptTools:
    """Build the row; call inside the tab's button column, after Generate."""
    names = store.names()
    with gr.Row(elem_id=f"{prefix}_tools", elem_classes=["ls-prompt-tools"]):
        paste = tool_button("paste", f"{prefix}_paste")
        apply_styles = tool_button("apply-styles", f"{prefix}_apply_styles")
        edit_style = tool_button("edit-style", f"{prefix}_edit_style")
    styles = gr.Dropdown(names, value=[], multiselect=True, label="Styles", elem_id=f"{prefix}_styles")
    drop = gr.File(label="Image with parameters", file_types=["image"], type="filepath",
                   elem_id=f"{prefix}_prompt_image", elem_classes=["ls-drop-target"])
    with gr.Column(visible=False, elem_id=f"{prefix}_style_editor", elem_classes=["ls-style-editor"]) as editor:
        style_name = gr.Dropdown(names, value=None, allow_custom_value=True, label="Style name",
                                 elem_id=f"{prefix}_style_name")
        style_prompt = gr.Textbox(label="Style prompt ({prompt} marks where your prompt goes)", lines=2,
                                  elem_id=f"{prefix}_style_prompt")
        style_negative = gr.Textbox(label="Style negative prompt", lines=2, elem_id=f"{prefix}_style_negative")
        with gr.Row():
            copy_prompts = gr.Button("Copy prompts", size="sm", elem_id=f"{prefix}_style_copy", min_width=60)
            save_style = gr.Button("Save style", size="sm", variant="primary", elem_id=f"{prefix}_style_save",
                                   min_width=60)
            delete_style = gr.Button("Delete style", size="sm", variant="stop", elem_id=f"{prefix}_style_delete",
                                     min_width=60)
            close_editor = gr.Button("Close", size="sm", elem_id=f"{prefix}_style_close", min_width=60)
    return PromptTools(paste, styles, apply_styles, edit_style, drop, editor, style_name, style_prompt,
                       style_negative, copy_prompts, save_style, delete_style, close_editor)


def wire_styles(store: StyleStore, tools: PromptTools, prompt: gr.Textbox, negative: gr.Textbox,
                message: gr.Markdown) -> None:
    """Apply, edit, save and delete; every answer goes to the tab's message line next to Generate."""

    def refreshed(value: Any = None) -> dict:
        return gr.update(choices=store.names()) if value is None else gr.update(choices=store.names(), value=value)

    def on_apply(text: str, negative_text: str, chosen: list[str] | None) -> list[Any]:
        if not chosen:
            return [gr.skip(), gr.skip(), gr.skip(), "Choose one or more styles first."]
        try:
            styled, styled_negative = store.apply(text or "", negative_text or "", list(chosen))
        except RequestError as exc:
            return [gr.skip(), gr.skip(), refreshed(), html.escape(str(exc))]
        return [styled, styled_negative, refreshed([]), f"Applied {len(chosen)} style(s) to the prompts."]

    def on_open(chosen: list[str] | None, text: str, negative_text: str) -> list[Any]:
        style = store.get(chosen[0]) if chosen else None
        if style is None:  # a new style starts from the current prompts, as A1111's editor does
            return [gr.Column(visible=True), refreshed(""), text or "", negative_text or ""]
        return [gr.Column(visible=True), refreshed(style.name), style.prompt, style.negative_prompt]

    def on_pick(name: str | None) -> list[Any]:
        style = store.get(name or "")
        return [gr.skip(), gr.skip()] if style is None else [style.prompt, style.negative_prompt]

    def on_save(name: str | None, style_prompt: str, style_negative: str) -> list[Any]:
        try:
            store.save(PromptStyle((name or "").strip(), style_prompt or "", style_negative or ""))
        except (RequestError, OSError) as exc:
            return [gr.skip(), gr.skip(), html.escape(str(exc).splitlines()[0])]
        return [refreshed(), refreshed((name or "").strip()),
                f"Saved the style {html.escape((name or '').strip())} to {html.escape(store.path.name)}."]

    def on_delete(name: str | None, chosen: list[str] | None) -> list[Any]:
        name = (name or "").strip()
        try:
            deleted = store.delete(name)
        except OSError as exc:
            return [gr.skip(), gr.skip(), html.escape(str(exc).splitlines()[0])]
        if not deleted:
            return [gr.skip(), gr.skip(), f"No style named {html.escape(name)} to delete."]
        kept = [style for style in chosen or [] if style != name]
        return [refreshed(kept), refreshed(""), f"Deleted the style {html.escape(name)}."]

    quick = dict(queue=False, api_name=False, show_progress="hidden")
    tools.apply_styles.click(on_apply, inputs=[prompt, negative, tools.styles],
                             outputs=[prompt, negative, tools.styles, message], **quick)
    tools.edit_style.click(on_open, inputs=[tools.styles, prompt, negative],
                           outputs=[tools.editor, tools.style_name, tools.style_prompt, tools.style_negative], **quick)
    tools.style_name.input(on_pick, inputs=[tools.style_name], outputs=[tools.style_prompt, tools.style_negative],
                           **quick)
    tools.copy_prompts.click(lambda text, negative_text: [text or "", negative_text or ""], inputs=[prompt, negative],
                             outputs=[tools.style_prompt, tools.style_negative], **quick)
    tools.save_style.click(on_save, inputs=[tools.style_name, tools.style_prompt, tools.style_negative],
                           outputs=[tools.styles, tools.style_name, message], **quick)
    tools.delete_style.click(on_delete, inputs=[tools.style_name, tools.styles],
                             outputs=[tools.styles, tools.style_name, message], **quick)
    tools.close_editor.click(lambda: gr.Column(visible=False), outputs=[tools.editor], **quick)
    # styles saved in another tab (or by hand in styles.csv) show up when the list is opened
    tools.styles.focus(lambda: refreshed(), outputs=[tools.styles], **quick)


def styled_prompts(store: StyleStore, prompt: str, negative_prompt: str, chosen: list[str] | None) -> tuple[str, str]:
    """The prompts a generation runs with: the selected styles applied (raises RequestError for an unknown one)."""
    return store.apply(prompt or "", negative_prompt or "", list(chosen or []))

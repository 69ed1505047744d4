"""The extra-networks picker in txt2img/img2img: a card per LoRA (preview, name, base model, trigger words) and per
textual-inversion embedding; a click adds the LoRA's `<lora:name:1>` tag, or the embedding's name, to the prompt of the
tab it is in. Built by the LoRA builtin extension through the extension API.
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr
from PIL import Image, ImageDraw

from webui.services.embeddings import EmbeddingLibrary
from webui.services.lora import LoraInfo, LoraLibrary
from webui.services.model_manager import ModelManager
from webui.ui.prompt_tools import icon

# Adds the tag to the visible prompt box (the active tab's), unless it is there already, and tells Gradio the value
# changed. In JavaScript because the picker is an extension section and does not own the prompt component.
APPEND_TAG_JS = """
(tag) => {
  if (!tag) { return []; }
  const boxes = [...document.querySelectorAll('[id$="_prompt"]')].filter(
    (box) => !box.id.endsWith('_neg_prompt') && box.offsetParent !== null);
  const area = boxes.length ? boxes[0].querySelector('textarea') : null;
  if (area && !area.value.includes(tag)) {
    area.value = area.value.trim() ? `${area.value.trimEnd()} ${tag}` : tag;
    area.dispatchEvent(new Event('input', { bubbles: true }));
  }
  return [];
}
"""


def _placeholder(name: str) -> Image.Image:
    """A plain card for a LoRA without a preview image."""
    image = Image.new("RGB", (256, 256), (58, 62, 74))
    draw = ImageDraw.Draw(image)
    draw.text((16, 116), name[:28], fill=(230, 230, 235))
    return image


def _caption(info: LoraInfo) -> str:
    words = info.trigger_words(3)
    return info.name + (f" — {', '.join(words)}" if words else "")


def _cards(library: LoraLibrary) -> tuple[list[tuple[Any, str]], list[LoraInfo]]:
    infos = library.loras()
    return [(str(info.preview) if info.preview else _placeholder(info.name), _caption(info)) for info in infos], infos


def _details(library: LoraLibrary, info: LoraInfo) -> str:
    card = library.card(info)
    lines = [f"**{card['name']}** · base model `{card['base_model']}`"
             + (f" · rank {card['rank']}" if card["rank"] else "")]
    if card["alias"] and card["alias"] != info.path.stem:
        lines.append(f"Alias: `{card['alias']}`")
    if card["trigger_words"]:
        lines.append("Trigger words: " + ", ".join(f"`{w}`" for w in card["trigger_words"]))
    lines.append(f"Added to the prompt: `{card['tag']}` (edit the number to change its strength)")
    return "\n\n".join(lines)


def _embedding_cards(embeddings: EmbeddingLibrary,
                     models: ModelManager | None) -> tuple[list[tuple[Any, str]], list[str]]:
    """Cards for the embeddings that fit the active model, then the skipped and unreadable ones (labelled)."""
    listing = embeddings.listing(models.active if models else None)
    items: list[tuple[Any, str]] = []
    names: list[str] = []
    for name, embedding in sorted(listing.loaded.items()):
        preview = next((p for p in (embedding.path.with_suffix(".preview.png"), embedding.path.with_suffix(".png"))
                        if p.is_file()), None)
        items.append((str(preview) if preview else _placeholder(name), f"{name} ({embedding.vector_count} vectors)"))
        names.append(name)
    for name in listing.skipped:
        items.append((_placeholder(name), f"{name} (skipped: made for another model family)"))
        names.append("")
    for name, why in sorted(listing.broken.items()):
        items.append((_placeholder(name), f"{name} (unreadable: {why})"))
        names.append("")
    return items, names


def build_lora_picker(library: LoraLibrary, embeddings: EmbeddingLibrary | None = None,
                      models: ModelManager | None = None) -> Callable[[str], dict[str, Any]]:
    """`build(mode)` for the extension API. The picker adds no generation controls: tags and names live in the
    prompt."""

    def build(mode: str) -> dict[str, Any]:
        items, infos = _cards(library)
        shown = gr.State(infos)
        empty = f"No LoRAs yet: put `.safetensors` files in `{library.folder}`, then press Refresh."
        with gr.Accordion(f"LoRA ({len(infos)})", open=False, elem_id=f"{mode}_lora_picker") as accordion:
            message = gr.Markdown("" if infos else empty, elem_id=f"{mode}_lora_message")
            gallery = gr.Gallery(items, columns=6, height="auto", allow_preview=False, show_label=False,
                                 elem_id=f"{mode}_lora_cards")
            refresh = gr.Button("Refresh", icon=icon("refresh"), size="sm", elem_id=f"{mode}_lora_refresh")
        tag = gr.Textbox(visible=False, elem_id=f"{mode}_lora_tag")

        def on_select(current: list[LoraInfo], event: gr.SelectData) -> tuple[str, str]:
            index = event.index if isinstance(event.index, int) else event.index[0]
            if not 0 <= index < len(current):
                return "", "That LoRA is no longer listed; press Refresh."
            info = current[index]
            return library.card(info)["tag"], _details(library, info)

        gallery.select(on_select, inputs=[shown], outputs=[tag, message], queue=False).then(
            None, inputs=[tag], outputs=None, js=APPEND_TAG_JS)

        def on_refresh() -> tuple[Any, list[LoraInfo], str, Any]:
            library.refresh()
            new_items, new_infos = _cards(library)
            text = "" if new_infos else empty
            return gr.update(value=new_items), new_infos, text, gr.update(label=f"LoRA ({len(new_infos)})")

        refresh.click(on_refresh, outputs=[gallery, shown, message, accordion], queue=False)

        if embeddings is not None:
            ti_items, ti_names = _embedding_cards(embeddings, models)
            ti_shown = gr.State(ti_names)
            with gr.Accordion(f"Textual Inversion ({sum(1 for n in ti_names if n)})", open=False,
                              elem_id=f"{mode}_ti_picker") as ti_accordion:
                ti_message = gr.Markdown("" if ti_names else
                                         f"No embeddings yet: put `.pt`/`.safetensors` files in `{embeddings.folder}`.",
                                         elem_id=f"{mode}_ti_message")
                ti_gallery = gr.Gallery(ti_items, columns=6, height="auto", allow_preview=False, show_label=False,
                                        elem_id=f"{mode}_ti_cards")
                ti_refresh = gr.Button("Refresh", icon=icon("refresh"), size="sm", elem_id=f"{mode}_ti_refresh")

            def on_ti_select(current: list[str], event: gr.SelectData) -> tuple[str, str]:
                index = event.index if isinstance(event.index, int) else event.index[0]
                name = current[index] if 0 <= index < len(current) else ""
                if not name:
                    return "", "This embedding cannot be used with the current model (see its card)."
                return name, f"Added `{name}` to the prompt: the embedding is used wherever its name appears."

            ti_gallery.select(on_ti_select, inputs=[ti_shown], outputs=[tag, ti_message], queue=False).then(
                None, inputs=[tag], outputs=None, js=APPEND_TAG_JS)

            def on_ti_refresh() -> tuple[Any, list[str], Any]:
                new_items, new_names = _embedding_cards(embeddings, models)
                return (gr.update(value=new_items), new_names,
                        gr.update(label=f"Textual Inversion ({sum(1 for n in new_names if n)})"))

            ti_refresh.click(on_ti_refresh, outputs=[ti_gallery, ti_shown, ti_accordion], queue=False)
        return {}

    return build

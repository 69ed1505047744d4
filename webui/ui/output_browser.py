"""The "Image Browser" tab: the caller's own saved images, newest first, a page at a time, searchable by prompt; a
click shows the image's infotext, and the send row sends it (with its parameters) to any registered tab.

Listing is the service's (webui/services/output_browser.py): only files inside the caller's own outputs folder,
never through a link, so another user's images never appear. The page holds the listed paths in server-side state,
so a click is resolved against what was listed, not against a path the browser sends.
"""

from __future__ import annotations

import html
from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.services.output_browser import PAGE_SIZE, OutputBrowser
from webui.ui.bridge import UiBridge
from webui.ui.prompt_tools import icon
from webui.ui.session import owner_of

ALL_KINDS = "All"


def _caption(item: Any) -> str:
    return f"{item.kind} · {item.path.name}"


def build_output_browser_tab(context: AppContext, tab: gr.Tab, bridge: UiBridge | None) -> gr.Gallery:
    """The tab body; call inside its `gr.Tab`. Opening the tab lists the images afresh. Returns the gallery."""
    browser = OutputBrowser(context.outputs)
    with gr.Row(elem_id="image_browser_paging"):
        kind = gr.Dropdown([ALL_KINDS], value=ALL_KINDS, label="Folder", elem_id="image_browser_kind", scale=1,
                           min_width=120)
        query = gr.Textbox(label="Search prompts", placeholder="words from the prompt", elem_id="image_browser_search",
                           scale=3)
        refresh = gr.Button("Refresh", icon=icon("refresh"), elem_id="image_browser_refresh", scale=0, min_width=100)
        previous = gr.Button("Previous page", elem_id="image_browser_previous", scale=0, min_width=80)
        page_number = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="image_browser_page", scale=0,
                                min_width=80)
        following = gr.Button("Next page", elem_id="image_browser_next", scale=0, min_width=80)
    summary = gr.Markdown(elem_id="image_browser_summary")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Your images", columns=6, elem_id="image_browser_gallery", format="png",
                                 object_fit="contain", interactive=False, height="auto",
                                 buttons=["download", "fullscreen"])
        with gr.Column(scale=2):
            infotext = gr.Textbox(label="Generation parameters", lines=8, interactive=False,
                                  elem_id="image_browser_infotext")
            if bridge is not None:
                bridge.gallery_send_row(gallery, "image_browser", exclude=())
    listed = gr.State([])  # the listed files' infotexts, in gallery order

    def show(kind_name: str | None, text: str | None, number: float | None, request: gr.Request) -> list[Any]:
        owner = owner_of(request)
        chosen = "" if not kind_name or kind_name == ALL_KINDS else kind_name
        page = browser.page(owner, text or "", chosen, int(number or 1) - 1, PAGE_SIZE)
        items = [(str(item.path), _caption(item)) for item in page.items]
        if page.total:
            first = page.page * PAGE_SIZE + 1
            line = (f"Images {first}-{first + len(page.items) - 1} of {page.total}"
                    f"{' matching ' + repr(text.strip()) if text and text.strip() else ''}, newest first "
                    f"(page {page.page + 1} of {page.pages}).")
        elif text and text.strip():
            line = f"None of your images has {text.strip()!r} in its prompt."
        else:
            line = "No saved images yet: generate some, and they show up here."
        kinds = [ALL_KINDS, *browser.kinds(owner)]
        return [items, [item.infotext for item in page.items], html.escape(line), page.page + 1,
                gr.update(choices=kinds, value=kind_name if kind_name in kinds else ALL_KINDS), ""]

    def on_select(evt: gr.SelectData, infotexts: list[str]) -> str:
        index = evt.index if isinstance(evt.index, int) else -1
        if 0 <= index < len(infotexts or []):
            return infotexts[index] or "(this image holds no generation parameters)"
        return ""

    inputs = [kind, query, page_number]
    outputs = [gallery, listed, summary, page_number, kind, infotext]
    quick = dict(concurrency_limit=None, api_name=False, show_progress="hidden")
    refresh.click(show, inputs=inputs, outputs=outputs, **quick)
    query.submit(lambda: 1, outputs=[page_number], queue=False, api_name=False).then(
        show, inputs=inputs, outputs=outputs, **quick)
    kind.input(lambda: 1, outputs=[page_number], queue=False, api_name=False).then(
        show, inputs=inputs, outputs=outputs, **quick)
    previous.click(lambda n: max(1, int(n or 1) - 1), inputs=[page_number], outputs=[page_number], queue=False,
                   api_name=False).then(show, inputs=inputs, outputs=outputs, **quick)
    following.click(lambda n: int(n or 1) + 1, inputs=[page_number], outputs=[page_number], queue=False,
                    api_name=False).then(show, inputs=inputs, outputs=outputs, **quick)
    page_number.submit(show, inputs=inputs, outputs=outputs, **quick)
    gallery.select(on_select, inputs=[listed], outputs=[infotext], queue=False, api_name=False,
                   show_progress="hidden")
    tab.select(show, inputs=inputs, outputs=outputs, **quick)  # new images appear without a click on Refresh
    return gallery


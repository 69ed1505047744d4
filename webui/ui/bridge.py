"""Cross-tab wiring for core tabs and extensions alike: "send to <tab>" targets and the buttons that use them.

Every output (the txt2img, img2img and inpaint galleries, PNG Info's image, an extension's image) gets one "Send to
..." button per target, whichever tab registered the target and whenever. Tabs are built before all targets exist
(txt2img comes before img2img; an extension's target comes last), so a send row is an empty `gr.Row` placed where
the buttons belong; `finish()`, called once the whole UI is built, fills every row with every target's button.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr

# accept(image_path or None, parsed infotext dict) -> one update per output component
AcceptFn = Callable[[str | None, dict[str, Any]], list[Any]]
# from the source's value (and the selected index, for a gallery): an image path, or None when there is none
NOTHING_TO_SEND = "Nothing to send: generate an image (or upload one) first."


@dataclass
class SendTarget:
    name: str
    label: str
    tab_id: str
    outputs: list[gr.components.Component]
    accept: AcceptFn


@dataclass
class _SendRow:
    row: gr.Row
    prefix: str
    source: gr.components.Component
    parsed: gr.State | None  # PNG Info passes its parsed infotext; a gallery's comes from the image file
    selected: gr.State | None  # a gallery's selected index
    exclude: tuple[str, ...]


@dataclass
class UiBridge:
    """Holds the top-level Tabs, the registered send-to targets and the send rows waiting for `finish()`."""

    tabs: gr.Tabs
    targets: dict[str, SendTarget] = field(default_factory=dict)
    _rows: list[_SendRow] = field(default_factory=list)
    finished: bool = False
    current_tab_id: str = ""  # the tab an extension's `build(ui)` runs in, so it can register itself as a target

    def register_target(
        self, name: str, label: str, tab_id: str, outputs: list[gr.components.Component], accept: AcceptFn
    ) -> None:
        self.targets[name] = SendTarget(name, label, tab_id, outputs, accept)

    def send_buttons(self, image: gr.components.Component, parsed: gr.State, prefix: str) -> gr.Row:
        """A row of send buttons for an image component (PNG Info, extensions); filled by `finish()`."""
        row = gr.Row(elem_id=f"{prefix}_send_row", elem_classes=["ls-send-row"])
        self._rows.append(_SendRow(row, prefix, image, parsed, None, ()))
        return row

    def gallery_send_row(self, gallery: gr.Gallery, prefix: str, exclude: tuple[str, ...] = ("txt2img",)) -> gr.Row:
        """A row of send buttons for a gallery: the selected image (else the first) and its own infotext."""
        selected = gr.State(0)

        def remember(evt: gr.SelectData) -> int:
            return int(evt.index) if isinstance(evt.index, int) else 0

        gallery.select(remember, outputs=[selected], queue=False, api_name=False)
        gallery.change(lambda: 0, outputs=[selected], queue=False, api_name=False, show_progress="hidden")
        row = gr.Row(elem_id=f"{prefix}_send_row", elem_classes=["ls-send-row"])
        self._rows.append(_SendRow(row, prefix, gallery, None, selected, exclude))
        return row

    def finish(self, check_image: Callable[[str], str]) -> None:
        """Fill every send row; `check_image(path)` vets a file before it is sent (raises gr.Error if unfit)."""
        for send_row in self._rows:
            with send_row.row:
                for target in self.targets.values():
                    if target.name in send_row.exclude:
                        continue
                    self._wire(send_row, target, check_image)
        self._rows.clear()
        self.finished = True

    def _wire(self, send_row: _SendRow, target: SendTarget, check_image: Callable[[str], str]) -> None:
        from webui.services.infotext import parse_infotext
        from webui.services.outputs import read_infotext

        button = gr.Button(target.label, size="sm", elem_id=f"{send_row.prefix}_send_{target.name}",
                           elem_classes=["ls-send"], min_width=80)
        skip_all = [gr.skip() for _ in target.outputs] + [gr.skip()]

        def send(value: Any, extra: Any) -> list[Any]:
            path = _path_of(value, extra if send_row.selected is not None else None)
            if path is None:
                gr.Warning(NOTHING_TO_SEND)
                return skip_all
            path = check_image(path)
            parsed = extra if send_row.parsed is not None else parse_infotext(read_infotext(Path(path)) or "")
            return [*target.accept(path, parsed or {}), gr.Tabs(selected=target.tab_id)]

        extra_input = send_row.parsed if send_row.parsed is not None else send_row.selected
        # queued (without a limit) rather than queue=False: Gradio delivers gr.Warning only to queued events
        button.click(send, inputs=[send_row.source, extra_input], outputs=[*target.outputs, self.tabs],
                     concurrency_limit=None, api_name=False, show_progress="hidden")


def _path_of(value: Any, index: int | None) -> str | None:
    """The file behind an image value or a gallery item: Gradio hands over paths, (path, caption) pairs or dicts."""
    if index is not None:  # a gallery: a list of items
        items = value or []
        if not items:
            return None
        value = items[index if 0 <= index < len(items) else 0]
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("path") or (value.get("image") or {}).get("path")
    return str(value) if value else None

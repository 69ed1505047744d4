"""Cross-tab wiring for core tabs and extensions alike: "send to <tab>" targets and buttons."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

# accept(image_path or None, parsed infotext dict) -> one update per output component
AcceptFn = Callable[[str | None, dict[str, Any]], list[Any]]


@dataclass
class SendTarget:
    name: str
    label: str
    tab_id: str
    outputs: list[gr.components.Component]
    accept: AcceptFn


class UiBridge:
    """Holds the top-level Tabs and the registered send-to targets."""

    def __init__(self, tabs: gr.Tabs) -> None:
        self.tabs = tabs
        self.targets: dict[str, SendTarget] = {}

    def register_target(
        self, name: str, label: str, tab_id: str, outputs: list[gr.components.Component], accept: AcceptFn
    ) -> None:
        self.targets[name] = SendTarget(name, label, tab_id, outputs, accept)

    def send_buttons(self, image: gr.components.Component, parsed: gr.State, prefix: str) -> list[gr.Button]:
        """One button per target; each fills the target tab from (image, parsed) and switches to it."""
        buttons = []
        with gr.Row():
            for target in self.targets.values():
                button = gr.Button(target.label, size="sm", elem_id=f"{prefix}_send_{target.name}")

                def send(image_path: str | None, values: dict, target: SendTarget = target) -> list[Any]:
                    return [*target.accept(image_path, values or {}), gr.Tabs(selected=target.tab_id)]

                button.click(send, inputs=[image, parsed], outputs=[*target.outputs, self.tabs], queue=False)
                buttons.append(button)
        return buttons

"""The LoRA training tab, registered through the public extension API like any outside extension."""

from __future__ import annotations

from typing import Any

from webui.services.extensions import ExtensionAPI


def register(api: ExtensionAPI) -> None:
    def tab(ui: Any) -> None:
        from webui.ui.lora_training import build_lora_training_tab  # Gradio only when the UI is built, never in the CLI

        build_lora_training_tab(api.services["lora_training"], api.models)(ui)

    api.add_tab("LoRA training", tab)

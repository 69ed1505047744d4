"""The LoRA training tab, registered through the public extension API like any outside extension."""

from __future__ import annotations

from webui.services.extensions import ExtensionAPI
from webui.ui.lora_training import build_lora_training_tab


def register(api: ExtensionAPI) -> None:
    api.add_tab("LoRA training", build_lora_training_tab(api.services["lora_training"], api.models))

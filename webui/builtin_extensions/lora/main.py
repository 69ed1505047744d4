"""LoRAs, registered through the public extension API like any outside extension.

`<lora:...>` tags are handled as A1111's built-in Lora extension does: the app strips them from the prompt, this
extension turns them into weight patches for the job (the LoraLibrary service does the work) and adds `Lora hashes` to
the infotext. The picker section lists the LoRA folder as cards; clicking one adds its tag to the prompt.
"""

from __future__ import annotations

from typing import Any

from webui.services.extensions import ExtensionAPI
from webui.services.lora import LoraLibrary


def register(api: ExtensionAPI) -> None:
    library: LoraLibrary = api.services["lora"]
    api.add_extra_network("lora", library.activate)
    api.add_extra_network("lyco", library.activate)  # old LyCORIS extension's tag, an alias in A1111 too

    def section(mode: str) -> dict[str, Any]:
        from webui.ui.lora import build_lora_picker  # Gradio only when the UI is built, never in the CLI

        return build_lora_picker(library, api.services.get("embeddings"), api.models)(mode)

    api.add_section("LoRA", section)

"""Prompts from file or textbox, registered through the public extension API like any outside script."""

from __future__ import annotations

from webui.services.extensions import ExtensionAPI
from webui.services.prompts_from_file import PromptsFromFile


def register(api: ExtensionAPI) -> None:
    api.add_script(PromptsFromFile())

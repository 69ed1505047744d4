"""The Extras tab, registered through the public extension API like any outside extension.

The work is the app's `extras` service (ExtrasService) with its `upscalers` library; the HTTP side is A1111's
`/sdapi/v1/extra-single-image` and `extra-batch-images` (webui/api/extras_api.py).
"""

from __future__ import annotations

from typing import Any

from webui.services.extensions import ExtensionAPI


def register(api: ExtensionAPI) -> None:
    extras = api.services["extras"]

    def build(ui: Any) -> None:
        from webui.ui.extras import build_extras_tab  # Gradio only when the UI is built, never in the CLI

        build_extras_tab(extras.upscalers, extras, extras.queue, ui)

    api.add_tab("Extras", build)

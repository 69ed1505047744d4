"""ControlNet, registered through the public extension API like any outside extension.

The units' controls arrive as this extension's controls: the UI section's `unit<i>.<field>` values, or A1111's
`{"args": [unit, ...]}` from the API and the CLI. The ControlNetService (an app service) does the work.
"""

from __future__ import annotations

from typing import Any

from webui.services.controlnet import ControlNetService, units_from_controls
from webui.services.extensions import ExtensionAPI, GenerationRequest, LoadedModel

DEFAULT_UNITS = 3


def register(api: ExtensionAPI) -> None:
    service: ControlNetService = api.services["controlnet"]
    api.add_setting("units", DEFAULT_UNITS, "ControlNet units in txt2img/img2img (applies after a restart)",
                    kind="number", minimum=1, maximum=10, step=1)

    def tab(ui: Any) -> None:
        from webui.ui.controlnet import build_controlnet_tab  # Gradio only when the UI is built, never in the CLI

        build_controlnet_tab(service)(ui)

    def section(mode: str) -> dict[str, Any]:
        from webui.ui.controlnet import build_controlnet_section

        return build_controlnet_section(service, lambda: int(api.setting("units") or DEFAULT_UNITS))(mode)

    api.add_tab("ControlNet", tab)
    api.add_section("ControlNet", section)

    def denoise(request: GenerationRequest, model: LoadedModel, controls: dict[str, Any]):
        units = units_from_controls(controls, service.limits)  # the app's upload limits, not only the default
        if not units:
            return None
        job = service.prepare(
            units, model, request.width, request.height, seed=max(0, request.seed),
            init_image=getattr(request, "init_image", None), init_mask=getattr(request, "mask", None),
        )
        return job.extension if job else None

    def on_save(params: dict[str, Any], request: GenerationRequest, controls: dict[str, Any]) -> None:
        params.update(service.infotext(units_from_controls(controls, with_images=False)))  # no image decoding per PNG

    api.on_denoise(denoise)
    api.on_save(on_save)

"""ControlNet UI: the always-on units section in txt2img/img2img and the preprocessor workbench tab.

Both are built by the ControlNet builtin extension through the public extension API; they only call the
ControlNetService.
"""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr
from PIL import Image

from webui.services.controlnet import ControlMode, ControlNetService, ControlResizeMode
from webui.services.requests import RequestError
from webui.ui.prompt_tools import icon

UNIT_FIELDS = (
    "enabled", "image", "module", "model", "weight", "guidance_start", "guidance_end", "control_mode", "resize_mode",
    "processor_res", "threshold_a", "threshold_b", "pixel_perfect",
)


def _preview(service: ControlNetService, image: Image.Image | None, module: str, resolution: float,
             threshold_a: float | None, threshold_b: float | None) -> tuple[Image.Image | None, str]:
    """Run a preprocessor for a preview; the message says what went wrong and what to do."""
    if image is None:
        return None, "Upload an image first."
    try:
        return service.preprocess(module, image, int(resolution), threshold_a, threshold_b), ""
    except RequestError as exc:
        return None, str(exc)


def _model_choices(service: ControlNetService) -> list[str]:
    return ["None", *service.names()]


def build_controlnet_section(service: ControlNetService,
                             unit_count: Callable[[], int]) -> Callable[[str], dict[str, Any]]:
    """`build(mode)` for the extension API: one accordion per unit, controls named `unit<i>.<field>`."""

    def build(mode: str) -> dict[str, Any]:
        controls: dict[str, Any] = {}
        preprocessors = list(service.preprocessors.registry.names())
        for index in range(max(1, unit_count())):
            prefix = f"{mode}_controlnet_unit{index}"
            with gr.Accordion(f"ControlNet Unit {index}", open=index == 0, elem_id=prefix):
                with gr.Row():
                    enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_enabled")
                    pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False, elem_id=f"{prefix}_pixel_perfect")
                hint = "Control image (empty: the img2img input is used)" if mode == "img2img" else "Control image"
                with gr.Row():
                    image = gr.Image(label=hint, type="pil", sources=["upload", "clipboard"],
                                     elem_id=f"{prefix}_image")
                    detected = gr.Image(label="Preprocessor preview", type="pil", interactive=False,
                                        elem_id=f"{prefix}_preview")
                message = gr.Markdown(elem_id=f"{prefix}_message")
                with gr.Row():
                    module = gr.Dropdown(preprocessors, value="none", label="Preprocessor", elem_id=f"{prefix}_module")
                    model = gr.Dropdown(_model_choices(service), value="None", label="Model",
                                        elem_id=f"{prefix}_model")
                    refresh = gr.Button("", icon=icon("refresh"), elem_id=f"{prefix}_refresh", scale=0, min_width=40)
                    run = gr.Button("Preview", elem_id=f"{prefix}_run", scale=0)
                with gr.Row():
                    weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight",
                                       elem_id=f"{prefix}_weight")
                    start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step",
                                      elem_id=f"{prefix}_start")
                    end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step",
                                    elem_id=f"{prefix}_end")
                with gr.Row():
                    resolution = gr.Slider(-1, 2048, value=-1, step=1, label="Preprocessor Resolution (-1: default)",
                                           elem_id=f"{prefix}_processor_res")
                    threshold_a = gr.Number(value=-1, label="Threshold A (-1: default)",
                                            elem_id=f"{prefix}_threshold_a")
                    threshold_b = gr.Number(value=-1, label="Threshold B (-1: default)",
                                            elem_id=f"{prefix}_threshold_b")
                control_mode = gr.Radio([m.value for m in ControlMode], value=ControlMode.BALANCED.value,
                                        label="Control Mode", elem_id=f"{prefix}_control_mode")
                resize_mode = gr.Radio([m.value for m in ControlResizeMode],
                                       value=ControlResizeMode.CROP_AND_RESIZE.value, label="Resize Mode",
                                       elem_id=f"{prefix}_resize_mode")
            refresh.click(lambda: gr.update(choices=_model_choices(service)), outputs=[model], queue=False)
            run.click(lambda *a: _preview(service, *a), inputs=[image, module, resolution, threshold_a, threshold_b],
                      outputs=[detected, message], api_name=False)
            components = (enabled, image, module, model, weight, start, end, control_mode, resize_mode, resolution,
                          threshold_a, threshold_b, pixel_perfect)
            for name, component in zip(UNIT_FIELDS, components):
                controls[f"unit{index}.{name}"] = component
        return controls

    return build


def build_controlnet_tab(service: ControlNetService) -> Callable[[Any], None]:
    """The preprocessor workbench: upload, choose a preprocessor, run, see and download the map."""

    def build(ui: Any = None) -> None:
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="pil", sources=["upload", "clipboard"],
                                 elem_id="controlnet_workbench_image")
                module = gr.Dropdown(list(service.preprocessors.registry.names()), value="canny",
                                     label="Preprocessor", elem_id="controlnet_workbench_module")
                resolution = gr.Slider(64, 2048, value=512, step=8, label="Preprocessor Resolution",
                                       elem_id="controlnet_workbench_resolution")
                with gr.Row():
                    threshold_a = gr.Number(value=-1, label="Threshold A (-1: default)",
                                            elem_id="controlnet_workbench_threshold_a")
                    threshold_b = gr.Number(value=-1, label="Threshold B (-1: default)",
                                            elem_id="controlnet_workbench_threshold_b")
                run = gr.Button("Run preprocessor", variant="primary", elem_id="controlnet_workbench_run")
            with gr.Column():
                detected = gr.Image(label="Detected map", type="pil", format="png", interactive=False,
                                    elem_id="controlnet_workbench_map")
                message = gr.Markdown(elem_id="controlnet_workbench_message")
                weights = gr.Markdown(_weights_note(service), elem_id="controlnet_workbench_weights")
        run.click(lambda *a: _preview(service, *a), inputs=[image, module, resolution, threshold_a, threshold_b],
                  outputs=[detected, message], api_name="controlnet_preprocess")
        del weights

    return build


def _weights_note(service: ControlNetService) -> str:
    registry = service.preprocessors.registry
    available = set(registry.available(service.preprocessor_dir))
    waiting = [name for name in registry.names() if name not in available]
    if not waiting:
        return "All preprocessors are ready."
    return (f"Need weight files in `{service.preprocessor_dir}` before they run: {', '.join(waiting)}. "
            "Running one tells you the exact file name.")

"""The txt2img tab: controls, a live progress bar with previews, interrupt and skip, and the result gallery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from webui.context import AppContext
from webui.services.requests import GenerationRequest, RequestError, parse_request
from webui.ui.bridge import UiBridge
from webui.ui.extension_sections import render_sections, with_extension_controls
from webui.ui.job_stream import error_message, job_buttons, run_job_streaming, wire_interrupt_and_select
from webui.ui.session import owner_of

@dataclass
class Txt2ImgControls:
    """Components other tabs fill in (PNG Info's "send to txt2img")."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    batch_count: gr.Slider
    batch_size: gr.Slider
    gallery: gr.Gallery | None = None  # for "send to img2img/inpaint"
    send_img2img: gr.Button | None = None
    send_inpaint: gr.Button | None = None


def build_txt2img_tab(context: AppContext, checkpoint: gr.Dropdown) -> Txt2ImgControls:
    width0, height0 = context.models.default_size()
    samplers = context.samplers
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt", placeholder="a red circle on a blue background")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
        with gr.Column(scale=1, min_width=160):
            buttons = job_buttons("txt2img")
    with gr.Row():
        with gr.Column():
            with gr.Row():
                sampler = gr.Dropdown(samplers.names(), value="DPM++ 2M", label="Sampling method", elem_id="txt2img_sampler")
                schedule = gr.Dropdown(samplers.schedule_names(), value="Automatic", label="Schedule type", elem_id="txt2img_schedule")
            steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
            with gr.Row():
                width = gr.Slider(64, 2048, value=width0, step=8, label="Width", elem_id="txt2img_width")
                height = gr.Slider(64, 2048, value=height0, step=8, label="Height", elem_id="txt2img_height")
            with gr.Row():
                batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
            cfg_scale = gr.Slider(1, 30, value=7, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
            seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", elem_id="txt2img_seed")
            extension_controls = render_sections(context, "txt2img")
        with gr.Column():
            preview = gr.Image(label="Preview", visible=False, interactive=False, elem_id="txt2img_preview")
            gallery = gr.Gallery(label="Output", columns=4, elem_id="txt2img_gallery", format="png")
            with gr.Row():
                send_img2img = gr.Button("Send to img2img", size="sm", elem_id="txt2img_send_img2img")
                send_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="txt2img_send_inpaint")
            infotext = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="txt2img_infotext")
            status = gr.Markdown(elem_id="txt2img_status")

    def on_generate(
        checkpoint: str, prompt: str, negative_prompt: str, sampler_name: str, scheduler: str, steps: float,
        cfg_scale: float, width: float, height: float, seed: float | None, n_iter: float, batch_size: float,
        extensions: dict, request: gr.Request, progress: gr.Progress,
    ) -> Iterator[Any]:
        try:
            gen_request = parse_request(GenerationRequest, dict(
                prompt=prompt or "", negative_prompt=negative_prompt or "", sampler_name=sampler_name,
                scheduler=scheduler, steps=steps, cfg_scale=cfg_scale, width=width, height=height,
                seed=-1 if seed is None else seed, batch_size=batch_size, n_iter=n_iter, model=checkpoint or None,
                extensions=extensions,
            ))
        except RequestError as exc:  # the schema names the field; Gradio shows the one line
            raise error_message(exc) from None
        yield from run_job_streaming(context, gen_request, owner_of(request), progress)

    buttons.generate.click(
        with_extension_controls(on_generate, extension_controls),
        inputs=[checkpoint, prompt, negative, sampler, schedule, steps, cfg_scale, width, height, seed, batch_count,
                batch_size, *(component for _, _, component in extension_controls)],
        outputs=[gallery, preview, infotext, status],
        concurrency_limit=None,  # the job queue orders the device work; this handler submits and watches
        api_name="txt2img",
    )

    wire_interrupt_and_select(context, buttons, gallery, infotext, public_api=True)
    return Txt2ImgControls(prompt, negative, sampler, schedule, steps, cfg_scale, width, height, seed, batch_count, batch_size,
                           gallery, send_img2img, send_inpaint)


_PASTE_FIELDS = (
    ("Prompt", "prompt"), ("Negative prompt", "negative_prompt"), ("Sampler", "sampler"), ("Schedule type", "schedule"),
    ("Steps", "steps"), ("CFG scale", "cfg_scale"), ("Size-1", "width"), ("Size-2", "height"), ("Seed", "seed"),
)


def register_txt2img_target(bridge: UiBridge, controls: Txt2ImgControls) -> None:
    """"Send to txt2img" fills the fields an image's infotext has and leaves the others alone."""

    def accept(image_path: str | None, parsed: dict[str, Any]) -> list[Any]:
        return [gr.update(value=parsed[key]) if key in parsed else gr.update() for key, _ in _PASTE_FIELDS]

    outputs = [getattr(controls, attribute) for _, attribute in _PASTE_FIELDS]
    bridge.register_target("txt2img", "Send to txt2img", "txt2img", outputs, accept)

"""The txt2img tab: controls, a live progress bar with previews, interrupt, and the result gallery."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from webui.context import AppContext
from webui.services.generation import GenerationResult
from webui.services.outputs import read_infotext
from webui.services.requests import GenerationRequest
from webui.ui.bridge import UiBridge
from webui.ui.extension_sections import collect_values, declare_inputs, render_sections
from webui.ui.session import owner_of

POLL_SECONDS = 0.2


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


def _run_in_thread(context: AppContext, request: GenerationRequest, owner: str, progress: gr.Progress) -> Iterator[Any]:
    """Run the job on a worker thread and yield previews until it ends; the Gradio queue serialises callers."""
    job = context.jobs.create(owner=owner, kind="txt2img")
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["result"] = context.generation.run(job, request)
        except Exception as exc:  # shown to the user below; the app stays up
            outcome["error"] = exc

    worker = threading.Thread(target=work, name=f"{job.id}-worker", daemon=True)
    worker.start()
    last_preview = None
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        if job.total_steps:
            batch = f"batch {job.batches_done + 1}/{job.batches_total}, " if job.batches_total > 1 else ""
            progress(job.progress_fraction(), desc=f"{batch}step {job.step}/{job.total_steps}")
        if job.preview is not None and job.preview is not last_preview:
            last_preview = job.preview
            yield gr.update(), gr.update(value=job.preview, visible=True), gr.update(), gr.update()
    if "error" in outcome:
        raise gr.Error(str(outcome["error"]).splitlines()[0] or type(outcome["error"]).__name__)
    result: GenerationResult = outcome["result"]
    gallery = [(path, f"seed {seed}") for path, seed in zip(result.paths, result.seeds)]
    if len(result.paths) < len(result.images):  # saving failed: still show the images
        gallery = [(image, f"seed {seed}") for image, seed in zip(result.images, result.seeds)]
    status = f"{len(result.images)} image(s)"
    if result.interrupted:
        status += " — interrupted; finished images were kept"
    for warning in result.warnings:
        gr.Warning(warning)
    infotext = result.infotexts[0] if result.infotexts else ""
    yield gallery, gr.update(visible=False), infotext, status


def build_txt2img_tab(context: AppContext, checkpoint: gr.Dropdown) -> Txt2ImgControls:
    width0, height0 = context.models.default_size()
    samplers = context.samplers
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt", placeholder="a red circle on a blue background")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
        with gr.Column(scale=1, min_width=160):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt")
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

    def on_generate(*args: Any) -> Iterator[Any]:
        """Positional inputs: the 12 core controls, the extension controls, then the request and progress."""
        (checkpoint_title, prompt_text, negative_text, sampler_name, schedule_name, step_count, cfg, w, h,
         seed_value, count, size) = args[:12]
        extension_values = args[12:12 + len(extension_controls)]
        request, progress = args[12 + len(extension_controls):]
        gen_request = GenerationRequest(
            prompt=prompt_text or "",
            negative_prompt=negative_text or "",
            sampler_name=sampler_name,
            scheduler=schedule_name,
            steps=step_count,
            cfg_scale=cfg,
            width=w,
            height=h,
            seed=-1 if seed_value is None else seed_value,
            batch_size=size,
            n_iter=count,
            model=checkpoint_title or None,
            extensions=collect_values(extension_controls, extension_values),
        )
        yield from _run_in_thread(context, gen_request, owner_of(request), progress)

    declare_inputs(
        on_generate,
        ["checkpoint", "prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale", "width",
         "height", "seed", "n_iter", "batch_size", *(f"{ext}_{name}" for ext, name, _ in extension_controls)],
    )

    generate.click(
        on_generate,
        inputs=[checkpoint, prompt, negative, sampler, schedule, steps, cfg_scale, width, height, seed, batch_count,
                batch_size, *(component for _, _, component in extension_controls)],
        outputs=[gallery, preview, infotext, status],
        concurrency_id="gpu",
        concurrency_limit=1,
        api_name="txt2img",
    )

    def on_interrupt(request: gr.Request) -> str:
        flagged = context.jobs.interrupt_owned(owner_of(request))
        return "Interrupting…" if flagged else "Nothing to interrupt"

    interrupt.click(on_interrupt, outputs=[status], queue=False, api_name="interrupt")

    def on_select(evt: gr.SelectData, current: str) -> str:
        value = evt.value or {}
        image = value.get("image", {}) if isinstance(value, dict) else {}
        path = image.get("path") if isinstance(image, dict) else None
        return (read_infotext(Path(path)) or current) if path else current

    gallery.select(on_select, inputs=[infotext], outputs=[infotext], queue=False)
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

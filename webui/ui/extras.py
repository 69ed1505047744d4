"""The Extras tab: upscale one image or a batch with one or two upscalers (A1111's layout and defaults).

Single image or Batch (several uploads); Scale by (factor) or Scale to (width, height, crop to fit); Upscaler 1,
Upscaler 2 and its visibility. The work is a queued job (ExtrasService): the status line shows the queue place, then
image and tile progress; Interrupt stops between tiles and keeps the finished images. Results go to the gallery with
"send to" buttons and are saved under outputs/extras-images with their infotext.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from webui.services.extras import MAX_SCALE, MAX_SIDE, ExtrasInput, ExtrasRequest, ExtrasResult, ExtrasService
from webui.services.outputs import read_infotext
from webui.services.queue import JobQueue, QueueFullError
from webui.services.upscalers import NONE, UpscalerLibrary
from webui.services.uploads import UploadError, UploadLimits, load_image
from webui.ui.bridge import UiBridge
from webui.ui.job_stream import ErrorNotes, idle_html, progress_html, queue_text, result_column
from webui.ui.prompt_tools import icon
from webui.ui.session import owner_of

SINGLE, BATCH = "single", "batch"


@dataclass
class ExtrasControls:
    image: gr.Image
    batch: gr.File
    source: gr.State  # SINGLE or BATCH: which input tab is open
    input_tabs: gr.Tabs
    gallery: gr.Gallery


def _inputs(source: str, image: str | None, files: list[Any] | None, limits: UploadLimits) -> list[ExtrasInput]:
    """The chosen tab's uploads, each through the same upload checks as every other image field."""
    if source == BATCH:
        paths = [getattr(item, "name", item) for item in (files or [])]
        if not paths:
            raise UploadError("batch", "upload one or more images in Batch Process")
    else:
        if not image:
            raise UploadError("image", "upload an image first")
        paths = [image]
    inputs = []
    for index, path in enumerate(paths):
        field = "image" if source == SINGLE else f"batch image {index + 1} ({Path(str(path)).name})"
        inputs.append(ExtrasInput(name=Path(str(path)).name, image=load_image(str(path), field, limits),
                                  infotext=read_infotext(Path(str(path)))))
    return inputs


def _status(job: Any) -> tuple[float, str]:
    elapsed = f"{time.time() - job.started:.0f} s elapsed" if job.started else ""
    image = f"image {min(job.batches_done + 1, job.batches_total)}/{job.batches_total}" if job.batches_total else ""
    tiles = f"tile {job.step}/{job.total_steps}" if job.total_steps > 1 else ""
    return job.progress_fraction(), ", ".join(filter(None, ["upscaling", image, tiles, elapsed]))


def run_extras(extras: ExtrasService, queue: JobQueue, inputs: list[ExtrasInput], request: ExtrasRequest,
               owner: str, notes: ErrorNotes, page: gr.Request | None) -> Iterator[Any]:
    """Queue the job, then yield (gallery, infotext, status) updates until it ends."""
    try:
        job = extras.submit(owner, inputs, request)
    except (QueueFullError, ValueError) as exc:
        raise notes.refuse(page, exc) from None
    seen, shown = -1, ""
    while not job.finished:
        seen = job.wait_change(seen, 0.5)
        status = (progress_html("queued", 0.0, queue_text(queue, job)) if job.status == "queued"
                  else progress_html("running", *_status(job)))
        if status != shown:
            shown = status
            yield gr.skip(), gr.skip(), status
    if job.status == "cancelled":
        yield gr.skip(), gr.skip(), idle_html("Cancelled before it started")
        return
    if job.status == "failed":
        yield gr.skip(), gr.skip(), idle_html("Stopped: see the message by Generate")
        raise notes.refuse(page, job.exception or RuntimeError(job.error or "the job failed"))
    result: ExtrasResult = job.result or ExtrasResult(interrupted=True)
    shown_items = result.paths if len(result.paths) == len(result.images) else result.images
    gallery = [(item, f"{name} ({image.width}x{image.height})")
               for item, name, image in zip(shown_items, result.names, result.images)]
    took = f" in {job.ended - job.started:.1f} s" if job.ended and job.started else ""
    status = f"{len(result.images)} image(s) upscaled{took}"
    if result.interrupted:
        status += " (interrupted; finished images were kept)"
    for warning in result.warnings:
        gr.Warning(html.escape(warning))
    yield gallery, (result.infotexts[-1] if result.infotexts else ""), idle_html(status)


def build_extras_tab(upscalers: UpscalerLibrary, extras: ExtrasService, queue: JobQueue,
                     bridge: UiBridge | None = None) -> ExtrasControls:
    limits = UploadLimits.from_env()
    names = upscalers.names()
    with gr.Row(elem_classes=["ls-work-row"]):
        with gr.Column(elem_id="extras_settings_col", elem_classes=["ls-settings-col"]):
            source = gr.State(SINGLE)
            with gr.Tabs(elem_id="extras_input_tabs") as input_tabs:
                with gr.Tab("Single Image", id="extras_single", elem_id="extras_single_tab") as single_tab:
                    image = gr.Image(label="Source", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                                     height=320, elem_id="extras_image")
                with gr.Tab("Batch Process", id="extras_batch", elem_id="extras_batch_tab") as batch_tab:
                    batch = gr.File(label="Batch Process", file_count="multiple", file_types=["image"],
                                    elem_id="extras_image_batch")
            with gr.Row():
                generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
                interrupt = gr.Button("Interrupt", elem_id="extras_interrupt", min_width=60)
            message = gr.Markdown(elem_id="extras_job_message")
            resize_mode = gr.State(0)
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", id="extras_scale_by", elem_id="extras_scale_by_tab") as scale_by_tab:
                    resize = gr.Slider(1.0, MAX_SCALE, value=4, step=0.05, label="Resize",
                                       elem_id="extras_upscaling_resize")
                with gr.Tab("Scale to", id="extras_scale_to", elem_id="extras_scale_to_tab") as scale_to_tab:
                    with gr.Row():
                        width = gr.Slider(64, MAX_SIDE, value=512, step=8, label="Width",
                                          elem_id="extras_upscaling_resize_w")
                        height = gr.Slider(64, MAX_SIDE, value=512, step=8, label="Height",
                                           elem_id="extras_upscaling_resize_h")
                    crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            with gr.Row():
                upscaler_1 = gr.Dropdown(names, value=NONE, label="Upscaler 1", elem_id="extras_upscaler_1")
                refresh = gr.Button("Refresh", icon=icon("refresh"), elem_id="extras_refresh_upscalers", scale=0,
                                    min_width=100)
            with gr.Row():
                upscaler_2 = gr.Dropdown(names, value=NONE, label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility",
                                       elem_id="extras_upscaler_2_visibility")
        results = result_column("extras", bridge)

    single_tab.select(lambda: SINGLE, outputs=[source], queue=False, api_name=False)
    batch_tab.select(lambda: BATCH, outputs=[source], queue=False, api_name=False)
    scale_by_tab.select(lambda: 0, outputs=[resize_mode], queue=False, api_name=False)
    scale_to_tab.select(lambda: 1, outputs=[resize_mode], queue=False, api_name=False)
    notes = ErrorNotes()

    def on_generate(which: str, path: str | None, files: list[Any] | None, mode: int, factor: float, w: float,
                    h: float, crop_to_fit: bool, first: str, second: str, second_visibility: float,
                    page: gr.Request) -> Iterator[Any]:
        try:
            inputs = _inputs(which, path, files, limits)
            request = ExtrasRequest(resize_mode=int(mode), upscaling_resize=float(factor),
                                    upscaling_resize_w=int(w), upscaling_resize_h=int(h),
                                    upscaling_crop=bool(crop_to_fit), upscaler_1=first or NONE,
                                    upscaler_2=second or NONE, upscaler_2_visibility=float(second_visibility))
        except ValueError as exc:
            raise notes.refuse(page, exc) from None
        yield from run_extras(extras, queue, inputs, request, owner_of(page), notes, page)

    event = generate.click(
        on_generate,
        inputs=[source, image, batch, resize_mode, resize, width, height, crop, upscaler_1, upscaler_2, visibility],
        outputs=[results.gallery, results.infotext, results.status],
        concurrency_id="extras", concurrency_limit=None, api_name="extras", show_progress="hidden")
    event.failure(notes.take, outputs=[message], concurrency_limit=None, api_name=False, show_progress="hidden")
    event.success(lambda: "", outputs=[message], queue=False, api_name=False, show_progress="hidden")

    def on_interrupt(page: gr.Request) -> str:
        return "Interrupting…" if queue.cancel_all_of(owner_of(page)) else "Nothing to interrupt"

    interrupt.click(on_interrupt, outputs=[message], queue=False, api_name=False, show_progress="hidden")

    def on_select(evt: gr.SelectData, current: str) -> str:
        value = evt.value or {}
        item = value.get("image", {}) if isinstance(value, dict) else {}
        path = item.get("path") if isinstance(item, dict) else None
        return (read_infotext(Path(path)) or current) if path else current

    results.gallery.select(on_select, inputs=[results.infotext], outputs=[results.infotext], queue=False,
                           api_name=False, show_progress="hidden")

    def on_refresh(first: str, second: str) -> tuple[dict, dict, str]:
        """Rescan the upscaler folders (anyone may, as LoRA's Refresh: it only reads the folders)."""
        upscalers.refresh()
        choices = upscalers.names()
        keep = [value if value in choices else NONE for value in (first, second)]
        found = len(choices) - 3
        return (gr.update(choices=choices, value=keep[0]), gr.update(choices=choices, value=keep[1]),
                f"Found {found} model upscaler{'s' if found != 1 else ''} in "
                f"{', '.join('models/' + folder.name for folder in upscalers.folders)}")

    refresh.click(on_refresh, inputs=[upscaler_1, upscaler_2], outputs=[upscaler_1, upscaler_2, message],
                  queue=False, api_name=False)

    if bridge is not None:
        tab_id = bridge.current_tab_id

        def accept(path: str | None, parsed: dict[str, Any]) -> list[Any]:
            return [path, gr.Tabs(selected="extras_single"), SINGLE]

        if tab_id:
            bridge.register_target("extras", "Send to extras", tab_id, [image, input_tabs, source], accept)
    return ExtrasControls(image, batch, source, input_tabs, results.gallery)

"""What every generating tab shares: run a job on a worker thread with a live progress bar and previews, interrupt
the caller's own jobs or skip the batch being sampled, and show the infotext of a selected gallery image."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from webui.context import AppContext
from webui.services.generation import GenerationResult, ModeRunner
from webui.services.outputs import read_infotext
from webui.services.queue import QueueFullError
from webui.services.requests import GenerationRequest

WAIT_SECONDS = 0.5  # longest wait for a job change before the loop looks again


def error_message(exc: BaseException) -> gr.Error:
    return gr.Error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def run_job_streaming(
    context: AppContext, request: GenerationRequest, owner: str, progress: gr.Progress, runner: ModeRunner | None = None
) -> Iterator[Any]:
    """Submit to the job queue, then yield (gallery, preview, infotext, status) updates: the place in the queue while
    waiting, the progress bar and previews while running, then the results."""
    try:
        job = context.generation.submit(owner, request, runner)
    except QueueFullError as exc:
        raise error_message(exc) from exc
    seen_version, shown_preview = -1, 0
    while not job.finished:
        seen_version = job.wait_change(seen_version, WAIT_SECONDS)
        if job.status == "queued":
            ahead = context.queue.position(job)
            progress(0.0, desc=f"queued: {ahead} job(s) ahead" if ahead else "queued: next")
            continue
        if job.total_steps:
            batch = f"batch {job.batches_done + 1}/{job.batches_total}, " if job.batches_total > 1 else ""
            eta = job.seconds_left()
            progress(job.progress_fraction(),
                     desc=f"{batch}step {job.step}/{job.total_steps}" + (f", ETA {eta:.0f} s" if eta else ""))
        if job.preview_version != shown_preview:
            shown_preview = job.preview_version
            preview = job.preview_image()
            if preview is not None:
                yield gr.update(), gr.update(value=preview, visible=True), gr.update(), gr.update()
    if job.status == "cancelled":
        yield gr.update(), gr.update(visible=False), gr.update(), "Cancelled before it started"
        return
    if job.status == "failed":
        raise error_message(job.exception or RuntimeError(job.error or "the job failed"))
    result: GenerationResult = job.result
    gallery = [(path, f"seed {seed}") for path, seed in zip(result.paths, result.seeds)]
    if len(result.paths) < len(result.images):  # saving failed: still show the images
        gallery = [(image, f"seed {seed}") for image, seed in zip(result.images, result.seeds)]
    status = f"{len(result.images)} image(s)"
    if result.interrupted:
        status += " — interrupted; finished images were kept"
    for warning in result.warnings:
        gr.Warning(warning)
    yield gallery, gr.update(visible=False), (result.infotexts[0] if result.infotexts else ""), status


def wire_interrupt_and_select(
    context: AppContext, interrupt: gr.Button, skip: gr.Button, status: gr.Markdown, gallery: gr.Gallery,
    infotext: gr.Textbox, public_api: bool = False,
) -> None:
    """Interrupt and Skip act only on the caller's own jobs (another user's never stop); selecting a gallery image
    shows its own infotext. Every generating tab has both buttons; they do the same in each, so only one tab
    (`public_api`) offers them to API clients, as `/interrupt` and `/skip`."""
    from webui.ui.session import owner_of

    def on_interrupt(request: gr.Request) -> str:
        return "Interrupting…" if context.queue.cancel_all_of(owner_of(request)) else "Nothing to interrupt"

    def on_skip(request: gr.Request) -> str:
        if context.queue.skip_running_of(owner_of(request)):
            return "Skipping the current batch…"
        return "Nothing of yours is running"

    interrupt.click(on_interrupt, outputs=[status], queue=False, api_name="interrupt" if public_api else False)
    skip.click(on_skip, outputs=[status], queue=False, api_name="skip" if public_api else False)

    def on_select(evt: gr.SelectData, current: str) -> str:
        value = evt.value or {}
        item = value.get("image", {}) if isinstance(value, dict) else {}
        path = item.get("path") if isinstance(item, dict) else None
        return (read_infotext(Path(path)) or current) if path else current

    gallery.select(on_select, inputs=[infotext], outputs=[infotext], queue=False, api_name=False)

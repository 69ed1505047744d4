"""What every generating tab shares: run a job on a worker thread with a live progress bar and previews, interrupt
the caller's own jobs or skip the batch being sampled, and show the infotext of a selected gallery image."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from webui.context import AppContext
from webui.services.generation import GenerationResult, ModeRunner
from webui.services.outputs import read_infotext
from webui.services.jobs import Job
from webui.services.queue import JobQueue, QueueFullError
from webui.services.requests import GenerationRequest

WAIT_SECONDS = 0.5  # longest wait for a job change before the loop looks again


def error_message(exc: BaseException) -> gr.Error:
    return gr.Error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def queue_text(queue: JobQueue, job: Job) -> str:
    """The place in line, counting the job on the device: `position` counts only waiting jobs, so behind another
    user's running job it would say "next" for as long as that job runs."""
    ahead = queue.position(job) or 0
    running = queue.running
    if running is not None and running is not job:
        ahead += 1
    return f"queued: {ahead} job(s) ahead" if ahead else "queued: next"


@dataclass
class SamplingPace:
    """ETA from the pace since the first step was seen. The job's clock starts before the model loads and the first
    step warms up, so an ETA from it overshoots many times over at first (128 s shown for a 6 s job)."""

    since: float | None = None
    fraction_then: float = 0.0

    def eta(self, fraction: float, now: float) -> float | None:
        """Seconds left, or None until some progress has been timed."""
        if self.since is None:
            self.since, self.fraction_then = now, fraction
            return None
        done = fraction - self.fraction_then
        if done <= 0:
            return None
        return (now - self.since) * (1.0 - fraction) / done


def run_job_streaming(
    context: AppContext, request: GenerationRequest, owner: str, progress: gr.Progress, runner: ModeRunner | None = None
) -> Iterator[Any]:
    """Submit to the job queue, then yield (gallery, preview, infotext, status) updates: the place in the queue while
    waiting, the progress bar and previews while running, then the results. Only this job is watched, so a user
    never sees another's progress or previews."""
    try:
        job = context.generation.submit(owner, request, runner)
    except QueueFullError as exc:
        raise error_message(exc) from exc
    seen_version, shown_preview = -1, 0
    pace = SamplingPace()
    while not job.finished:
        seen_version = job.wait_change(seen_version, WAIT_SECONDS)
        if job.status == "queued":
            progress(0.0, desc=queue_text(context.queue, job))
            continue
        if not job.total_steps:  # running, before the first step: loading the model, encoding the prompt
            progress(0.0, desc="starting…")
        else:
            fraction = job.progress_fraction()
            batch = f"batch {job.batches_done + 1}/{job.batches_total}, " if job.batches_total > 1 else ""
            eta = pace.eta(fraction, time.monotonic())
            progress(fraction, desc=f"{batch}step {job.step}/{job.total_steps}" + (f", ETA {eta:.0f} s" if eta else ""))
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


@dataclass
class JobButtons:
    """A generating tab's Generate, Interrupt and Skip buttons, and the line where Interrupt and Skip answer."""

    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    message: gr.Markdown


def job_buttons(prefix: str) -> JobButtons:
    """Build Generate, Interrupt and Skip (side by side, as in A1111) and their answer line; element ids start with
    the tab's prefix. Call inside the tab's button column."""
    generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
    with gr.Row():
        interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt", min_width=60)
        skip = gr.Button("Skip", elem_id=f"{prefix}_skip", min_width=60)
    message = gr.Markdown(elem_id=f"{prefix}_job_message")
    return JobButtons(generate, interrupt, skip, message)


def wire_interrupt_and_select(
    context: AppContext, buttons: JobButtons, gallery: gr.Gallery, infotext: gr.Textbox, public_api: bool = False,
) -> None:
    """Interrupt and Skip act only on the caller's own jobs (another user's never stop); selecting a gallery image
    shows its own infotext. Every generating tab has both buttons; they do the same in each, so only one tab
    (`public_api`) offers them to API clients, as `/interrupt` and `/skip`.

    They answer in their own line, not in the job's status: an interrupted job ends within a step, so its final
    status ("2 image(s) — interrupted; ...") and the button's answer arrive together, and whichever came last stayed
    (the status could read "Interrupting…" forever)."""
    from webui.ui.session import owner_of

    def on_interrupt(request: gr.Request) -> str:
        return "Interrupting…" if context.queue.cancel_all_of(owner_of(request)) else "Nothing to interrupt"

    def on_skip(request: gr.Request) -> str:
        if context.queue.skip_running_of(owner_of(request)):
            return "Skipping the current batch…"
        return "Nothing of yours is running"

    buttons.interrupt.click(on_interrupt, outputs=[buttons.message], queue=False,
                            api_name="interrupt" if public_api else False)
    buttons.skip.click(on_skip, outputs=[buttons.message], queue=False, api_name="skip" if public_api else False)
    # a new job starts with no answer left over from the last one's buttons
    buttons.generate.click(lambda: "", outputs=[buttons.message], queue=False, api_name=False, show_progress="hidden")

    def on_select(evt: gr.SelectData, current: str) -> str:
        value = evt.value or {}
        item = value.get("image", {}) if isinstance(value, dict) else {}
        path = item.get("path") if isinstance(item, dict) else None
        return (read_infotext(Path(path)) or current) if path else current

    gallery.select(on_select, inputs=[infotext], outputs=[infotext], queue=False, api_name=False)

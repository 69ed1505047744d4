"""What every generating tab shares: run a job on a worker thread with a live progress bar and previews, interrupt
the caller's own jobs or skip the batch being sampled, and show the infotext of a selected gallery image."""

from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr

from webui.context import AppContext
from webui.services.generation import GenerationResult, ModeRunner
from webui.services.outputs import read_infotext
from webui.services.jobs import Job
from webui.services.queue import JobQueue, QueueFullError
from webui.services.requests import GenerationRequest
from webui.ui.bridge import UiBridge

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


def progress_html(state: str, fraction: float, text: str) -> str:
    """The one progress bar of a generating tab: drawn in its status line, never over the preview or the gallery
    (Gradio's own overlay covered the live preview and repeated the bar on every output)."""
    percent = max(0.0, min(1.0, fraction)) * 100
    return (f"<div class='ls-progress' data-state='{html.escape(state)}' data-percent='{percent:.0f}'>"
            f"<div class='ls-progress-track'><div class='ls-progress-fill' style='width:{percent:.1f}%'></div></div>"
            f"<span class='ls-progress-text'>{html.escape(text)}</span></div>")


def idle_html(text: str) -> str:
    return f"<div class='ls-progress' data-state='idle'><span class='ls-progress-text'>{html.escape(text)}</span></div>"


def running_text(job: Job, pace: SamplingPace, now: float) -> tuple[float, str]:
    """(fraction, "batch 1/2, step 5/20, 3 s elapsed, ETA 4 s"). Elapsed counts from when the job took the device and
    the ETA from the sampling pace, so neither restarts when a new batch or a preview arrives."""
    elapsed = f"{time.time() - job.started:.0f} s elapsed" if job.started else ""
    if not job.total_steps:  # running, before the first step: loading the model, encoding the prompt
        return 0.0, ", ".join(filter(None, ["starting", elapsed]))
    fraction = job.progress_fraction()
    batch = f"batch {job.batches_done + 1}/{job.batches_total}" if job.batches_total > 1 else ""
    eta = pace.eta(fraction, now)
    parts = [batch, f"step {job.step}/{job.total_steps}", elapsed, f"ETA {eta:.0f} s" if eta is not None else ""]
    return fraction, ", ".join(filter(None, parts))


class ErrorNotes:
    """The last refusal of each browser session, for the line next to Generate.

    A refused request raises gr.Error (API clients get it as an error; the page a toast that fades), and Gradio drops
    whatever a failed event yielded, so the line is written by the event's `failure` handler from this note. The last
    results stay: nothing was yielded over them."""

    def __init__(self, keep: int = 256) -> None:
        self._lock = threading.Lock()
        self._by_session: dict[str, str] = {}
        self.keep = keep

    @staticmethod
    def _key(request: gr.Request | None) -> str:
        return str(getattr(request, "session_hash", "") or "")

    def refuse(self, request: gr.Request | None, exc: BaseException) -> gr.Error:
        error = error_message(exc)
        with self._lock:
            self._by_session[self._key(request)] = error.message
            while len(self._by_session) > self.keep:
                self._by_session.pop(next(iter(self._by_session)))
        return error

    def take(self, request: gr.Request | None) -> str:
        with self._lock:
            message = self._by_session.pop(self._key(request), "")
        return f"**Error:** {message}" if message else ""


def run_job_streaming(
    context: AppContext, request: GenerationRequest, owner: str, notes: ErrorNotes, page: gr.Request | None,
    runner: ModeRunner | None = None, submit: Callable[[], Job] | None = None,
) -> Iterator[Any]:
    """Submit to the job queue, then yield (gallery, preview, infotext, status) updates: the place in the
    queue while waiting, one progress bar and the live preview while running, then the results. Only this job is
    watched, so a user never sees another's progress or previews. `submit` queues something else than the plain
    generation of `request` (a selectable script's job, whose result has the same shape)."""
    try:
        job = submit() if submit is not None else context.generation.submit(owner, request, runner)
    except QueueFullError as exc:
        raise notes.refuse(page, exc) from None
    seen_version, shown_preview, shown_status = -1, 0, ""
    pace = SamplingPace()
    while not job.finished:
        seen_version = job.wait_change(seen_version, WAIT_SECONDS)
        if job.status == "queued":
            status = progress_html("queued", 0.0, queue_text(context.queue, job))
        else:
            status = progress_html("running", *running_text(job, pace, time.monotonic()))
        image = None
        if job.preview_version != shown_preview:
            shown_preview = job.preview_version
            image = job.preview_image()
        if status != shown_status or image is not None:
            shown_status = status
            preview = gr.update(value=image, visible=True) if image is not None else gr.skip()
            yield gr.skip(), preview, gr.skip(), status
    if job.status == "cancelled":
        yield gr.skip(), gr.update(visible=False), gr.skip(), idle_html("Cancelled before it started")
        return
    if job.status == "failed":
        yield gr.skip(), gr.update(visible=False), gr.skip(), idle_html("Stopped: see the message by Generate")
        raise notes.refuse(page, job.exception or RuntimeError(job.error or "the job failed"))
    result: GenerationResult = job.result
    gallery = [(path, f"seed {seed}") for path, seed in zip(result.paths, result.seeds)]
    if len(result.paths) < len(result.images):  # saving failed: still show the images
        gallery = [(image, f"seed {seed}") for image, seed in zip(result.images, result.seeds)]
    took = f" in {job.ended - job.started:.1f} s" if job.ended and job.started else ""
    status = f"{len(result.images)} image(s){took}"
    if result.interrupted:
        status += " (interrupted; finished images were kept)"
    for warning in result.warnings:
        gr.Warning(html.escape(warning))  # toasts render HTML: a `<lora:x>` in the text would vanish as a tag
    yield gallery, gr.update(visible=False), (result.infotexts[0] if result.infotexts else ""), idle_html(status)


@dataclass
class ResultColumn:
    """A generating tab's right-hand column: the progress line, the live preview, the gallery, the send row and the
    infotext."""

    status: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    infotext: gr.Textbox


def result_column(prefix: str, bridge: UiBridge | None) -> ResultColumn:
    """Build the results column (call inside the tab's work row). Results are shown whole (`object_fit="contain"`:
    a 192x64 outpaint is not cropped to its middle third), and the gallery takes no uploads, so an empty one does not
    look like an upload box. On narrow screens the CSS moves this column right under Generate."""
    with gr.Column(elem_id=f"{prefix}_results_col", elem_classes=["ls-results-col"]):
        status = gr.HTML(idle_html(""), elem_id=f"{prefix}_status", elem_classes=["ls-status"])
        preview = gr.Image(label="Preview", visible=False, interactive=False, elem_id=f"{prefix}_preview",
                           show_label=True, buttons=[])
        gallery = gr.Gallery(label="Output", columns=4, elem_id=f"{prefix}_gallery", format="png",
                             object_fit="contain", interactive=False, height="auto", buttons=["download", "fullscreen"])
        if bridge is not None:
            bridge.gallery_send_row(gallery, prefix)
        infotext = gr.Textbox(label="Generation parameters", lines=4, interactive=False,
                              elem_id=f"{prefix}_infotext")
    return ResultColumn(status, preview, gallery, infotext)


def wire_sampler_schedules(samplers: Any, sampler: gr.Dropdown, schedule: gr.Dropdown) -> None:
    """Offer only the schedule types the chosen sampler can run (the rest would be refused), keeping the current
    choice when it still fits. `samplers` is the context's sampler registry (typed loosely: the UI layer does not
    import the engine)."""
    sampler.change(lambda name, current: _schedule_choices(samplers, name, current), inputs=[sampler, schedule],
                   outputs=[schedule], queue=False, api_name=False, show_progress="hidden")
    schedule.choices = [(c, c) for c in schedule_choices(samplers, sampler.value)]


def schedule_choices(samplers: Any, sampler_name: str | None) -> list[str]:
    try:
        spec, _ = samplers.resolve(sampler_name or "")
    except ValueError:
        return samplers.schedule_names()
    return ["Automatic", *(s for s in spec.supported_schedules() if s != "Automatic")]


def _schedule_choices(samplers: Any, sampler_name: str | None, current: str | None) -> dict:
    choices = schedule_choices(samplers, sampler_name)
    return gr.update(choices=choices, value=current if current in choices else "Automatic")


def snap_size_to_8(size: gr.Slider) -> None:
    """Typed widths and heights snap to multiples of 8, as dragging the slider does."""

    def snap(value: float | None) -> Any:
        if value is None or float(value) % 8 == 0:
            return gr.skip()
        return int(round(float(value) / 8) * 8)

    # `release` fires when the slider is let go and when its number box loses focus
    size.release(snap, inputs=[size], outputs=[size], queue=False, api_name=False, show_progress="hidden")


@dataclass
class JobButtons:
    """A generating tab's Generate, Interrupt and Skip buttons, and the line where Interrupt and Skip answer."""

    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    message: gr.Markdown
    notes: ErrorNotes

    def on_generate_failure(self, event: Any) -> None:
        """After a run, the line next to Generate: a refused or failed run's message, kept until the next run; after
        a finished one, nothing (an "Interrupting…" answer must not carry into the next run). Separate events, so the
        run's API endpoint keeps its four outputs."""
        # queued, as the run was: a request outside the queue carries no session hash to find the note by
        event.failure(self.notes.take, outputs=[self.message], concurrency_limit=None, api_name=False,
                      show_progress="hidden")
        event.success(lambda: "", outputs=[self.message], queue=False, api_name=False, show_progress="hidden")


def job_buttons(prefix: str) -> JobButtons:
    """Build Generate, Interrupt and Skip (side by side, as in A1111) and their answer line; element ids start with
    the tab's prefix. Call inside the tab's button column."""
    generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
    with gr.Row():
        interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt", min_width=60)
        skip = gr.Button("Skip", elem_id=f"{prefix}_skip", min_width=60)
    message = gr.Markdown(elem_id=f"{prefix}_job_message")
    return JobButtons(generate, interrupt, skip, message, ErrorNotes())


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
                            api_name="interrupt" if public_api else False, show_progress="hidden")
    buttons.skip.click(on_skip, outputs=[buttons.message], queue=False, api_name="skip" if public_api else False,
                       show_progress="hidden")
    # A new job starts with no answer left over from the last one's buttons. Cleared in the browser, at the click:
    # a request to the server for it races the run's own events, and a refused run fails fast, so under load the
    # clearing request could land after the refusal's message and wipe it.
    buttons.generate.click(None, outputs=[buttons.message], js="() => ''", queue=False, api_name=False,
                           show_progress="hidden")

    def on_select(evt: gr.SelectData, current: str) -> str:
        value = evt.value or {}
        item = value.get("image", {}) if isinstance(value, dict) else {}
        path = item.get("path") if isinstance(item, dict) else None
        return (read_infotext(Path(path)) or current) if path else current

    gallery.select(on_select, inputs=[infotext], outputs=[infotext], queue=False, api_name=False,
                   show_progress="hidden")

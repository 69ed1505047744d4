"""A generation worker: runs the front end's generation tasks on its own device, with its own model cache.

Why a class of its own: a Ray actor (`webui.services.ray_workers`) wraps it in another process, maybe on another
machine, so everything it receives and returns is plain picklable data (`GenerationTask`, `TaskProgress`). It does
not import Ray. It builds its own services (`build_context`) over the same model folders as the front end, runs a
task through the very `GenerationService.run` the in-process path uses, and never writes images: it hands each
finished image back, and the front end saves it under its usual rules (owner's folder, atomic writes).
"""

from __future__ import annotations

import os
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from webui.services.generation import GenerationOptions, GenerationResult
from webui.services.jobs import Job
from webui.services.requests import GenerationRequest

# The runners a worker knows by name (the front end's runner classes map onto these, see `runner_kind`).
RUNNER_KINDS = ("txt2img", "img2img", "outpaint")


def runner_kind(runner: object) -> str | None:
    """The worker-side name of a front-end runner, or None for one only the front end can run (an extension's)."""
    from webui.services.generation import Txt2ImgRunner
    from webui.services.img2img import Img2ImgRunner, OutpaintRunner

    kinds = {Txt2ImgRunner: "txt2img", Img2ImgRunner: "img2img", OutpaintRunner: "outpaint"}
    return kinds.get(type(runner))


@dataclass(frozen=True)
class GenerationTask:
    """One job's work as data: the request (checkpoint resolved), the mode, and the front end's settings now."""

    owner: str
    request: GenerationRequest
    runner: str  # one of RUNNER_KINDS
    mode: str  # the output folder and job kind ("txt2img", "img2img")
    options: GenerationOptions
    settings: dict[str, Any] = field(default_factory=dict)  # the front end's stored settings (extensions read them)
    start_iteration: int = 0  # a retried job goes on from its first unfinished batch

    @property
    def checkpoint(self) -> str | None:
        return self.request.model


@dataclass
class FinishedImage:
    """An image the worker has made, with what the front end needs to save it exactly as the in-process path would."""

    image: Image.Image
    infotext: str
    seed: int
    subseed: int
    fields: dict[str, Any]


@dataclass
class TaskProgress:
    """What a poll returns: the job's counters, the newest preview, and the images finished since `images_seen`."""

    status: str
    step: int = 0
    total_steps: int = 0
    batches_done: int = 0
    batches_total: int = 0
    sampling_started: float | None = None
    preview_latents: Any = None
    preview_factors: Any = None
    preview_version: int = 0
    images: list[FinishedImage] = field(default_factory=list)
    finished: bool = False
    error: str | None = None
    exception: BaseException | None = None
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    request: GenerationRequest | None = None
    holds: list[str] = field(default_factory=list)  # checkpoints in this worker's caches, after the task


class GenerationWorker:
    """Builds its services once, then runs tasks; `run` blocks, `poll`/`cancel`/`skip` may be called meanwhile."""

    def __init__(self, name: str, models_dir: Path, data_dir: Path, device: str | None = None,
                 precision: str | None = None, threads: int = 0) -> None:
        from webui.context import AppPaths, build_context

        if threads:
            import torch

            torch.set_num_threads(threads)
        self.name = name
        own_data = Path(data_dir) / "workers" / name  # settings come with each task; caches are the worker's own
        paths = AppPaths(models_dir=Path(models_dir), outputs_dir=own_data / "unused-outputs", data_dir=own_data,
                         extension_dirs=AppPaths.default().extension_dirs)
        self.context = build_context(paths, device=device, precision=precision)
        self._runners = self._build_runners()
        self._tasks: dict[str, Job] = {}
        self._lock = threading.Lock()

    def _build_runners(self) -> dict[str, Any]:
        from webui.services.img2img import Img2ImgRunner, OutpaintRunner

        depth = self.context.controlnet.preprocessors
        return {"txt2img": self.context.generation.txt2img, "img2img": Img2ImgRunner(self.context.samplers, depth),
                "outpaint": OutpaintRunner(self.context.samplers, depth)}

    # -- what the front end asks ------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """Who this worker is: its process, host and device (shown in the UI and the API)."""
        import socket

        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(),
                "device": str(self.context.models.device)}

    def holds(self) -> list[str]:
        return [entry.name for entry in self.context.models.residency()]

    def run(self, task_id: str, task: GenerationTask) -> TaskProgress:
        """Run `task` to its end on this thread; returns the final progress (the images not yet polled included)."""
        job = Job(id=task_id, owner=task.owner, kind=task.runner)
        with self._lock:
            self._tasks[task_id] = job
        result: GenerationResult | None = None
        exception: BaseException | None = None
        try:
            self.context.settings.adopt(task.settings)
            service = self.context.generation
            service.options = lambda: task.options
            result = service.run(job, task.request, self._runners[task.runner], save=False,
                                 start_iteration=task.start_iteration)
        except Exception as exc:  # reported to the front end, which fails the job with the same message
            exception = _portable(exc)
        finally:
            job.mark_done()
        progress = self.poll(task_id, 0, -1)
        progress.exception = exception
        progress.holds = self.holds()
        if result is not None:
            progress.warnings = list(result.warnings)
            progress.interrupted = result.interrupted
            progress.request = result.request
        with self._lock:
            self._tasks.pop(task_id, None)
        return progress

    def _job(self, task_id: str) -> Job | None:
        with self._lock:
            return self._tasks.get(task_id)

    def poll(self, task_id: str, images_seen: int, preview_seen: int) -> TaskProgress:
        """The job's counters now, its preview if newer than `preview_seen` (a poll ten times a second must not
        ship the same latents every time), and the finished images after the first `images_seen`."""
        job = self._job(task_id)
        if job is None:
            return TaskProgress(status="unknown", finished=True)
        result: GenerationResult | None = job.result
        images: list[FinishedImage] = []
        if result is not None:
            count = min(len(result.images), len(result.infotexts), len(result.fields), len(result.subseeds))
            images = [FinishedImage(result.images[i], result.infotexts[i], result.seeds[i], result.subseeds[i],
                                    result.fields[i]) for i in range(images_seen, count)]
        fresh_preview = job.preview_version != preview_seen
        return TaskProgress(
            status=job.status, step=job.step, total_steps=job.total_steps, batches_done=job.batches_done,
            batches_total=job.batches_total, sampling_started=job.sampling_started,
            preview_latents=job.preview_latents if fresh_preview else None,
            preview_factors=job.preview_factors if fresh_preview else None,
            preview_version=job.preview_version, images=images, finished=job.done.is_set(), error=job.error)

    def cancel(self, task_id: str) -> None:
        job = self._job(task_id)
        if job is not None:
            job.interrupt()

    def skip(self, task_id: str) -> None:
        job = self._job(task_id)
        if job is not None and job.status == "running":
            job.skip()


def _portable(exc: Exception) -> Exception:
    """The exception itself when it survives pickling (so the front end sees a RequestError as one), else a
    RuntimeError with its message and the worker's traceback."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return RuntimeError(text)

"""Jobs: every generation is a job with an id, an owner, progress, a preview, a cancel and a skip flag.

The UI, the API and the CLI submit jobs to the queue (`webui.services.queue`) and observe them. One device lock makes
device work run one job at a time, whoever submits it; only a job's owner (or an admin) can cancel or skip it.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from PIL import Image


class FairLock:
    """A first-come, first-served lock for the device.

    A LoRA training run takes the device for one step at a time; with a plain `threading.Lock` it could take it back
    at once, every time, and a waiting generation would starve. Tickets make whoever asked first go next, so a
    generation waits at most one training step.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    def acquire(self) -> None:
        with self._condition:
            ticket = self._next_ticket
            self._next_ticket += 1
            while self._serving != ticket:
                self._condition.wait()

    def release(self) -> None:
        with self._condition:
            self._serving += 1
            self._condition.notify_all()

    def waiting(self) -> int:
        """How many holders are queued behind the current one."""
        with self._condition:
            return max(0, self._next_ticket - self._serving - 1)

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@dataclass
class Job:
    id: str
    owner: str
    kind: str
    created: float = field(default_factory=time.time)
    status: str = "queued"  # queued | running | done | interrupted | cancelled (before it started) | failed
    started: float | None = None  # when it took the device
    sampling_started: float | None = None  # when its first sampling step ran (after any model load)
    ended: float | None = None
    eta_seconds: float | None = None  # long jobs (training) estimate it; generation shows steps instead
    step: int = 0
    total_steps: int = 0
    batches_done: int = 0
    batches_total: int = 0
    preview_latents: Any = None  # latest latents to preview; turned into an image only when someone looks
    preview_factors: Any = None
    preview_version: int = 0
    error: str | None = None
    notices: list[str] = field(default_factory=list)  # what happened to it the user should know (a retry)
    exception: BaseException | None = field(default=None, repr=False)
    result: Any = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)  # set when it has finished
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _skip: threading.Event = field(default_factory=threading.Event, repr=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, repr=False)
    version: int = 0  # bumped by `touch` on every change a watcher may show (status, step, preview)
    _done_callbacks: list[Callable[[], None]] = field(default_factory=list, repr=False)

    def preview_image(self) -> Image.Image | None:
        """Render the latest preview on demand, in the caller's thread, so sampling never waits for it."""
        latents, factors = self.preview_latents, self.preview_factors
        if latents is None or factors is None:
            return None
        from webui.engine.preview import latents_to_preview

        return latents_to_preview(latents, factors)

    def interrupt(self) -> None:
        self._cancel.set()
        self.touch()

    @property
    def interrupted(self) -> bool:
        return self._cancel.is_set()

    def skip(self) -> None:
        """A1111's Skip: drop the batch being sampled and go on with the next one."""
        self._skip.set()
        self.touch()

    @property
    def skip_requested(self) -> bool:
        return self._skip.is_set()

    def clear_skip(self) -> None:
        self._skip.clear()

    @property
    def finished(self) -> bool:
        return self.status in ("done", "interrupted", "cancelled", "failed")

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` once the job has finished (at once if it already has); async waiters use it instead of
        polling."""
        with self._changed:
            if not self.done.is_set():
                self._done_callbacks.append(callback)
                return
        callback()

    def mark_done(self) -> None:
        """Set `done` and run the `when_done` callbacks (the queue calls this once, when the job ends)."""
        with self._changed:
            self.done.set()
            callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            callback()
        self.touch()

    def touch(self) -> None:
        """Tell watchers something changed (they wait in `wait_change` instead of polling)."""
        with self._changed:
            self.version += 1
            self._changed.notify_all()

    def wait_change(self, seen_version: int, timeout: float) -> int:
        """Block until the job changes after `seen_version` (or `timeout` seconds pass); returns the version now."""
        with self._changed:
            if self.version == seen_version and not self.finished:
                self._changed.wait(timeout)
            return self.version

    def set_status(self, status: str) -> None:
        if status == "running" and self.started is None:
            self.started = time.time()
        if status in ("done", "interrupted", "cancelled", "failed"):
            self.ended = time.time()
        self.status = status
        self.touch()

    def seconds_left(self) -> float | None:
        """ETA from the pace so far: long jobs (training) set `eta_seconds` themselves."""
        if self.eta_seconds is not None:
            return self.eta_seconds
        fraction = self.progress_fraction()
        began = self.sampling_started or self.started  # the pace of sampling, not of loading the model
        if began is None or self.finished or fraction <= 0:
            return None
        return (time.time() - began) * (1 - fraction) / fraction

    def progress_fraction(self) -> float:
        """Whole-job progress: finished batches plus the running batch's steps."""
        if not self.batches_total or not self.total_steps:
            return 0.0
        return min(1.0, (self.batches_done + self.step / self.total_steps) / self.batches_total)


class JobManager:
    """Creates jobs, serialises device work, and answers 'what is this user's job doing'."""

    def __init__(self, keep_finished: int = 100) -> None:
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.device_lock = FairLock()
        self._keep_finished = keep_finished

    def create(self, owner: str, kind: str) -> Job:
        with self._lock:
            job = Job(id=f"job-{next(self._ids)}", owner=owner, kind=kind)
            self._jobs[job.id] = job
            finished = [j for j in self._jobs.values() if j.finished]
            for old in finished[: max(0, len(finished) - self._keep_finished)]:
                del self._jobs[old.id]
            return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs_of(self, owner: str) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.owner == owner]

    def unfinished(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.finished]

    def interrupt_owned(self, owner: str) -> int:
        """Interrupt this owner's unfinished jobs only (queued ones never start); returns how many were flagged."""
        flagged = 0
        for job in self.jobs_of(owner):
            if not job.finished:
                job.interrupt()
                flagged += 1
        return flagged

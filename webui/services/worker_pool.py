"""The pool of generation workers the queue hands jobs to, whatever carries the calls (Ray today).

Why a pool apart from the transport: which worker takes a job (a free one, preferring one that already holds the
job's checkpoint), how many failures take a worker out of rotation, and what the UI and API report are the same
whether workers are Ray actors on other machines or anything else; `webui.services.ray_workers` only supplies
`WorkerHandle`s. Nothing here imports Ray.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from webui.services.generation_worker import GenerationTask, TaskProgress

# A worker whose process dies this many jobs in a row is taken out of rotation (a bad GPU, a node out of memory).
MAX_CONSECUTIVE_FAILURES = 2


class _Routed(Protocol):
    checkpoint: str | None  # what a job needs loaded: routing prefers a worker that holds it


class WorkerLost(RuntimeError):
    """The worker's process stopped (killed, crashed, its node left) before the task ended."""


class TaskCall(Protocol):
    def wait(self, timeout: float) -> TaskProgress | None:
        """The final progress once the task has ended, None while it runs; raises WorkerLost."""


class WorkerHandle(Protocol):
    """One worker as the transport reaches it. Every method raises WorkerLost when the process is gone."""

    name: str

    def describe(self) -> dict[str, Any]: ...

    def start(self, task_id: str, task: GenerationTask) -> TaskCall: ...

    def poll(self, task_id: str, images_seen: int, preview_seen: int) -> TaskProgress: ...

    def cancel(self, task_id: str) -> None: ...

    def skip(self, task_id: str) -> None: ...

    def stop(self) -> None: ...


@dataclass
class WorkerSlot:
    """A worker and what the front end knows of it."""

    handle: WorkerHandle
    info: dict[str, Any] = field(default_factory=dict)
    state: str = "idle"  # starting | idle | busy | out of rotation
    job_id: str | None = None
    jobs_done: int = 0
    failures: int = 0  # consecutive process deaths; reset by a finished job
    total_failures: int = 0
    last_error: str | None = None
    holds: list[str] = field(default_factory=list)  # checkpoints in its caches after its last job
    order: int = 0  # when it joined, for the report

    @property
    def name(self) -> str:
        return self.handle.name

    def report(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "job": self.job_id, "jobs_done": self.jobs_done,
                "failures": self.total_failures, "last_error": self.last_error, "holds": list(self.holds),
                **{key: self.info[key] for key in ("host", "pid", "device") if key in self.info}}


class WorkerPool:
    """Free and busy workers, the routing rule, and the fault rule. Thread-safe; the queue calls `take`/`release`."""

    def __init__(self, discover: Callable[[], list[WorkerHandle]] | None = None, description: str = "") -> None:
        self._slots: list[WorkerSlot] = []
        self._joined = itertools.count()
        self._lock = threading.Lock()
        self._discover = discover
        self._listeners: list[Callable[[], None]] = []
        self.description = description  # e.g. "Ray, local, 2 CPU workers"

    # -- membership -------------------------------------------------------------------------------------------------

    def add(self, handle: WorkerHandle) -> WorkerSlot:
        """A new worker; it takes jobs once its process has built its services (`describe` answers)."""
        slot = WorkerSlot(handle, order=next(self._joined), state="starting")
        with self._lock:
            self._slots.append(slot)
        threading.Thread(target=self._await_start, args=(slot,), name=f"{handle.name}-start", daemon=True).start()
        return slot

    def _await_start(self, slot: WorkerSlot) -> None:
        try:
            info = slot.handle.describe()
        except WorkerLost as exc:
            with self._lock:
                slot.state, slot.last_error = "out of rotation", f"did not start: {exc}"
            return
        with self._lock:
            slot.info, slot.state = info, "idle"
        self._changed()

    def wait_until_started(self, timeout: float) -> bool:
        """Block until no worker is still starting (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if all(slot.state != "starting" for slot in self._slots):
                    return True
            time.sleep(0.1)
        return False

    def refresh(self) -> int:
        """Ask the transport for workers that appeared since (a node joined); returns how many were added."""
        if self._discover is None:
            return 0
        added = self._discover()
        for handle in added:
            self.add(handle)
        return len(added)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Called whenever a worker becomes free or joins (the queue wakes its dispatcher)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # -- routing ------------------------------------------------------------------------------------------------------

    def can_run(self, exclude: frozenset[str] = frozenset()) -> bool:
        """Whether any worker in rotation, other than `exclude`, could take a job (now or once it is free)."""
        with self._lock:
            return any(slot.state != "out of rotation" and slot.name not in exclude for slot in self._slots)

    def take(self, task: _Routed, job_id: str, exclude: frozenset[str] = frozenset()) -> WorkerSlot | None:
        """A free worker for `task`, marked busy: one that holds the task's checkpoint if any is free, else the one
        free the longest (so work spreads over all workers)."""
        with self._lock:
            free = [slot for slot in self._slots if slot.state == "idle" and slot.name not in exclude]
            if not free:
                return None
            holding = [slot for slot in free if task.checkpoint in slot.holds]
            chosen = (holding or free)[0]
            chosen.state, chosen.job_id = "busy", job_id
            self._slots.remove(chosen)  # the list is kept in order of release: the longest free come first
            self._slots.append(chosen)
            return chosen

    def release(self, slot: WorkerSlot, lost: WorkerLost | None = None) -> None:
        """Back to idle after a job; a lost process counts a failure, and enough in a row take it out of rotation."""
        with self._lock:
            slot.job_id = None
            if lost is not None:
                slot.failures += 1
                slot.total_failures += 1
                slot.last_error = str(lost)
                slot.holds = []  # a restarted process starts with empty caches
                slot.state = "out of rotation" if slot.failures >= MAX_CONSECUTIVE_FAILURES else "starting"
            else:
                slot.failures = 0
                slot.jobs_done += 1
                slot.state = "idle"
            self._slots.remove(slot)
            self._slots.append(slot)
        if slot.state == "starting":  # the transport restarts the process; it takes jobs once it answers again
            threading.Thread(target=self._await_start, args=(slot,), name=f"{slot.name}-restart", daemon=True).start()
        self._changed()

    def report(self) -> list[dict[str, Any]]:
        """Every worker, as the UI table and `/sdapi/v1/workers` show it, in the order they joined."""
        with self._lock:
            slots = sorted(self._slots, key=lambda slot: slot.order)
        return [slot.report() for slot in slots]

    def stop(self) -> None:
        with self._lock:
            slots = list(self._slots)
        for slot in slots:
            try:
                slot.handle.stop()
            except WorkerLost:
                pass

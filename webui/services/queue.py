"""The job queue: every interface submits work here and watches the job; one worker thread runs it on the device.

Why a service and not a lock: with a bare lock, whoever grabs it next wins, so one user's 100 jobs can starve
another's one, nobody can see their place in line, and nothing bounds how much work piles up. Here each owner has
their own line, and the worker takes one job from each owner in turn (round-robin, as InvokeAI's session queue
does). The queue is bounded; a full queue refuses new work with a message instead of growing without end.

The worker holds `JobManager.device_lock` while a job runs, the same first-come-first-served lock a LoRA training
run takes for each of its steps, so generation and training never use the device at once.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from webui.services.jobs import Job, JobManager

DEFAULT_QUEUE_SIZE = 64


class QueueFullError(RuntimeError):
    """The queue holds its maximum of waiting jobs; the caller should try again later."""


class JobPermissionError(PermissionError):
    """Someone other than the job's owner (or an admin) tried to cancel or skip it."""


class UnknownJobError(LookupError):
    """No such job (or not one the caller may see)."""


@dataclass
class _Entry:
    job: Job
    work: Callable[[Job], Any]


class JobQueue:
    """Bounded, fair queue with a single device worker. `submit` returns at once with the job; watch the job."""

    def __init__(self, jobs: JobManager, max_size: int = DEFAULT_QUEUE_SIZE) -> None:
        if max_size < 1:
            raise ValueError(f"the queue size must be at least 1, not {max_size}")
        self.jobs = jobs
        self.max_size = max_size
        self._lines: dict[str, deque[_Entry]] = {}  # owner -> that owner's waiting jobs, oldest first
        self._turns: deque[str] = deque()  # owners with waiting jobs, in the order they get their next turn
        self._condition = threading.Condition()
        self._worker: threading.Thread | None = None
        self._stopping = False
        self._stepwise: dict[str, Job] = {}  # running step-wise jobs (`start_stepwise`), by id
        self.running: Job | None = None

    # -- submitting and watching -------------------------------------------------------------------------------

    def submit(self, owner: str, kind: str, work: Callable[[Job], Any]) -> Job:
        """Queue `work(job)`; its return value becomes `job.result`, an exception becomes `job.error`."""
        with self._condition:
            if self._stopping:
                raise QueueFullError("the server is shutting down; no new jobs are taken")
            waiting = self.waiting_count() + len(self._stepwise)
            if waiting >= self.max_size:
                raise QueueFullError(f"queue full: {waiting} jobs are waiting (the limit is {self.max_size}); "
                                     "try again when some have finished")
            job = self.jobs.create(owner=owner, kind=kind)
            self._lines.setdefault(owner, deque()).append(_Entry(job, work))
            if owner not in self._turns:
                self._turns.append(owner)
            self._ensure_worker()
            self._condition.notify_all()
        return job

    def run_now(self, owner: str, kind: str, work: Callable[[Job], Any], timeout: float | None = None) -> Job:
        """Submit and wait (CLI, blocking HTTP calls); raises the work's own exception if it failed."""
        job = self.submit(owner, kind, work)
        if not self.wait(job, timeout):
            raise TimeoutError(f"{job.id} did not finish within {timeout} s")
        if job.status == "failed" and job.exception is not None:
            raise job.exception
        return job

    def wait(self, job: Job, timeout: float | None = None) -> bool:
        """Block until the job has finished; True if it did within `timeout`."""
        return job.done.wait(timeout)

    def waiting_count(self) -> int:
        with self._condition:
            return sum(len(line) for line in self._lines.values())

    def position(self, job: Job) -> int | None:
        """How many jobs will start before this one (0 = next); None once it has started or ended.

        Simulates the round-robin turns over the lines as they are now."""
        with self._condition:
            lines = {owner: list(line) for owner, line in self._lines.items()}
            turns = list(self._turns)
        ahead = 0
        while turns:
            owner = turns.pop(0)
            line = lines[owner]
            entry = line.pop(0)
            if entry.job is job:
                return ahead
            ahead += 1
            if line:
                turns.append(owner)
        return None

    def jobs_ahead(self, job: Job) -> int | None:
        """What will run before this job: the waiting ones ahead of it plus the one holding the device now."""
        place = self.position(job)
        if place is None:
            return None
        running = self.running
        return place + (1 if running is not None and running is not job else 0)

    # -- control -----------------------------------------------------------------------------------------------

    def _owned(self, job_id: str, user: str, is_admin: bool) -> Job:
        job = self.jobs.get(job_id)
        if job is None or (job.owner != user and not is_admin):
            # another user's job is reported as missing, so ids cannot be probed
            raise UnknownJobError(f"no job {job_id!r}")
        return job

    def cancel(self, job_id: str, user: str, is_admin: bool = False) -> Job:
        """Stop a job: a waiting one never starts, a running one stops within a step; finished images stay."""
        job = self._owned(job_id, user, is_admin)
        job.interrupt()
        self._drop_if_waiting(job)
        return job

    def skip(self, job_id: str, user: str, is_admin: bool = False) -> Job:
        """Skip the batch a running job is sampling (it goes on with the next); a waiting job is not affected."""
        job = self._owned(job_id, user, is_admin)
        if job.status == "running":
            job.skip()
        return job

    def cancel_all_of(self, user: str) -> int:
        """The Interrupt button: every unfinished job of this user."""
        count = 0
        for job in self.jobs.jobs_of(user):
            if not job.finished:
                self.cancel(job.id, user)
                count += 1
        return count

    def skip_running_of(self, user: str) -> bool:
        """The Skip button: the user's running job, if any."""
        running = self.running
        if running is not None and running.owner == user and running.status == "running":
            running.skip()
            return True
        return False

    def _drop_if_waiting(self, job: Job) -> None:
        with self._condition:
            line = self._lines.get(job.owner)
            if line is None:
                return
            for entry in list(line):
                if entry.job is job:
                    line.remove(entry)
                    job.set_status("cancelled")
                    job.mark_done()
            if not line:
                self._lines.pop(job.owner, None)
                if job.owner in self._turns:
                    self._turns.remove(job.owner)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop taking jobs, cancel the waiting ones, let the running one stop."""
        with self._condition:
            self._stopping = True
            entries = [entry for line in self._lines.values() for entry in line]
            self._condition.notify_all()
        for entry in entries:
            entry.job.interrupt()
            self._drop_if_waiting(entry.job)
        if self.running is not None:
            self.running.interrupt()
        if self._worker is not None:
            self._worker.join(timeout)

    # -- the worker --------------------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work_loop, name="job-queue-worker", daemon=True)
            self._worker.start()

    def _next_entry(self) -> _Entry | None:
        with self._condition:
            while not self._turns and not self._stopping:
                self._condition.wait()
            if self._stopping and not self._turns:
                return None
            owner = self._turns.popleft()
            line = self._lines[owner]
            entry = line.popleft()
            if line:
                self._turns.append(owner)  # back of the rotation: everyone else goes first
            else:
                del self._lines[owner]
            return entry

    def _work_loop(self) -> None:
        while True:
            entry = self._next_entry()
            if entry is None:
                return
            self._run(entry)

    def _run(self, entry: _Entry) -> None:
        try:
            with self.jobs.device_lock:
                self.running = entry.job
                self._execute(entry.job, entry.work)
        finally:
            self.running = None

    @staticmethod
    def _execute(job: Job, work: Callable[[Job], Any]) -> None:
        try:
            job.set_status("running")
            result = work(job)
            job.result = result if result is not None else job.result
            if job.status == "running":
                job.set_status("interrupted" if job.interrupted else "done")
        except BaseException as exc:  # recorded on the job; the worker goes on with the next one
            job.exception = exc
            job.error = job.error or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            job.set_status("failed")
        finally:
            job.mark_done()

    # -- step-wise jobs ---------------------------------------------------------------------------------------------

    def start_stepwise(self, owner: str, kind: str, work: Callable[[Job], Any]) -> Job:
        """A long job that takes the device one step at a time (a LoRA training run) instead of for its whole run.

        It starts at once on its own thread and `work` takes `jobs.device_lock` for each step, so queued generations
        run between its steps (each waits at most one step) rather than behind a ten-minute run. Otherwise it is a
        job like the others: it counts toward the queue's size, is listed, and is cancelled by its owner or an
        admin through `cancel`."""
        with self._condition:
            if self._stopping:
                raise QueueFullError("the server is shutting down; no new jobs are taken")
            if self.waiting_count() + len(self._stepwise) >= self.max_size:
                raise QueueFullError(f"queue full: the limit is {self.max_size} jobs; try again when some have "
                                     "finished")
            job = self.jobs.create(owner=owner, kind=kind)
            self._stepwise[job.id] = job

        def run() -> None:
            try:
                self._execute(job, work)
            finally:
                with self._condition:
                    self._stepwise.pop(job.id, None)

        threading.Thread(target=run, name=f"{job.id}-{kind}", daemon=True).start()
        return job

"""The job queue: every interface submits work here and watches the job; one worker thread runs it on the device.

Why a service and not a lock: with a bare lock, whoever grabs it next wins, so one user's 100 jobs can starve
another's one, nobody can see their place in line, and nothing bounds how much work piles up. Here each owner has
their own line, and the worker takes one job from each owner in turn (round-robin, as InvokeAI's session queue
does). The queue is bounded; a full queue refuses new work with a message instead of growing without end.

The worker holds `JobManager.device_lock` while a job runs, the same first-come-first-served lock a LoRA training
run takes for each of its steps, so generation and training never use the device at once.

With a worker pool (`attach_pool`: Ray workers, `--workers`/`--ray-address`) the queue stays the one front door and
keeps its fair order; only where jobs run changes. A dispatcher hands each job that has `RemoteWork` to a free pool
worker (one that holds the job's checkpoint when it can) and runs the rest (extras, scripts) in-process as before.
A job whose worker dies mid-job goes back to the head of its owner's line once, for another worker.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from webui.services.jobs import Job, JobManager

DEFAULT_QUEUE_SIZE = 64
# How many times a job whose worker process died is run again on another worker.
RETRIES_AFTER_WORKER_LOSS = 1


class QueueFullError(RuntimeError):
    """The queue holds its maximum of waiting jobs; the caller should try again later."""


class JobPermissionError(PermissionError):
    """Someone other than the job's owner (or an admin) tried to cancel or skip it."""


class UnknownJobError(LookupError):
    """No such job (or not one the caller may see)."""


@dataclass
class RemoteWork:
    """How a pool worker runs a job: `run(job, slot, attempt)` mirrors it into `job` and raises WorkerLost when the
    worker's process dies; `checkpoint` is what routing prefers a worker to hold already."""

    checkpoint: str | None
    run: Callable[[Job, Any, int], Any]


@dataclass
class _Entry:
    job: Job
    work: Callable[[Job], Any]
    remote: RemoteWork | None = None
    attempt: int = 0
    excluded: frozenset[str] = frozenset()  # workers that died running this job


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
        self.running: Job | None = None  # the in-process job holding the device
        self.pool: Any = None  # a WorkerPool once attached
        self._remote_running: dict[str, Job] = {}
        self._local_lane: deque[_Entry] = deque()  # pool mode: in-process entries waiting for the local thread
        self._local_worker: threading.Thread | None = None

    def attach_pool(self, pool: Any) -> None:
        """Send jobs that can run remotely to `pool`'s workers from now on (call before the first job)."""
        self.pool = pool
        pool.on_change(self._wake)

    def _wake(self) -> None:
        with self._condition:
            self._condition.notify_all()

    @property
    def running_jobs(self) -> list[Job]:
        """Every job running now: the in-process one and those on pool workers."""
        local = [self.running] if self.running is not None else []
        return local + list(self._remote_running.values())

    # -- submitting and watching -------------------------------------------------------------------------------

    def submit(self, owner: str, kind: str, work: Callable[[Job], Any], remote: RemoteWork | None = None) -> Job:
        """Queue `work(job)`; its return value becomes `job.result`, an exception becomes `job.error`. With a pool
        attached, `remote` runs it on a worker instead (`work` stays the fallback when no worker is in rotation)."""
        with self._condition:
            if self._stopping:
                raise QueueFullError("the server is shutting down; no new jobs are taken")
            waiting = self.waiting_count() + len(self._stepwise)
            if waiting >= self.max_size:
                raise QueueFullError(f"queue full: {waiting} jobs are waiting (the limit is {self.max_size}); "
                                     "try again when some have finished")
            job = self.jobs.create(owner=owner, kind=kind)
            self._lines.setdefault(owner, deque()).append(_Entry(job, work, remote if self.pool else None))
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
        if self.pool is not None:  # jobs ahead run side by side, one per worker: the ones waiting ahead count
            return place
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
        for running in self.running_jobs:
            if running.owner == user and running.status == "running":
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
        for running in self.running_jobs:
            running.interrupt()
        if self._worker is not None:
            self._worker.join(timeout)

    # -- the worker --------------------------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            loop = self._work_loop if self.pool is None else self._dispatch_loop
            self._worker = threading.Thread(target=loop, name="job-queue-worker", daemon=True)
            self._worker.start()

    def _next_entry(self) -> _Entry | None:
        """The next job in fair order, or None when nothing waits: the worker thread then ends (`submit` starts a
        new one). An idle thread that ran torch keeps its OpenMP team, and with two teams on a 2-core CPU libgomp
        stops spin-waiting, which makes torch on every other thread (a training run, a script) about 3x slower."""
        with self._condition:
            if not self._turns:
                self._worker = None  # under the lock, so a `submit` from now on starts a new worker
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

    # -- the dispatcher (pool mode) ----------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        """Hand the next job in fair order to a free worker, or to the local thread when it must run in-process."""
        while True:
            with self._condition:
                while True:
                    if self._stopping and not self._turns:
                        return
                    chosen = self._next_dispatch()
                    if chosen is not None:
                        break
                    self._condition.wait(timeout=1.0)
            entry, slot = chosen
            if slot is None:
                self._run_locally(entry)
            else:
                self._remote_running[entry.job.id] = entry.job
                threading.Thread(target=self._run_remote, args=(entry, slot), name=f"{entry.job.id}-remote",
                                 daemon=True).start()

    def _next_dispatch(self) -> tuple[_Entry, Any] | None:
        """(entry, worker slot) for the job whose turn it is, (entry, None) to run it in-process, or None to wait.
        Called holding the condition."""
        if not self._turns:
            return None
        line = self._lines[self._turns[0]]
        entry = line[0]
        slot = None
        if entry.remote is not None and self.pool.can_run(entry.excluded):
            slot = self.pool.take(entry.remote, entry.job.id, entry.excluded)
            if slot is None:
                return None  # its turn, but every worker is busy: wait for one
        owner = self._turns.popleft()
        line.popleft()
        if line:
            self._turns.append(owner)
        else:
            del self._lines[owner]
        return entry, slot

    def _run_locally(self, entry: _Entry) -> None:
        """In-process work (extras, scripts, or every job when no worker is left in rotation), one at a time."""
        with self._condition:
            self._local_lane.append(entry)
            if self._local_worker is None or not self._local_worker.is_alive():
                self._local_worker = threading.Thread(target=self._local_loop, name="job-queue-local", daemon=True)
                self._local_worker.start()

    def _local_loop(self) -> None:
        while True:
            with self._condition:
                if not self._local_lane:
                    self._local_worker = None
                    return
                entry = self._local_lane.popleft()
            self._run(entry)

    def _run_remote(self, entry: _Entry, slot: Any) -> None:
        from webui.services.worker_pool import WorkerLost

        job = entry.job
        if entry.attempt:
            job.notices.append(f"Retry {entry.attempt} ran on {slot.name}.")
        try:
            self._record(job, lambda job: entry.remote.run(job, slot, entry.attempt), passthrough=(WorkerLost,))
        except WorkerLost as lost:
            self._remote_running.pop(job.id, None)
            self.pool.release(slot, lost=lost)
            self._retry_or_fail(entry, slot.name, lost)
            return
        self._remote_running.pop(job.id, None)
        self.pool.release(slot)  # before `done`: whoever waited on the job finds the worker free again
        job.mark_done()

    def _retry_or_fail(self, entry: _Entry, worker: str, lost: Exception) -> None:
        """Once: back to the head of its owner's line, for another worker; the finished images stay in its result."""
        job = entry.job
        if entry.attempt >= RETRIES_AFTER_WORKER_LOSS or job.interrupted or self._stopping:
            job.error = (f"{lost} while running this job, and so did the worker of its retry; finished images were "
                         "kept. Try again, and check the workers table (Models tab, /sdapi/v1/workers)")
            job.exception = RuntimeError(job.error)
            job.set_status("interrupted" if job.interrupted else "failed")
            job.mark_done()
            return
        job.notices.append(f"This job was retried: {lost} while running it. It went back to the head of the queue "
                           "for another worker, from its first unfinished batch; finished images were kept.")
        retry = _Entry(job, entry.work, entry.remote, entry.attempt + 1, entry.excluded | {worker})
        with self._condition:
            job.set_status("queued")
            self._lines.setdefault(job.owner, deque()).appendleft(retry)
            if job.owner in self._turns:
                self._turns.remove(job.owner)
            self._turns.appendleft(job.owner)
            self._condition.notify_all()

    @staticmethod
    def _execute(job: Job, work: Callable[[Job], Any]) -> None:
        try:
            JobQueue._record(job, work)
        finally:
            job.mark_done()

    @staticmethod
    def _record(job: Job, work: Callable[[Job], Any], passthrough: tuple[type[BaseException], ...] = ()) -> None:
        """Run `work(job)` and record its outcome on the job (result, status, error); the `passthrough` exceptions
        are raised instead (a lost worker: the job is not over)."""
        try:
            job.set_status("running")
            result = work(job)
            job.result = result if result is not None else job.result
            if job.status == "running":
                job.set_status("interrupted" if job.interrupted else "done")
        except passthrough:
            raise
        except BaseException as exc:  # recorded on the job; the worker goes on with the next one
            job.exception = exc
            job.error = job.error or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            job.set_status("failed")

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

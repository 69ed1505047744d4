"""The worker pool's rules with the real queue, on workers whose calls are plain Python (no Ray, no model): which
worker a job goes to, what a dead worker's job becomes, when a worker leaves the rotation, and that a worker that
joins later takes jobs. What runs on a worker is tested on Ray in test_ray_workers.py."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from webui.services.generation_worker import TaskProgress
from webui.services.jobs import Job, JobManager
from webui.services.queue import JobQueue, RemoteWork
from webui.services.worker_pool import MAX_CONSECUTIVE_FAILURES, WorkerLost, WorkerPool


@dataclass
class _Call:
    outcome: TaskProgress | WorkerLost

    def wait(self, timeout: float) -> TaskProgress | None:
        if isinstance(self.outcome, WorkerLost):
            raise self.outcome
        return self.outcome


@dataclass
class ScriptedWorker:
    """A worker whose process dies on the jobs listed in `dies_on` (by job id) and finishes the others at once."""

    name: str
    dies_on: set[str] = field(default_factory=set)
    ran: list[str] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    def describe(self) -> dict[str, Any]:
        self.started.set()
        return {"pid": 1, "host": "here", "device": "cpu"}

    def start(self, task_id: str, task: Any) -> _Call:
        self.ran.append(task_id)
        if task_id in self.dies_on:
            return _Call(WorkerLost(f"{self.name}'s process stopped"))
        return _Call(TaskProgress(status="done", finished=True, holds=[task.checkpoint]))

    def poll(self, task_id: str, images_seen: int, preview_seen: int) -> TaskProgress:
        raise AssertionError("a finished call is never polled")

    def cancel(self, task_id: str) -> None: ...

    def skip(self, task_id: str) -> None: ...

    def stop(self) -> None: ...


def _remote(checkpoint: str, attempts: list[tuple[str, int]]) -> RemoteWork:
    def run(job: Job, slot: Any, attempt: int) -> TaskProgress:
        attempts.append((slot.name, attempt))
        final = slot.handle.start(job.id, type("Task", (), {"checkpoint": checkpoint})()).wait(1)
        slot.holds = final.holds
        return final

    return RemoteWork(checkpoint, run)


def _queue(*workers: ScriptedWorker) -> tuple[JobQueue, WorkerPool]:
    pool = WorkerPool(description="test")
    for worker in workers:
        pool.add(worker)
    assert pool.wait_until_started(10)
    queue = JobQueue(JobManager())
    queue.attach_pool(pool)
    return queue, pool


def _run(queue: JobQueue, owner: str, checkpoint: str, attempts: list, local: list | None = None) -> Job:
    job = queue.submit(owner, "txt2img", lambda job: (local if local is not None else []).append(job.id),
                       _remote(checkpoint, attempts))
    assert queue.wait(job, 10)
    return job


def test_a_job_goes_to_the_worker_holding_its_checkpoint_else_the_longest_free() -> None:
    a, b = ScriptedWorker("a"), ScriptedWorker("b")
    queue, pool = _queue(a, b)
    attempts: list = []
    _run(queue, "u", "x", attempts)  # both free and empty: the first in line, a
    _run(queue, "u", "y", attempts)  # a just worked, b has been free longer
    _run(queue, "u", "x", attempts)  # b was free longer, but a holds x
    _run(queue, "u", "y", attempts)  # and b holds y
    assert [name for name, _ in attempts] == ["a", "b", "a", "b"]
    assert {w["name"]: w["holds"] for w in pool.report()} == {"a": ["x"], "b": ["y"]}


def test_a_dead_workers_job_is_retried_once_elsewhere_and_the_user_is_told() -> None:
    a, b = ScriptedWorker("a", dies_on={"job-1"}), ScriptedWorker("b")
    queue, pool = _queue(a, b)
    attempts: list = []
    job = _run(queue, "u", "x", attempts)
    assert job.status == "done"
    assert attempts == [("a", 0), ("b", 1)]
    assert "retried" in job.notices[0] and "b" in job.notices[1]
    report = {w["name"]: w for w in pool.report()}
    assert report["a"]["failures"] == 1 and report["a"]["state"] == "idle"  # back after its restart


def test_a_job_whose_retry_also_dies_fails_with_a_message() -> None:
    a, b = ScriptedWorker("a", dies_on={"job-1"}), ScriptedWorker("b", dies_on={"job-1"})
    queue, _ = _queue(a, b)
    job = _run(queue, "u", "x", [])
    assert job.status == "failed"
    assert "so did the worker of its retry" in job.error and "finished images were kept" in job.error


def test_a_worker_that_keeps_dying_leaves_the_rotation_and_jobs_go_on_elsewhere() -> None:
    a, b = ScriptedWorker("a", dies_on={"job-1", "job-2"}), ScriptedWorker("b")
    queue, pool = _queue(a, b)
    attempts: list = []
    for checkpoint in ("x", "y"):  # b holds x after the first retry: y is held by nobody, so a (free longer) gets it
        assert _run(queue, "u", checkpoint, attempts).status == "done"
        assert pool.wait_until_started(10)  # a is back from its restart before the next job
    report = {w["name"]: w for w in pool.report()}
    assert report["a"]["state"] == "out of rotation" and report["a"]["failures"] == MAX_CONSECUTIVE_FAILURES
    assert "stopped" in report["a"]["last_error"]
    _run(queue, "u", "x", attempts)
    assert attempts[-1][0] == "b" and len(a.ran) == 2


def test_with_no_worker_left_jobs_run_in_this_process() -> None:
    a = ScriptedWorker("a", dies_on={"job-1", "job-2"})
    queue, pool = _queue(a)
    local: list = []
    first = _run(queue, "u", "x", [], local)  # dies, and no other worker to retry on: this process runs it
    assert first.status == "done" and local == ["job-1"]
    _run(queue, "u", "x", [], local)
    assert pool.report()[0]["state"] in ("idle", "out of rotation")


def test_a_worker_that_joins_later_takes_jobs() -> None:
    a = ScriptedWorker("a")
    queue, pool = _queue(a)
    blocker = threading.Event()
    slow = RemoteWork("x", lambda job, slot, attempt: blocker.wait(10))
    busy = queue.submit("u", "txt2img", lambda job: None, slow)  # a is busy with this one
    joined = ScriptedWorker("late")
    pool.add(joined)  # what the Ray watcher does when a node joins
    attempts: list = []
    _run(queue, "v", "x", attempts)
    blocker.set()
    assert queue.wait(busy, 10)
    assert attempts == [("late", 0)]

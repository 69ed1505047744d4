"""The job queue: one device worker, owners take turns, a bounded line, owner-only cancel and skip.

The order tests hold the worker on a gate job, queue work from several owners, then release it and record the order
the work actually ran in. The generation tests run the tiny real-layout checkpoint through the queue and check which
seeds' images come back after a Skip or a cancel (the seed rule is A1111's: image i uses seed + i).
"""

from __future__ import annotations

import threading

import pytest
import torch

from tests.conftest import tiny_service_context
from tests.cpu_share import cpu_share
from webui.services.jobs import JobManager
from webui.services.queue import JobQueue, QueueFullError, UnknownJobError
from webui.services.requests import GenerationRequest


def _gated_queue(max_size: int = 64) -> tuple[JobQueue, threading.Event, threading.Event, list[str]]:
    """A queue whose worker is busy with a gate job until `release` is set; `order` records what ran."""
    queue = JobQueue(JobManager(), max_size)
    started, release, order = threading.Event(), threading.Event(), []

    def gate(job) -> None:
        started.set()
        assert release.wait(30)
        order.append("gate")

    queue.submit("admin", "gate", gate)
    assert started.wait(10)
    return queue, started, release, order


def _record(order: list[str], label: str):
    return lambda job: order.append(label)


def test_case_25_owners_take_turns_so_one_users_many_jobs_do_not_starve_another() -> None:
    queue, _, release, order = _gated_queue()
    alice = [queue.submit("alice", "txt2img", _record(order, f"alice-{i}")) for i in range(3)]
    bob = queue.submit("bob", "txt2img", _record(order, "bob-0"))
    carol = queue.submit("carol", "txt2img", _record(order, "carol-0"))
    assert [queue.position(j) for j in (alice[0], bob, carol, alice[1], alice[2])] == [0, 1, 2, 3, 4]
    assert queue.waiting_count() == 5
    release.set()
    assert queue.wait(alice[2], 30)
    assert order == ["gate", "alice-0", "bob-0", "carol-0", "alice-1", "alice-2"]
    assert all(j.status == "done" for j in [*alice, bob, carol]) and queue.position(bob) is None


def test_case_25_a_full_queue_refuses_new_work_with_a_clear_message() -> None:
    queue, _, release, order = _gated_queue(max_size=2)
    queue.submit("alice", "txt2img", _record(order, "a"))
    last = queue.submit("bob", "txt2img", _record(order, "b"))
    with pytest.raises(QueueFullError, match="queue full: 2 jobs are waiting"):
        queue.submit("carol", "txt2img", _record(order, "c"))
    release.set()
    assert queue.wait(last, 30)
    queue.wait(queue.submit("carol", "txt2img", _record(order, "c")), 30)  # room again once the line moved
    assert order == ["gate", "a", "b", "c"]


def test_case_26_only_the_owner_or_an_admin_cancels_and_a_cancelled_job_never_runs() -> None:
    queue, _, release, order = _gated_queue()
    mine = queue.submit("alice", "txt2img", _record(order, "alice"))
    other = queue.submit("alice", "txt2img", _record(order, "alice-2"))
    with pytest.raises(UnknownJobError):  # bob cannot even learn that the job exists
        queue.cancel(mine.id, "bob")
    with pytest.raises(UnknownJobError):
        queue.skip(mine.id, "bob")
    assert not mine.interrupted
    queue.cancel(mine.id, "alice")
    queue.cancel(other.id, "root", is_admin=True)
    assert mine.status == other.status == "cancelled" and mine.done.is_set()
    assert queue.waiting_count() == 0
    release.set()
    assert queue.wait(queue.submit("bob", "txt2img", _record(order, "bob")), 30)
    assert order == ["gate", "bob"]


def test_a_failing_job_is_reported_and_the_worker_goes_on() -> None:
    queue = JobQueue(JobManager())

    def broken(job) -> None:
        raise RuntimeError("the model file is corrupt\nstack details")

    failed = queue.submit("alice", "txt2img", broken)
    after = queue.submit("alice", "txt2img", lambda job: "fine")
    assert queue.wait(after, 30)
    assert failed.status == "failed" and failed.error == "the model file is corrupt"
    assert after.status == "done" and after.result == "fine"
    with pytest.raises(RuntimeError, match="corrupt"):
        queue.run_now("alice", "txt2img", broken, timeout=30)


def test_the_worker_thread_ends_when_nothing_waits_and_the_next_job_starts_another() -> None:
    """An idle worker that ran torch would keep its OpenMP team, which slows torch on every other thread about 3x on
    a 2-core CPU (bench/thread_teams.py), so the worker ends when the queue is empty."""
    queue = JobQueue(JobManager())
    first = queue.submit("alice", "txt2img", lambda job: threading.current_thread())
    assert queue.wait(first, 30) and first.status == "done"
    first.result.join(10)
    assert not first.result.is_alive()
    second = queue.submit("bob", "txt2img", lambda job: threading.current_thread())
    assert queue.wait(second, 30) and second.status == "done"
    assert second.result is not first.result


def test_queue_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        JobQueue(JobManager(), 0)


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory, tiny_sd1):
    torch.set_num_threads(cpu_share())
    return tiny_service_context(tmp_path_factory.mktemp("queue"), tiny_sd1)


def _run_with_action(context, request: GenerationRequest, action) -> object:
    """Submit through the queue; `action(job)` runs inside the U-Net call where the second batch reaches step 2."""
    unet = context.models.get("tiny").unet
    fired = threading.Event()

    def hook(module, args, kwargs) -> None:
        job = context.queue.running
        if job is not None and job.batches_done == 1 and job.step >= 1 and not fired.is_set():
            fired.set()
            action(job)

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        job = context.generation.submit("alice", request)
        assert context.queue.wait(job, 300)
    finally:
        handle.remove()
    assert fired.is_set(), "the second batch never reached step 2"
    return job


def test_case_26_skip_drops_only_the_batch_being_sampled(context) -> None:
    request = GenerationRequest(prompt="a red circle", sampler_name="Euler", steps=4, width=64, height=64, seed=500,
                                n_iter=3, model="tiny")
    job = _run_with_action(context, request, lambda job: context.queue.skip(job.id, "alice"))
    result = job.result
    assert job.status == "done" and not result.interrupted
    assert result.seeds == [500, 502]  # batch 2 (seed 501) was skipped, batch 3 still ran
    assert len(result.paths) == 2 and all(p.endswith(".png") for p in result.paths)


def test_cancel_while_running_keeps_the_finished_images(context) -> None:
    request = GenerationRequest(prompt="a blue square", sampler_name="Euler", steps=4, width=64, height=64, seed=900,
                                n_iter=3, model="tiny")
    job = _run_with_action(context, request, lambda job: context.queue.cancel(job.id, "alice"))
    result = job.result
    assert job.status == "interrupted" and result.interrupted
    assert result.seeds == [900]
    from PIL import Image

    with Image.open(result.paths[0]) as saved:  # a complete file, with its infotext
        saved.load()
        assert "Seed: 900" in saved.info["parameters"]


def test_a_stepwise_job_counts_toward_the_limit_and_lets_queued_work_run_between_its_steps() -> None:
    queue = JobQueue(JobManager(), max_size=2)
    order: list[str] = []
    stepped = threading.Event()

    def training(job) -> None:  # takes the device per step, as a LoRA training run does
        for _ in range(400):
            if job.interrupted:
                return
            with queue.jobs.device_lock:
                order.append("step")
            stepped.set()
            threading.Event().wait(0.005)

    run = queue.start_stepwise("alice", "train-lora", training)
    assert stepped.wait(10)
    generation = queue.submit("bob", "txt2img", _record(order, "bob"))
    assert queue.wait(generation, 30)
    assert not run.finished and "bob" in order  # bob did not wait for the whole run
    with pytest.raises(UnknownJobError):
        queue.cancel(run.id, "bob")
    full = JobQueue(JobManager(), max_size=1)
    other = full.start_stepwise("alice", "train-lora", training)
    with pytest.raises(QueueFullError):  # the running training run fills a queue of one
        full.submit("carol", "txt2img", _record(order, "carol"))
    full.cancel(other.id, "alice")
    queue.cancel(run.id, "alice")
    assert queue.wait(run, 30) and run.status == "interrupted"
    assert full.wait(other, 30) and full.wait(full.submit("carol", "txt2img", _record(order, "carol")), 30)

"""Jobs: progress over batches, previews rendered on demand, owner-only interrupts and a bounded history."""

from __future__ import annotations

import torch

from webui.services.jobs import Job, JobManager


def test_progress_counts_finished_batches_and_the_running_step() -> None:
    job = Job("job-1", "alice", "txt2img")
    assert job.progress_fraction() == 0.0  # nothing known yet
    job.batches_total = 4  # between batches the step count is not known yet
    assert job.progress_fraction() == 0.0
    job.batches_total, job.total_steps = 0, 10
    assert job.progress_fraction() == 0.0
    job.batches_total, job.total_steps = 4, 10
    assert job.progress_fraction() == 0.0
    job.batches_done, job.step = 1, 5
    assert job.progress_fraction() == (1 + 5 / 10) / 4
    job.batches_done, job.step = 4, 10
    assert job.progress_fraction() == 1.0


def test_preview_is_rendered_only_when_both_parts_exist() -> None:
    job = Job("job-1", "alice", "txt2img")
    assert job.preview_image() is None
    job.preview_latents = torch.zeros(2, 4, 8, 8)
    assert job.preview_image() is None  # no colour map yet
    factors = torch.zeros(5, 3)
    factors[4] = torch.tensor([1.0, -1.0, 0.0])  # the constant column: every pixel (255, 0, 127.5 -> 128)
    job.preview_factors = factors
    image = job.preview_image()
    assert image is not None and image.mode == "RGB"
    assert image.size[0] == 2 * image.size[1]  # two latents side by side
    assert image.getpixel((0, 0)) == (255, 0, 128)


def test_interrupts_reach_only_the_owners_unfinished_jobs() -> None:
    jobs = JobManager()
    mine, theirs, done = jobs.create("alice", "txt2img"), jobs.create("bob", "txt2img"), jobs.create("alice", "img2img")
    done.status = "done"
    assert jobs.interrupt_owned("alice") == 1
    assert mine.interrupted and not theirs.interrupted and not done.interrupted
    assert [j.id for j in jobs.jobs_of("bob")] == [theirs.id] and jobs.get(mine.id) is mine
    assert jobs.get("job-999") is None


def test_history_keeps_unfinished_jobs_and_the_newest_finished_ones() -> None:
    jobs = JobManager(keep_finished=2)
    created = [jobs.create("alice", "txt2img") for _ in range(3)]
    for job in created:
        job.status = "done"
    running = jobs.create("alice", "txt2img")  # prunes: 3 finished, keep the newest 2
    assert [jobs.get(j.id) is not None for j in created] == [False, True, True]
    assert jobs.get(running.id) is running and running.id == "job-4"

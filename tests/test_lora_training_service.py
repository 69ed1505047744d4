"""LoRA training as a job in the real app context: generation runs between training steps, one run at a time, only
the owner interrupts, and the finished LoRA is at once usable by name (the picker's library rescanned)."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from webui.context import AppPaths, build_context
from webui.services.infotext import parse_infotext
from webui.services.jobs import FairLock
from webui.services.lora_training import TrainingBusyError
from webui.services.requests import GenerationRequest
from webui.shapes import concept_scenes, write_captioned_folder
from webui.training.train_lora import LoraTrainingSettings, TrainingError

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_sd1):
    root = tmp_path_factory.mktemp("training-app")
    (root / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(tiny_sd1.path, root / "models" / "Stable-diffusion" / "tiny.safetensors")
    write_captioned_folder(root / "data" / "5_rect", concept_scenes(4))
    context = build_context(AppPaths(root / "models", root / "outputs", root / "cache", ()), device="cpu")
    context.root = root
    return context


def settings(app, name: str, **changes) -> LoraTrainingSettings:
    values = dict(base=Path("."), data=app.root / "data", name=name, max_steps=4, batch_size=2, rank=4, resolution=64,
                  sample_every=2, sample_steps=2, save_every=2, average_runs=1)
    values.update(changes)
    return LoraTrainingSettings(**values)


def test_fair_lock_serves_in_arrival_order() -> None:
    lock = FairLock()
    order: list[str] = []
    lock.acquire()
    threads = []
    for name in ("first", "second", "third"):
        thread = threading.Thread(target=lambda n=name: (lock.acquire(), order.append(n), lock.release()))
        thread.start()
        threads.append(thread)
        while lock.waiting() < len(threads):  # each is queued before the next starts
            time.sleep(0.01)
    lock.release()
    for thread in threads:
        thread.join(5)
    assert order == ["first", "second", "third"]


def test_a_run_trains_alongside_generation_and_lands_in_the_library(app) -> None:
    run = app.lora_training.start("alice", settings(app, "svc_trained", max_steps=30, sample_every=0,
                                                    trigger="zqrect"), "tiny")
    # a generation job started mid-run gets the device between two training steps
    while run.progress is None or run.progress.step < 2:
        assert not run.job.finished, run.error
        time.sleep(0.05)
    request = GenerationRequest(prompt="a red circle", steps=2, width=64, height=64, seed=1, sampler_name="Euler")
    job = app.generation.submit("bob", request)  # through the queue, whose worker takes the same device lock
    assert app.queue.wait(job, 300)
    result = job.result
    step_when_generated = run.progress.step
    assert len(result.images) == 1 and step_when_generated < 30, "generation waited for the whole training run"

    with pytest.raises(TrainingBusyError, match="'svc_trained' is training now"):
        app.lora_training.start("bob", settings(app, "other"), "tiny")
    assert app.lora_training.interrupt("bob") is False  # not bob's run
    assert app.lora_training.wait(run, timeout=300)
    assert run.job.status == "done", run.error
    assert run.result.output == app.paths.lora_dir / "svc_trained.safetensors"
    assert [entry[0] for entry in run.losses] == list(range(1, 31))
    assert "svc_trained" in [info.name for info in app.loras.loras()]  # rescanned: in the picker without a restart

    # the learned trigger word is an embedding in the app's own folder, used by name at once
    assert run.result.embedding == app.paths.embeddings_dir / "zqrect.safetensors"
    request = GenerationRequest(prompt="a red zqrect <lora:svc_trained:0.8>", steps=2, width=64, height=64, seed=1,
                                sampler_name="Euler")
    infotext = app.generation.run(app.jobs.create("bob", "txt2img"), request).infotexts[0]
    assert parse_infotext(infotext)["Lora hashes"].startswith("svc_trained: ")
    assert parse_infotext(infotext)["TI hashes"].startswith("zqrect: ")
    with pytest.raises(TrainingError, match="an embedding named 'zqrect' already exists"):  # another LoRA's word
        app.lora_training.start("alice", settings(app, "svc_other", trigger="zqrect"), "tiny")


def test_owner_interrupts_then_resumes_with_samples_shown(app) -> None:
    run = app.lora_training.start("carol", settings(app, "svc_resumed", max_steps=200), "tiny")
    while run.progress is None or run.progress.step < 3:
        assert not run.job.finished, run.error
        time.sleep(0.05)
    assert app.lora_training.interrupt("carol") is True
    assert app.lora_training.wait(run, timeout=120) and run.job.status == "interrupted"
    assert "interrupted at step" in run.status_line() and run.result.output is None
    assert run.samples and run.samples[-1][1].startswith("step 2: ")  # oldest last; prompts: the dataset's captions
    assert all(path.is_relative_to(app.paths.outputs_dir) for path, _ in run.samples)  # servable
    assert not (app.paths.lora_dir / "svc_resumed.safetensors").exists()

    resumed = app.lora_training.start("carol", settings(app, "svc_resumed", max_steps=6, resume=True), "tiny")
    assert app.lora_training.wait(resumed, timeout=120) and resumed.job.status == "done", resumed.error
    assert resumed.losses[0][0] == run.progress.step + 1 and resumed.result.steps == 6


def test_bad_requests_are_refused_before_a_job_starts(app) -> None:
    jobs_before = len(app.jobs.jobs_of("dave"))
    with pytest.raises(TrainingError, match="rank must be at least 1"):
        app.lora_training.start("dave", settings(app, "bad", rank=0), "tiny")
    with pytest.raises(ValueError, match="model 'missing' not found"):
        app.lora_training.start("dave", settings(app, "bad"), "missing")
    with pytest.raises(ValueError, match="has no usable images"):
        app.lora_training.start("dave", settings(app, "bad", data=app.root / "models"), "tiny")
    assert len(app.jobs.jobs_of("dave")) == jobs_before


def test_on_a_shared_server_only_an_admin_starts_training_and_each_user_sees_only_their_runs(app) -> None:
    from webui.services.jobs import JobManager
    from webui.services.lora_training import LoraTrainingService
    from webui.services.queue import JobQueue
    from webui.services.users import UserStore

    users = UserStore([("alice", "pw-alice"), ("bob", "pw-bob")], admins=["alice"], scrypt_n=2**10)
    shared = LoraTrainingService(JobQueue(JobManager()), app.models, app.loras, app.paths.lora_dir,
                                 app.root / "shared-runs", users=users)
    with pytest.raises(TrainingError, match="only an admin can start LoRA training"):
        shared.start("bob", settings(app, "bob_try", max_steps=2), "tiny")
    run = shared.start("alice", settings(app, "alice_run", max_steps=2, sample_every=0, save_every=0), "tiny")
    assert shared.latest("bob") is None and shared.latest() is None  # nobody else sees alice's run
    assert shared.latest("alice") is run
    assert shared.wait(run, 300) and run.job.status == "done", run.error

"""Benchmark: torch on one thread while another thread that ran torch stays alive (the job queue's old idle worker).

    .venv/bin/python bench/thread_teams.py [--calls 20]

Each thread that runs a parallel torch op gets its own OpenMP team. With more team threads alive than CPU cores,
libgomp stops spin-waiting between parallel regions, and a model made of many small ops (the shipped one) pays a
futex wake-up per op. Measured, in one run, on the shipped model's U-Net (batch 2, 16x16 latent, as with CFG):
- the U-Net call on the main thread alone;
- the same while another thread that ran one U-Net call waits, alive (what the queue's worker did before it ended
  when idle);
- the same after a job ran through the app's `JobQueue`, whose worker now ends when nothing waits;
- 60 LoRA training steps on their own thread (as the training tab runs them) with no other torch thread alive, and
  beside an idle thread that once ran torch.
Writes bench/results/thread_teams.json. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webui.engine.loader import load_checkpoint  # noqa: E402
from webui.services.jobs import JobManager  # noqa: E402
from webui.services.queue import JobQueue  # noqa: E402

MODEL = ROOT / "models" / "Stable-diffusion" / "latent-studio-shapes.safetensors"


@contextlib.contextmanager
def _idle_thread_that_ran(work: Callable[[], None]) -> Iterator[None]:
    """Another thread runs `work` (torch) once, then waits, alive, until the block ends."""
    release = threading.Event()

    def run_then_wait() -> None:
        work()
        release.wait()

    lingering = threading.Thread(target=run_then_wait)
    lingering.start()
    time.sleep(1.0)  # let `work` finish
    try:
        yield
    finally:
        release.set()
        lingering.join()


def _unet_call_on_a_fresh_model() -> None:
    model = load_checkpoint(MODEL)
    with torch.no_grad():
        model.unet(torch.zeros((2, model.latent_channels, 16, 16)), torch.tensor([500, 500]),
                   torch.zeros((2, 77, model.unet.config.cross_attention_dim)))


def _training_seconds(steps: int) -> tuple[float, float]:
    """LoRA training (the tab's defaults, `steps` steps, 30 rectangles) on its own thread: alone, then beside an idle
    thread that loaded the model and ran one U-Net call. The main thread runs no torch here, or it would count too."""
    import tempfile

    from webui.shapes import concept_scenes, write_captioned_folder
    from webui.training.train_lora import LoraTrainingSettings, SilentObserver, train_lora

    work = Path(tempfile.mkdtemp(prefix="ls-bench-threads-"))
    write_captioned_folder(work / "data", concept_scenes(30))

    def train(tag: str) -> float:
        settings = LoraTrainingSettings(base=MODEL, data=work / "data", name=tag, output_dir=work / "Lora",
                                        run_dir=work / f"run-{tag}", embedding_dir=work / f"embeddings-{tag}",
                                        trigger="rectangle", max_steps=steps, sample_every=0, save_every=0,
                                        average_runs=1)  # the figures in docs/performance.md are of one run
        took: list[float] = []

        def run() -> None:
            start = time.perf_counter()
            train_lora(settings, SilentObserver())
            took.append(time.perf_counter() - start)

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        return took[0]

    alone = train("alone")
    with _idle_thread_that_ran(_unet_call_on_a_fresh_model):
        beside = train("beside")
    return alone, beside


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "thread_teams.json")
    args = parser.parse_args()
    training_alone, training_beside = _training_seconds(args.train_steps)  # before main runs torch
    model = load_checkpoint(MODEL)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn((2, model.latent_channels, 16, 16), generator=g)
    timesteps = torch.tensor([500, 500])
    context = torch.randn((2, 77, model.unet.config.cross_attention_dim), generator=g)

    def unet_call() -> None:
        with torch.no_grad():
            model.unet(latents, timesteps, context)

    def per_call() -> float:
        unet_call()
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.calls):
                unet_call()
            rounds.append((time.perf_counter() - start) / args.calls)
        return statistics.median(rounds)

    alone = per_call()
    with _idle_thread_that_ran(unet_call):
        beside_idle_thread = per_call()
    after_join = per_call()

    queue = JobQueue(JobManager())
    job = queue.submit("bench", "txt2img", lambda job: unet_call())
    queue.wait(job)
    time.sleep(0.5)
    after_queue_job = per_call()
    summary = {
        "machine": f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
        "unet_call_ms_alone": round(alone * 1000, 2),
        "unet_call_ms_beside_an_idle_thread_that_ran_torch": round(beside_idle_thread * 1000, 2),
        "slowdown_beside_idle_thread": round(beside_idle_thread / alone, 2),
        "unet_call_ms_after_that_thread_ended": round(after_join * 1000, 2),
        "unet_call_ms_after_a_job_through_the_queue": round(after_queue_job * 1000, 2),
        "slowdown_after_a_queue_job": round(after_queue_job / alone, 2),
        "lora_training_seconds_alone": round(training_alone, 2),
        "lora_training_seconds_beside_an_idle_thread_that_ran_torch": round(training_beside, 2),
        "training_slowdown_beside_idle_thread": round(training_beside / training_alone, 2),
        "training_steps": args.train_steps,
        "what": f"median of {args.rounds} rounds of {args.calls} U-Net calls, shipped model, batch 2, 16x16 latent",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

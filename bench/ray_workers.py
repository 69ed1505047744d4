"""Throughput of generation on Ray workers, against the in-process queue, in one run (docs/scaling.md).

On a tiny real-layout SD1 checkpoint, 64x64, Euler:
1. in-process: the app's queue runs `--jobs` jobs one after another (the app without --workers);
2. 1 Ray worker, then 2 Ray workers: the same jobs submitted at once through the same queue.
Reports jobs/s for each, the 2-worker/1-worker throughput ratio, and the Ray hop's overhead per job (1 worker
against in-process, both one job at a time). Worker start-up is timed apart and not counted.

    python bench/ray_workers.py [--jobs 20] [--steps 10] [--threads-per-worker 1]

Writes bench/results/ray_workers.json. Where a machine has several GPUs, the workers are GPU workers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from webui import offline  # noqa: E402
from webui.context import AppPaths, build_context  # noqa: E402
from webui.engine.synthetic import write_synthetic_checkpoint  # noqa: E402
from webui.services.requests import GenerationRequest  # noqa: E402


def _requests(count: int, steps: int) -> list[GenerationRequest]:
    return [GenerationRequest(prompt=f"a red circle {i}", steps=steps, seed=1000 + i, width=64, height=64,
                              sampler_name="Euler", model="tiny") for i in range(count)]


def _run_all(context, requests: list[GenerationRequest], at_once: bool) -> float:
    """Seconds to finish every request: all submitted at once, or each after the previous finished."""
    started = time.perf_counter()
    if at_once:
        jobs = [context.generation.submit(f"user{i % 2}", request) for i, request in enumerate(requests)]
        for job in jobs:
            context.queue.wait(job)
            assert job.status == "done", job.error
    else:
        for request in requests:
            job = context.generation.submit("user0", request)
            context.queue.wait(job)
            assert job.status == "done", job.error
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads-per-worker", type=int, default=1,
                        help="CPU threads per worker (1 on a 2-core machine: two workers share it without "
                             "oversubscribing); the in-process run uses the same count")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/ray_workers.json")
    args = parser.parse_args()
    offline.enforce()
    torch.set_num_threads(args.threads_per_worker)
    scratch = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    models = scratch / "models"
    write_synthetic_checkpoint(models / "Stable-diffusion" / "tiny.safetensors", "sd1", seed=7,
                               metadata={"modelspec.resolution": "64x64"})
    requests = _requests(args.jobs, args.steps)
    warm = _requests(2, args.steps)

    def context(name: str):
        return build_context(AppPaths(models_dir=models, outputs_dir=scratch / f"out-{name}",
                                      data_dir=scratch / f"data-{name}"), device="cpu")

    report: dict[str, object] = {"jobs": args.jobs, "steps": args.steps, "size": "64x64", "sampler": "Euler",
                                 "threads_per_worker": args.threads_per_worker, "cpu_count": os.cpu_count(),
                                 "cuda_devices": torch.cuda.device_count()}
    local = context("local")
    _run_all(local, warm, at_once=False)  # loads the model
    in_process = _run_all(local, requests, at_once=False)
    local.shutdown()
    report["in_process_seconds"] = round(in_process, 2)

    for count in (1, 2):
        pooled = context(f"ray{count}")
        started = time.perf_counter()
        pooled.start_workers(count, threads=args.threads_per_worker)
        assert pooled.workers.pool.wait_until_started(900)
        report[f"workers_{count}_startup_seconds"] = round(time.perf_counter() - started, 1)
        for _ in range(count):  # every worker loads the model before the clock starts
            _run_all(pooled, warm, at_once=True)
        if count == 1:
            report["ray_1_worker_sequential_seconds"] = round(_run_all(pooled, requests, at_once=False), 2)
        report[f"ray_{count}_workers_seconds"] = round(_run_all(pooled, requests, at_once=True), 2)
        report[f"ray_{count}_workers_report"] = pooled.workers.pool.report()
        pooled.shutdown()

    per_job_local = in_process / args.jobs
    per_job_ray = report["ray_1_worker_sequential_seconds"] / args.jobs
    report["summary"] = {
        "in_process_jobs_per_second": round(args.jobs / in_process, 3),
        "ray_1_worker_jobs_per_second": round(args.jobs / report["ray_1_workers_seconds"], 3),
        "ray_2_workers_jobs_per_second": round(args.jobs / report["ray_2_workers_seconds"], 3),
        "throughput_2_over_1_workers": round(report["ray_1_workers_seconds"] / report["ray_2_workers_seconds"], 3),
        "ray_hop_per_job_over_in_process": round(per_job_ray / per_job_local, 3),
        "ray_hop_overhead_ms_per_job": round(1000 * (per_job_ray - per_job_local), 1),
    }
    print(json.dumps(report["summary"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

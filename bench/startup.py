"""Benchmark: start-up costs of the command line and the app, on the shipped default model.

    .venv/bin/python bench/startup.py [--rounds 3]

Reports, in one run:
- `python -m webui --help`: wall time of the subprocess (goal: <= 1 s);
- one 20-step image from the CLI (`python -m webui generate`, a fresh process: imports, model load, sampling, PNG)
  against the same command run again inside one warm process (`webui.cli.main`), as a ratio (goal: <= 3);
- the app's launch-to-first-page time: `launch.py` started until `GET /` answers 200 with the page;
- the floor under any fresh process that makes an image: a process that only imports torch, and one that only imports
  the model classes the engine builds (diffusers' U-Net and VAE, transformers' CLIP text model), each against the warm
  in-process image. Where the second alone is over 3x, no lazier import order of the project's own code reaches
  the goal.
Writes bench/results/startup.json. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.timing import cpu_model  # noqa: E402
from tests.server_process import free_port  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "startup.json"
MODEL = ROOT / "models" / "Stable-diffusion" / "latent-studio-shapes.safetensors"
# What any process that builds the engine's models must import (webui/engine/loader.py builds these classes).
MODEL_CLASSES_IMPORT = ("from diffusers import AutoencoderKL, UNet2DConditionModel; "
                        "from transformers import CLIPTextModel")


def _wall(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - start


def _generate_args(out: Path, data: Path, seed: int) -> list[str]:
    return ["generate", "--model", str(MODEL), "--prompt", "a red circle on a blue background", "--steps", "20",
            "--seed", str(seed), "--device", "cpu", "--out", str(out), "--data-dir", str(data)]


def _launch_to_first_page(work: Path) -> float:
    port = free_port()
    command = [sys.executable, str(ROOT / "launch.py"), "--port", str(port), "--outputs-dir", str(work / "outputs"),
               "--data-dir", str(work / "app-data"), "--device", "cpu"]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError("launch.py exited before serving the page")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    if response.status == 200 and b"<html" in response.read(4096).lower():
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ls-bench-startup-"))
    python = [sys.executable, "-m", "webui"]

    help_seconds = [_wall([*python, "--help"]) for _ in range(max(args.rounds, 5))]
    cli_seconds = [_wall([*python, *_generate_args(work / "cli", work / "data", seed)]) for seed in
                   range(args.rounds)]

    from webui.cli import main as cli_main  # the same command inside this process: warm imports and caches

    cli_main(_generate_args(work / "warm", work / "data", 100))  # warm-up: imports, first model load
    warm_seconds = []
    for seed in range(args.rounds):
        start = time.perf_counter()
        cli_main(_generate_args(work / "warm", work / "data", 101 + seed))
        warm_seconds.append(time.perf_counter() - start)

    page_seconds = [_launch_to_first_page(work) for _ in range(args.rounds)]
    torch_seconds = [_wall([sys.executable, "-c", "import torch"]) for _ in range(args.rounds)]
    classes_seconds = [_wall([sys.executable, "-c", MODEL_CLASSES_IMPORT]) for _ in range(args.rounds)]
    cli, warm = statistics.median(cli_seconds), statistics.median(warm_seconds)
    summary = {
        "machine": f"CPU, {os.cpu_count()} cores", "cpu": cpu_model(),
        "help_seconds": round(statistics.median(help_seconds), 3),
        "cli_one_image_seconds": round(cli, 2),
        "in_process_one_image_seconds": round(warm, 2),
        "cli_over_in_process": round(cli / warm, 2),
        "launch_to_first_page_seconds": round(statistics.median(page_seconds), 2),
        "import_torch_only_seconds": round(statistics.median(torch_seconds), 2),
        "import_model_classes_only_seconds": round(statistics.median(classes_seconds), 2),
        "model_classes_import_over_in_process": round(statistics.median(classes_seconds) / warm, 2),
        "rounds": args.rounds,
        "what": "medians; one image = 20 steps at the model's own size, the CLI's default sampler and CFG, "
                "PNG with infotext written",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

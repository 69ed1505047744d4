"""Benchmark: `--compile` on the shipped default model, through the app's services (model manager + U-Net compiler).

    .venv/bin/python bench/compile_unet.py [--rounds 5] [--steps 20]

Runs two fresh processes that share one new inductor cache folder:
1. the first compiles from scratch: the first image (eager, while the compile starts in the background), the time
   until the compile is ready, then `--rounds` images compiled and `--rounds` eager (the U-Net's compiled-call slot
   emptied), interleaved in one process, with the largest pixel difference between the two;
2. the second, a restart, times the same compile again, now served from the cache.
Writes bench/results/compile_unet.json. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.timing import cpu_model  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "compile_unet.json"


def one_process(data_dir: Path, rounds: int, steps: int) -> dict:
    import numpy as np
    import torch

    from webui.context import AppPaths, build_context
    from webui.engine.generation import SamplingParams, txt2img
    from webui.services import core_settings

    context = build_context(AppPaths(ROOT / "models", Path(tempfile.mkdtemp()) / "outputs", data_dir), device="cpu",
                            load_extensions=False)
    context.settings.update({core_settings.COMPILE_UNET: True})
    model = context.models.get()
    params = SamplingParams(prompt="a red circle on a blue background", sampler="Euler a", steps=steps,
                            cfg_scale=6.0, width=64, height=64, seeds=[1])

    def image() -> np.ndarray:
        return np.asarray(txt2img(model, params, context.samplers)[0], dtype=int)

    started = time.perf_counter()
    image()
    first = time.perf_counter() - started
    context.compiler.wait_until_idle(1200)
    ready = time.perf_counter() - started
    router = context.compiler.router(model)
    result = {"first_image_s": round(first, 3), "compiled_after_s": round(ready, 2), "failure": router.failure}
    if rounds:
        times: dict[str, list[float]] = {"compiled": [], "eager": []}
        pictures = {}
        for _ in range(rounds):
            for mode in ("compiled", "eager"):
                # eager: the U-Net's compiled-call slot emptied for this image (turning the setting off and on would
                # start a new, unwarmed router)
                model.unet._compiled_call_impl = router if mode == "compiled" else None
                start = time.perf_counter()
                pictures[mode] = image()
                times[mode].append(time.perf_counter() - start)
        medians = {mode: statistics.median(values) for mode, values in times.items()}
        model.unet._compiled_call_impl = router
        result.update({"image_s": {mode: round(value, 4) for mode, value in medians.items()},
                       "compiled_calls": router.compiled_calls,
                       "speed_up": round(medians["eager"] / medians["compiled"], 2),
                       "max_pixel_difference": int(np.abs(pictures["compiled"] - pictures["eager"]).max()),
                       "threads": torch.get_num_threads()})
    context.shutdown()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_process(args.child, args.rounds, args.steps)))
        return
    data_dir = Path(tempfile.mkdtemp(prefix="compile-bench-"))

    def run(rounds: int) -> dict:
        output = subprocess.run([sys.executable, __file__, "--child", str(data_dir), "--rounds", str(rounds),
                                 "--steps", str(args.steps)], check=True, capture_output=True, text=True).stdout
        return json.loads(output.strip().splitlines()[-1])

    fresh = run(args.rounds)
    restart = run(0)
    result = {"what": f"default model, 64x64, {args.steps} steps Euler a, CFG 6, one image; app services",
              "fresh_cache": fresh, "restart_with_cache": restart, "cpu": cpu_model()}
    print(json.dumps(result, indent=1))
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

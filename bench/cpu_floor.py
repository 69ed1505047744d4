"""Benchmark: how fast could one image of the default model be on this CPU, at the CPU's own fp32 matrix speed?

    .venv/bin/python bench/cpu_floor.py [--out bench/results/cpu_floor-<cpu>.json]

#18 asks for the app's CPU path to be 2x faster than eager. This measures the ceiling on any such speed-up, in one run:
1. the floating-point work of one image (20 steps Euler a, CFG 6, 64x64: text encoder, 20 batched U-Net calls, VAE
   decode), counted with torch's FlopCounterMode on the engine's own txt2img;
2. the CPU's fp32 matrix throughput: the best of several large square matrix products on the same threads (an
   optimistic bound: the model's 16x16 convolutions run far below it);
3. the eager image's time, and the image's time with the U-Net compiled as `--compile` does on the CPU
   (inductor with `cpp_wrapper` + `freezing`), unless `--skip-compile`: medians of interleaved rounds, and the
   largest pixel difference between the two images.
The floor is (1) / (2): no fp32 code path can make the image faster than that, so eager / floor bounds the speed-up
from above. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from bench.timing import cpu_model, interleaved_medians  # noqa: E402
from webui.engine.generation import SamplingParams, txt2img  # noqa: E402
from webui.engine.loader import load_checkpoint  # noqa: E402
from webui.engine.samplers import SamplerRegistry  # noqa: E402

MODEL = ROOT / "models" / "Stable-diffusion" / "latent-studio-shapes.safetensors"


def matmul_gflops(size: int, rounds: int) -> float:
    """The best throughput of `rounds` fp32 products of two size x size matrices, in GFLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cpu_floor.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_checkpoint(MODEL)
    registry = SamplerRegistry()
    params = SamplingParams(prompt="a small red star at the top left on a blue background", sampler="Euler a",
                            steps=20, cfg_scale=6.0, width=64, height=64, seeds=[0])

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        txt2img(model, params, registry)
    image_flops = counter.get_total_flops()
    counts = counter.get_flop_counts()
    by_operator = {str(op): count for op, count in counts.get("Global", {}).items()}
    # Top-level modules (the text encoder, the U-Net's 20 calls together, the VAE's decoder).
    by_model = {name: sum(ops.values()) for name, ops in counts.items() if name != "Global" and "." not in name
                and sum(ops.values()) > 1e6}

    def image() -> list:
        return txt2img(model, params, registry)

    runs = {"eager": image}
    if not args.skip_compile:
        import torch._inductor.config as inductor_config

        from webui.services.unet_compiler import CPU_INDUCTOR_OPTIONS

        with inductor_config.patch(CPU_INDUCTOR_OPTIONS), torch.inference_mode():
            model.unet.compile()
            image()  # compiles
        compiled_call = model.unet._compiled_call_impl

        # nn.Module's compiled-call slot (what Module.compile() fills, and the app's `--compile` router too)
        def eager_image() -> list:  # the slot emptied, as the app's eager path runs
            model.unet._compiled_call_impl = None
            return image()

        def compiled_image() -> list:
            model.unet._compiled_call_impl = compiled_call
            return image()

        runs = {"eager": eager_image, "compiled": compiled_image}
    medians = interleaved_medians(runs, args.rounds, torch.device("cpu"))
    eager, compiled = medians["eager"], medians.get("compiled")
    pixel_difference = None
    if compiled is not None:
        first, second = (np.asarray(run()[0], dtype=np.int16) for run in (runs["eager"], runs["compiled"]))
        pixel_difference = int(np.abs(first - second).max())
    peak = max(matmul_gflops(size, 5) for size in (512, 1024, 2048))
    floor = image_flops / (peak * 1e9)
    report = {
        "cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
        "image_gflop": round(image_flops / 1e9, 3),
        "gflop_by_operator": {op: round(count / 1e9, 3) for op, count in sorted(by_operator.items())},
        "gflop_by_model": {name: round(count / 1e9, 3) for name, count in sorted(by_model.items())},
        "matmul_peak_gflops": round(peak, 1),
        "image_floor_s": round(floor, 4),
        "image_eager_s": round(eager, 4),
        "eager_gflops": round(image_flops / eager / 1e9, 1),
        "largest_possible_speedup": round(eager / floor, 2),
        # A 2x image must run every operation, on average, at this share of the matrix peak (eager runs at
        # eager_gflops / matmul_peak_gflops).
        "share_of_peak_needed_for_2x": round(2 * floor / eager, 2),
        "share_of_peak_eager": round(floor / eager, 2),
        "image_compiled_s": round(compiled, 4) if compiled else None,
        "compiled_speedup": round(eager / compiled, 2) if compiled else None,
        "share_of_peak_compiled": round(floor / compiled, 2) if compiled else None,
        "largest_pixel_difference_compiled_vs_eager": pixel_difference,
    }
    print(json.dumps(report, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

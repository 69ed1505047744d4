"""Benchmark: CPU speed options for the default model's U-Net, each against eager in the same process.

    .venv/bin/python bench/cpu_unet_options.py [--skip-compile]

One U-Net call as the sampler makes it (CFG batch of 2, a 16x16 latent, 77 tokens), median over 30 calls, for:
eager, channels_last, bf16 autocast, torch.jit trace + freeze + optimize_for_inference, torch.compile (inductor), and
torch.compile with inductor freezing. Each reports its time, its ratio to eager, its first-call (compile) time and
its largest output difference from eager. Writes bench/results/cpu_unet_options.json; docs/performance.md quotes it.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.timing import cpu_model  # noqa: E402
from webui.engine.loader import load_checkpoint  # noqa: E402

MODEL = ROOT / "models" / "Stable-diffusion" / "latent-studio-shapes.safetensors"
RESULTS = ROOT / "bench" / "results" / "cpu_unet_options.json"


def _sample(output: Any) -> torch.Tensor:
    if isinstance(output, dict):
        return output["sample"]
    return output[0] if isinstance(output, (tuple, list)) else output


def _median_ms(call: Callable[[], Any], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--skip-compile", action="store_true", help="leave out the two torch.compile variants")
    parser.add_argument("--only", default="", help="run only the variants whose name contains this (with eager)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    unet = load_checkpoint(MODEL).unet.eval()
    config = unet.config
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, config.in_channels, 16, 16, generator=generator)
    timestep = torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, config.cross_attention_dim, generator=generator)

    def eager_call(module: torch.nn.Module) -> Callable[[], Any]:
        return lambda: module(x, timestep, context, return_dict=False)

    def channels_last() -> Callable[[], Any]:
        return eager_call(copy.deepcopy(unet).to(memory_format=torch.channels_last))

    def bf16() -> Callable[[], Any]:
        def call() -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return unet(x, timestep, context, return_dict=False)
        return call

    def jit_frozen() -> Callable[[], Any]:
        traced = torch.jit.trace(unet, (x, timestep, context), strict=False, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        return lambda: frozen(x, timestep, context)

    def compiled(freezing: bool, cpp_wrapper: bool = False) -> Callable[[], Callable[[], Any]]:
        def build() -> Callable[[], Any]:
            import torch._inductor.config as inductor_config

            inductor_config.freezing = freezing
            inductor_config.cpp_wrapper = cpp_wrapper
            torch._dynamo.reset()
            return eager_call(torch.compile(copy.deepcopy(unet)))
        return build

    variants: dict[str, Callable[[], Callable[[], Any]]] = {
        "channels_last": channels_last, "bf16 autocast": bf16, "jit trace+freeze+optimize_for_inference": jit_frozen}
    if not args.skip_compile:
        variants["torch.compile (inductor)"] = compiled(False)
        variants["torch.compile (inductor, freezing)"] = compiled(True)
        variants["torch.compile (inductor, cpp_wrapper)"] = compiled(False, True)
        variants["torch.compile (inductor, cpp_wrapper, freezing)"] = compiled(True, True)

    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        reference = _sample(eager_call(unet)())
        eager_ms = _median_ms(eager_call(unet), args.rounds)
        results["eager"] = {"ms": round(eager_ms, 2), "speed_up": 1.0, "first_call_s": 0.0, "max_diff": 0.0}
        for name, build in variants.items():
            if args.only not in name:
                continue
            start = time.perf_counter()
            call = build()
            first = _sample(call())
            first_call = time.perf_counter() - start
            ms = _median_ms(call, args.rounds)
            results[name] = {"ms": round(ms, 2), "speed_up": round(eager_ms / ms, 2),
                             "first_call_s": round(first_call, 1),
                             "max_diff": float((first.float() - reference).abs().max())}
            print(name, results[name])
    summary = {"threads": torch.get_num_threads(), "what": "one U-Net call, CFG batch 2, 16x16 latent; median ms",
               "eager_ms": round(eager_ms, 2), "cpu": cpu_model(), "variants": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

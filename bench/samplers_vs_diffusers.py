"""Benchmark: each A1111 (k-diffusion) sampler against the diffusers scheduler it replaces, per step, in one process.

    .venv/bin/python bench/samplers_vs_diffusers.py            # CPU, tiny SD1-layout model, 64x64, 20 steps
    .venv/bin/python bench/samplers_vs_diffusers.py --gpu      # CUDA fp16, SD1.5-size random weights, 512x512

For every k-diffusion sampler name with a "(diffusers)" twin, both run through the engine's own loop (same weights,
same prompt, same seed, same steps): `generate_latents`, i.e. text encoding + the denoising loop, no VAE decode. Rounds
are interleaved in a shuffled order (bench/timing.py) so machine noise hits both alike. Reports the median time per
step of each and the ratio k / diffusers (goal: <= 1.05), and writes bench/results/samplers_vs_diffusers.json.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webui import offline  # noqa: E402

offline.enforce()

from bench.timing import device_label, interleaved_medians  # noqa: E402
from webui.engine.generation import SamplingParams, generate_latents  # noqa: E402
from webui.engine.loader import load_checkpoint  # noqa: E402
from webui.engine.samplers import DIFFUSERS_SUFFIX, SamplerRegistry  # noqa: E402
from webui.engine.synthetic import write_synthetic_checkpoint  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "samplers_vs_diffusers.json"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true", help="CUDA fp16 with SD1.5-size random weights")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, help="image side (default 64 on CPU, 512 on GPU)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU intra-op threads (1: stable timings on a shared machine, as the tests run)")
    parser.add_argument("--samplers", help="comma-separated k sampler names (default: every one with a twin)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if not args.gpu:
        torch.set_num_threads(args.threads)
    if args.gpu and not torch.cuda.is_available():
        raise SystemExit("--gpu: no CUDA device here")

    work = Path(tempfile.mkdtemp(prefix="ls-bench-samplers-"))
    path = work / "bench.safetensors"
    write_synthetic_checkpoint(path, "sd1", size="real" if args.gpu else "tiny",
                               dtype=torch.float16 if args.gpu else None)
    device = torch.device("cuda" if args.gpu else "cpu")
    model = load_checkpoint(path, dtype=torch.float16 if args.gpu else torch.float32).to(device)
    size = args.size or (512 if args.gpu else 64)
    registry = SamplerRegistry()
    pairs = [(name, name + DIFFUSERS_SUFFIX) for name in registry.names()
             if registry.resolve(name)[0].path == "k-diffusion" and name + DIFFUSERS_SUFFIX in registry.names()
             and (not args.samplers or name in args.samplers.split(","))]

    def runner(sampler: str):
        params = SamplingParams(prompt="a red circle on a blue background", negative_prompt="blurry", sampler=sampler,
                                steps=args.steps, cfg_scale=7.0, width=size, height=size, seeds=[1])
        return lambda: generate_latents(model, params, registry)

    results: dict[str, dict[str, float]] = {}
    for k_name, diffusers_name in pairs:
        print(f"{k_name} vs {diffusers_name}")
        medians = interleaved_medians({"k": runner(k_name), "diffusers": runner(diffusers_name)}, args.rounds, device)
        per_step = {name: seconds / args.steps * 1000 for name, seconds in medians.items()}
        ratio = medians["k"] / medians["diffusers"]
        print(f"  per step: k {per_step['k']:.2f} ms, diffusers {per_step['diffusers']:.2f} ms, ratio {ratio:.3f}")
        results[k_name] = {"k_ms_per_step": round(per_step["k"], 2),
                           "diffusers_ms_per_step": round(per_step["diffusers"], 2), "ratio": round(ratio, 3)}
    summary = {
        "device": device_label(device), "size": size, "steps": args.steps, "rounds": args.rounds,
        "what": "generate_latents (text encoding + denoising loop), median per step, k-diffusion / diffusers twin",
        "samplers": results, "max_ratio": max(r["ratio"] for r in results.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

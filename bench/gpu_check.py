"""The GPU session for issue #18, in one device call of under 10 minutes: `pytest -m gpu`, then the benchmark.

    OUT=/tmp/out python bench/gpu_check.py              # on a CUDA machine (device tool), fp16
    OUT=/tmp/out python bench/gpu_check.py --rehearse   # on a CPU: tiny files, fp32, 64x64, 4 steps, no compile

1. Writes random-weight SD 1.5 and SDXL checkpoints in the real single-file layout (fp16 on disk).
2. Runs `pytest -m gpu tests/test_gpu.py` on them (txt2img, img2img, inpaint against diffusers in fp32, fp16 and bf16;
   a swap under a small VRAM budget; SDXL under --medvram and --lowvram against the whole model); its log goes to
   $OUT/gpu_tests.log.
3. Per family, SD 1.5 at 512² and SDXL at 1024², 20 steps DPM++ 2M, CFG 7, batch 1, medians of interleaved rounds
   on the same weights: diffusers' pipeline built from the project's own modules (eager, then its U-Net compiled);
   the project's engine loop; the project end to end (prompt -> PNG on disk through the generation service); and
   both again with the project's `--compile` router once warmed. Peak VRAM of each.
4. Model manager: cold loads (the page cache dropped first when permitted) and swaps between the two cached
   checkpoints (RAM -> device), medians.
5. SDXL placed whole, with --medvram and with --lowvram: one image each, seconds and peak VRAM.
Writes $OUT/gpu_check.json and bench/results/gpu_check.json. Every stage is planned against the session's clock
(`--budget`, seconds) and skipped, saying so, when it would not fit. Nothing is asserted.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.cold_load import drop_page_cache  # noqa: E402
from bench.timing import device_label, sync_device  # noqa: E402

STARTED = time.time()


def say(*parts: object) -> None:
    print(f"[{time.time() - STARTED:6.1f}s]", *parts, flush=True)


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(seconds, peak device GiB) of one call."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync_device(device)
    start = time.perf_counter()
    fn()
    sync_device(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    return seconds, peak


def interleaved(runs: dict, rounds: int, device: torch.device) -> dict[str, dict[str, float]]:
    """One warm-up call each, then `rounds` rounds in a rotating order; median seconds and the largest peak."""
    for fn in runs.values():
        fn()
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    names = list(runs)
    for index in range(rounds):
        for name in names[index % len(names):] + names[:index % len(names)]:
            seen[name].append(timed(runs[name], device))
    return {name: {"ms": round(statistics.median(t for t, _ in values) * 1000, 1),
                   "peak_gib": round(max(p for _, p in values), 2)} for name, values in seen.items()}


def bench_family(context, path: Path, side: int, steps: int, rounds: int, compile_too: bool, work: Path,
                 deadline: float) -> dict:
    from bench.txt2img_vs_diffusers import diffusers_image, diffusers_twin
    from webui.engine.generation import SamplingParams, txt2img
    from webui.services.requests import GenerationRequest

    model = context.models.get(path.stem)
    device = model.device
    sampler, prompt, negative, seeds = "DPM++ 2M", "a red circle on a blue background", "blurry", [1]
    spec, schedule = context.samplers.resolve(f"{sampler} (diffusers)")
    pipe = diffusers_twin(model, spec.build(schedule, model.prediction_type), work / path.stem)
    params = SamplingParams(prompt=prompt, negative_prompt=negative, sampler=sampler, steps=steps, cfg_scale=7.0,
                            width=side, height=side, seeds=seeds)
    request = GenerationRequest(prompt=prompt, negative_prompt=negative, sampler_name=sampler, steps=steps,
                                cfg_scale=7.0, width=side, height=side, seed=seeds[0], model=path.stem)

    def run_diffusers() -> None:
        diffusers_image(pipe, model, prompt, negative, steps, side, seeds)

    runs = {"diffusers eager": run_diffusers,
            "project engine": lambda: txt2img(model, params, context.samplers),
            "project end to end": lambda: context.generation.run(context.jobs.create("bench", "txt2img"), request)}
    result = {"eager": interleaved(runs, rounds, device)}
    say(path.stem, "eager", result["eager"])
    if compile_too and time.time() - STARTED < deadline:
        started = time.perf_counter()
        context.compiler.set_enabled(True, [model])
        txt2img(model, params, context.samplers)  # eager, while the router compiles this shape in the background
        context.compiler.wait_until_idle(max(1.0, deadline - (time.time() - STARTED)))
        router = context.compiler.router(model)
        result["project_compile_s"] = round(time.perf_counter() - started, 1)
        result["project_compile_failure"] = router.failure if router else "not attached"
        started = time.perf_counter()
        compiled_unet = torch.compile(model.unet, mode="max-autotune-no-cudagraphs")
        original, pipe.unet = pipe.unet, compiled_unet
        run_diffusers()
        result["diffusers_compile_s"] = round(time.perf_counter() - started, 1)
        compiled_runs = {"diffusers compiled": run_diffusers,
                         "project engine compiled": runs["project engine"],
                         "project end to end compiled": runs["project end to end"]}
        result["compiled"] = interleaved(compiled_runs, rounds, device)
        pipe.unet = original
        context.compiler.set_enabled(False, [model])
        say(path.stem, "compiled", result["compiled"])
    else:
        result["compiled"] = "skipped (no time left, or --no-compile)"
    eager = result["eager"]
    result["ratios"] = {"end to end / diffusers eager": round(
        eager["project end to end"]["ms"] / eager["diffusers eager"]["ms"], 3),
        "engine / diffusers eager": round(eager["project engine"]["ms"] / eager["diffusers eager"]["ms"], 3)}
    return result


def bench_manager(context, paths: list[Path], rounds: int) -> dict:
    """Cold loads (page cache dropped when permitted) and swaps between cached checkpoints."""
    models = context.models
    device = models.device
    for path in paths:
        models.unload(path.stem)  # so that the first load below is cold
    models.set_ram_cache_size(len(paths))
    cold = {}
    for path in paths:
        dropped = drop_page_cache()
        seconds, peak = timed(lambda: models.get(path.stem), device)
        cold[path.stem] = {"s": round(seconds, 3), "page_cache_dropped": dropped, "peak_gib": round(peak, 2)}
    swaps: dict[str, list[float]] = {path.stem: [] for path in paths}
    for _ in range(rounds):
        for path in paths:
            swaps[path.stem].append(timed(lambda: models.get(path.stem), device)[0])
    return {"cold_load": cold, "swap_from_ram_s": {name: round(statistics.median(v), 3) for name, v in swaps.items()},
            "residency": [entry.__dict__ for entry in models.residency()]}


def bench_offload(context, path: Path, side: int, steps: int) -> dict:
    """One image with the model placed whole, with --medvram and with --lowvram: seconds and peak device memory."""
    from webui.engine.generation import SamplingParams, txt2img

    params = SamplingParams(prompt="a red circle on a blue background", negative_prompt="blurry",
                            sampler="DPM++ 2M", steps=steps, cfg_scale=7.0, width=side, height=side, seeds=[1])
    result = {}
    for mode in ("auto", "medvram", "lowvram"):
        context.models.set_offload_mode(mode)
        model = context.models.get(path.stem)
        txt2img(model, params, context.samplers)  # warm-up (the first moves, allocator growth)
        seconds, peak = timed(lambda: txt2img(model, params, context.samplers), context.models.device)
        result["whole" if mode == "auto" else mode] = {"s": round(seconds, 3), "peak_gib": round(peak, 2)}
    context.models.set_offload_mode("auto")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rehearse", action="store_true", help="on a CPU: tiny files, fp32, 64x64, 4 steps")
    parser.add_argument("--budget", type=float, default=560, help="seconds this session may take")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-tests", action="store_true")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    if not args.rehearse and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; use --rehearse to try the script on a CPU")
    from webui import offline

    offline.enforce()
    from webui.context import AppPaths, build_context
    from webui.engine.synthetic import write_synthetic_checkpoint

    size = "tiny" if args.rehearse else "real"
    work = Path(tempfile.mkdtemp(prefix="gpu-check-work-"))
    folder = work / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    paths = []
    for family in ("sd1", "sdxl"):
        path = folder / f"random-{family}-{size}.safetensors"
        write_synthetic_checkpoint(path, family, size=size, seed=3, dtype=torch.float16)
        paths.append(path)
        say("wrote", path.name, f"{path.stat().st_size / 2**30:.2f} GiB")
    report: dict = {"device": device_label(torch.device("cpu" if args.rehearse else "cuda")),
                    "torch": torch.__version__, "rehearsal": args.rehearse}
    if not args.no_tests:
        env = dict(os.environ, LATENT_STUDIO_GPU_FILES=str(folder), LATENT_STUDIO_GPU_SIZE=size,
                   **({"LATENT_STUDIO_GPU_DEVICE": "cpu"} if args.rehearse else {}))
        command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-s", "-p", "no:cacheprovider",
                   str(ROOT / "tests" / "test_gpu.py")]
        with open(out / "gpu_tests.log", "w") as log:
            tests = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   timeout=max(30, args.budget * 0.45))
        summary = (out / "gpu_tests.log").read_text().strip().splitlines()[-1]
        report["gpu_tests"] = {"exit_code": tests.returncode, "summary": summary}
        say("tests:", summary)
    device, precision = ("cpu", "fp32") if args.rehearse else ("cuda", "fp16")
    context = build_context(AppPaths(work / "models", work / "outputs", work / "data"), device=device,
                            precision=precision, load_extensions=False)
    sides = {"sd1": 64, "sdxl": 64} if args.rehearse else {"sd1": 512, "sdxl": 1024}
    steps = 4 if args.rehearse else 20
    compile_too = not args.no_compile and not args.rehearse
    report["manager"] = bench_manager(context, paths, args.rounds)
    say("manager:", report["manager"]["cold_load"], report["manager"]["swap_from_ram_s"])
    for path, family in zip(paths, ("sd1", "sdxl")):
        report[family] = bench_family(context, path, sides[family], steps, args.rounds, compile_too, work,
                                      deadline=args.budget * 0.85)
    if time.time() - STARTED < args.budget * 0.9:
        report["offload_sdxl"] = bench_offload(context, paths[1], sides["sdxl"], steps)
        say("offload:", report["offload_sdxl"])
    else:
        report["offload_sdxl"] = "skipped (no time left)"
    context.shutdown()
    text = json.dumps(report, indent=1, default=str)
    (out / "gpu_check.json").write_text(text + "\n")
    if not args.rehearse:
        (ROOT / "bench" / "results" / "gpu_check.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

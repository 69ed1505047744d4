"""`python -m webui generate`: txt2img from the command line through the same service as the UI."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every generating command (generate, and later img2img/outpaint)."""
    parser.add_argument("--model", help="checkpoint name in models/Stable-diffusion, or a path to a file")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--sampler", default="DPM++ 2M", help="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M Karras'")
    parser.add_argument("--schedule", default="Automatic", help="schedule type: Automatic, Karras, Exponential, ...")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=-1, help="-1 for random; image i uses seed+i")
    parser.add_argument("--width", type=int, help="default: the model's declared resolution")
    parser.add_argument("--height", type=int)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--batch-count", type=int, default=1)
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when present)")
    parser.add_argument("--precision", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="txt2img; prints the path of every written file")
    add_sampling_arguments(parser)
    parser.set_defaults(run=run)


def request_fields(args: argparse.Namespace) -> dict:
    """The GenerationRequest fields every generating command takes from `add_sampling_arguments`."""
    return dict(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        sampler_name=args.sampler,
        scheduler=args.schedule,
        steps=args.steps,
        cfg_scale=args.cfg,
        width=args.width,
        height=args.height,
        seed=args.seed,
        batch_size=args.batch_size,
        n_iter=args.batch_count,
        model=args.model,
    )


def run_and_print(args: argparse.Namespace, request, runner=None) -> int:
    """Build the services, run one job, print each written file; exit 1 if any image could not be saved."""
    from webui.context import AppPaths, build_context
    from webui.services.outputs import OutputStore

    paths = AppPaths.default(models_dir=args.models_dir, outputs_dir=args.out)
    context = build_context(
        paths, device=args.device, precision=args.precision, outputs=OutputStore(args.out, flat=True)
    )
    runner = runner(context.samplers) if runner else None
    job = context.jobs.create(owner="cli", kind=runner.mode if runner else "txt2img")
    result = context.generation.run(job, request, runner)
    for path in result.paths:
        print(path, flush=True)
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 0 if len(result.paths) == len(result.images) else 1


def run(args: argparse.Namespace) -> int:
    from webui.services.requests import GenerationRequest

    return run_and_print(args, GenerationRequest(**request_fields(args)))

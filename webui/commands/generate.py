"""`python -m webui generate`: txt2img from the command line through the same service as the UI."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def cli_data_dir() -> Path:
    """The CLI's default `--data-dir` (model hashes, settings, which extensions are disabled): a per-user cache,
    `$XDG_CACHE_HOME/latent-studio` or `~/.cache/latent-studio`, so the command never writes into the project
    folder (which may be read-only or shared)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "latent-studio"


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by every generating command (generate, and later img2img/outpaint)."""
    parser.add_argument("--model", help="checkpoint name in models/Stable-diffusion, or a path to a file")
    parser.add_argument("--vae", help="a file in models/VAE for this job (default: the checkpoint's own VAE)")
    parser.add_argument("--prompt", required=True,
                        help="the prompt; <lora:NAME:WEIGHT> tags apply LoRAs from models/Lora, and an embedding's "
                             "file stem (models/embeddings) uses it")
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
    parser.add_argument("--extensions-dir", type=Path, action="append", default=[], metavar="DIR",
                        help="another folder of extensions (repeatable); the built-in ones and the project's "
                             "extensions/ always load; their generation hooks run as in the app")
    parser.add_argument("--data-dir", type=Path, metavar="DIR",
                        help="settings and caches (default: $XDG_CACHE_HOME/latent-studio or ~/.cache/latent-studio; "
                             "give the app's folder, e.g. cache/, to use its settings and enabled extensions)")
    parser.add_argument(
        "--controlnet", action="append", default=[], metavar="SPEC",
        help="a ControlNet unit, repeatable: 'model=NAME,image=PATH,module=canny,weight=1,start=0,end=1,"
             "mode=balanced' (also resize=just-resize|crop-and-resize|resize-and-fill, res=512, "
             "threshold-a=100, threshold-b=200, pixel-perfect=true; mode: balanced, prompt, controlnet; "
             "in img2img a unit without image= uses the input image)",
    )


# --controlnet keys -> sd-webui-controlnet's API field names (what ControlUnitRequest.from_dict reads)
CONTROLNET_KEYS = {
    "model": "model", "image": "image", "module": "module", "weight": "weight", "start": "guidance_start",
    "end": "guidance_end", "mode": "control_mode", "resize": "resize_mode", "res": "processor_res",
    "threshold-a": "threshold_a", "threshold-b": "threshold_b", "pixel-perfect": "pixel_perfect",
    "mask": "mask_image",
}


def parse_controlnet_spec(spec: str, index: int, limits=None) -> dict:
    """One `--controlnet` value -> a unit dict in the API spelling; image files are read with the upload checks."""
    from webui.services.uploads import load_image

    unit: dict = {"enabled": True}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in CONTROLNET_KEYS:
            raise ValueError(f"--controlnet #{index + 1}: {part!r} is not KEY=VALUE with KEY one of "
                             f"{', '.join(CONTROLNET_KEYS)}")
        field = CONTROLNET_KEYS[key]
        value = value.strip()
        if field in ("image", "mask_image"):
            unit[field] = load_image(Path(value), f"--controlnet #{index + 1} {key}", limits)
        elif field == "resize_mode":
            unit[field] = value.replace("-", " ")
        else:
            unit[field] = value
    if "model" not in unit:
        raise ValueError(f"--controlnet #{index + 1}: give model=NAME (a file in models/ControlNet)")
    return unit


COMMANDS = {"generate": "txt2img; prints the path of every written file"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help=COMMANDS["generate"])
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
        vae=args.vae,
        extensions=controlnet_extension_controls(args),
    )


def controlnet_extension_controls(args: argparse.Namespace) -> dict:
    """The ControlNet extension's controls for the request (A1111's alwayson_scripts shape), or none."""
    from webui.services.uploads import UploadLimits

    limits = UploadLimits(args.max_image_pixels) if getattr(args, "max_image_pixels", None) else None
    units = [parse_controlnet_spec(spec, i, limits) for i, spec in enumerate(args.controlnet)]
    return {"controlnet": {"args": units}} if units else {}


def run_and_print(args: argparse.Namespace, request, runner=None) -> int:
    """Build the services, run one job, print each written file; exit 1 if any image could not be saved."""
    from webui.context import AppPaths, build_context
    from webui.services.outputs import OutputStore

    paths = AppPaths.default(models_dir=args.models_dir, outputs_dir=args.out,
                             extension_dirs=tuple(args.extensions_dir), data_dir=args.data_dir or cli_data_dir())
    context = build_context(
        paths, device=args.device, precision=args.precision, outputs=OutputStore(args.out, flat=True)
    )
    # img2img runners get the preprocessors, so depth models can estimate their depth map
    runner = runner(context.samplers, context.controlnet.preprocessors) if runner else None
    context.outputs.remove_stale_temporaries()  # what a killed earlier run left half-written
    try:
        job = context.generation.submit("cli", request, runner)  # the same queue as the UI and the HTTP API
        context.queue.wait(job)
    finally:
        context.shutdown()  # a caller in the same process (a script, the tests) gets no stray queue back
    if job.status == "failed":
        raise job.exception or RuntimeError(job.error)
    result = job.result
    for path in result.paths:
        print(path, flush=True)
    for warning in result.warnings:
        print(f"warning: {warning}")
    return 0 if len(result.paths) == len(result.images) else 1


def run(args: argparse.Namespace) -> int:
    from webui.services.requests import GenerationRequest, parse_request

    return run_and_print(args, parse_request(GenerationRequest, request_fields(args)))

"""`python -m webui make-dataset | train-ae | train-ldm | export-default | train-controlnet | export-controlnet |
eval-adherence | eval-controlnet` subcommands."""

from __future__ import annotations

import argparse


def _lazy(module: str, function: str = "run"):
    def runner(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), function)(args) or 0)

    return runner


def register(subparsers: argparse._SubParsersAction) -> None:
    from . import train_ae

    parser = subparsers.add_parser("train-ae", help="stage 1: train the KL autoencoder on synthetic shapes")
    train_ae.add_arguments(parser)
    parser.set_defaults(run=_lazy("webui.training.train_ae"))

    try:
        from . import train_ldm
    except ImportError:
        train_ldm = None
    if train_ldm is not None:
        parser = subparsers.add_parser("train-ldm", help="stage 2: train the text-conditioned latent diffusion model")
        train_ldm.add_arguments(parser)
        parser.set_defaults(run=_lazy("webui.training.train_ldm"))
        parser = subparsers.add_parser("export-default", help="write a trained run as one SD1-layout .safetensors")
        train_ldm.add_export_arguments(parser)
        parser.set_defaults(run=_lazy("webui.training.train_ldm", "run_export"))

    try:
        from . import train_controlnet
    except ImportError:
        train_controlnet = None
    if train_controlnet is not None:
        parser = subparsers.add_parser("train-controlnet", help="train a ControlNet (Canny maps) for the default model")
        train_controlnet.add_arguments(parser)
        parser.set_defaults(run=_lazy("webui.training.train_controlnet"))
        parser = subparsers.add_parser("export-controlnet", help="write a train-controlnet run as one cldm-1.1 file")
        train_controlnet.add_export_arguments(parser)
        parser.set_defaults(run=_lazy("webui.training.train_controlnet", "run_export"))

    parser = subparsers.add_parser("make-dataset", help="render synthetic captioned shapes to a folder (PNG + captions)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.set_defaults(run=_make_dataset)

    try:
        from webui.evaluation import adherence
    except ImportError:
        adherence = None
    if adherence is not None:
        parser = subparsers.add_parser("eval-adherence", help="prompt-adherence benchmark (no learned model)")
        adherence.add_arguments(parser)
        parser.set_defaults(run=_lazy("webui.evaluation.adherence"))
        parser = subparsers.add_parser("eval-controlnet", help="ControlNet benchmark: IoU with the control map, on/off")
        from webui.evaluation import controlnet_eval

        controlnet_eval.add_arguments(parser)
        parser.set_defaults(run=_lazy("webui.evaluation.controlnet_eval"))


def _make_dataset(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .dataset import render, scene_at

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "captions.tsv").open("w") as handle:
        for i in range(args.count):
            scene = scene_at(i, args.seed)
            render(scene, args.size).save(out / f"{i:06d}.png")
            handle.write(f"{i:06d}.png\t{scene.caption}\n")
    print(f"wrote {args.count} images to {out}")
    return 0

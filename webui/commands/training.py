"""`python -m webui make-dataset | train-ae | train-ldm | export-default | train-controlnet | export-controlnet |
train-lora` subcommands.

This is the layer that wires the adherence evaluator into stage-1 training (as a judge passed to `train_ae.run`), so
the training package never imports its own judge.
"""

from __future__ import annotations

import argparse
import importlib


# The commands this module registers and their one-line help: `python -m webui --help` lists them without
# importing the training code (webui/cli.py).
COMMANDS = {
    "train-ae": "stage 1: train the KL autoencoder on synthetic shapes",
    "train-ldm": "stage 2: train the text-conditioned latent diffusion model",
    "export-default": "write a trained run as one SD1-layout .safetensors",
    "train-controlnet": "train a ControlNet (Canny maps) for the default model",
    "export-controlnet": "write a train-controlnet run as one cldm-1.1 file",
    "train-lora": "train a LoRA on a folder of captioned images (kohya format)",
    "make-dataset": "render synthetic captioned shapes to a folder (PNG + captions)",
}


def _lazy(module: str, function: str = "run"):
    def runner(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), function)(args) or 0)

    return runner


def run_train_ae(args: argparse.Namespace) -> int:
    """train-ae with the adherence evaluator as its judge (reconstruction_adherence in metrics.json)."""
    from webui.training import train_ae

    return int(train_ae.run(args, judges={"reconstruction_adherence": reconstruction_adherence}) or 0)


def reconstruction_adherence(vae, size: int, count: int = 400) -> dict[str, float]:
    """The adherence evaluator run on reconstructions of held-out single-object scenes: the ceiling that any latent
    diffusion model on this autoencoder can reach (PSNR alone misses blunted star points and crosses)."""
    import numpy as np
    import torch

    from webui.evaluation.adherence import score, summarise
    from webui.shapes import eval_scenes, render
    from webui.training.common import to_tensor, to_uint8
    from webui.training.train_ae import reconstruct

    scenes = eval_scenes(count, objects=1)
    images = to_tensor(np.stack([np.asarray(render(s, size)) for s in scenes]))
    with torch.no_grad():
        outputs = to_uint8(reconstruct(vae, images))
    return summarise([score(image, scene) for image, scene in zip(outputs, scenes)])


def register(subparsers: argparse._SubParsersAction) -> None:
    from webui.training import train_ae, train_controlnet, train_ldm, train_lora

    parser = subparsers.add_parser("train-ae", help=COMMANDS["train-ae"])
    train_ae.add_arguments(parser)
    parser.set_defaults(run=run_train_ae)

    parser = subparsers.add_parser("train-ldm", help=COMMANDS["train-ldm"])
    train_ldm.add_arguments(parser)
    parser.set_defaults(run=_lazy("webui.training.train_ldm"))
    parser = subparsers.add_parser("export-default", help=COMMANDS["export-default"])
    train_ldm.add_export_arguments(parser)
    parser.set_defaults(run=_lazy("webui.training.train_ldm", "run_export"))

    parser = subparsers.add_parser("train-controlnet", help=COMMANDS["train-controlnet"])
    train_controlnet.add_arguments(parser)
    parser.set_defaults(run=_lazy("webui.training.train_controlnet"))
    parser = subparsers.add_parser("export-controlnet", help=COMMANDS["export-controlnet"])
    train_controlnet.add_export_arguments(parser)
    parser.set_defaults(run=_lazy("webui.training.train_controlnet", "run_export"))

    parser = subparsers.add_parser("train-lora", help=COMMANDS["train-lora"])
    train_lora.add_arguments(parser)
    parser.set_defaults(run=_lazy("webui.training.train_lora"))

    parser = subparsers.add_parser("make-dataset", help=COMMANDS["make-dataset"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.set_defaults(run=_make_dataset)


def _make_dataset(args: argparse.Namespace) -> int:
    from pathlib import Path

    from webui.shapes import render, scene_at

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "captions.tsv").open("w") as handle:
        for i in range(args.count):
            scene = scene_at(i, args.seed)
            render(scene, args.size).save(out / f"{i:06d}.png")
            handle.write(f"{i:06d}.png\t{scene.caption}\n")
    print(f"wrote {args.count} images to {out}")
    return 0

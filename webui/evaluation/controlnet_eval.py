"""Does the default model's ControlNet put the shape where the control map says? (`python -m webui eval-controlnet`)

For held-out scenes (the adherence benchmark's seed, never trained on), the control is the `canny` preprocessor's map
of the scene image and the prompt names colour, shape and background but no position or size
(`a red circle on a blue background`), so the prompt alone cannot place the shape: without a position the base model
puts it at the bottom right. Each scene is generated twice with the same seed through the app's own txt2img and
ControlNet extension, unit on (weight 1, Balanced) and off. Both the scene and the generated image are segmented with
the adherence evaluator's colour segmentation (nearest palette colour, border colours = background, largest
component of the largest non-background colour), and the object masks are compared by IoU.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from webui.evaluation.adherence import colour_components
from webui.shapes import Scene, eval_scenes, render, short_caption

DEFAULT_CONTROLNET = Path("models/ControlNet/latent-studio-shapes-control.safetensors")
DEFAULT_MODEL = Path("models/Stable-diffusion/latent-studio-shapes.safetensors")
DEFAULT_SAMPLER = "DPM++ 2M"  # the UI's and the API's default sampler
DEFAULT_CFG = 7.0  # the UI's and the API's default CFG scale


@dataclass
class Segment:
    """The dominant object of an image: its palette colour (None when nothing stands out from the background)."""

    colour: str | None
    mask: np.ndarray


def dominant_object(image: Image.Image | np.ndarray, min_area: int = 12) -> Segment:
    """The largest connected component of any non-background palette colour (the evaluator's `detect`, with the
    mask kept), so generated images and ground truth are segmented the same way."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    components, _ = colour_components(array, min_area)
    if not components:
        return Segment(None, np.zeros(array.shape[:2], dtype=bool))
    largest = max(components, key=lambda c: c.area)  # the first colour wins a tie, as in `detect`
    return Segment(largest.colour, largest.mask)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def evaluate(model, controlnet, scenes: list[Scene], steps: int = 20, sampler: str = DEFAULT_SAMPLER,
             cfg: float = DEFAULT_CFG, weight: float = 1.0, seed_base: int = 0, keep: list | None = None) -> dict:
    """Mean IoU (unit on / off) with the scene's own object mask, and how often the dominant object has the
    prompt's colour. `keep` collects [map, on, off] image triples for a grid."""
    from webui.engine.controlnet import ControlNetExtension, ControlUnit, control_image
    from webui.engine.generation import SamplingParams, txt2img
    from webui.engine.masking import ResizeMode
    from webui.engine.samplers import SamplerRegistry
    from webui.engine.preprocessors import preprocess_batch

    registry = SamplerRegistry()
    width, height = model.default_resolution
    images = [render(scene, width) for scene in scenes]
    # Canny, as the shipped ControlNet was trained (its file's metadata says so)
    maps = preprocess_batch(np.stack([np.asarray(image) for image in images]), "canny",
                            Path("models/ControlNetPreprocessor"))
    per_scene = []
    from tqdm.auto import tqdm

    for i, (scene, image, control) in enumerate(tqdm(list(zip(scenes, images, maps)), desc="eval-controlnet",
                                                     mininterval=5)):
        truth = dominant_object(image)
        control_map = Image.fromarray(control).convert("RGB")
        params = SamplingParams(prompt=short_caption(scene), negative_prompt="", sampler=sampler, steps=steps,
                                cfg_scale=cfg, width=width, height=height, seeds=[seed_base + i])
        unit = ControlUnit(controlnet, control_image(control_map, width, height, ResizeMode.CROP_AND_RESIZE),
                           weight=weight)
        on = txt2img(model, params, registry, [ControlNetExtension([unit])])[0]
        off = txt2img(model, params, registry)[0]
        row = {"prompt": params.prompt, "position": scene.objects[0].position, "size": scene.objects[0].size}
        for name, generated in (("on", on), ("off", off)):
            found = dominant_object(generated)
            row[f"iou_{name}"] = round(iou(found.mask, truth.mask), 4)
            row[f"colour_{name}"] = found.colour == scene.objects[0].colour
        per_scene.append(row)
        if keep is not None:
            keep.append((control_map, on, off))
    count = len(per_scene)
    summary = {
        "scenes": count,
        "mean_iou_on": round(sum(r["iou_on"] for r in per_scene) / count, 4),
        "mean_iou_off": round(sum(r["iou_off"] for r in per_scene) / count, 4),
        "colour_on": round(sum(r["colour_on"] for r in per_scene) / count, 4),
        "colour_off": round(sum(r["colour_off"] for r in per_scene) / count, 4),
        "iou_on_at_least_0.5": round(sum(r["iou_on"] >= 0.5 for r in per_scene) / count, 4),
    }
    return {"summary": summary, "per_scene": per_scene}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--controlnet", type=Path, default=DEFAULT_CONTROLNET)
    parser.add_argument("--scenes", type=int, default=100, help="held-out single-object scenes")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default=DEFAULT_SAMPLER)
    parser.add_argument("--cfg", type=float, default=DEFAULT_CFG)
    parser.add_argument("--weight", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/results/controlnet-default.json"))
    parser.add_argument("--grid", type=Path, default=None, help="also save [map | on | off] rows of the first 16 here")


def run(args: argparse.Namespace) -> int:
    import torch

    from webui.engine.controlnet_loader import check_compatible, load_controlnet
    from webui.engine.loader import load_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_checkpoint(args.model)
    controlnet = load_controlnet(args.controlnet)
    check_compatible(controlnet, model)
    started = time.time()
    keep: list = []
    result = evaluate(model, controlnet.model, eval_scenes(args.scenes, objects=1), args.steps, args.sampler,
                      args.cfg, args.weight, keep=keep)
    report = {
        "model": str(args.model), "controlnet": str(args.controlnet), "preprocessor": "canny (100/200, 64 px)",
        "prompt_form": "a {colour} {shape} on a {background} background (no position, no size)",
        "sampler": args.sampler, "steps": args.steps, "cfg": args.cfg, "weight": args.weight,
        "control_mode": "Balanced", "seeds": f"0..{args.scenes - 1}", "scene_seed": "dataset.EVAL_SEED (held out)",
        "goals": {"mean_iou_on": ">= 0.8", "mean_iou_off": "<= 0.3", "colour_on": ">= 0.9"},
        **result["summary"], "seconds": round(time.time() - started, 1), "per_scene": result["per_scene"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(result["summary"]))
    if args.grid and keep:
        from webui.engine.grids import save_grid

        cells = [np.asarray(im.convert("RGB")) for triple in keep[:16] for im in triple]
        save_grid(np.stack(cells), args.grid, columns=6)
    return 0

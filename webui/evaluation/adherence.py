"""Prompt-adherence benchmark with no learned model: colour from pixel statistics, shape from OpenCV contours.

Detection, for one image:
1. Every pixel gets the nearest palette colour (RGB distance).
2. The background is the set of palette colours covering >= 20% of the image border (objects never touch the border;
   two-tone backgrounds give two colours).
3. Each remaining colour's largest connected component is a candidate object; the `n` largest (n = objects in the
   prompt) are the detections, matched to the prompt's objects by colour.
4. Shape: fixed hand-set rules on solidity (pixels / convex-hull area) and extent (pixels / bounding box):
   star < 0.78 solidity <= cross < 0.94 <= {square: extent >= 0.9, circle: >= 0.68, else triangle}.
   Position: nearest of the five position centres to the centroid. Size: the longer bounding-box side against a fixed
   threshold between the rendered small and large sizes.
The evaluator is scored on rendered ground-truth images too (`ground_truth_accuracy`), so its own error is known.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from webui.shapes import (
    NEW_SHAPES, PALETTE, POSITIONS, SIZES, Scene, ShapeObject, eval_scenes, render,
)

_NAMES = list(PALETTE)
RECTANGLE_ASPECT, RECTANGLE_EXTENT = 1.5, 0.7  # at least 1.5 times as wide as tall, and solid
# The shape rules' thresholds (module docstring, step 4); the new-shape rules reuse them.
STAR_SOLIDITY, CONVEX_SOLIDITY = 0.78, 0.94
SQUARE_EXTENT, CIRCLE_EXTENT = 0.9, 0.68
# A triangle's centroid sits a sixth of its height below its bounding box's middle, a diamond's on it.
DIAMOND_CENTROID_OFFSET = 0.08
# No trained shape has a hole; a ring's is a quarter of its disc, and the shipped autoencoder keeps at least a
# twentieth.
RING_HOLE_SHARE = 0.05
_RGB = np.array([PALETTE[n] for n in _NAMES], dtype=np.float32)


@dataclass
class Detection:
    colour: str
    shape: str
    position: str
    size: str
    area: int


def label_pixels(image: np.ndarray) -> np.ndarray:
    """[H, W] indices into the palette (nearest colour)."""
    pixels = image.astype(np.float32)
    distances = ((pixels[:, :, None, :] - _RGB[None, None]) ** 2).sum(-1)
    return distances.argmin(-1)


def background_colours(labels: np.ndarray, share: float = 0.2) -> set[str]:
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    counts = np.bincount(border, minlength=len(_NAMES))
    return {_NAMES[i] for i in np.flatnonzero(counts >= share * len(border))}


def _filled_area(contour: np.ndarray, shape: tuple[int, ...]) -> float:
    """Pixels inside an outline, holes included (counted like `mask.sum()`, not as a polygon's area)."""
    filled = np.zeros(shape[:2], dtype=np.uint8)
    cv2.drawContours(filled, [contour], -1, 1, thickness=-1)
    return max(float(filled.sum()), 1.0)


def classify_shape(mask: np.ndarray, new_shapes: bool = False) -> str:
    """The shape rules above. With `new_shapes` (only for prompts that name a shape from `shapes.NEW_SHAPES`, so the
    trained prompts are scored exactly as before), a solid blob at least 1.5 times as wide as tall is a rectangle: every
    trained shape has an aspect ratio near 1, the rectangle 2; and a convex blob that fills about half its bounding box
    (where a triangle would be) with its centroid at the box's middle is a diamond: the triangle's centroid sits a
    sixth of its height lower; and a blob with a hole of at least a twentieth of its outline's area is a ring
    (tests/test_adherence.py)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    area = float(mask.sum())
    if new_shapes and 1.0 - area / _filled_area(contour, mask.shape) >= RING_HOLE_SHARE:
        return "ring"
    hull = max(cv2.contourArea(cv2.convexHull(contour)), 1.0)
    _, y, w, h = cv2.boundingRect(contour)
    solidity, extent = area / hull, area / float(w * h)
    if new_shapes and extent >= RECTANGLE_EXTENT and w >= RECTANGLE_ASPECT * h:
        return "rectangle"
    if new_shapes and solidity >= CONVEX_SOLIDITY and extent < CIRCLE_EXTENT:
        rows = np.nonzero(mask)[0]
        centroid_offset = (rows.mean() - (y + (h - 1) / 2)) / h
        if abs(centroid_offset) < DIAMOND_CENTROID_OFFSET:
            return "diamond"
    if solidity < STAR_SOLIDITY:
        return "star"
    if solidity < CONVEX_SOLIDITY:
        return "cross"
    if extent >= SQUARE_EXTENT:
        return "square"
    if extent >= CIRCLE_EXTENT:
        return "circle"
    return "triangle"


def _position(cx: float, cy: float, side: int) -> str:
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] * side - cx) ** 2 + (POSITIONS[p][1] * side - cy) ** 2)


def _size(extent_px: int, side: int) -> str:
    # The longer bounding-box side: about 1.8x the half-extent for every shape; split between small and large.
    return "large" if extent_px >= 0.85 * (SIZES["small"] + SIZES["large"]) * side else "small"


@dataclass
class Component:
    """The largest connected blob of one non-background palette colour."""

    colour: str
    mask: np.ndarray
    area: int
    centroid: tuple[float, float]
    extent_px: int  # the longer bounding-box side


def colour_components(array: np.ndarray, min_area: int = 12) -> tuple[list[Component], set[str]]:
    """Per non-background palette colour, its largest component of at least `min_area` pixels; and the background."""
    labels = label_pixels(array)
    background = background_colours(labels)
    found = []
    for index, name in enumerate(_NAMES):
        if name in background:
            continue
        mask = (labels == index).astype(np.uint8)
        if mask.sum() < min_area:
            continue
        n, components, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n < 2:
            continue
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        area = int(stats[biggest, cv2.CC_STAT_AREA])
        if area < min_area:
            continue
        extent_px = max(int(stats[biggest, cv2.CC_STAT_WIDTH]), int(stats[biggest, cv2.CC_STAT_HEIGHT]))
        cx, cy = centroids[biggest]
        found.append(Component(name, components == biggest, area, (float(cx), float(cy)), extent_px))
    return found, background


def detect(image: Image.Image | np.ndarray, count: int = 1, min_area: int = 12,
           new_shapes: bool = False) -> tuple[list[Detection], set[str]]:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    side = array.shape[0]
    components, background = colour_components(array, min_area)
    candidates = [
        Detection(c.colour, classify_shape(c.mask, new_shapes), _position(*c.centroid, side),
                  _size(c.extent_px, side), c.area)
        for c in components
    ]
    candidates.sort(key=lambda d: -d.area)
    return candidates[:count], background


_OBJECT = re.compile(
    r"a (?P<size>small|large) (?P<colour>\w+) (?P<shape>\w+) at the "
    r"(?P<position>top left|top right|bottom left|bottom right|center)"
)
_BACKGROUND = re.compile(r"on a (?P<first>\w+)(?: and (?P<second>\w+))? background")


def parse_prompt(prompt: str) -> Scene:
    """The ground truth a prompt in the dataset's grammar asks for."""
    objects = tuple(ShapeObject(m["shape"], m["colour"], m["position"], m["size"]) for m in _OBJECT.finditer(prompt))
    bg = _BACKGROUND.search(prompt)
    if not objects or bg is None:
        raise ValueError(f"prompt not in the dataset grammar: {prompt!r}")
    background = (bg["first"],) if bg["second"] is None else (bg["first"], bg["second"])
    return Scene(objects, background, prompt)


def score(image: Image.Image, scene: Scene) -> dict[str, bool]:
    """Per-attribute correctness; multi-object prompts match detections to objects by colour."""
    new_shapes = any(o.shape in NEW_SHAPES for o in scene.objects)
    detections, background = detect(image, count=len(scene.objects), new_shapes=new_shapes)
    by_colour = {d.colour: d for d in detections}
    result: dict[str, bool] = {k: True for k in ("colour", "shape", "position", "size", "shape_colour", "all")}
    for obj in scene.objects:
        found = by_colour.get(obj.colour)
        ok_colour = found is not None
        ok_shape = ok_colour and found.shape == obj.shape
        ok_position = ok_colour and found.position == obj.position
        ok_size = ok_colour and found.size == obj.size
        if len(scene.objects) == 1 and detections and not ok_colour:
            # Single object of the wrong colour: still judge its shape/position/size.
            found = detections[0]
            ok_shape, ok_position, ok_size = (found.shape == obj.shape, found.position == obj.position,
                                              found.size == obj.size)
        result["colour"] &= ok_colour
        result["shape"] &= ok_shape
        result["position"] &= ok_position
        result["size"] &= ok_size
    result["shape_colour"] = result["colour"] and result["shape"]
    result["all"] = result["shape_colour"] and result["position"] and result["size"]
    result["background"] = background == set(scene.background)
    return result


def summarise(scores: list[dict[str, bool]]) -> dict[str, float]:
    keys = scores[0].keys() if scores else []
    return {k: round(sum(s[k] for s in scores) / len(scores), 4) for k in keys}


def ground_truth_accuracy(count: int = 500, objects: int = 1) -> dict[str, float]:
    """The evaluator scored on the rendered held-out images themselves (its own error rate)."""
    scenes = eval_scenes(count, objects=objects)
    return summarise([score(render(s), s) for s in scenes])


def generate_and_score(model, scenes: list[Scene], cfg: float, steps: int = 20, sampler: str = "Euler a",
                       seed_base: int = 0, keep: list | None = None,
                       misses: dict[str, int] | None = None, embeddings=None) -> dict[str, float]:
    """Generates one image per scene with the app's own txt2img path and scores it.

    `misses`, if given, counts the single-object prompts whose shape or colour was wrong by "size shape" (for example
    "small star"), so a report says where a model fails, not just how often."""
    from webui.engine.generation import SamplingParams, txt2img
    from webui.engine.samplers import SamplerRegistry

    registry = SamplerRegistry()
    width, height = model.default_resolution
    scores = []
    from tqdm.auto import tqdm

    for i, scene in enumerate(tqdm(scenes, desc=f"CFG {cfg:g}", mininterval=5)):
        params = SamplingParams(prompt=scene.caption, negative_prompt="", sampler=sampler, schedule="Automatic",
                                steps=steps, cfg_scale=cfg, width=width, height=height, seeds=[seed_base + i],
                                embeddings=embeddings)
        image = txt2img(model, params, registry)[0]
        if keep is not None:
            keep.append(image)
        result = score(image, scene)
        scores.append(result)
        if misses is not None and len(scene.objects) == 1 and not result["shape_colour"]:
            key = f"{scene.objects[0].size} {scene.objects[0].shape}"
            misses[key] = misses.get(key, 0) + 1
    return summarise(scores)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, default=Path("models/Stable-diffusion/latent-studio-shapes.safetensors"))
    parser.add_argument("--prompts", type=int, default=200, help="held-out single-object prompts")
    parser.add_argument("--two-object-prompts", type=int, default=0)
    parser.add_argument("--cfg", default="1,6", help="comma-separated CFG scales")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="Euler a")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="torch device for sampling (e.g. cuda); the reported "
                        "figures use the CPU, whose results are reproducible across machines")
    parser.add_argument("--ground-truth", type=int, default=500, help="rendered images to score the evaluator on")
    parser.add_argument("--out", type=Path, default=None, help="write report.json and sample grids here")


def run(args: argparse.Namespace) -> int:
    import torch

    from webui.engine.loader import load_checkpoint

    if args.prompts < 0 or args.two_object_prompts < 0 or args.prompts + args.two_object_prompts == 0:
        raise SystemExit("eval-adherence needs --prompts N and/or --two-object-prompts N, with N > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict = {"model": str(args.model), "steps": args.steps, "sampler": args.sampler, "prompts": args.prompts}
    report["evaluator_on_ground_truth"] = {"single": ground_truth_accuracy(args.ground_truth, 1),
                                           "two": ground_truth_accuracy(args.ground_truth, 2)}
    print("evaluator on ground truth:", json.dumps(report["evaluator_on_ground_truth"]))
    model = load_checkpoint(args.model).to(args.device)
    report["device"] = args.device
    single = eval_scenes(args.prompts, objects=1)
    two = eval_scenes(args.two_object_prompts, objects=2) if args.two_object_prompts else []
    report["results"] = {}
    for cfg in (float(c) for c in args.cfg.split(",")):
        started = time.time()
        keep: list = []
        misses: dict[str, int] = {}
        entry = {"single": generate_and_score(model, single, cfg, args.steps, args.sampler, keep=keep, misses=misses)}
        entry["single_shape_colour_misses"] = dict(sorted(misses.items(), key=lambda item: -item[1]))
        if two:
            entry["two"] = generate_and_score(model, two, cfg, args.steps, args.sampler, seed_base=10_000, keep=keep)
        entry["seconds"] = round(time.time() - started, 1)
        report["results"][f"cfg_{cfg:g}"] = entry
        print(f"CFG {cfg:g}: {json.dumps(entry)}")
        if args.out and keep:  # single-object images first; two-object ones when there are none
            from webui.engine.grids import save_grid

            save_grid(np.stack([np.asarray(im) for im in keep[:64]]), Path(args.out) / f"samples-cfg{cfg:g}.png")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "report.json").write_text(json.dumps(report, indent=2))
    return 0

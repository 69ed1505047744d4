"""Deterministic synthetic captioned shapes: the default model's training data and the evaluator's ground truth.

A module of its own, below both `webui.training` and `webui.evaluation`: the trainers draw scenes from it and the
evaluator scores against it, and neither has to import the other.

Every scene is a pure function of (seed, index): a `random.Random` seeded from both picks the objects, and PIL draws
them at 4x resolution, downsampled with a box filter (anti-aliased edges). Held-out evaluation scenes use a disjoint
seed, so no evaluation prompt's exact image was seen in training (prompts themselves may repeat; the space is small).
"""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (250, 225, 20),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "purple": (140, 40, 180),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {**COLOURS, "gray": (128, 128, 128)}
# Shapes the default model never saw in training: what a LoRA teaches it (docs/lora-training.md). A new colour would
# not do: the shipped autoencoder decodes cyan, pink or navy as a trained colour, so no U-Net LoRA could draw them.
NEW_SHAPES = ("rectangle", "diamond", "ring")
# A ring's hole, as a fraction of its outer radius: the shipped autoencoder keeps it open at both sizes (a wider hole
# leaves a small ring too thin to survive).
RING_HOLE = 0.5
PALETTE: dict[str, tuple[int, int, int]] = BACKGROUND_COLOURS
# Object centres as fractions of the image side.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
# Half-extent of a shape as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.14, "large": 0.22}
TRAIN_SEED = 0
EVAL_SEED = 1_000_003
SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    colour: str
    position: str
    size: str

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} at the {self.position}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: tuple[str, ...]  # one colour (plain) or two (two-tone: left half, right half)
    caption: str = field(default="")


def _background_phrase(background: tuple[str, ...]) -> str:
    return (f"on a {background[0]} background" if len(background) == 1
            else f"on a {background[0]} and {background[1]} background")


def caption_for(objects: tuple[ShapeObject, ...], background: tuple[str, ...]) -> str:
    return " and ".join(o.phrase() for o in objects) + " " + _background_phrase(background)


def short_caption(scene: Scene) -> str:
    """Colour, shape and background only: the prompt cannot say where the shape goes or how big it is."""
    objects = " and ".join(f"a {o.colour} {o.shape}" for o in scene.objects)
    background = scene.background
    tail = f"on a {background[0]} background" if len(background) == 1 else \
        f"on a {background[0]} and {background[1]} background"
    return f"{objects} {tail}"


def sample_scene(rng: random.Random, two_object_prob: float = 0.3, two_tone_prob: float = 0.25) -> Scene:
    count = 2 if rng.random() < two_object_prob else 1
    positions = rng.sample(list(POSITIONS), count)
    objects = []
    used_colours: set[str] = set()
    for position in positions:
        colour = rng.choice([c for c in COLOURS if c not in used_colours])
        used_colours.add(colour)
        objects.append(ShapeObject(rng.choice(SHAPES), colour, position, rng.choice(list(SIZES))))
    free = [c for c in BACKGROUND_COLOURS if c not in used_colours]
    background = tuple(rng.sample(free, 2)) if rng.random() < two_tone_prob else (rng.choice(free),)
    objs = tuple(objects)
    return Scene(objs, background, caption_for(objs, background))


def scene_at(index: int, seed: int = TRAIN_SEED, **kwargs) -> Scene:
    return sample_scene(random.Random(seed * 1_000_003 + index), **kwargs)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    if shape == "square":
        s = r * 0.9
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "rectangle":  # twice as wide as tall: no trained shape has another aspect than about 1
        w, h = r, r * 0.5
        return [(cx - w, cy - h), (cx + w, cy - h), (cx + w, cy + h), (cx - w, cy + h)]
    if shape == "diamond":  # a square on its corner: convex, half its bounding box, symmetric top to bottom
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "cross":
        a, w = r, r * 0.36
        return [
            (cx - w, cy - a), (cx + w, cy - a), (cx + w, cy - w), (cx + a, cy - w), (cx + a, cy + w), (cx + w, cy + w),
            (cx + w, cy + a), (cx - w, cy + a), (cx - w, cy + w), (cx - a, cy + w), (cx - a, cy - w), (cx - w, cy - w),
        ]
    return None


def render(scene: Scene, size: int = 64) -> Image.Image:
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND_COLOURS[scene.background[0]])
    draw = ImageDraw.Draw(image)
    if len(scene.background) == 2:
        draw.rectangle([big // 2, 0, big, big], fill=BACKGROUND_COLOURS[scene.background[1]])
    for obj in scene.objects:
        fx, fy = POSITIONS[obj.position]
        cx, cy, r = fx * big, fy * big, SIZES[obj.size] * big
        fill = COLOURS[obj.colour]
        polygon = _polygon(obj.shape, cx, cy, r)
        if polygon is None:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(polygon, fill=fill)
        if obj.shape == "ring":  # the hole shows whatever lies under it: the background of its half
            hole = r * RING_HOLE
            under = scene.background[-1] if len(scene.background) == 2 and cx >= big / 2 else scene.background[0]
            draw.ellipse([cx - hole, cy - hole, cx + hole, cy + hole], fill=BACKGROUND_COLOURS[under])
    return image.resize((size, size), Image.BOX)


def make_arrays(count: int, seed: int = TRAIN_SEED, size: int = 64, start: int = 0) -> tuple[np.ndarray, list[str]]:
    """uint8 images [N, H, W, 3] and their captions."""
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    captions = []
    for i in range(count):
        scene = scene_at(start + i, seed)
        images[i] = np.asarray(render(scene, size))
        captions.append(scene.caption)
    return images, captions


def make_arrays_parallel(count: int, seed: int = TRAIN_SEED, size: int = 64, start: int = 0,
                         workers: int = 0) -> tuple[np.ndarray, list[str]]:
    """`make_arrays` split over worker processes (identical output): a GPU trainer renders its whole scene pool up
    front in seconds instead of waiting on PIL every step. `workers` 0 = one per CPU core, 1 = in this process."""
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or count < 2000:
        return make_arrays(count, seed, size, start)
    chunk = math.ceil(count / workers)
    starts = list(range(start, start + count, chunk))
    sizes = [min(chunk, start + count - s) for s in starts]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(make_arrays, sizes, [seed] * len(starts), [size] * len(starts), starts))
    return np.concatenate([p[0] for p in parts]), [c for p in parts for c in p[1]]


def eval_scenes(count: int, objects: int = 1, seed: int = EVAL_SEED) -> list[Scene]:
    """Held-out scenes with exactly `objects` objects (the ground truth of the adherence benchmark)."""
    prob = 0.0 if objects == 1 else 1.0
    return [scene_at(i, seed, two_object_prob=prob) for i in range(count)]


CONCEPT_SEED = 2_000_003


def concept_scenes(count: int, shape: str = "rectangle", seed: int = CONCEPT_SEED) -> list[Scene]:
    """Single-object scenes of a shape from NEW_SHAPES in the trained colours, sizes and positions: the data a LoRA
    learns the new word from (`seed`) and the held-out prompts it is judged on (another seed)."""
    if shape not in NEW_SHAPES:
        raise ValueError(f"{shape!r} is not one of the new shapes {sorted(NEW_SHAPES)}")
    scenes = []
    for index in range(count):
        rng = random.Random(seed * 1_000_003 + index)
        colour = rng.choice(list(COLOURS))
        obj = ShapeObject(shape, colour, rng.choice(list(POSITIONS)), rng.choice(list(SIZES)))
        background = (rng.choice([c for c in BACKGROUND_COLOURS if c != colour]),)
        scenes.append(Scene((obj,), background, caption_for((obj,), background)))
    return scenes


def write_captioned_folder(folder, scenes: list[Scene], size: int = 64) -> None:
    """PNG images with same-stem .txt captions: the folder layout LoRA training reads."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, scene in enumerate(scenes):
        render(scene, size).save(folder / f"{index:04d}.png")
        (folder / f"{index:04d}.txt").write_text(scene.caption + "\n")

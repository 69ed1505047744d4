"""A LoRA training set from a folder, the way kohya's sd-scripts reads one.

- Images with a caption file of the same stem (`.txt`, or `.caption`); sub-folders named `N_name` repeat their images
  N times per epoch (kohya's DreamBooth-style folders); other sub-folders count once.
- A trigger word is put in front of every caption that lacks it.
- Aspect-ratio buckets: each image goes to the bucket (sides a multiple of the model's `multiple`, area at most the
  training resolution squared) nearest its aspect ratio, is resized to cover it and centre-cropped.
- What cannot be used is reported, never fatal on its own: an unreadable image is skipped with its name, a non-image
  file is ignored with its name, an image without a caption uses the folder's class word (or the trigger) instead.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_SUFFIXES = (".txt", ".caption")
IGNORED_SUFFIXES = CAPTION_SUFFIXES + (".json", ".toml", ".npz")  # kohya's sidecar files, not warned about
REPEAT_FOLDER = re.compile(r"^(?P<repeats>\d+)_(?P<name>.+)$")


class DatasetError(ValueError):
    """The folder cannot give a single usable training image; the message says what to fix."""


@dataclass(frozen=True)
class TrainingImage:
    path: Path
    caption: str
    repeats: int
    folder: str  # the sub-folder name, as kohya's tag frequency keys it
    size: tuple[int, int]  # (width, height) as stored
    regularization: bool = False  # kohya's reg images: keep the model's old behaviour (prior preservation)


@dataclass
class LoraDataset:
    images: list[TrainingImage]
    warnings: list[str] = field(default_factory=list)

    @property
    def total_repeats(self) -> int:
        """Training images per epoch, repeats counted (regularisation images not included, as in kohya)."""
        return sum(image.repeats for image in self.images if not image.regularization)

    @property
    def regularization_count(self) -> int:
        return sum(1 for image in self.images if image.regularization)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's `ss_tag_frequency`: per folder, how often each comma-separated tag appears in the captions."""
        result: dict[str, Counter] = {}
        for image in self.images:
            if image.regularization:
                continue
            tags = [tag.strip() for tag in image.caption.split(",") if tag.strip()]
            result.setdefault(image.folder, Counter()).update(tags)
        return {folder: dict(counts) for folder, counts in result.items()}


def _caption_for(image_path: Path) -> str | None:
    for suffix in CAPTION_SUFFIXES:
        caption_path = image_path.with_suffix(suffix)
        if caption_path.is_file():
            return " ".join(caption_path.read_text(encoding="utf-8", errors="replace").split())
    return None


def with_trigger(caption: str, trigger: str) -> str:
    """The trigger word in front, once (kohya users write it as the first tag)."""
    trigger = trigger.strip()
    if not trigger or re.search(rf"(^|[\s,]){re.escape(trigger)}($|[\s,])", caption):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def _folders(root: Path) -> list[tuple[Path, int, str]]:
    """(folder, repeats, class word) for the root and its immediate sub-folders."""
    found = [(root, 1, "")]
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        match = REPEAT_FOLDER.match(child.name)
        if match:
            found.append((child, max(1, int(match["repeats"])), match["name"].replace("_", " ")))
        else:
            found.append((child, 1, ""))
    return found


def scan_dataset(root: Path, trigger: str = "") -> LoraDataset:
    """Read the folder's images and captions (images are opened to check them, not decoded in full)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist: give a folder of images with .txt captions")
    images: list[TrainingImage] = []
    warnings: list[str] = []
    for folder, repeats, class_word in _folders(root):
        for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
            suffix = path.suffix.lower()
            relative = path.relative_to(root)
            if suffix in IGNORED_SUFFIXES:
                continue
            if suffix not in IMAGE_SUFFIXES:
                warnings.append(f"{relative}: not an image ({', '.join(IMAGE_SUFFIXES)}); ignored")
                continue
            try:
                with Image.open(path) as probe:
                    size = probe.size  # read from the header, before verify() consumes the file
                    probe.verify()
            except (UnidentifiedImageError, OSError, SyntaxError) as exc:
                warnings.append(f"{relative}: cannot be read as an image ({str(exc).splitlines()[0]}); skipped")
                continue
            caption = _caption_for(path)
            if caption is None:
                fallback = class_word or trigger.strip()
                warnings.append(f"{relative}: no caption file ({path.stem}.txt); "
                                + (f"using {fallback!r}" if fallback else "training it with an empty caption"))
                caption = fallback
            images.append(TrainingImage(path, with_trigger(caption, trigger), repeats,
                                        folder.name if folder != root else root.name, size))
    if not images:
        detail = f" ({len(warnings)} file(s) could not be used: {warnings[0]})" if warnings else ""
        raise DatasetError(f"dataset folder {root} has no usable images{detail}: put .png/.jpg images there, each "
                           "with a .txt caption of the same name (sub-folders named like 10_name repeat 10 times)")
    return LoraDataset(images, warnings)


def with_regularization(dataset: LoraDataset, regularization: LoraDataset) -> LoraDataset:
    """The training set plus regularisation images, repeated so that an epoch holds as many of them as training
    images (kohya's rule): with a prior-loss weight they hold the model to what it did before on other prompts."""
    each = max(1, round(dataset.total_repeats / max(1, len(regularization.images))))
    extra = [TrainingImage(i.path, i.caption, each, i.folder, i.size, regularization=True)
             for i in regularization.images]
    warnings = dataset.warnings + [f"regularization: {w}" for w in regularization.warnings]
    return LoraDataset(dataset.images + extra, warnings)


def make_buckets(resolution: int, multiple: int, min_side: int | None = None,
                 max_side: int | None = None) -> list[tuple[int, int]]:
    """kohya's bucket set: for each width (a multiple of `multiple`), the tallest height whose area fits in
    resolution², both sides within [min_side, max_side]; plus the square."""
    min_side = min_side or max(multiple, resolution // 2 // multiple * multiple)
    max_side = max_side or resolution * 2
    area = resolution * resolution
    buckets = {(resolution // multiple * multiple,) * 2}
    for width in range(min_side, max_side + 1, multiple):
        height = min(max_side, area // width // multiple * multiple)
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def nearest_bucket(size: tuple[int, int], buckets: list[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(size[0] / size[1])
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def load_for_bucket(path: Path, bucket: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3]: resized to cover the bucket (Lanczos), centre-cropped to it."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        width, height = bucket
        scale = max(width / image.width, height / image.height)
        resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                               Image.LANCZOS)
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return np.asarray(resized.crop((left, top, left + width, top + height)))


@dataclass(frozen=True)
class Batch:
    bucket: tuple[int, int]
    indices: tuple[int, ...]


def epoch_batches(bucket_of: list[tuple[int, int]], repeats: list[int], batch_size: int, seed: int) -> list[Batch]:
    """One epoch: every image `repeats` times, grouped by bucket into batches, in a seeded random order.

    A bucket's last batch may be short (kohya does the same); the order depends only on (seed, epoch) through `seed`,
    so a resumed run sees exactly the batches it would have."""
    rng = random.Random(seed)
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, (bucket, count) in enumerate(zip(bucket_of, repeats)):
        by_bucket.setdefault(bucket, []).extend([index] * count)
    batches: list[Batch] = []
    for bucket in sorted(by_bucket):
        members = by_bucket[bucket]
        rng.shuffle(members)
        batches.extend(Batch(bucket, tuple(members[i:i + batch_size])) for i in range(0, len(members), batch_size))
    rng.shuffle(batches)
    return batches

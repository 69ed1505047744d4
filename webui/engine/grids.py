"""Image grids for sample sheets (trainers' samples, evaluators' reports)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image


def save_grid(images: np.ndarray, path: Path, columns: int = 8) -> Path:
    n, h, w, _ = images.shape
    rows = math.ceil(n / columns)
    grid = Image.new("RGB", (columns * w, rows * h), (0, 0, 0))
    for i in range(n):
        grid.paste(Image.fromarray(images[i]), ((i % columns) * w, (i // columns) * h))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path

"""Shared training plumbing: Accelerator setup, seeded runs, resumable checkpoints, sample grids, logging."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from webui.engine.grids import save_grid  # noqa: F401  (trainers import it from here)


def setup_torch(seed: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    if torch.cuda.is_available():
        # TF32 matmuls on CUDA: about the precision the tiny default model needs, several times the fp32 speed.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def make_accelerator(cpu: bool = False, mixed_precision: str = "no"):
    """The run's Accelerator. Without CUDA it is told so (`cpu=True`): only then do processes started by
    `accelerate launch` on CPUs join one data-parallel run (gloo) instead of each training alone."""
    from accelerate import Accelerator

    return Accelerator(cpu=cpu or not torch.cuda.is_available(), mixed_precision=mixed_precision)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [-1, 1] [N, 3, H, W]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the base rate."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class TimeBudget:
    """An optional wall-clock limit for a run (`--max-minutes`), for fixed-length GPU sessions.

    With a limit the learning-rate schedule follows whichever runs out first, steps or time, so the cosine decay
    still ends at the last step actually taken. Such a run is not step-for-step reproducible (where it stops depends
    on the machine's speed), which is why the step count stays the default.
    """

    def __init__(self, max_minutes: float | None):
        self.seconds = max_minutes * 60 if max_minutes else None
        self.started = time.time()

    def fraction(self) -> float:
        return 0.0 if self.seconds is None else (time.time() - self.started) / self.seconds

    def expired(self) -> bool:
        return self.fraction() >= 1.0

    def schedule_step(self, step: int, total: int) -> int:
        """The step the learning-rate schedule should use."""
        return max(step, int(self.fraction() * total))


def save_training_state(out_dir: Path, step: int, state: dict) -> Path:
    """`state` holds module/optimizer state dicts and anything else needed to resume; `latest.pt` points at it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "checkpoint-latest.pt"
    temp = out_dir / "checkpoint-latest.pt.tmp"
    torch.save({"step": step, **state}, temp)
    os.replace(temp, path)
    return path


def load_training_state(out_dir: Path) -> dict | None:
    path = Path(out_dir) / "checkpoint-latest.pt"
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain containers only


class JsonLog:
    """One JSON object per line: step, loss, elapsed seconds (the model card's wall time comes from here)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.start = time.time()

    def write(self, **fields) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps({"time": round(time.time() - self.start, 2), **fields}) + "\n")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (computed on the [0, 1] scale)."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))

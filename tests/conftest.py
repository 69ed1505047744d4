"""Shared fixtures: tiny real-layout checkpoints built once per test session with seeded random weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from webui import offline

offline.enforce()
os.environ.setdefault("GRADIO_TEMP_DIR", str(Path(__file__).resolve().parent.parent / "scratch" / "gradio-tmp"))

from webui.engine.synthetic import SyntheticModel, write_synthetic_checkpoint  # noqa: E402


class TinyCheckpoint:
    """A checkpoint file and the ground-truth modules it was written from."""

    def __init__(self, path: Path, model: SyntheticModel) -> None:
        self.path = path
        self.model = model


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models") / "Stable-diffusion"


def _make(checkpoint_dir: Path, name: str, family: str, **kwargs) -> TinyCheckpoint:
    path = checkpoint_dir / f"{name}.safetensors"
    model = write_synthetic_checkpoint(path, family, **kwargs)
    return TinyCheckpoint(path, model)


@pytest.fixture(scope="session")
def tiny_sd1(checkpoint_dir: Path) -> TinyCheckpoint:
    return _make(checkpoint_dir, "tiny-sd1", "sd1", seed=1)


@pytest.fixture(scope="session")
def tiny_sd2(checkpoint_dir: Path) -> TinyCheckpoint:
    return _make(checkpoint_dir, "tiny-sd2", "sd2", seed=2)


@pytest.fixture(scope="session")
def tiny_sdxl(checkpoint_dir: Path) -> TinyCheckpoint:
    return _make(checkpoint_dir, "tiny-sdxl", "sdxl", seed=3)


@pytest.fixture(scope="session")
def tiny_sd1_inpaint(checkpoint_dir: Path) -> TinyCheckpoint:
    return _make(checkpoint_dir, "tiny-sd1-inpaint", "sd1", inpaint=True, seed=4)

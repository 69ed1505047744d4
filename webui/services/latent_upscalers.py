"""LDSR and the SD x4 upscaler as entries of the upscaler library (Extras, hires fix, `/sdapi/v1/upscalers`).

Both are listed always, as A1111 lists "LDSR" whether or not its model is there (A1111 would download it on first use;
nothing is ever downloaded here, so using one without its file gives a message saying where to put it). Each keeps its
last loaded model (checked against the file's size and time at every use) and runs one upscale at a time.
Folders: `models/LDSR` (A1111's `model.ckpt` + `project.yaml`, or `model.safetensors`) and `models/SD-Upscaler`
(Stability's `x4-upscaler-ema.safetensors` / `.ckpt`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import torch
from PIL import Image

from webui.engine.ldsr import DEFAULT_STEPS as LDSR_DEFAULT_STEPS
from webui.engine.ldsr import LdsrError, LdsrModel, ldsr_upscale, load_ldsr
from webui.engine.sd_upscaler import DEFAULT_NOISE_LEVEL, SdUpscalerError, SdUpscalerModel, load_sd_upscaler, \
    sd_x4_upscale
from webui.engine.sd_upscaler import DEFAULT_STEPS as SD_X4_DEFAULT_STEPS
from webui.services.upscalers import UpscalerError, UpscalerLibrary

LDSR_NAME = "LDSR"  # A1111's name, so infotexts' "Hires upscaler: LDSR" select it
SD_X4_NAME = "SD x4"
LDSR_FOLDER = "LDSR"
SD_UPSCALER_FOLDER = "SD-Upscaler"
LDSR_FILES = ("model.safetensors", "model.ckpt")  # A1111's names, preferred over any other file in the folder
MODEL_SUFFIXES = (".safetensors", ".ckpt")
SEED = 0  # both sample from noise; a fixed seed makes the same input give the same output

ModelT = TypeVar("ModelT", LdsrModel, SdUpscalerModel)


@dataclass(frozen=True)
class LatentUpscaleOptions:
    """Sampling settings, read at every upscale."""

    ldsr_steps: int = LDSR_DEFAULT_STEPS  # A1111's "LDSR processing steps"
    sd_x4_steps: int = SD_X4_DEFAULT_STEPS
    sd_x4_noise_level: int = DEFAULT_NOISE_LEVEL


def find_model_file(folder: Path, preferred: tuple[str, ...] = ()) -> Path | None:
    """The preferred file names first, else the first .safetensors / .ckpt in the folder by name."""
    if not folder.is_dir():
        return None
    for name in preferred:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES)
    return found[0] if found else None


class _ModelSlot(Generic[ModelT]):
    """The last model loaded from one folder; reloaded when the file (path, size or time) changes."""

    def __init__(self, load: Callable[[Path], ModelT], place: Callable[[ModelT], ModelT]) -> None:
        self._load = load
        self._place = place
        self._key: tuple[Path, int, int] | None = None
        self._model: ModelT | None = None

    def get(self, path: Path) -> ModelT:
        stat = path.stat()
        key = (path, stat.st_size, stat.st_mtime_ns)
        if key != self._key or self._model is None:
            self._model, self._key = None, None  # free the old one before the new one is read
            self._model = self._place(self._load(path))
            self._key = key
        return self._model

    def clear(self) -> None:
        self._model, self._key = None, None


class _LatentUpscaler:
    """Shared plumbing: finding the file, the per-upscaler lock, and turning engine errors into UpscalerError."""

    name: str
    native_scale = 4.0
    missing: str

    def __init__(self, folder: Path, options: Callable[[], LatentUpscaleOptions]) -> None:
        self.folder = folder
        self.options = options
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        return find_model_file(self.folder)

    def _model_path(self) -> Path:
        path = self.path
        if path is None:
            raise UpscalerError(f"{self.name}: no model file in {self.folder}; {self.missing}")
        return path

    def unload(self) -> None:
        with self._lock:
            self._slot.clear()  # type: ignore[attr-defined]

    def upscale(self, image: Image.Image, scale: float) -> Image.Image:
        with self._lock:
            try:
                return self._run(image, scale)
            except (LdsrError, SdUpscalerError) as exc:
                raise UpscalerError(str(exc)) from exc
            except OSError as exc:  # the file went away or became unreadable between the listing and the load
                raise UpscalerError(f"{self.name}: cannot read its model file ({exc}); {self.missing}") from exc
            except torch.OutOfMemoryError as exc:
                raise UpscalerError(f"{self.name}: not enough memory to upscale a {image.width}x{image.height} "
                                    "image; upscale a smaller image or use a model upscaler") from exc

    def _run(self, image: Image.Image, scale: float) -> Image.Image:
        raise NotImplementedError


class LdsrUpscaler(_LatentUpscaler):
    """A1111's LDSR: 4x latent diffusion on a VQ latent, DDIM at eta 1, "LDSR processing steps" steps."""

    name = LDSR_NAME
    missing = "put A1111's LDSR model.ckpt and project.yaml (or model.safetensors) there"

    def __init__(self, folder: Path, device: torch.device, options: Callable[[], LatentUpscaleOptions]) -> None:
        super().__init__(folder, options)
        # fp32 always, as A1111 runs LDSR unless told to halve its attention.
        self._slot: _ModelSlot[LdsrModel] = _ModelSlot(load_ldsr, lambda model: model.to(device, torch.float32))

    @property
    def path(self) -> Path | None:
        return find_model_file(self.folder, LDSR_FILES)

    def _run(self, image: Image.Image, scale: float) -> Image.Image:
        model = self._slot.get(self._model_path())
        return ldsr_upscale(model, image, scale, steps=int(self.options().ldsr_steps), seed=SEED)


class SdX4Upscaler(_LatentUpscaler):
    """Stability's SD 2.x x4 upscaler, without a prompt, at the configured steps and noise level."""

    name = SD_X4_NAME
    missing = "put Stability's x4-upscaler-ema.safetensors there"

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype,
                 options: Callable[[], LatentUpscaleOptions]) -> None:
        super().__init__(folder, options)
        self._slot: _ModelSlot[SdUpscalerModel] = _ModelSlot(load_sd_upscaler,
                                                             lambda model: model.to(device, dtype))

    def _run(self, image: Image.Image, scale: float) -> Image.Image:
        model = self._slot.get(self._model_path())
        options = self.options()
        return sd_x4_upscale(model, image, scale, steps=int(options.sd_x4_steps),
                             noise_level=int(options.sd_x4_noise_level), seed=SEED)


def register_latent_upscalers(library: UpscalerLibrary, models_dir: Path, device: torch.device, dtype: torch.dtype,
                              options: Callable[[], LatentUpscaleOptions] = LatentUpscaleOptions) -> None:
    """Add "LDSR" (models/LDSR) and "SD x4" (models/SD-Upscaler) to the library."""
    library.register(LdsrUpscaler(models_dir / LDSR_FOLDER, device, options))
    library.register(SdX4Upscaler(models_dir / SD_UPSCALER_FOLDER, device, dtype, options))

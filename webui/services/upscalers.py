"""The upscaler library: Pillow resizers, the model upscalers found in the upscaler folders, and registered extras.

One library serves the Extras tab, the API and hires fix. Names follow A1111 ("None", "Lanczos", "Nearest", then the
others sorted by name) so an infotext's `Hires upscaler` / `Postprocess upscaler` value selects the same one here.
Other upscalers (LDSR, the SD x4 upscaler, an extension's) join through `register` with any object that has a `name`
and an `upscale(image, scale)` method.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from webui.engine.upscaler_models import (
    UPSCALER_SUFFIXES,
    UpscalerModelError,
    load_upscaler_network,
    place_network,
    run_tiled,
)

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

    from webui.context import AppPaths

# The folders A1111 scans for model upscalers (its ESRGAN, RealESRGAN, SwinIR, DAT, ScuNET and HAT upscalers).
UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "ScuNET", "HAT")
# A1111's display names for the files its own upscalers download, so infotexts written there select the same model.
A1111_NAMES = {
    "RealESRGAN_x4plus": "R-ESRGAN 4x+",
    "RealESRGAN_x4plus_anime_6B": "R-ESRGAN 4x+ Anime6B",
    "RealESRGAN_x2plus": "R-ESRGAN 2x+",
    "realesr-general-x4v3": "R-ESRGAN General 4xV3",
    "realesr-general-wdn-x4v3": "R-ESRGAN General WDN 4xV3",
    "realesr-animevideov3": "R-ESRGAN AnimeVideo",
    "ESRGAN_4x": "ESRGAN_4x",
    "ScuNET": "ScuNET GAN",
    "scunet_color_real_gan": "ScuNET GAN",
    "ScuNET_PSNR": "ScuNET PSNR",
    "scunet_color_real_psnr": "ScuNET PSNR",
    "SwinIR_4x": "SwinIR 4x",
    "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN": "SwinIR 4x",
    "DAT_x2": "DAT x2",
    "DAT_x3": "DAT x3",
    "DAT_x4": "DAT x4",
}
NONE, LANCZOS, NEAREST = "None", "Lanczos", "Nearest"
DEFAULT_TILE, DEFAULT_OVERLAP = 192, 8  # A1111's ESRGAN_tile / ESRGAN_tile_overlap
DEFAULT_CACHE_SIZE = 2  # loaded networks kept (least recently used goes first)


class UpscalerError(ValueError):
    """An upscale request that cannot be done; the message says what to change."""


@runtime_checkable
class Upscaler(Protocol):
    """What `UpscalerLibrary.register` accepts. `upscale` may return any size; the library resizes the result to the
    exact target with Lanczos. Optional attributes read when present: `native_scale` (float), `path` (Path),
    `url` (str) for the API listing."""

    name: str

    def upscale(self, image: Image.Image, scale: float) -> Image.Image: ...


@dataclass(frozen=True)
class UpscaleOptions:
    """Tiling of model upscalers: window size and the context margin kept around each tile (0 = no tiling)."""

    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of the list, in the shape of A1111's `/sdapi/v1/upscalers`."""

    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class PillowUpscaler:
    """Lanczos / Nearest resampling, and "None" (which returns the image unchanged, as A1111's does)."""

    def __init__(self, name: str, resample: Image.Resampling | None) -> None:
        self.name = name
        self.resample = resample

    def upscale(self, image: Image.Image, scale: float) -> Image.Image:
        if self.resample is None:
            return image
        return image.resize(target_size(image, scale), resample=self.resample)


def target_size(image: Image.Image, scale: float) -> tuple[int, int]:
    return max(1, round(image.width * scale)), max(1, round(image.height * scale))


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1], channels in A1111's order for its model upscalers: blue, green, red.
    (A1111's `upscale_without_tiling` reverses PIL's RGB before the network and back after it; doing the same keeps
    hires fix and Extras results equal to A1111's for the same file.)"""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1] / 255.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def tensor_to_image(tensor: torch.Tensor) -> Image.Image:
    """The inverse of `image_to_tensor`; like A1111, values are clamped and truncated (not rounded) to 8 bits."""
    array = tensor[0].float().clamp(0, 1).mul(255).cpu().numpy().transpose(1, 2, 0)[:, :, ::-1]
    return Image.fromarray(np.ascontiguousarray(array.astype(np.uint8)), "RGB")


class ModelUpscaler:
    """A network file in one of the upscaler folders; loaded on first use through the library's cache."""

    def __init__(self, name: str, path: Path, library: "UpscalerLibrary") -> None:
        self.name = name
        self.path = path
        self._library = library

    @property
    def native_scale(self) -> float | None:
        return self._library.loaded_scale(self.path)

    def upscale(self, image: Image.Image, scale: float,
                on_tile: Callable[[int, int], None] | None = None) -> Image.Image:
        """One pass of the network (its own factor); the library repeats passes and resizes to the target."""
        return self._library.run_network(self.path, image, on_tile)


class UpscalerLibrary:
    """Every upscaler by name, the model files found in the upscaler folders, and an LRU of loaded networks."""

    def __init__(
        self,
        paths: "AppPaths",
        device: torch.device | Callable[[], torch.device] = torch.device("cpu"),
        dtype: torch.dtype | Callable[[], torch.dtype] = torch.float32,
        options: Callable[[], UpscaleOptions] = UpscaleOptions,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.folders = paths.upscaler_dirs
        self._device = device if callable(device) else (lambda: device)
        self._dtype = dtype if callable(dtype) else (lambda: dtype)
        self.options = options
        self._cache_size = max(1, cache_size)
        self._builtin: list[Upscaler] = [PillowUpscaler(NONE, None), PillowUpscaler(LANCZOS, Image.Resampling.LANCZOS),
                                         PillowUpscaler(NEAREST, Image.Resampling.NEAREST)]
        self._registered: dict[str, Upscaler] = {}
        self._files: dict[str, ModelUpscaler] = {}
        self._loaded: OrderedDict[Path, "ImageModelDescriptor"] = OrderedDict()
        self._scales: dict[Path, int] = {}
        self._lock = threading.RLock()  # the lists and the LRU
        self._run_lock = threading.Lock()  # one network load or run at a time; the LRU never drops a running one
        self.refresh()

    # --- the list -----------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rescan the folders. Names are the file stems (A1111's names for its own downloads); a name found twice is
        told apart by its folder and file name."""
        found: list[tuple[str, Path]] = []
        for folder in self.folders:
            if folder.is_dir():
                found += [(A1111_NAMES.get(path.stem, path.stem), path) for path in sorted(folder.rglob("*"))
                          if path.is_file() and path.suffix.lower() in UPSCALER_SUFFIXES]
        counts: dict[str, int] = {}
        for name, _ in found:
            counts[name] = counts.get(name, 0) + 1
        files = {}
        for name, path in found:
            unique = name if counts[name] == 1 else f"{name} ({path.parent.name}/{path.name})"
            files.setdefault(unique, ModelUpscaler(unique, path, self))
        with self._lock:
            self._files = files
            for stale in [path for path in self._loaded if path not in {m.path for m in files.values()}]:
                self._forget(stale)

    def _others(self) -> list[Upscaler]:
        others: dict[str, Upscaler] = dict(self._files)
        others.update(self._registered)
        return sorted(others.values(), key=lambda upscaler: upscaler.name.lower())

    def upscalers(self) -> list[Upscaler]:
        with self._lock:
            return [*self._builtin, *self._others()]

    def names(self) -> list[str]:
        return [upscaler.name for upscaler in self.upscalers()]

    def register(self, upscaler: Upscaler) -> None:
        """Add (or replace) an upscaler by its name; the built-in three cannot be replaced."""
        if not isinstance(upscaler, Upscaler) or not isinstance(upscaler.name, str) or not upscaler.name.strip():
            raise TypeError("an upscaler needs a non-empty `name` and an `upscale(image, scale)` method")
        if upscaler.name in (NONE, LANCZOS, NEAREST):
            raise ValueError(f"{upscaler.name!r} is a built-in upscaler name; choose another")
        with self._lock:
            self._registered[upscaler.name] = upscaler

    def get(self, name: str) -> Upscaler:
        for upscaler in self.upscalers():
            if upscaler.name == name:
                return upscaler
        lowered = name.strip().lower()
        for upscaler in self.upscalers():  # infotexts and API clients are not always careful about case
            if upscaler.name.lower() == lowered:
                return upscaler
        raise UpscalerError(f"unknown upscaler {name!r}; choose one of: {', '.join(self.names())}")

    def describe(self) -> list[UpscalerInfo]:
        """The list for `/sdapi/v1/upscalers`."""
        entries = []
        for upscaler in self.upscalers():
            path = getattr(upscaler, "path", None)
            scale = getattr(upscaler, "native_scale", None)
            entries.append(UpscalerInfo(
                name=upscaler.name,
                model_name=path.stem if isinstance(path, Path) else None,
                model_path=str(path) if path is not None else None,
                model_url=getattr(upscaler, "url", None),
                scale=float(scale) if scale is not None else 4.0,  # A1111 says 4 until it knows better
            ))
        return entries

    # --- upscaling ----------------------------------------------------------------------------------------------
    def upscale(self, image: Image.Image, scale: float, name: str,
                on_tile: Callable[[int, int], None] | None = None) -> Image.Image:
        """`image` enlarged by `scale` with upscaler `name`; the result is exactly round(w*scale) x round(h*scale).
        Like A1111, a model upscaler runs at least once and at most three passes of its own factor until the target
        is covered, then Lanczos brings it to the exact size."""
        if not (scale > 0) or scale > 16:
            raise UpscalerError(f"upscale factor {scale} is out of range; use a value between 0 and 16")
        upscaler = self.get(name)
        image = image.convert("RGB")
        width, height = target_size(image, scale)
        result = image  # "None" does no pass of its own: only the Lanczos resize below, as in A1111
        for _ in range(3):
            before = result.size
            if isinstance(upscaler, ModelUpscaler):
                result = upscaler.upscale(result, scale, on_tile=on_tile)
            else:
                result = upscaler.upscale(result, scale)
            if result.size == before or (result.width >= width and result.height >= height):
                break
        result = result.convert("RGB")
        if result.size != (width, height):
            result = result.resize((width, height), resample=Image.Resampling.LANCZOS)
        return result

    def upscale_to(self, image: Image.Image, width: int, height: int, name: str, crop: bool = False,
                   on_tile: Callable[[int, int], None] | None = None) -> Image.Image:
        """`image` brought to exactly width x height the way A1111's `images.resize_image` does it (hires fix uses
        this, so its pictures match A1111's): the upscaler runs only when the target is larger, by the larger of the
        two ratios, to A1111's intermediate size (each side rounded down to a multiple of 8), then Lanczos gives the
        exact size. `crop` is A1111's "crop and resize": the side that fits is scaled to the target and the centre
        of the other is kept."""
        if width < 1 or height < 1:
            raise UpscalerError(f"target size {width}x{height} is not positive")
        upscaler = self.get(name)
        image = image.convert("RGB")
        if not crop:
            return self._a1111_resize(image, width, height, upscaler, on_tile)
        if width / height > image.width / image.height:
            fit_width, fit_height = width, image.height * width // image.width
        else:
            fit_width, fit_height = image.width * height // image.height, height
        fitted = self._a1111_resize(image, fit_width, fit_height, upscaler, on_tile)
        canvas = Image.new("RGB", (width, height))
        canvas.paste(fitted, box=(width // 2 - fit_width // 2, height // 2 - fit_height // 2))
        return canvas

    def _a1111_resize(self, image: Image.Image, width: int, height: int, upscaler: Upscaler,
                      on_tile: Callable[[int, int], None] | None) -> Image.Image:
        """A1111's `resize_image` inner `resize`, with its `Upscaler.upscale` (integer sizes, the multiple-of-8
        intermediate, then the exact size, both with Lanczos)."""
        if width > image.width or height > image.height:
            scale = max(width / image.width, height / image.height)
            goal = (max(1, int(image.width * scale // 8 * 8)), max(1, int(image.height * scale // 8 * 8)))
            for _ in range(3):
                before = image.size
                if isinstance(upscaler, PillowUpscaler):
                    if upscaler.resample is not None:  # A1111 truncates the size here
                        image = image.resize((int(image.width * scale), int(image.height * scale)), upscaler.resample)
                elif isinstance(upscaler, ModelUpscaler):
                    image = upscaler.upscale(image, scale, on_tile=on_tile)
                else:
                    image = upscaler.upscale(image, scale)
                if image.size == before or (image.width >= goal[0] and image.height >= goal[1]):
                    break
            image = image.convert("RGB")
            if image.size != goal:
                image = image.resize(goal, resample=Image.Resampling.LANCZOS)
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        return image

    # --- loaded networks ----------------------------------------------------------------------------------------
    def network(self, path: Path) -> "ImageModelDescriptor":
        """The loaded network for `path`, from the LRU or freshly read (a broken file raises UpscalerError).
        Callers hold `_run_lock`."""
        with self._lock:
            if path in self._loaded:
                self._loaded.move_to_end(path)
                return self._loaded[path]
        try:
            network = load_upscaler_network(path)
        except UpscalerModelError as exc:
            raise UpscalerError(str(exc)) from exc
        network = place_network(network, self._device(), self._dtype())
        with self._lock:
            self._loaded[path] = network
            self._scales[path] = network.scale
            while len(self._loaded) > self._cache_size:
                self._forget(next(iter(self._loaded)))
        return network

    @property
    def cache_size(self) -> int:
        """How many networks stay loaded (at least one); lowering it drops the least recently used at once."""
        return self._cache_size

    @cache_size.setter
    def cache_size(self, size: int) -> None:
        with self._lock:
            self._cache_size = max(1, int(size))
            while len(self._loaded) > self._cache_size:
                self._forget(next(iter(self._loaded)))

    def _forget(self, path: Path) -> None:
        self._loaded.pop(path, None)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def loaded(self) -> list[Path]:
        """The files whose networks are in memory, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def loaded_scale(self, path: Path) -> int | None:
        return self._scales.get(path)

    def run_network(self, path: Path, image: Image.Image,
                    on_tile: Callable[[int, int], None] | None = None) -> Image.Image:
        """One tiled pass of the network in `path` over `image`."""
        with self._run_lock:
            network = self.network(path)
            options = self.options()
            parameter = next(network.model.parameters(), None)
            device = parameter.device if parameter is not None else torch.device("cpu")
            dtype = parameter.dtype if parameter is not None else torch.float32
            tensor = image_to_tensor(image).to(device=device, dtype=dtype)
            try:
                # a network that tiles internally (spandrel says so) gets the whole image
                tile = 0 if getattr(network.tiling, "name", "") == "INTERNAL" else options.tile
                output = run_tiled(network, tensor, network.scale, tile, options.overlap, on_tile)
            except torch.OutOfMemoryError as exc:
                raise UpscalerError(f"not enough memory on {device} to upscale a {image.width}x{image.height} image "
                                    f"with {path.name}; lower the upscaler tile size in Settings") from exc
            return tensor_to_image(output)

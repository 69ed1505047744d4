"""Super-resolution networks (ESRGAN, RealESRGAN, SwinIR, DAT, HAT, SCUNet, ...) and their tiled inference.

spandrel infers the architecture and its hyper-parameters from the state dict, so any file A1111 accepts in
`models/ESRGAN` and the like loads without a config. The file itself is read by our own safe reader, never by
spandrel's loader: spandrel opens `.pt` files with `torch.jit.load` (TorchScript can carry code) and `.pth` with a
`torch.load` that is not `weights_only`. Here safetensors is checked from its header, and pickles go only through
`torch.load(weights_only=True)` with the zip-member checks of `checkpoint_io`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from webui.engine.checkpoint_io import CheckpointReadError, load_pickle_safely, read_checkpoint

if TYPE_CHECKING:
    from spandrel import ImageModelDescriptor

UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors")  # what A1111 lists in its upscaler folders


class UpscalerModelError(ValueError):
    """An upscaler file could not be used; the message names the file and says what to do."""


def _read_weights(path: Path) -> dict:
    """The file's tensors, keeping the nesting of a pickle (RealESRGAN stores `{"params_ema": {...}}`)."""
    try:
        if path.suffix.lower() == ".safetensors":
            return read_checkpoint(path).state_dict
        loaded = load_pickle_safely(path)
    except CheckpointReadError as exc:
        raise UpscalerModelError(str(exc)) from exc
    if not isinstance(loaded, dict):
        raise UpscalerModelError(f"{path.name}: does not contain a state dict; it is not an upscaler model")
    return loaded


def load_upscaler_network(path: Path) -> "ImageModelDescriptor":
    """Read `path` safely and build the network spandrel recognises in it (on the CPU, fp32, eval mode)."""
    # imported here: spandrel imports every architecture it knows (seconds), which only a model upscale needs
    from spandrel import MAIN_REGISTRY, ImageModelDescriptor, UnsupportedModelError, canonicalize_state_dict

    path = Path(path)
    if not path.is_file():
        raise UpscalerModelError(f"{path.name}: file not found; press Refresh to rescan the upscaler folders")
    if path.suffix.lower() not in UPSCALER_SUFFIXES:
        raise UpscalerModelError(f"{path.name}: unsupported file type {path.suffix!r}; use .pth or .safetensors")
    state_dict = canonicalize_state_dict(_read_weights(path))
    if not state_dict or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise UpscalerModelError(f"{path.name}: holds no flat table of weights; it is not an upscaler model")
    try:
        descriptor = MAIN_REGISTRY.load(state_dict)
    except UnsupportedModelError:
        raise UpscalerModelError(f"{path.name}: not an upscaler architecture spandrel 0.4 recognises (ESRGAN, "
                                 "RealESRGAN, SwinIR, DAT, HAT, SCUNet, ...); remove it from the folder") from None
    except Exception as exc:  # a known architecture whose tensors disagree: truncated, edited or mixed files
        raise UpscalerModelError(f"{path.name}: broken or incomplete upscaler file ({type(exc).__name__}: "
                                 f"{str(exc)[:200]}); download it again") from exc
    if not isinstance(descriptor, ImageModelDescriptor):
        raise UpscalerModelError(f"{path.name}: is a {descriptor.architecture.name} inpainting model, not an upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise UpscalerModelError(f"{path.name}: a {descriptor.input_channels}-channel {descriptor.architecture.name} "
                                 "model; only RGB upscalers are supported")
    return descriptor.eval()


def place_network(network: "ImageModelDescriptor", device: torch.device,
                  dtype: torch.dtype) -> "ImageModelDescriptor":
    """Move to the app's device and precision; architectures that do not support fp16/bf16 stay in fp32."""
    supported = {torch.float16: network.supports_half, torch.bfloat16: network.supports_bfloat16}
    chosen = dtype if supported.get(dtype, True) else torch.float32
    return network.to(device).to(chosen)


def tile_starts(length: int, tile: int, overlap: int) -> list[tuple[int, int, int]]:
    """Along one side: (window start, core start, core end) for windows of `tile` pixels whose cores are kept.

    Each kept core has `overlap` pixels of real image context on both sides inside its window (except at the image's
    own edges), and every window is exactly `tile` long (the last one is shifted back) so no tile needs padding."""
    if tile <= 0 or length <= tile:
        return [(0, 0, length)]
    core = tile - 2 * overlap
    spans = []
    for core_start in range(0, length, core):
        core_end = min(core_start + core, length)
        window = min(max(core_start - overlap, 0), length - tile)
        spans.append((window, core_start, core_end))
    return spans


@torch.inference_mode()
def run_tiled(
    network: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int,
    on_tile: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Upscale a (1, 3, H, W) tensor in [0, 1] tile by tile; returns (1, 3, H*scale, W*scale) float32 on the CPU.

    Written by hand because spandrel runs a whole image at once. Unlike A1111's grid, which blends overlapping tiles,
    only each tile's core is kept and its `overlap` margin is thrown away: a network whose receptive field fits in
    the margin gives exactly the untiled image, and wider ones only differ where their context was cut.
    `on_tile(done, total)` is called after each tile (it may raise to stop)."""
    if tile > 0 and tile <= 2 * overlap:
        raise ValueError(f"tile size {tile} must be larger than twice the tile overlap {overlap}")
    _, channels, height, width = image.shape
    rows, columns = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    total = len(rows) * len(columns)
    result = torch.empty((1, channels, height * scale, width * scale), dtype=torch.float32)
    done = 0
    for window_y, y0, y1 in rows:
        for window_x, x0, x1 in columns:
            window = image[..., window_y:window_y + min(tile if tile > 0 else height, height),
                           window_x:window_x + min(tile if tile > 0 else width, width)]
            upscaled = network(window)
            if upscaled.shape[-2:] != (window.shape[-2] * scale, window.shape[-1] * scale):
                raise ValueError(f"the network returned {tuple(upscaled.shape[-2:])} for a "
                                 f"{tuple(window.shape[-2:])} tile; expected a x{scale} result")
            top, left = (y0 - window_y) * scale, (x0 - window_x) * scale
            result[..., y0 * scale:y1 * scale, x0 * scale:x1 * scale] = upscaled[
                ..., top:top + (y1 - y0) * scale, left:left + (x1 - x0) * scale].float().cpu()
            done += 1
            if on_tile is not None:
                on_tile(done, total)
    return result

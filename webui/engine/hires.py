"""Hires fix as A1111 does it: upscale the first pass, then run img2img on it at the larger size.

The first pass's latents are brought to the target size either in latent space (the "Latent ..." modes, plain
`torch.nn.functional.interpolate`, no VAE round trip) or through pixels (decode, upscale the image with an image
upscaler such as Lanczos or an ESRGAN model, encode). The second pass is the engine's own img2img
(`img2img_from_latents`) at the denoising strength, with fresh noise drawn at the new size from each image's seed,
which is how A1111 noises its hires pass. Target sizes follow A1111's `calculate_target_resolution`: "upscale by"
multiplies the first-pass size; "resize to" overrides it, a zero side keeps the aspect ratio, and two sides cover the
target keeping the aspect ratio and then crop the latent's centre to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from .denoise import DenoiseExtension
from .generation import SamplingParams, latents_to_images
from .img2img import encode_images, img2img_from_latents
from .loader import LoadedModel
from .samplers import SamplerRegistry

# A1111's `shared.latent_upscale_modes`: upscaler name -> (interpolate mode, antialias).
LATENT_UPSCALE_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
DEFAULT_LATENT_MODE = "Latent"  # A1111's `latent_upscale_default_mode`, used when no upscaler is named

# (image, width, height) -> the image at exactly width x height; the service wraps the app's upscaler library.
ImageUpscaler = Callable[[Image.Image, int, int], Image.Image]


def is_latent_mode(upscaler: str | None) -> bool:
    return upscaler is None or upscaler in LATENT_UPSCALE_MODES


@dataclass(frozen=True)
class HiresSize:
    """Where the first pass goes: scaled to `upscale_to` (pixels), then `crop` latent cells cut off (x, y)."""

    upscale_to: tuple[int, int]
    crop: tuple[int, int]
    factor: int  # pixels per latent cell

    @property
    def latent_size(self) -> tuple[int, int]:
        """(height, width) of the upscaled latent before the crop."""
        return self.upscale_to[1] // self.factor, self.upscale_to[0] // self.factor

    @property
    def final_size(self) -> tuple[int, int]:
        """(width, height) in pixels of the hires image (the latent after the crop, times the factor)."""
        height, width = self.latent_size
        return (width - self.crop[0]) * self.factor, (height - self.crop[1]) * self.factor


def hires_size(width: int, height: int, scale: float, resize_x: int = 0, resize_y: int = 0, factor: int = 8
               ) -> HiresSize:
    """A1111's target: `scale` x the first-pass size, unless a resize side is given (which overrides the scale)."""
    if resize_x == 0 and resize_y == 0:
        return HiresSize((int(width * scale), int(height * scale)), (0, 0), factor)
    if resize_y == 0:
        return HiresSize((resize_x, resize_x * height // width), (0, 0), factor)
    if resize_x == 0:
        return HiresSize((resize_y * width // height, resize_y), (0, 0), factor)
    if width / height < resize_x / resize_y:  # wider target: fit the width, crop height
        upscale_to = (resize_x, resize_x * height // width)
    else:
        upscale_to = (resize_y * width // height, resize_y)
    return HiresSize(upscale_to, ((upscale_to[0] - resize_x) // factor, (upscale_to[1] - resize_y) // factor), factor)


def upscale_latents(latents: torch.Tensor, mode_name: str, size: tuple[int, int]) -> torch.Tensor:
    """A latent upscale mode on a batch of latents; `size` is (height, width) in latent cells."""
    mode, antialias = LATENT_UPSCALE_MODES[mode_name]
    return F.interpolate(latents, size=size, mode=mode, antialias=antialias)


def crop_latents(latents: torch.Tensor, crop: tuple[int, int]) -> torch.Tensor:
    """Cut `crop` (x, y) cells off a latent batch, half each side (the extra one at the end), as A1111 does."""
    crop_x, crop_y = crop
    height, width = latents.shape[-2:]
    return latents[:, :, crop_y // 2:height - (crop_y + 1) // 2, crop_x // 2:width - (crop_x + 1) // 2]


def latent_upscale(latents: torch.Tensor, upscaler: str | None, size: HiresSize) -> torch.Tensor:
    """A latent mode's hires latents: the first pass interpolated to the target, then cropped (no VAE round trip)."""
    scaled = upscale_latents(latents.float(), upscaler or DEFAULT_LATENT_MODE, size.latent_size)
    return crop_latents(scaled.to(latents.dtype), size.crop)


def upscaled_images(model: LoadedModel, latents: torch.Tensor, size: HiresSize, image_upscaler: ImageUpscaler
                    ) -> list[Image.Image]:
    """An image upscaler's first step: decode the first pass and upscale each image to `size.upscale_to` (rounded
    down to whole latent cells; A1111 would encode an odd size's partial cell)."""
    height, width = size.latent_size
    return [image_upscaler(image, width * size.factor, height * size.factor)
            for image in latents_to_images(model, latents)]


def images_to_hires_latents(model: LoadedModel, images: list[Image.Image], size: HiresSize) -> torch.Tensor:
    """An image upscaler's second step, on the hires model: encode the upscaled images and crop to the target."""
    return crop_latents(encode_images(model, images), size.crop)


def hires_pass(model: LoadedModel, params: SamplingParams, samplers: SamplerRegistry, latents: torch.Tensor,
               denoising_strength: float, extensions: Sequence[DenoiseExtension] = ()) -> torch.Tensor:
    """The second pass: img2img from `latents` (already at the hires size) with the hires prompt, sampler and steps
    in `params`, whose width and height must be the hires size."""
    return img2img_from_latents(model, params, samplers, latents, denoising_strength, extensions)

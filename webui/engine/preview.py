"""Cheap live previews: a linear latent -> RGB map, with no extra weights.

Published latent-to-RGB factor tables only fit the stock SD VAEs. Instead the map is fitted once per model from the
model's own VAE: encode a handful of solid colours and solve least squares from latent channels to RGB. That works for
any VAE, including the project's own, and costs one small encode.
"""

from __future__ import annotations

import itertools

import torch
from PIL import Image

from .loader import LoadedModel

_PATCH = 32


@torch.inference_mode()
def fit_latent_to_rgb(model: LoadedModel) -> torch.Tensor:
    """A (C+1) x 3 matrix mapping [latent channels, 1] to RGB in [-1, 1]."""
    levels = (-1.0, 0.0, 1.0)
    colours = torch.tensor(list(itertools.product(levels, levels, levels)), dtype=torch.float32)  # 27 x 3
    images = colours[:, :, None, None].expand(-1, -1, _PATCH, _PATCH)
    vae = model.vae
    latents = vae.encode(images.to(model.device, model.vae_dtype)).latent_dist.mode().float().cpu() * model.vae_scale
    features = torch.cat([latents.mean(dim=(2, 3)), torch.ones(len(colours), 1)], dim=1)
    return torch.linalg.lstsq(features, colours).solution


def identity_factors() -> torch.Tensor:
    """The map for pixels that are already RGB (the "Full" method): [r, g, b, 1] -> [r, g, b]."""
    return torch.cat([torch.eye(3), torch.zeros(1, 3)])


@torch.inference_mode()
def decode_for_preview(model: LoadedModel, latents: torch.Tensor, max_images: int = 4) -> torch.Tensor:
    """The "Full" preview method: the model's VAE decodes the first images, [B, 3, H, W] in [-1, 1] on the CPU, to
    show with `identity_factors()`. Exact, but a VAE decode per preview; NaN (a half VAE overflowing mid-sampling)
    shows as grey rather than stopping the job."""
    vae = model.vae
    sample = latents[:max_images].to(model.device, model.vae_dtype) / model.vae_scale
    pixels = vae.decode(sample, return_dict=False)[0].float().cpu()
    return torch.nan_to_num(pixels).clamp(-1, 1)


def latents_to_preview(latents: torch.Tensor, factors: torch.Tensor, max_images: int = 4) -> Image.Image:
    """Latents [B, C, h, w] -> one RGB strip image, upscaled for visibility."""
    sample = latents[:max_images].float().cpu()
    features = torch.cat([sample, torch.ones_like(sample[:, :1])], dim=1)
    rgb = torch.einsum("bchw,cd->bdhw", features, factors)
    strip = torch.cat(list(rgb), dim=2)  # side by side
    pixels = ((strip.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels)
    scale = max(1, 256 // max(1, sample.shape[-2]))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)

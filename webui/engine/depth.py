"""Depth-to-image: SD 2's depth model sees a depth map as a 5th U-Net input channel beside the latents.

The semantics are diffusers' StableDiffusionDepth2ImgPipeline (and the LDM `LatentDepth2ImageDiffusion` it ports):
the depth map is resized to the latent size (bicubic), normalised per image to [-1, 1] and given to both CFG halves.
Where the map comes from is the caller's business (an uploaded depth image, or the depth_midas preprocessor in the
service): the model file's own MiDaS copy is never used, so no depth network is loaded with the checkpoint.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .denoise import DenoiseContext, DenoiseExtension, UNetCall
from .loader import DepthMapRequired  # noqa: F401  (re-exported: the error of every depth-map-less mode)

DepthMap = Image.Image | torch.Tensor

# PIL modes whose pixel values are the depth itself (16-bit and float maps); any other mode is read as luminance.
_VALUE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


class DepthModelCannotInpaint(ValueError):
    """Inpainting (or outpainting) was asked of a depth model: it has no mask input to inpaint with."""

    def __init__(self, model_name: str) -> None:
        super().__init__(
            f"{model_name} is a depth model, which cannot inpaint or outpaint (it has no mask input); use img2img "
            "without a mask, or an inpainting or normal model to inpaint"
        )


def depth_image(depth: Image.Image) -> Image.Image:
    """A depth picture as a float ("F") image of its depth values: 16-bit and float maps keep their values, any
    other image (L, RGB as MiDaS writes it) gives its luminance. Larger = nearer, as MiDaS outputs."""
    if depth.mode in _VALUE_MODES:
        return Image.fromarray(np.asarray(depth, dtype=np.float32), "F")
    return depth.convert("L").convert("F")


def depth_values(depth: DepthMap) -> torch.Tensor:
    """A depth map as a float32 [B, H, W] tensor.

    Tensors are taken as diffusers' `depth_map` is: [H, W], [B, H, W], or [B, C, H, W] (first channel).
    """
    if isinstance(depth, Image.Image):
        return torch.from_numpy(np.asarray(depth_image(depth), dtype=np.float32).copy())[None]
    if not isinstance(depth, torch.Tensor):
        raise TypeError(f"a depth map is a PIL image or a tensor, not {type(depth).__name__}")
    if depth.ndim == 2:
        depth = depth[None]
    elif depth.ndim == 4:
        depth = depth[:, 0]
    elif depth.ndim != 3:
        raise ValueError(f"a depth tensor is [H, W], [B, H, W] or [B, C, H, W]; got shape {tuple(depth.shape)}")
    return depth.float()


def depth_conditioning(
    depth: DepthMap, latent_size: tuple[int, int], batch: int, device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """The 5th U-Net channel: [batch, 1, h, w] in [-1, 1] (diffusers' `prepare_depth_map` for a given map).

    Resized (bicubic) and normalised in float32 whatever the model's dtype, so half precision loses nothing before
    the U-Net. A flat map (nothing nearer than anything else) gives 0 everywhere instead of diffusers' 0/0 NaN.
    """
    values = depth_values(depth).to(device=device, dtype=torch.float32)
    if values.shape[0] not in (1, batch):
        raise ValueError(f"{values.shape[0]} depth maps for a batch of {batch}: give one, or one per image")
    resized = F.interpolate(values.unsqueeze(1), size=tuple(latent_size), mode="bicubic", align_corners=False)
    low = torch.amin(resized, dim=[1, 2, 3], keepdim=True)
    high = torch.amax(resized, dim=[1, 2, 3], keepdim=True)
    span = high - low
    flat = span <= 0
    normalised = 2.0 * (resized - low) / torch.where(flat, torch.ones_like(span), span) - 1.0
    normalised = torch.where(flat, torch.zeros_like(normalised), normalised)
    if normalised.shape[0] != batch:
        normalised = normalised.repeat(batch, 1, 1, 1)
    return normalised.to(dtype)


class DepthChannels(DenoiseExtension):
    """Depth models: the normalised depth map goes into the U-Net beside the latents, for both CFG halves.

    Like `InpaintChannels`, it only extends the U-Net's input; a ControlNet still sees the 4-channel latents.
    """

    def __init__(self, depth: torch.Tensor) -> None:
        self.depth = depth  # [batch, 1, h, w], from `depth_conditioning`

    def before_unet(self, ctx: DenoiseContext, call: UNetCall) -> None:
        call.channel_inputs.append(self.depth.repeat(call.sample.shape[0] // self.depth.shape[0], 1, 1, 1))

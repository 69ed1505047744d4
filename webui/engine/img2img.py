"""img2img, inpainting and outpainting on a loaded model, through the same denoising loop as txt2img.

img2img: the init image is encoded, noised to the point of the schedule that the denoising strength selects
(A1111's step rule, `img2img_steps`), and denoised from there. Inpainting adds a mask: 4-channel models get the known
region blended back into the latents after every step; 9-channel inpainting models see the mask and the masked
image's latent as extra U-Net input, as they were trained. Either way the result is composited with the input through
the blurred mask in pixel space, so outside the mask and its blur band the output is the input, pixel for pixel.
Depth models (SD 2 depth) take img2img only, with a depth map as their 5th U-Net channel (see depth.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .denoise import DenoiseExtension, run_denoise
from .denoise_extensions import InpaintChannels, KnownRegionBlend
from .depth import DepthChannels, DepthMap, DepthModelCannotInpaint, depth_conditioning, depth_image
from .generation import (
    SamplingParams,
    build_scheduler,
    denoise_inputs,
    image_rng,
    inpaint_txt2img_channels,
    latents_to_images,
)
from .loader import DepthMapRequired, LoadedModel
from .masking import (
    Box,
    ResizeMode,
    binary_mask,
    blur_mask,
    composite,
    crop_region,
    expand_to_ratio,
    fill_masked,
    is_empty,
    pad_to,
    resize_image,
)
from .samplers import SamplerRegistry

FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING = 0, 1, 2, 3
INPAINTING_FILL_LABELS = {FILL: "fill", ORIGINAL: "original", LATENT_NOISE: "latent noise",
                          LATENT_NOTHING: "latent nothing"}


class NothingToInpaint(ValueError):
    """The mask selects no pixel (after inverting, if asked)."""


@dataclass
class Img2ImgOptions:
    """img2img/inpaint parameters with A1111's meaning; the service layer has already validated them."""

    denoising_strength: float = 0.75
    resize_mode: int = ResizeMode.JUST_RESIZE
    mask: Image.Image | None = None  # any mode; white (or opaque) = repaint
    mask_blur: int = 4
    invert_mask: bool = False
    inpainting_fill: int = ORIGINAL
    inpaint_full_res: bool = False  # "Only masked"
    inpaint_full_res_padding: int = 32
    # Set when the generation size came from the image: the image is padded (edge pixels) up to width x height
    # instead of resized, and the output is cropped back to this size.
    restore_size: tuple[int, int] | None = None
    # Depth models only (ignored by others): a depth image aligned with the input image (larger = nearer), fitted
    # to the generation size as the image is; or a tensor already in the generation frame (diffusers' `depth_map`).
    depth_map: DepthMap | None = None


def img2img_steps(steps: int, strength: float) -> int:
    """How many of the `steps`-step schedule's steps A1111 runs: int(min(strength, 0.999) * steps) + 1; 0 at 0.

    A1111 builds the full schedule for `steps` and starts at its entry `steps - run`, so strength 1 runs every step
    from pure noise and strength 0.75 of 20 steps runs the last 16. Strength 0 runs none (the input is only encoded
    and decoded).
    """
    if strength <= 0:
        return 0
    return min(steps, int(min(strength, 0.999) * steps) + 1)


def _to_tensor(images: list[Image.Image], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    arrays = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for image in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).to(device, dtype)


def encode_images(model: LoadedModel, images: list[Image.Image]) -> torch.Tensor:
    """RGB images -> scaled latents (the distribution's mean, so the same image always gives the same latent)."""
    pixels = _to_tensor(images, model.device, model.vae_dtype)
    with torch.inference_mode():
        latents = model.vae.encode(pixels).latent_dist.mode() * model.vae_scale
    return latents.to(model.dtype)


def _multiple_of(value: int, factor: int) -> int:
    return max(factor, (value + factor // 2) // factor * factor)


@dataclass
class _Prepared:
    """The init image, masks and paste-back geometry for one generation size."""

    image: Image.Image  # what is encoded, width x height (or its own size for latent upscale)
    original: Image.Image  # what the result is composited onto
    overlay: Image.Image | None  # blurred mask at `original` size; None for plain img2img
    mask: Image.Image | None  # blurred mask at width x height (after the "only masked" crop)
    paste_box: Box | None  # "only masked": where the generated crop goes back into `original`
    depth: DepthMap | None = None  # the depth map in the generation frame (a float image, or the caller's tensor)


def _fit_depth(depth: DepthMap | None, image_size: tuple[int, int], options: Img2ImgOptions, width: int,
               height: int) -> DepthMap | None:
    """Bring a depth image into the generation frame the way the init image goes there, so the two stay aligned.

    A depth image of another size is first stretched onto the input image (as a mask is); tensors are the caller's
    own frame and pass through.
    """
    if depth is None or isinstance(depth, torch.Tensor):
        return depth
    values = depth_image(depth)
    if values.size != image_size:
        values = values.resize(image_size, Image.Resampling.BICUBIC)
    if options.restore_size is not None:
        return pad_to(values, width, height)
    mode = ResizeMode(options.resize_mode)
    return resize_image(values, ResizeMode.JUST_RESIZE if mode == ResizeMode.LATENT_UPSCALE else mode, width, height)


def prepare_inputs(image: Image.Image, options: Img2ImgOptions, width: int, height: int) -> _Prepared:
    """Resize (or pad) the image and mask to the generation size, blur the mask, and crop for "only masked"."""
    image = image.convert("RGB")
    mode = ResizeMode(options.resize_mode)
    depth = _fit_depth(options.depth_map, image.size, options, width, height)
    if options.restore_size is not None:
        fitted = pad_to(image, width, height)
    else:
        fitted = resize_image(image, mode, width, height)
    if options.mask is None:
        encode = fitted
        if mode == ResizeMode.LATENT_UPSCALE and options.restore_size is None:
            encode = image.resize((_multiple_of(image.width, 8), _multiple_of(image.height, 8)),
                                  Image.Resampling.LANCZOS)
        return _Prepared(encode, fitted, None, None, None, depth)

    mask = binary_mask(options.mask)
    if mask.size != image.size:
        mask = binary_mask(mask.resize(image.size, Image.Resampling.LANCZOS))
    if options.invert_mask:
        mask = Image.fromarray(255 - np.asarray(mask))
    if is_empty(mask):
        raise NothingToInpaint("the mask is empty: nothing to inpaint")
    if options.restore_size is not None:
        mask = pad_to(mask, width, height, edge=False)
    else:  # latent upscale has no pixel image to match, so its mask is just resized
        mask_mode = ResizeMode.JUST_RESIZE if mode == ResizeMode.LATENT_UPSCALE else mode
        mask = binary_mask(resize_image(mask, mask_mode, width, height))
    overlay = blur_mask(mask, options.mask_blur)
    if not options.inpaint_full_res:
        return _Prepared(fitted, fitted, overlay, overlay, None, depth)
    box = crop_region(overlay, options.inpaint_full_res_padding)
    assert box is not None  # the mask is not empty
    box = expand_to_ratio(box, width, height, *fitted.size)
    crop = fitted.crop(box).resize((width, height), Image.Resampling.LANCZOS)
    crop_mask = overlay.crop(box).resize((width, height), Image.Resampling.LANCZOS)
    return _Prepared(crop, fitted, overlay, crop_mask, box, depth)


def _latent_mask(mask: Image.Image, size: tuple[int, int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Repaint mask at latent size, rounded to 0/1 as A1111 does (1 = repaint)."""
    small = np.asarray(mask.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(np.around(small)).to(device, dtype)[None, None]


def inpaint_conditioning(model: LoadedModel, image: Image.Image, mask: Image.Image, batch: int) -> torch.Tensor:
    """9-channel input: the binary mask at latent size and the latent of the image with the masked area grey."""
    hard = torch.from_numpy((np.asarray(mask, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32))[None, None]
    pixels = _to_tensor([image], model.device, torch.float32)
    masked = (pixels * (1.0 - hard.to(pixels.device))).to(model.vae_dtype)
    with torch.inference_mode():
        latent = model.vae.encode(masked).latent_dist.mode() * model.vae_scale
    small = F.interpolate(hard, size=latent.shape[-2:]).to(latent.device, latent.dtype)
    return torch.cat([small, latent], dim=1).repeat(batch, 1, 1, 1).to(model.dtype)


def img2img_latents(
    model: LoadedModel,
    params: SamplingParams,
    samplers: SamplerRegistry,
    prepared: _Prepared,
    options: Img2ImgOptions,
    extensions: Sequence[DenoiseExtension] = (),
    init_latents: torch.Tensor | None = None,
) -> torch.Tensor:
    """Encode, noise to the strength's start step, denoise (blending the known region), return final latents.

    `init_latents` (one per seed, at the generation size) replaces encoding `prepared.image` (hires fix)."""
    run = img2img_steps(params.steps, options.denoising_strength)
    if model.variant == "depth":  # refused before any work
        if prepared.mask is not None:
            raise DepthModelCannotInpaint(model.name)
        if prepared.depth is None and run > 0:
            raise DepthMapRequired(model.name)
    batch, factor = len(params.seeds), model.vae_downscale
    latent_size = (params.height // factor, params.width // factor)
    image = prepared.image
    latent_mask = None
    if prepared.mask is not None:
        latent_mask = _latent_mask(prepared.mask, latent_size, model.device, model.dtype)
        if options.inpainting_fill == FILL:
            image = fill_masked(image, prepared.mask)
    if init_latents is not None:
        init = init_latents.to(model.device, model.dtype)
    else:
        init = encode_images(model, [image])
        if init.shape[-2:] != latent_size:  # latent upscale
            init = F.interpolate(init.float(), size=latent_size, mode="bilinear").to(model.dtype)
        init = init.repeat(batch, 1, 1, 1)
    rng = image_rng(model, params, latent_size)
    noise = rng.first().to(model.device, model.dtype)
    if latent_mask is not None and options.inpainting_fill == LATENT_NOISE:
        init = init * (1 - latent_mask) + noise * latent_mask
    elif latent_mask is not None and options.inpainting_fill == LATENT_NOTHING:
        init = init * (1 - latent_mask)

    if run == 0:
        return init

    scheduler = build_scheduler(model, params, samplers)
    start = (params.steps - run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    timesteps = scheduler.timesteps
    if options.denoising_strength >= 1.0 and not getattr(scheduler, "is_k_diffusion", False):
        latents = noise * scheduler.init_noise_sigma  # diffusers: strength 1 ignores the input (pure noise)
    else:
        latents = scheduler.add_noise(init, noise, timesteps[start:start + 1].repeat(batch))

    mode_extensions: list[DenoiseExtension] = []
    if model.variant == "inpaint":
        if prepared.mask is not None:
            extra = inpaint_conditioning(model, prepared.image, prepared.mask, batch)
        else:
            extra = inpaint_txt2img_channels(model, batch, params.height, params.width)
        mode_extensions.append(InpaintChannels(extra))
    elif model.variant == "depth":
        mode_extensions.append(DepthChannels(depth_conditioning(prepared.depth, latent_size, batch, model.device,
                                                                model.dtype)))
    elif latent_mask is not None:
        mode_extensions.append(KnownRegionBlend(init, noise, latent_mask, scheduler))
    inputs = denoise_inputs(model, params, latents, start, rng=rng)
    return run_denoise(model, scheduler, inputs, [*mode_extensions, *extensions])


def img2img_from_latents(
    model: LoadedModel,
    params: SamplingParams,
    samplers: SamplerRegistry,
    init_latents: torch.Tensor,
    denoising_strength: float,
    extensions: Sequence[DenoiseExtension] = (),
) -> torch.Tensor:
    """Plain img2img from latents already at the generation size, one per seed (hires fix's second pass): no
    image, no mask, nothing to paste back."""
    prepared = _Prepared(image=None, original=None, overlay=None, mask=None, paste_box=None)  # type: ignore[arg-type]
    options = Img2ImgOptions(denoising_strength=denoising_strength)
    return img2img_latents(model, params, samplers, prepared, options, extensions, init_latents=init_latents)


def finish(images: list[Image.Image], prepared: _Prepared, options: Img2ImgOptions) -> list[Image.Image]:
    """Paste back ("only masked"), composite through the blurred mask, and crop to the input's own size."""
    results = []
    for generated in images:
        if prepared.overlay is not None:
            if prepared.paste_box is not None:
                left, top, right, bottom = prepared.paste_box
                full = prepared.original.copy()
                full.paste(generated.resize((right - left, bottom - top), Image.Resampling.LANCZOS), (left, top))
                generated = full
            generated = composite(generated, prepared.original, prepared.overlay)
        if options.restore_size is not None:
            generated = generated.crop((0, 0, *options.restore_size))
        results.append(generated)
    return results


def img2img(
    model: LoadedModel,
    params: SamplingParams,
    samplers: SamplerRegistry,
    image: Image.Image,
    options: Img2ImgOptions,
    extensions: Sequence[DenoiseExtension] = (),
) -> list[Image.Image]:
    """One batch of img2img (or inpaint, when `options.mask` is set): len(params.seeds) images."""
    prepared = prepare_inputs(image, options, params.width, params.height)
    latents = img2img_latents(model, params, samplers, prepared, options, extensions)
    return finish(latents_to_images(model, latents), prepared, options)

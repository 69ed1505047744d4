"""txt2img on a loaded model: A1111 seeding, conditioning, the sampler table and the shared denoising loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
from PIL import Image
from diffusers.image_processor import VaeImageProcessor

from .conditioning import Conditioning, encode_prompts
from .denoise import DenoiseExtension, DenoiseInputs, decode_latents, run_denoise
from .denoise_extensions import InpaintChannels
from .loader import DepthMapRequired, LoadedModel
from .samplers import SamplerRegistry

if TYPE_CHECKING:
    from .embeddings import EmbeddingSet


@dataclass
class SamplingParams:
    """Engine-level parameters for one batch (already validated by the service layer)."""

    prompt: str
    negative_prompt: str = ""
    sampler: str = "Euler"
    schedule: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seeds: list[int] = field(default_factory=lambda: [0])
    embeddings: EmbeddingSet | None = None  # textual-inversion embeddings that fit the model
    eta: float = 0.0  # DDIM's eta (A1111 `eta_ddim`); used by schedulers whose step takes `eta`
    s_churn: float = 0.0  # sigma churn (A1111 `s_churn`); used by schedulers whose step takes `s_churn` (Euler)
    ensd: int = 0  # eta noise seed delta: offsets the seeds of the per-step noise, never the initial noise

    def step_options(self) -> dict[str, float]:
        """Keyword arguments for `scheduler.step`; the loop passes only those a scheduler accepts."""
        return {"eta": self.eta, "s_churn": self.s_churn}


def initial_noise(seeds: list[int], channels: int, height: int, width: int) -> torch.Tensor:
    """A1111's CPU RNG: image i starts from randn((C, H/f, W/f)) of a CPU generator seeded with its own seed.

    The noise is drawn on the CPU whatever the device, so a seed gives the same start on every machine.
    """
    return torch.stack(
        [torch.randn((channels, height, width), generator=torch.Generator("cpu").manual_seed(seed)) for seed in seeds]
    )


def step_generators(seeds: list[int]) -> list[torch.Generator]:
    """Per-image generators for ancestral/SDE noise, so image i does not depend on its batch neighbours."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def sdxl_time_ids(width: int, height: int, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL micro-conditioning: original size, crop (0, 0), target size, as (h, w) pairs."""
    return torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype).repeat(batch, 1)


def inpaint_txt2img_channels(model: LoadedModel, batch: int, height: int, width: int) -> torch.Tensor:
    """For 9-channel models in txt2img: mask all ones and a grey (zero) masked image, as A1111 does."""
    grey = torch.zeros((1, 3, height, width), device=model.device, dtype=model.vae.dtype)
    with torch.inference_mode():
        latent = model.vae.encode(grey).latent_dist.mode() * model.vae_scale
    mask = torch.ones((1, 1, *latent.shape[-2:]), device=model.device, dtype=latent.dtype)
    return torch.cat([mask, latent], dim=1).repeat(batch, 1, 1, 1).to(model.dtype)


def denoise_inputs(model: LoadedModel, params: SamplingParams, latents: torch.Tensor, start_index: int = 0) -> DenoiseInputs:
    """Prompt conditioning, CFG and SDXL micro-conditioning for one batch: the part every mode shares."""
    batch = len(params.seeds)
    cond = encode_prompts(model, [params.prompt] * batch, embeddings=params.embeddings)
    uncond: Conditioning | None = None
    if params.cfg_scale != 1.0:
        uncond = encode_prompts(model, [params.negative_prompt] * batch, zero_if_empty=model.family.is_sdxl,
                                embeddings=params.embeddings)
    return DenoiseInputs(
        latents=latents,
        cond=cond,
        uncond=uncond,
        cfg_scale=params.cfg_scale,
        add_time_ids=sdxl_time_ids(params.width, params.height, batch, model.device, model.dtype)
        if model.family.is_sdxl
        else None,
        generators=step_generators([seed + params.ensd for seed in params.seeds]),
        start_index=start_index,
        step_options=params.step_options(),
    )


def build_scheduler(model: LoadedModel, params: SamplingParams, samplers: SamplerRegistry):
    """The sampler table's scheduler for this model, with its timesteps set for `params.steps`."""
    spec, schedule = samplers.resolve(params.sampler, params.schedule)
    scheduler = spec.build(schedule, model.prediction_type, noise_seed=params.seeds[0] + params.ensd)
    scheduler.set_timesteps(params.steps, device=model.device)
    return scheduler


def generate_latents(
    model: LoadedModel,
    params: SamplingParams,
    samplers: SamplerRegistry,
    extensions: Sequence[DenoiseExtension] = (),
) -> torch.Tensor:
    """txt2img latents; `extensions` (ControlNet, progress, interrupt, hooks) run after the mode's own."""
    if model.variant == "depth":
        raise DepthMapRequired(model.name)  # its 5th input channel only exists in img2img
    scheduler = build_scheduler(model, params, samplers)
    batch = len(params.seeds)
    factor = model.vae_downscale
    noise = initial_noise(params.seeds, model.latent_channels, params.height // factor, params.width // factor)
    latents = (noise.to(model.device, model.dtype)) * scheduler.init_noise_sigma
    mode_extensions: list[DenoiseExtension] = []
    if model.variant == "inpaint":
        mode_extensions.append(InpaintChannels(inpaint_txt2img_channels(model, batch, params.height, params.width)))
    return run_denoise(model, scheduler, denoise_inputs(model, params, latents), [*mode_extensions, *extensions])


_postprocessor = VaeImageProcessor(do_normalize=True)


def latents_to_images(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    decoded = decode_latents(model, latents)
    return _postprocessor.postprocess(decoded.float().cpu(), output_type="pil")


def txt2img(
    model: LoadedModel,
    params: SamplingParams,
    samplers: SamplerRegistry,
    extensions: Sequence[DenoiseExtension] = (),
) -> list[Image.Image]:
    """One batch: len(params.seeds) images generated together."""
    return latents_to_images(model, generate_latents(model, params, samplers, extensions))

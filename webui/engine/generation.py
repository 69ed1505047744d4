"""txt2img on a loaded model: A1111 seeding, conditioning, the sampler table and the shared denoising loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image

from .conditioning import Conditioning, ScheduledConditioning, TextOptions, encode_plan
from .denoise import DenoiseExtension, DenoiseInputs, decode_latents, run_denoise
from .denoise_extensions import InpaintChannels
from .k_denoise import KDiffusionSchedule
from .loader import DepthMapRequired, LoadedModel
from .prompt_parser import plan_prompt, schedule_steps
from .rng import ImageRNG
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
    # Variation seeds (A1111 `subseed`, `subseed_strength`): image i's noise is slerped towards subseeds[i]'s.
    subseeds: list[int] | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] = (0, 0)  # A1111 "Resize seed from" (width, height) in pixels; (0, 0) = off
    # Noise source (A1111 `randn_source`): "CPU", "GPU" or "NV". The engine defaults to the CPU's, the same on every
    # machine (the diffusers parity benchmarks rely on it); the service passes the user's setting (A1111: "GPU").
    rng_source: str = "CPU"
    # Set on hires fix's second pass: the first pass's step count. A1111's prompt editing then reads fractions 1-2 and
    # steps past the first pass as this pass's (`prompt_parser.prompt_schedule(prompt, first_pass_steps, steps)`).
    first_pass_steps: int | None = None
    # How prompt text becomes conditioning (A1111's emphasis mode and CLIP skip), and A1111's "Use old prompt editing
    # timelines" (a `when` below 1 is a fraction, else a step, whatever its decimal point).
    text_options: TextOptions = TextOptions()
    old_prompt_scheduling: bool = False

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


def image_rng(model: LoadedModel, params: SamplingParams, latent_size: tuple[int, int]) -> ImageRNG:
    """The batch's noise (initial and per-step) as A1111 draws it, from the params' seeds and seed options."""
    return ImageRNG(
        shape=(model.latent_channels, *latent_size),
        seeds=list(params.seeds),
        source=params.rng_source,
        device=model.device,
        subseeds=params.subseeds,
        subseed_strength=params.subseed_strength,
        seed_resize_from=params.seed_resize_from,
        ensd=params.ensd,
        latent_factor=model.vae_downscale,
    )


def step_generators(seeds: list[int]) -> list[torch.Generator]:
    """Per-image generators for ancestral/SDE noise, so image i does not depend on its batch neighbours."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def sdxl_time_ids(width: int, height: int, batch: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """SDXL micro-conditioning: original size, crop (0, 0), target size, as (h, w) pairs."""
    return torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype).repeat(batch, 1)


def inpaint_txt2img_channels(model: LoadedModel, batch: int, height: int, width: int) -> torch.Tensor:
    """For 9-channel models in txt2img: mask all ones and a grey (zero) masked image, as A1111 does."""
    grey = torch.zeros((1, 3, height, width), device=model.device, dtype=model.vae_dtype)
    with torch.inference_mode():
        latent = model.vae.encode(grey).latent_dist.mode() * model.vae_scale
    mask = torch.ones((1, 1, *latent.shape[-2:]), device=model.device, dtype=latent.dtype)
    return torch.cat([mask, latent], dim=1).repeat(batch, 1, 1, 1).to(model.dtype)


def prompt_conditioning(model: LoadedModel, params: SamplingParams, batch: int
                        ) -> tuple[ScheduledConditioning, ScheduledConditioning | None]:
    """The prompt's and the negative prompt's conditioning over the run (A1111's prompt editing, alternation, AND
    weights), each distinct schedule encoded once. The negative one is None only when CFG is off (scale 1) and the
    prompt is a single part of weight 1: AND weights need the unconditional prediction even at scale 1.

    Schedules count steps as A1111 does (model calls of the sampler); on a hires pass (`first_pass_steps` set) they
    are the hires pass's (`prompt_parser.plan_prompt(prompt, first_pass_steps, hires_steps=...)`)."""
    steps = schedule_steps(params.sampler, params.steps)
    base, hires = (steps, None) if params.first_pass_steps is None else (params.first_pass_steps, steps)
    plan = plan_prompt(params.prompt, base, hires, params.old_prompt_scheduling)
    cache: dict = {}
    options = params.text_options
    cond = encode_plan(model, plan, batch, options, params.embeddings, cache=cache)
    if params.cfg_scale == 1.0 and cond.is_plain:
        return cond, None
    negative = plan_prompt(params.negative_prompt, base, hires, params.old_prompt_scheduling, positive=False)
    uncond = encode_plan(model, negative, batch, options, params.embeddings, zero_if_empty=model.family.is_sdxl,
                         cache=cache)
    return cond, uncond


def denoise_inputs(model: LoadedModel, params: SamplingParams, latents: torch.Tensor, start_index: int = 0,
                   rng: ImageRNG | None = None) -> DenoiseInputs:
    """Prompt conditioning, CFG and SDXL micro-conditioning for one batch: the part every mode shares."""
    batch = len(params.seeds)
    cond_schedule, uncond_schedule = prompt_conditioning(model, params, batch)
    uncond: Conditioning | None = uncond_schedule.first if uncond_schedule is not None else None
    return DenoiseInputs(
        latents=latents,
        cond=cond_schedule.first,
        uncond=uncond,
        cond_schedule=None if cond_schedule.is_plain else cond_schedule,
        uncond_schedule=None if uncond_schedule is None or uncond_schedule.is_plain else uncond_schedule,
        cfg_scale=params.cfg_scale,
        add_time_ids=sdxl_time_ids(params.width, params.height, batch, model.device, model.dtype)
        if model.family.is_sdxl
        else None,
        generators=step_generators([seed + params.ensd for seed in params.seeds]),
        rng=rng,
        start_index=start_index,
        step_options=params.step_options(),
    )


def build_scheduler(model: LoadedModel, params: SamplingParams, samplers: SamplerRegistry):
    """The sampler table's scheduler for this model, with its timesteps set for `params.steps`: a diffusers scheduler,
    or for sampler functions a `KDiffusionSchedule` (A1111's sigmas from the model's own noise table)."""
    spec, schedule = samplers.resolve(params.sampler, params.schedule)
    if spec.function is not None:
        return KDiffusionSchedule.for_model(
            spec.function, spec.config_for(schedule, model.prediction_type)["schedule"], model, params.steps,
            options=spec.overrides, brownian_noise=spec.brownian_noise,
            discard_penultimate=spec.discard_penultimate_sigma,
        )
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
    rng = image_rng(model, params, (params.height // factor, params.width // factor))
    noise = rng.first()
    latents = (noise.to(model.device, model.dtype)) * scheduler.init_noise_sigma
    mode_extensions: list[DenoiseExtension] = []
    if model.variant == "inpaint":
        mode_extensions.append(InpaintChannels(inpaint_txt2img_channels(model, batch, params.height, params.width)))
    return run_denoise(model, scheduler, denoise_inputs(model, params, latents, rng=rng),
                       [*mode_extensions, *extensions])


def to_8bit_images(decoded: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] images -> 8-bit RGB the way A1111 converts them: clamp((x + 1) / 2) * 255, truncated (not rounded)."""
    pixels = torch.clamp((decoded.float().cpu() + 1.0) / 2.0, min=0.0, max=1.0)
    arrays = (255.0 * pixels.permute(0, 2, 3, 1).numpy()).astype(np.uint8)
    return [Image.fromarray(array) for array in arrays]


def latents_to_images(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    return to_8bit_images(decode_latents(model, latents))


def txt2img(
    model: LoadedModel,
    params: SamplingParams,
    samplers: SamplerRegistry,
    extensions: Sequence[DenoiseExtension] = (),
) -> list[Image.Image]:
    """One batch: len(params.seeds) images generated together."""
    return latents_to_images(model, generate_latents(model, params, samplers, extensions))

"""One denoising loop for every mode (txt2img now; img2img/inpaint plug in through start latents and extra inputs).

The loop mirrors diffusers' StableDiffusion(XL)Pipeline step for step, so a project image equals the reference
pipeline's image for the same scheduler, noise and conditioning. Hooks see every step and may change the CFG result.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .conditioning import Conditioning
from .loader import LoadedModel


class Interrupted(Exception):
    """The caller asked the loop to stop; finished work elsewhere is kept."""


@dataclass
class StepState:
    """What a per-step hook sees. Hooks may replace `denoised` (the CFG-combined model output)."""

    step: int
    total_steps: int
    timestep: torch.Tensor
    sigma: float | None
    latents: torch.Tensor
    cond_output: torch.Tensor
    uncond_output: torch.Tensor | None
    cfg_scale: float
    denoised: torch.Tensor


class StepHook(Protocol):
    def __call__(self, state: StepState) -> None: ...


ProgressCallback = Callable[[int, int, torch.Tensor], None]
# (index of the step just taken within the steps run, latents after it) -> latents; inpainting blends the known region.
LatentBlend = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class DenoiseInputs:
    """Everything the loop needs besides the model and scheduler."""

    latents: torch.Tensor  # already scaled by the scheduler's initial sigma (img2img: noised to timesteps[start_index])
    cond: Conditioning
    uncond: Conditioning | None  # None when CFG is off
    cfg_scale: float
    add_time_ids: torch.Tensor | None = None  # SDXL
    extra_channels: torch.Tensor | None = None  # 9-channel inpaint models: mask + masked-image latent
    generators: list[torch.Generator] | None = None
    step_hooks: list[StepHook] = field(default_factory=list)
    on_progress: ProgressCallback | None = None
    should_stop: Callable[[], bool] | None = None
    start_index: int = 0  # img2img: skip the schedule's first entries (the caller sets the scheduler's begin index)
    latent_blend: LatentBlend | None = None  # called after every scheduler step


def _unet_call(
    model: LoadedModel, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning, inputs: DenoiseInputs
) -> torch.Tensor:
    if inputs.extra_channels is not None:
        extra = inputs.extra_channels.repeat(latents.shape[0] // inputs.extra_channels.shape[0], 1, 1, 1)
        latents = torch.cat([latents, extra], dim=1)
    added = None
    if cond.pooled is not None:
        time_ids = inputs.add_time_ids.repeat(latents.shape[0] // inputs.add_time_ids.shape[0], 1)
        added = {"text_embeds": cond.pooled, "time_ids": time_ids}
    return model.unet(latents, t, encoder_hidden_states=cond.context, added_cond_kwargs=added, return_dict=False)[0]


def _cat(a: Conditioning, b: Conditioning) -> Conditioning:
    pooled = torch.cat([a.pooled, b.pooled]) if a.pooled is not None and b.pooled is not None else None
    return Conditioning(torch.cat([a.context, b.context]), pooled)


def _sigma_at(scheduler: SchedulerMixin, step: int) -> float | None:
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or step >= len(sigmas):
        return None
    return float(sigmas[step])


@torch.inference_mode()
def run_denoise(model: LoadedModel, scheduler: SchedulerMixin, inputs: DenoiseInputs) -> torch.Tensor:
    """Run the scheduler's timesteps and return the final latents."""
    latents = inputs.latents
    timesteps = scheduler.timesteps[inputs.start_index:]
    step_params = inspect.signature(scheduler.step).parameters
    step_kwargs = {}
    if "generator" in step_params:
        step_kwargs["generator"] = inputs.generators
    if "eta" in step_params:
        step_kwargs["eta"] = 0.0
    same_shape = inputs.uncond is not None and inputs.uncond.context.shape == inputs.cond.context.shape
    for index, t in enumerate(timesteps):
        if inputs.should_stop is not None and inputs.should_stop():
            raise Interrupted()
        if inputs.uncond is None:
            scaled = scheduler.scale_model_input(latents, t)
            cond_out, uncond_out = _unet_call(model, scaled, t, inputs.cond, inputs), None
            denoised = cond_out
        else:
            if same_shape:  # one batched call, [uncond, cond] as in diffusers
                scaled = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                both = _unet_call(model, scaled, t, _cat(inputs.uncond, inputs.cond), inputs)
                uncond_out, cond_out = both.chunk(2)
            else:  # different prompt lengths: two calls, as A1111 does without padding
                scaled = scheduler.scale_model_input(latents, t)
                uncond_out = _unet_call(model, scaled, t, inputs.uncond, inputs)
                cond_out = _unet_call(model, scaled, t, inputs.cond, inputs)
            denoised = uncond_out + inputs.cfg_scale * (cond_out - uncond_out)
        if inputs.step_hooks:
            state = StepState(
                index, len(timesteps), t, _sigma_at(scheduler, inputs.start_index + index), latents, cond_out, uncond_out,
                inputs.cfg_scale, denoised,
            )
            for hook in inputs.step_hooks:
                hook(state)
            denoised = state.denoised
        output = scheduler.step(denoised, t, latents, **step_kwargs, return_dict=True)
        latents = output.prev_sample
        if inputs.latent_blend is not None:
            latents = inputs.latent_blend(index, latents)
        if inputs.on_progress is not None:
            preview = getattr(output, "pred_original_sample", None)
            inputs.on_progress(index + 1, len(timesteps), preview if preview is not None else latents)
    return latents


def decode_latents(model: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1]; any NaN/Inf is an error, never a silent black image."""
    with torch.inference_mode():
        scaled = latents.to(model.vae.dtype) / model.vae_scale
        images = model.vae.decode(scaled, return_dict=False)[0]
    if not torch.isfinite(images).all():
        raise FloatingPointError(
            "the VAE produced NaN/Inf values; try --precision fp32 or a different VAE (nothing was saved)"
        )
    return images

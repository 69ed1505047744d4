"""One denoising loop for every mode, with typed extension points where per-step work plugs in.

The loop mirrors diffusers' StableDiffusion(XL)Pipeline step for step, so a project image equals the reference
pipeline's image for the same scheduler, noise and conditioning. Everything a mode or feature adds to it (inpaint
blending, 9-channel inputs, ControlNet residuals, previews, interrupt, CFG rescale, extension step hooks) is a
`DenoiseExtension` acting on one shared `DenoiseContext` at these points, in list order:

    before_loop(ctx)                      once, before the first step
    before_step(ctx)                      each step, before any U-Net call (interrupt lives here)
    before_unet(ctx, call)                each U-Net call: may change its inputs or add residuals / input channels
    after_cfg(ctx)                        each step, once `ctx.denoised` holds the CFG-combined prediction
    after_step(ctx)                       each step, after the scheduler step (`ctx.latents` is the new sample)
    after_loop(ctx)                       once, after the last step
    after_x0(ctx)                         k-diffusion samplers only (k_denoise.py): each model evaluation, once
                                          `ctx.pred_original` holds the x0 estimate (replaceable)

The shape follows InvokeAI's diffusion backend (one context, callbacks by type) and ComfyUI's hook names.
"""

from __future__ import annotations

import gc
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .conditioning import Conditioning, ScheduledConditioning, stack_conditionings
from .loader import LoadedModel
from .rng import ImageRNG

log = logging.getLogger(__name__)

Half = Literal["uncond", "cond"]


class Interrupted(Exception):
    """The caller asked the loop to stop; finished work elsewhere is kept."""


@dataclass
class DenoiseInputs:
    """What the loop samples from besides the model and scheduler."""

    latents: torch.Tensor  # already scaled by the scheduler's initial sigma (img2img: noised to timesteps[start_index])
    cond: Conditioning
    uncond: Conditioning | None  # None when CFG is off
    cfg_scale: float
    add_time_ids: torch.Tensor | None = None  # SDXL
    generators: list[torch.Generator] | None = None
    # Each image's noise source (A1111's ImageRNG): k-diffusion samplers draw step noise with `rng.next()`.
    rng: ImageRNG | None = None
    start_index: int = 0  # img2img: skip the schedule's first entries (the caller sets the scheduler's begin index)
    step_options: dict[str, Any] = field(default_factory=dict)  # eta, s_churn: passed where `scheduler.step` takes them
    # A1111's prompt editing, alternation and AND: the conditioning per model call, which `predict()` picks (`cond` and
    # `uncond` then hold the first call's). None: `cond` / `uncond` for the whole run.
    cond_schedule: ScheduledConditioning | None = None
    uncond_schedule: ScheduledConditioning | None = None


@dataclass
class UNetCall:
    """One U-Net evaluation, as `before_unet` extensions see it.

    `halves` names the CFG half of each equal batch chunk, in order (("uncond", "cond") for the batched call), so an
    extension can treat the halves differently (ControlNet's "ControlNet is more important" zeroes the uncond half).
    """

    sample: torch.Tensor  # the scheduler-scaled latents (4 channels); what a ControlNet sees
    timestep: torch.Tensor
    conditioning: Conditioning
    halves: tuple[Half, ...]
    added_cond_kwargs: dict[str, torch.Tensor] | None  # SDXL text_embeds / time_ids
    channel_inputs: list[torch.Tensor] = field(default_factory=list)  # concatenated to `sample` for the U-Net only
    down_residuals: list[torch.Tensor] | None = None
    mid_residual: torch.Tensor | None = None

    def half_mask(self, half: Half) -> torch.Tensor:
        """[B, 1, 1, 1] of 1 for the rows of `half`, 0 elsewhere (dtype and device of `sample`)."""
        rows = self.sample.shape[0] // len(self.halves)
        values = [1.0 if name == half else 0.0 for name in self.halves for _ in range(rows)]
        return torch.tensor(values, device=self.sample.device, dtype=self.sample.dtype).view(-1, 1, 1, 1)

    def add_residuals(self, down: Sequence[torch.Tensor], mid: torch.Tensor) -> None:
        """Sum residuals into the call (several ControlNets add up, as diffusers' MultiControlNetModel does)."""
        if self.down_residuals is None or self.mid_residual is None:
            self.down_residuals, self.mid_residual = list(down), mid
        else:
            self.down_residuals = [a + b for a, b in zip(self.down_residuals, down)]
            self.mid_residual = self.mid_residual + mid


@dataclass
class DenoiseContext:
    """The loop's state, shared by every extension. Extensions read it and may replace the documented fields."""

    model: LoadedModel
    scheduler: SchedulerMixin
    inputs: DenoiseInputs
    timesteps: torch.Tensor  # the timesteps this run takes (after img2img's start index)
    latents: torch.Tensor  # replaceable in after_step (inpaint blend)
    step: int = 0  # index within `timesteps`
    timestep: torch.Tensor | None = None
    sigma: float | None = None
    cond_output: torch.Tensor | None = None
    uncond_output: torch.Tensor | None = None
    denoised: torch.Tensor | None = None  # replaceable in after_cfg
    pred_original: torch.Tensor | None = None  # the scheduler's x0 estimate after a step, when it gives one
    extras: dict[str, Any] = field(default_factory=dict)  # per-run scratch space for extensions
    model_calls: int = 0  # model evaluations so far: A1111's CFG denoiser step counter, which prompt schedules follow

    @property
    def total_steps(self) -> int:
        return len(self.timesteps)


class DenoiseExtension:
    """Base class: override only the points you need; every method is a no-op here."""

    def before_loop(self, ctx: DenoiseContext) -> None:
        pass

    def before_step(self, ctx: DenoiseContext) -> None:
        pass

    def before_unet(self, ctx: DenoiseContext, call: UNetCall) -> None:
        pass

    def after_cfg(self, ctx: DenoiseContext) -> None:
        pass

    def after_step(self, ctx: DenoiseContext) -> None:
        pass

    def after_loop(self, ctx: DenoiseContext) -> None:
        pass

    def after_x0(self, ctx: DenoiseContext) -> None:
        pass


def _cat(a: Conditioning, b: Conditioning) -> Conditioning:
    pooled = torch.cat([a.pooled, b.pooled]) if a.pooled is not None and b.pooled is not None else None
    return Conditioning(torch.cat([a.context, b.context]), pooled)


def _sigma_at(scheduler: SchedulerMixin, step: int) -> float | None:
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or step >= len(sigmas):
        return None
    return float(sigmas[step])


class _Loop:
    """Runs the steps; a class only so the extension dispatch and the U-Net call share the context."""

    def __init__(self, ctx: DenoiseContext, extensions: Sequence[DenoiseExtension]) -> None:
        self.ctx = ctx
        self.extensions = list(extensions)
        step_params = inspect.signature(ctx.scheduler.step).parameters
        self.step_kwargs: dict[str, Any] = {}
        if "generator" in step_params:
            self.step_kwargs["generator"] = ctx.inputs.generators
        if "eta" in step_params:
            self.step_kwargs["eta"] = 0.0
        self.step_kwargs.update({k: v for k, v in ctx.inputs.step_options.items() if k in step_params})

    def unet(self, sample: torch.Tensor, cond: Conditioning, halves: tuple[Half, ...]) -> torch.Tensor:
        ctx, inputs = self.ctx, self.ctx.inputs
        added = None
        if cond.pooled is not None:
            time_ids = inputs.add_time_ids.repeat(sample.shape[0] // inputs.add_time_ids.shape[0], 1)
            added = {"text_embeds": cond.pooled, "time_ids": time_ids}
        call = UNetCall(sample, ctx.timestep, cond, halves, added)
        for extension in self.extensions:
            extension.before_unet(ctx, call)
        model_input = torch.cat([call.sample, *call.channel_inputs], dim=1) if call.channel_inputs else call.sample
        return ctx.model.unet(
            model_input,
            call.timestep,
            encoder_hidden_states=call.conditioning.context,
            added_cond_kwargs=call.added_cond_kwargs,
            down_block_additional_residuals=call.down_residuals,
            mid_block_additional_residual=call.mid_residual,
            return_dict=False,
        )[0]

    def step_conditioning(self) -> tuple[list[tuple[Conditioning, float]], Conditioning | None]:
        """This model call's (cond parts with their AND weights, uncond); advances the call counter."""
        ctx, inputs = self.ctx, self.ctx.inputs
        call = ctx.model_calls
        ctx.model_calls += 1
        parts = inputs.cond_schedule.at(call) if inputs.cond_schedule is not None else [(inputs.cond, 1.0)]
        uncond = inputs.uncond
        if uncond is not None and inputs.uncond_schedule is not None:
            uncond = inputs.uncond_schedule.at(call)[0][0]
        return parts, uncond

    def predict(self) -> None:
        """The U-Net call(s) for one model evaluation and the CFG combination, into ctx.cond_output/uncond_output/
        denoised. With AND parts (A1111's composable diffusion) every part is a "cond" half of one call and
        denoised = uncond + sum_i weight_i * cfg * (cond_i - uncond); ctx.cond_output is the first part's."""
        ctx, inputs = self.ctx, self.ctx.inputs
        scheduler, latents, t = ctx.scheduler, ctx.latents, ctx.timestep
        parts, uncond = self.step_conditioning()
        if uncond is None:  # CFG off (denoise_inputs always gives an uncond when there are AND weights)
            ctx.cond_output = self.unet(scheduler.scale_model_input(latents, t), parts[0][0], ("cond",))
            ctx.uncond_output = None
            ctx.denoised = ctx.cond_output
            return
        count = len(parts)
        cond = parts[0][0] if count == 1 else stack_conditionings([c for c, _ in parts])
        cond_halves: tuple[Half, ...] = ("cond",) * count
        if uncond.context.shape[1] == cond.context.shape[1]:  # one batched call, [uncond, cond...] as diffusers
            scaled = scheduler.scale_model_input(torch.cat([latents] * (count + 1)), t)
            outputs = self.unet(scaled, _cat(uncond, cond), ("uncond", *cond_halves)).chunk(count + 1)
            ctx.uncond_output, cond_outputs = outputs[0], outputs[1:]
        else:  # different prompt lengths: two calls, as A1111 does without padding
            scaled = scheduler.scale_model_input(latents, t)
            ctx.uncond_output = self.unet(scaled, uncond, ("uncond",))
            cond_in = scaled if count == 1 else torch.cat([scaled] * count)
            cond_outputs = self.unet(cond_in, cond, cond_halves).chunk(count)
        ctx.cond_output = cond_outputs[0]
        if count == 1 and parts[0][1] == 1.0:
            ctx.denoised = ctx.uncond_output + inputs.cfg_scale * (ctx.cond_output - ctx.uncond_output)
            return
        denoised = ctx.uncond_output.clone()
        for output, (_, weight) in zip(cond_outputs, parts):
            denoised = denoised + (output - ctx.uncond_output) * (weight * inputs.cfg_scale)
        ctx.denoised = denoised

    def run(self) -> torch.Tensor:
        ctx = self.ctx
        for extension in self.extensions:
            extension.before_loop(ctx)
        for index, t in enumerate(ctx.timesteps):
            ctx.step, ctx.timestep = index, t
            ctx.sigma = _sigma_at(ctx.scheduler, ctx.inputs.start_index + index)
            for extension in self.extensions:
                extension.before_step(ctx)
            self.predict()
            for extension in self.extensions:
                extension.after_cfg(ctx)
            output = ctx.scheduler.step(ctx.denoised, t, ctx.latents, **self.step_kwargs, return_dict=True)
            ctx.latents = output.prev_sample
            ctx.pred_original = getattr(output, "pred_original_sample", None)
            for extension in self.extensions:
                extension.after_step(ctx)
        for extension in self.extensions:
            extension.after_loop(ctx)
        return ctx.latents


@torch.inference_mode()
def run_denoise(
    model: LoadedModel,
    scheduler: SchedulerMixin,
    inputs: DenoiseInputs,
    extensions: Sequence[DenoiseExtension] = (),
) -> torch.Tensor:
    """Run the scheduler's timesteps (from `inputs.start_index`) and return the final latents.

    `scheduler` is a diffusers scheduler or, for samplers backed by a function, a `KDiffusionSchedule`."""
    if getattr(scheduler, "is_k_diffusion", False):
        from .k_denoise import run_k_denoise  # k_denoise builds on this module

        return run_k_denoise(model, scheduler, inputs, extensions)  # type: ignore[arg-type]
    ctx = DenoiseContext(model, scheduler, inputs, scheduler.timesteps[inputs.start_index:], inputs.latents)
    return _Loop(ctx, extensions).run()


def free_device_memory(device: torch.device) -> None:
    """Give back what the allocator caches, so a retry (or the next job) starts from what is really in use."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _decode(model: LoadedModel, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    with torch.inference_mode():
        scaled = latents.to(model.vae_dtype) / model.vae_scale
        if tiled:  # diffusers' tiles overlap and blend, so the seams do not show
            return model.vae.tiled_decode(scaled, return_dict=False)[0]
        return model.vae.decode(scaled, return_dict=False)[0]


def decode_latents(model: LoadedModel, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1]; any NaN/Inf is an error, never a silent black image.

    Two retries, as A1111 and ComfyUI do: a decode that runs out of memory is done again tile by tile, and a half
    precision VAE that overflows to NaN/Inf (the classic SDXL VAE) is moved to fp32 for good and decodes again.
    """
    tiled = False
    try:
        images = _decode(model, latents)
    except torch.OutOfMemoryError:
        log.warning("the VAE ran out of memory decoding %s; retrying tile by tile", tuple(latents.shape))
        free_device_memory(latents.device)
        tiled = True
        images = _decode(model, latents, tiled=True)
    if not torch.isfinite(images).all() and model.vae_dtype != torch.float32:
        log.warning("the %s VAE produced NaN/Inf; moving it to fp32 and decoding again", model.vae_dtype)
        model.use_fp32_vae()
        images = _decode(model, latents, tiled=tiled)
    if not torch.isfinite(images).all():
        raise FloatingPointError(
            "the VAE produced NaN/Inf values even in fp32; try another VAE or --precision fp32 (nothing was saved)"
        )
    return images

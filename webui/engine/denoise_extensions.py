"""The small denoise extensions every mode is built from: interrupt, progress, step hooks, inpaint inputs and blend,
and CFG rescale. Each is one `DenoiseExtension` acting at one or two points of the loop (see denoise.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .denoise import DenoiseContext, DenoiseExtension, Interrupted, UNetCall

# (steps taken, steps in this run, latents or x0 estimate for a preview) -> None
ProgressCallback = Callable[[int, int, torch.Tensor], None]


class Interrupt(DenoiseExtension):
    """Stop before the next step once `should_stop()` says so: a request takes effect within one step."""

    def __init__(self, should_stop: Callable[[], bool]) -> None:
        self.should_stop = should_stop

    def before_step(self, ctx: DenoiseContext) -> None:
        if self.should_stop():
            raise Interrupted()


class Progress(DenoiseExtension):
    """Report each finished step with the scheduler's x0 estimate (a better preview than noisy latents)."""

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback

    def after_step(self, ctx: DenoiseContext) -> None:
        preview = ctx.pred_original if ctx.pred_original is not None else ctx.latents
        self.callback(ctx.step + 1, ctx.total_steps, preview)


@dataclass
class StepState:
    """What an extension author's per-step hook sees. Hooks may replace `denoised` (the CFG-combined model output)."""

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


class StepHooks(DenoiseExtension):
    """The public per-step hook API (`on_step` in extensions) on top of the after-CFG point."""

    def __init__(self, hooks: list[StepHook]) -> None:
        self.hooks = list(hooks)

    def after_cfg(self, ctx: DenoiseContext) -> None:
        if not self.hooks:
            return
        state = StepState(
            ctx.step, ctx.total_steps, ctx.timestep, ctx.sigma, ctx.latents, ctx.cond_output, ctx.uncond_output,
            ctx.inputs.cfg_scale, ctx.denoised,
        )
        for hook in self.hooks:
            hook(state)
        ctx.denoised = state.denoised


class InpaintChannels(DenoiseExtension):
    """9-channel inpainting models: the mask and the masked image's latent go into the U-Net beside the latents.

    A ControlNet still sees the 4-channel latents, as in diffusers' ControlNet inpaint pipeline.
    """

    def __init__(self, extra: torch.Tensor) -> None:
        self.extra = extra  # [batch, 5, h, w]

    def before_unet(self, ctx: DenoiseContext, call: UNetCall) -> None:
        call.channel_inputs.append(self.extra.repeat(call.sample.shape[0] // self.extra.shape[0], 1, 1, 1))


class KnownRegionBlend(DenoiseExtension):
    """4-channel inpainting: after every step the known region is put back, noised to the level the next step
    expects (clean after the last), so only the masked region is sampled.

    On the k-diffusion path A1111 blends the x0 estimate instead (each model evaluation: init outside the mask), and
    the final latents once more; this extension does the same there."""

    def __init__(
        self, init: torch.Tensor, noise: torch.Tensor, repaint_mask: torch.Tensor, scheduler: SchedulerMixin
    ) -> None:
        self.init, self.noise, self.repaint_mask, self.scheduler = init, noise, repaint_mask, scheduler
        self.k_diffusion = bool(getattr(scheduler, "is_k_diffusion", False))

    def _keep_known(self, latents: torch.Tensor) -> torch.Tensor:
        return self.init * (1 - self.repaint_mask) + latents * self.repaint_mask

    def after_x0(self, ctx: DenoiseContext) -> None:
        ctx.pred_original = self._keep_known(ctx.pred_original)

    def after_loop(self, ctx: DenoiseContext) -> None:
        if self.k_diffusion:
            ctx.latents = self._keep_known(ctx.latents)

    def after_step(self, ctx: DenoiseContext) -> None:
        if self.k_diffusion:
            return
        remaining = ctx.timesteps
        if ctx.step + 1 >= len(remaining):
            known = self.init
        else:
            batch = self.init.shape[0]
            known = self.scheduler.add_noise(self.init, self.noise, remaining[ctx.step + 1:ctx.step + 2].repeat(batch))
        ctx.latents = known * (1 - self.repaint_mask) + ctx.latents * self.repaint_mask


class CfgRescale(DenoiseExtension):
    """CFG rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed", §3.4): pull the
    CFG result's per-image std back towards the conditional prediction's, mixed by `multiplier` (0 = off). The same
    formula as diffusers' `guidance_rescale`, written here because diffusers keeps it inside its pipelines."""

    def __init__(self, multiplier: float) -> None:
        self.multiplier = multiplier

    def after_cfg(self, ctx: DenoiseContext) -> None:
        if self.multiplier <= 0 or ctx.uncond_output is None:
            return
        dims = list(range(1, ctx.cond_output.ndim))
        std_cond = ctx.cond_output.std(dim=dims, keepdim=True)
        std_cfg = ctx.denoised.std(dim=dims, keepdim=True)
        rescaled = ctx.denoised * (std_cond / std_cfg)
        ctx.denoised = self.multiplier * rescaled + (1 - self.multiplier) * ctx.denoised

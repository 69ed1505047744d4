"""The k-diffusion path of the denoising loop: A1111's samplers (k_samplers.py) on the model's own sigma table.

A `KDiffusionSchedule` stands where a diffusers scheduler stands (`build_scheduler` returns one for sampler names
backed by a function), so txt2img, img2img and every caller keep their shape; `run_denoise` hands it to this loop.
The denoiser the sampler calls, `model(x, sigma) -> x0`, goes through the same `predict()` and extension points as
the diffusers path (CompVis/k-diffusion scalings, as A1111's CompVisDenoiser does them):

    t = sigma_to_t(sigma) (log-sigma interpolation)    U-Net input = x * c_in, c_in = 1 / sqrt(sigma^2 + 1)
    epsilon: x0 = x - sigma * eps                      v: x0 = x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1)

Extension points on this path: `before_step` before each step's first model call, `before_unet` per U-Net call,
`after_cfg` per model evaluation (on the model-output space, as on the diffusers path), `after_x0` per evaluation once
`ctx.pred_original` holds the x0 estimate (replaceable: inpainting blends the known region there, as A1111 does for
k-diffusion), `after_step` after each step (ctx.latents is the new sample, read-only here) and `after_loop` (may
replace the final latents).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .denoise import DenoiseContext, DenoiseExtension, DenoiseInputs, _Loop
from .k_samplers import BrownianNoise, NoiseSampler, SamplerFunction, sampler_options
from .loader import LoadedModel
from .sigma_schedules import SigmaTable, build_sigmas

# Step options of the diffusers path that mean something else here: `eta` is DDIM's eta (A1111 `eta_ddim`); the
# ancestral samplers keep A1111's `eta_ancestral` default of 1.
_NOT_FOR_K = frozenset({"eta"})


@dataclass
class KDiffusionSchedule:
    """A sampler function with its sigma schedule: the k-diffusion stand-in for a diffusers scheduler."""

    function: SamplerFunction
    sigmas: torch.Tensor  # n + 1 descending sigmas (float32, CPU)
    table: SigmaTable
    prediction_type: str
    options: dict[str, Any] = field(default_factory=dict)  # the spec's fixed keyword options (solver_type="heun")
    brownian_noise: bool = False  # SDE samplers: step noise from a Brownian tree per image seed
    begin_index: int = 0
    order: int = 1  # one schedule entry per step (img2img's start rule multiplies by it)
    is_k_diffusion: bool = True
    current_sigma: torch.Tensor | None = None  # set by the loop before each model evaluation
    model_dtype: torch.dtype = torch.float32  # the U-Net's input dtype; the sampler itself works in float32, as A1111

    @classmethod
    def for_model(cls, function: SamplerFunction, schedule: str, model: LoadedModel, steps: int, *,
                  options: dict[str, Any] | None = None, brownian_noise: bool = False,
                  discard_penultimate: bool = False) -> "KDiffusionSchedule":
        table = SigmaTable.for_alphas(getattr(model, "alphas_cumprod", None))
        sigmas = build_sigmas(schedule, steps, table, sdxl=model.family.is_sdxl,
                              discard_penultimate=discard_penultimate)
        return cls(function, sigmas, table, model.prediction_type, dict(options or {}), brownian_noise,
                   model_dtype=model.dtype)

    @property
    def init_noise_sigma(self) -> torch.Tensor:
        """txt2img starts from noise * sigmas[0] (A1111; diffusers' sqrt(sigma^2 + 1) is for scaled inputs)."""
        return self.sigmas[0]

    @property
    def timesteps(self) -> torch.Tensor:
        """The continuous timestep of each step's first model call (one entry per step)."""
        return self.table.sigma_to_t(self.sigmas[:-1])

    def set_begin_index(self, begin_index: int) -> None:
        self.begin_index = begin_index

    def add_noise(self, init: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """img2img's start as A1111 makes it for k-diffusion: init + noise * the first sigma run (no rescaling)."""
        return init + noise * self.sigmas[self.begin_index].to(init.device, init.dtype)

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor | None = None) -> torch.Tensor:
        """U-Net input scaling c_in at the noise level being evaluated (what `predict()` calls)."""
        assert self.current_sigma is not None, "the k-diffusion loop sets the sigma before each model call"
        c_in = 1 / (self.current_sigma ** 2 + 1) ** 0.5
        return (sample * c_in.to(sample.device)).to(self.model_dtype)

    def x0_from_output(self, x: torch.Tensor, sigma: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        sigma, output = sigma.to(x.device, x.dtype), output.to(x.dtype)
        if self.prediction_type == "v_prediction":  # k-diffusion's CompVisVDenoiser scalings, sigma_data = 1
            c_skip = 1 / (sigma ** 2 + 1)
            c_out = -sigma / (sigma ** 2 + 1) ** 0.5
            return output * c_out + x * c_skip
        return x + output * -sigma


class _KLoop(_Loop):
    """The loop on a sampler function: the function drives the steps, this class the model calls and the hooks."""

    def __init__(self, ctx: DenoiseContext, extensions: Sequence[DenoiseExtension], schedule: KDiffusionSchedule,
                 sigmas: torch.Tensor) -> None:
        self.ctx = ctx
        self.extensions = list(extensions)
        self.schedule = schedule
        self.sigmas = sigmas  # the sigmas run (img2img: from the begin index), on the model's device

    def _at(self, sigma: torch.Tensor) -> None:
        ctx, schedule = self.ctx, self.schedule
        schedule.current_sigma = sigma
        ctx.sigma = float(sigma)
        ctx.timestep = schedule.table.sigma_to_t(sigma.detach().to("cpu", torch.float32)).to(ctx.model.device)

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """`model(x, sigma) -> x0` for the sampler function."""
        sigma = torch.as_tensor(sigma)
        if sigma.ndim:  # a k-diffusion-shaped function passes one sigma per image, all equal
            sigma = sigma.reshape(-1)[0]
        ctx = self.ctx
        self._at(sigma)
        ctx.latents = x
        self.predict()
        for extension in self.extensions:
            extension.after_cfg(ctx)
        ctx.pred_original = self.schedule.x0_from_output(x, sigma, ctx.denoised)
        for extension in self.extensions:
            extension.after_x0(ctx)
        return ctx.pred_original

    def step_done(self, info: dict[str, Any]) -> None:
        """The sampler's per-step callback: after_step for this step, before_step for the next (interrupt)."""
        ctx = self.ctx
        index = int(info["i"])
        ctx.latents = info["x"]
        ctx.pred_original = info.get("denoised", ctx.pred_original)
        for extension in self.extensions:
            extension.after_step(ctx)
        if index + 1 < ctx.total_steps:
            ctx.step = index + 1
            self._at(self.sigmas[index + 1])
            for extension in self.extensions:
                extension.before_step(ctx)

    def noise(self, x: torch.Tensor, full_sigmas: torch.Tensor) -> NoiseSampler:
        inputs = self.ctx.inputs
        if self.schedule.brownian_noise:
            seeds = list(inputs.rng.seeds) if inputs.rng is not None else _generator_seeds(inputs, x.shape[0])
            return BrownianNoise(x, full_sigmas, seeds)
        rng = inputs.rng
        if rng is not None:  # A1111: k-diffusion's randn_like is replaced by the next draws of each image's generator
            return lambda sigma, sigma_next: rng.next().to(x.device, x.dtype)
        generators = inputs.generators or []
        return lambda sigma, sigma_next: torch.stack(
            [torch.randn(tuple(x.shape[1:]), generator=g) for g in generators]).to(x.device, x.dtype)

    def run(self) -> torch.Tensor:
        ctx, schedule = self.ctx, self.schedule
        for extension in self.extensions:
            extension.before_loop(ctx)
        ctx.step = 0
        self._at(self.sigmas[0])
        for extension in self.extensions:
            extension.before_step(ctx)
        offered = {**{k: v for k, v in ctx.inputs.step_options.items() if k not in _NOT_FOR_K}, **schedule.options}
        full_sigmas = schedule.sigmas.to(ctx.latents.device)
        options = sampler_options(schedule.function, {"noise": self.noise(ctx.latents.float(), full_sigmas),
                                                      **offered})
        start_dtype = ctx.latents.dtype
        x = ctx.latents.float()  # float32 sampler state whatever the model's dtype (A1111 samples in float32 too)
        ctx.latents = schedule.function(self.denoise, x, self.sigmas, callback=self.step_done, **options)
        ctx.latents = ctx.latents.to(start_dtype)
        for extension in self.extensions:
            extension.after_loop(ctx)
        return ctx.latents


def _generator_seeds(inputs: DenoiseInputs, batch: int) -> list[int]:
    """Without an ImageRNG (a caller of the low-level API): seeds from the step generators' initial seeds."""
    return [int(g.initial_seed()) for g in (inputs.generators or [])][:batch] or list(range(batch))


def run_k_denoise(model: LoadedModel, schedule: KDiffusionSchedule, inputs: DenoiseInputs,
                  extensions: Sequence[DenoiseExtension] = ()) -> torch.Tensor:
    """Run the schedule's sigmas (from `inputs.start_index`) with its sampler function; return the final latents."""
    begin = inputs.start_index
    sigmas = schedule.sigmas[begin:].to(inputs.latents.device)
    ctx = DenoiseContext(model, schedule, inputs, schedule.timesteps[begin:], inputs.latents)  # type: ignore[arg-type]
    return _KLoop(ctx, extensions, schedule, sigmas).run()

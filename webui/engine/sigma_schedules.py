"""A1111's sigma schedules: the model's discrete noise table the CompVis way, and the schedule types built on it.

A1111 samples with k-diffusion around the CompVis model: the 1000 training noise levels sigma_t = sqrt((1 - a_t) / a_t)
come from the model's `alphas_cumprod` (the table the checkpoint stores, at the file's precision, or else LDM's
scaled-linear betas computed in float64 and kept in float32), noise level <-> timestep goes through linear
interpolation in log sigma, and each schedule type (`Schedule type`, sd_schedulers.py) picks `steps` sigmas from it.
diffusers' schedulers interpolate in sigma instead and build their table in float32, which is why their images
differ slightly from A1111's; so this table is written here (the formulas are k-diffusion's and A1111's, public).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

TRAIN_STEPS = 1000
LINEAR_START, LINEAR_END = 0.00085, 0.012  # LDM's "linear" schedule: betas = linspace(sqrt(start), sqrt(end))^2

# Align Your Steps (NVIDIA, 2024): the published 10-step sigma tables A1111 1.10 ships, for SD 1.5 and SDXL.
AYS_SD1 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]
BETA_ALPHA = BETA_BETA = 0.6  # A1111's defaults for the Beta schedule (`beta_dist_alpha` / `beta_dist_beta`)
KARRAS_RHO = 7.0
POLYEXPONENTIAL_RHO = 1.0


def ldm_alphas_cumprod(steps: int = TRAIN_STEPS) -> torch.Tensor:
    """LDM's `alphas_cumprod` for the SD family: computed in float64, registered as a float32 buffer."""
    betas = torch.linspace(LINEAR_START ** 0.5, LINEAR_END ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


@dataclass
class SigmaTable:
    """The model's discrete noise levels (ascending, float32) and the log-sigma mapping to continuous timesteps."""

    sigmas: torch.Tensor

    def __post_init__(self) -> None:
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: torch.Tensor) -> "SigmaTable":
        """From a stored table: its values as stored (an fp16 file's fp16 values), the arithmetic in float32, as
        A1111 does in full precision."""
        values = alphas_cumprod.detach().to("cpu", torch.float32)
        return cls(((1 - values) / values) ** 0.5)

    @classmethod
    def for_alphas(cls, stored: torch.Tensor | None) -> "SigmaTable":
        return cls.from_alphas_cumprod(ldm_alphas_cumprod() if stored is None else stored)

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep of a noise level: linear interpolation between the neighbouring log sigmas."""
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        low_log, high_log = self.log_sigmas[low], self.log_sigmas[low + 1]
        weight = ((low_log - log_sigma) / (low_log - high_log)).clamp(0, 1)
        return ((1 - weight) * low + weight * (low + 1)).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high, frac = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - frac) * self.log_sigmas[low] + frac * self.log_sigmas[high]).exp()

    def uniform(self, n: int) -> torch.Tensor:
        """k-diffusion's `get_sigmas(n)`: n timesteps evenly spaced from the last to 0, then a final 0 sigma."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return _append_zero(self.t_to_sigma(t))


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _karras(n: int, table: SigmaTable, sdxl: bool) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: evenly spaced in sigma^(1/rho) between the model's own sigma max and min."""
    ramp = torch.linspace(0, 1, n)
    low, high = table.sigma_min ** (1 / KARRAS_RHO), table.sigma_max ** (1 / KARRAS_RHO)
    return _append_zero((high + ramp * (low - high)) ** KARRAS_RHO)


def _exponential(n: int, table: SigmaTable, sdxl: bool) -> torch.Tensor:
    return _append_zero(torch.linspace(math.log(table.sigma_max), math.log(table.sigma_min), n).exp())


def _polyexponential(n: int, table: SigmaTable, sdxl: bool) -> torch.Tensor:
    ramp = torch.linspace(1, 0, n) ** POLYEXPONENTIAL_RHO
    low, high = math.log(table.sigma_min), math.log(table.sigma_max)
    return _append_zero(torch.exp(ramp * (high - low) + low))


def _timesteps_between(n: int, table: SigmaTable, drop_last: bool) -> torch.Tensor:
    start = table.sigma_to_t(torch.tensor(table.sigma_max))
    end = table.sigma_to_t(torch.tensor(table.sigma_min))
    steps = torch.linspace(start, end, n + 1)[:-1] if drop_last else torch.linspace(start, end, n)
    return _append_zero(torch.stack([table.t_to_sigma(t) for t in steps]).float())


def _sgm_uniform(n: int, table: SigmaTable, sdxl: bool) -> torch.Tensor:
    return _timesteps_between(n, table, drop_last=True)


def _normal(n: int, table: SigmaTable, sdxl: bool) -> torch.Tensor:
    return _timesteps_between(n, table, drop_last=False)


def _kl_optimal(n: int, table: SigmaTable, sdxl: bool) -> torch.Tensor:
    """"Align Your Steps"' KL-optimal schedule: evenly spaced in arctan(sigma); ends exactly at sigma min, no 0."""
    low, high = torch.arctan(torch.tensor(table.sigma_min)), torch.arctan(torch.tensor(table.sigma_max))
    index = torch.arange(n + 1)
    return torch.tan(index / n * low + (1.0 - index / n) * high)


def _align_your_steps(n: int, table: SigmaTable, sdxl: bool) -> torch.Tensor:
    """The published 10-step table, log-linearly interpolated to other step counts (as A1111 does)."""
    published = list(AYS_SDXL if sdxl else AYS_SD1)
    if n == len(published):
        return torch.tensor([*published, 0.0], dtype=torch.float32)
    xs, ys = np.linspace(0, 1, len(published)), np.log(published[::-1])
    resampled = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1]
    return torch.tensor(np.append(resampled, [0.0]), dtype=torch.float32)


def _simple(n: int, table: SigmaTable, sdxl: bool) -> torch.Tensor:
    stride = len(table.sigmas) / n
    picked = [float(table.sigmas[-(1 + int(i * stride))]) for i in range(n)]
    return torch.tensor([*picked, 0.0], dtype=torch.float32)


def _ddim(n: int, table: SigmaTable, sdxl: bool) -> torch.Tensor:
    stride = max(len(table.sigmas) // n, 1)
    picked = [float(table.sigmas[i]) for i in range(1, len(table.sigmas), stride)]
    return torch.tensor([*picked[::-1], 0.0], dtype=torch.float32)


def _beta(n: int, table: SigmaTable, sdxl: bool) -> torch.Tensor:
    """Lee et al. 2024, "Beta Sampling is All You Need": Beta(0.6, 0.6) quantiles mapped linearly onto the sigma
    range (A1111's reading of the paper). scipy's ppf, as A1111 uses."""
    from scipy import stats

    quantiles = [stats.beta.ppf(x, BETA_ALPHA, BETA_BETA) for x in 1 - np.linspace(0, 1, n)]
    sigmas = [table.sigma_min + q * (table.sigma_max - table.sigma_min) for q in quantiles]
    return torch.tensor([*sigmas, 0.0], dtype=torch.float32)


ScheduleFunction = Callable[[int, SigmaTable, bool], torch.Tensor]

# Label (infotext `Schedule type`) -> function(n, table, is_sdxl) -> n + 1 descending sigmas ending in 0 (KL Optimal
# ends at sigma min). "Uniform" is the model's own discretisation; it is what A1111's "Automatic" means for samplers
# without a default schedule.
SIGMA_SCHEDULE_FUNCTIONS: dict[str, ScheduleFunction] = {
    "Uniform": lambda n, table, sdxl: table.uniform(n),
    "Karras": _karras,
    "Exponential": _exponential,
    "Polyexponential": _polyexponential,
    "SGM Uniform": _sgm_uniform,
    "KL Optimal": _kl_optimal,
    "Align Your Steps": _align_your_steps,
    "Simple": _simple,
    "Normal": _normal,
    "DDIM": _ddim,
    "Beta": _beta,
}


def build_sigmas(schedule: str, steps: int, table: SigmaTable, *, sdxl: bool = False,
                 discard_penultimate: bool = False) -> torch.Tensor:
    """The sigmas a k-diffusion sampler runs (float32, CPU), as A1111's `get_sigmas`.

    `discard_penultimate` (DPM2, DPM2 a, DPM++ 3M SDE): build the schedule for one step more and drop its
    next-to-last sigma, so the last step goes from a low sigma straight to 0.
    """
    function = SIGMA_SCHEDULE_FUNCTIONS[schedule]
    sigmas = function(steps + 1 if discard_penultimate else steps, table, sdxl)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.to(torch.float32)

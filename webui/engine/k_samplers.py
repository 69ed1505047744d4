"""Samplers in the k-diffusion style, as A1111 runs them: short pure functions over a descending sigma schedule.

Every sampler has the shape

    fn(model, x, sigmas, *, callback=None, noise=None, **options) -> x

- `model(x, sigma) -> denoised`: the x0 estimate at noise level `sigma` (a 0-dim tensor); CFG, ControlNet, inpaint
  channels and every other extension live behind it (see denoise.py).
- `x`: the start latents, already multiplied by `sigmas[0]`; `sigmas`: n + 1 noise levels, the last usually 0.
- `noise(sigma, sigma_next) -> N(0, I) like x`: the step noise. A1111 gives ancestral samplers the next draws of each
  image's own generator (`ImageRNG.next()`) and SDE samplers a Brownian tree (`BrownianNoise`); deterministic
  samplers never call it.
- `callback(info)`: once per step, *after* the step's update, with `info = {"i", "x", "denoised", "sigma",
  "sigma_next"}` (`x` is the new sample). The loop runs its per-step extension points from it.

The maths are Karras et al. 2022 (Euler, Heun, churn), Lu et al. 2022 (DPM-Solver, DPM-Solver++) and k-diffusion's
public formulas; they are written out here (k-diffusion itself is only a test oracle: it pulls heavy dependencies)
with the same operation order as k-diffusion 0.1.1, so that float32 results agree with A1111's to the last bits.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Protocol

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepCallback = Callable[[dict[str, Any]], None]


class SamplerFunction(Protocol):
    """What `SamplerSpec.function` holds (extensions register functions of this shape)."""

    def __call__(self, model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
                 noise: NoiseSampler | None = None, **options: Any) -> torch.Tensor: ...


def _report(callback: StepCallback | None, i: int, x: torch.Tensor, denoised: torch.Tensor,
            sigmas: torch.Tensor) -> None:
    if callback is not None:
        callback({"i": i, "x": x, "denoised": denoised, "sigma": sigmas[i], "sigma_next": sigmas[i + 1]})


def _need(noise: NoiseSampler | None) -> NoiseSampler:
    if noise is None:
        raise ValueError("this sampler draws step noise: pass noise=(sigma, sigma_next) -> tensor")
    return noise


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's derivative dx/dsigma at (x, sigma)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor, eta: float = 1.0) -> tuple[Any, Any]:
    """Split a step to `sigma_to` into a deterministic step down to `sigma_down` plus fresh noise of size `sigma_up`."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _churn(x: torch.Tensor, sigmas: torch.Tensor, i: int, noise: NoiseSampler | None, s_churn: float, s_tmin: float,
           s_tmax: float, s_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras' stochastic churn: raise the noise level to sigma_hat by adding fresh noise. A1111 draws the noise at
    every step once churn is on (inside the window or not), so the stream stays where A1111's is."""
    sigma = sigmas[i]
    gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if s_churn > 0:
        eps = _need(noise)(sigma, sigmas[i + 1]) * s_noise
        if gamma > 0:
            x = x + eps * (sigma_hat ** 2 - sigma ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
          noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
          s_noise: float = 1.0) -> torch.Tensor:
    """Euler steps on the ODE (Karras et al. 2022, Algorithm 2 without the Heun correction)."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
        _report(callback, i, x, denoised, sigmas)
    return x


@torch.no_grad()
def euler_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
                    noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """Euler step down to sigma_down, then fresh noise up to the next sigma."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + _need(noise)(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        _report(callback, i, x, denoised, sigmas)
    return x


@torch.no_grad()
def heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
         noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
         s_noise: float = 1.0) -> torch.Tensor:
    """Heun's second-order steps (Karras et al. 2022, Algorithm 2); the last step to 0 is an Euler step."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
        _report(callback, i, x, denoised, sigmas)
    return x


@torch.no_grad()
def dpm_2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
          noise: NoiseSampler | None = None, s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
          s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver-2 style midpoint steps: the derivative at the log-midpoint sigma drives the whole step."""
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat)
        d = to_d(x, sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
        _report(callback, i, x, denoised, sigmas)
    return x


@torch.no_grad()
def dpm_2_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
                    noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver-2 midpoint step down to sigma_down, then fresh noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + _need(noise)(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        _report(callback, i, x, denoised, sigmas)
    return x


def lms_coefficient(order: int, sigmas: np.ndarray, i: int, j: int) -> float:
    """Integral from sigmas[i] to sigmas[i+1] of the Lagrange basis polynomial for sigmas[i-j] over the last `order`
    sigmas: integrated exactly with numpy's polynomials (k-diffusion uses scipy's quadrature; same value)."""
    if order - 1 > i:
        raise ValueError(f"order {order} is too high for step {i}")
    nodes = [float(sigmas[i - k]) for k in range(order) if k != j]
    numerator = np.polynomial.Polynomial.fromroots(nodes) if nodes else np.polynomial.Polynomial([1.0])
    basis = numerator / float(np.prod([float(sigmas[i - j]) - node for node in nodes]))
    integral = basis.integ()
    return float(integral(float(sigmas[i + 1])) - integral(float(sigmas[i])))


@torch.no_grad()
def lms(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
        noise: NoiseSampler | None = None, order: int = 4) -> torch.Tensor:
    """Linear multistep: up to `order` past derivatives, weighted by integrated Lagrange polynomials in sigma."""
    sigmas_np = sigmas.detach().cpu().numpy()
    derivatives: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        derivatives = [*derivatives, to_d(x, sigmas[i], denoised)][-order:]
        current = min(i + 1, order)
        coefficients = [lms_coefficient(current, sigmas_np, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(derivatives)))
        _report(callback, i, x, denoised, sigmas)
    return x


def _sigma_of(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _t_of(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


@torch.no_grad()
def dpmpp_2s_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                       callback: StepCallback | None = None, noise: NoiseSampler | None = None, eta: float = 1.0,
                       s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2S) single-step second order down to sigma_down, then fresh noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_of(sigmas[i]), _t_of(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (_sigma_of(s) / _sigma_of(t)) * x - (-h * 0.5).expm1() * denoised
            denoised_2 = model(x_2, _sigma_of(s))
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + _need(noise)(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
        _report(callback, i, x, denoised, sigmas)
    return x


@torch.no_grad()
def dpmpp_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
              noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5
              ) -> torch.Tensor:
    """DPM-Solver++ stochastic, two stages per step (at ratio r of the step in log sigma), each with SDE noise."""
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        else:
            draw = _need(noise)
            t, t_next = _t_of(sigmas[i]), _t_of(sigmas[i + 1])
            h = t_next - t
            s = t + h * r
            fac = 1 / (2 * r)
            sd, su = ancestral_step(_sigma_of(t), _sigma_of(s), eta)
            s_ = _t_of(sd)
            x_2 = (_sigma_of(s_) / _sigma_of(t)) * x - (t - s_).expm1() * denoised
            x_2 = x_2 + draw(_sigma_of(t), _sigma_of(s)) * s_noise * su
            denoised_2 = model(x_2, _sigma_of(s))
            sd, su = ancestral_step(_sigma_of(t), _sigma_of(t_next), eta)
            t_next_ = _t_of(sd)
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (_sigma_of(t_next_) / _sigma_of(t)) * x - (t - t_next_).expm1() * denoised_d
            x = x + draw(_sigma_of(t), _sigma_of(t_next)) * s_noise * su
        _report(callback, i, x, denoised, sigmas)
    return x


@torch.no_grad()
def dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
             noise: NoiseSampler | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep in log sigma, first order on the first and the last step."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        t, t_next = _t_of(sigmas[i]), _t_of(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t_of(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
        _report(callback, i, x, denoised, sigmas)
    return x


@torch.no_grad()
def dpmpp_2m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
                 noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0,
                 solver_type: str = "midpoint") -> torch.Tensor:
    """DPM-Solver++(2M) SDE; `solver_type` "heun" is A1111's "DPM++ 2M SDE Heun". The last step returns x0."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', not {solver_type!r}")
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + _need(noise)(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (
                    -2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised, h_last = denoised, h
        _report(callback, i, x, denoised, sigmas)
    return x


@torch.no_grad()
def dpmpp_3m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, callback: StepCallback | None = None,
                 noise: NoiseSampler | None = None, eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep once two earlier steps exist."""
    denoised_1, denoised_2, h_1, h_2 = None, None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if eta:
                x = x + _need(noise)(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (
                    -2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
        _report(callback, i, x, denoised, sigmas)
    return x


class BrownianNoise:
    """SDE step noise from one Brownian tree per image seed (torchsde), over [sigma min, sigma max] of the schedule's
    nonzero sigmas, as A1111 seeds it: the noise of image i depends only on its own seed, not on its batch."""

    def __init__(self, x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]) -> None:
        import torchsde  # a runtime requirement; imported here so that deterministic sampling never loads it

        nonzero = sigmas[sigmas > 0]
        low, high = nonzero.min(), sigmas.max()
        self._low_first = bool(low < high)
        t0, t1 = (low, high) if self._low_first else (high, low)
        start = torch.zeros_like(x[0])
        self.trees = [torchsde.BrownianTree(t0, start, t1, entropy=seed) for seed in seeds]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        sign = 1.0 if self._low_first else -1.0
        t0, t1 = (sigma, sigma_next) if sigma < sigma_next else (sigma_next, sigma)
        if not sigma < sigma_next:
            sign = -sign
        with warnings.catch_warnings():
            # torchsde warns when a query lies a rounding error outside [t0, t1] (DPM++ SDE's exp(-(-log sigma)));
            # k-diffusion's queries are the same and the tree clamps them, so the warning says nothing here.
            warnings.filterwarnings("ignore", message="Should have t[ab][<>]=t[01]", category=UserWarning)
            increment = torch.stack([tree(t0, t1) for tree in self.trees]) * sign
        return increment / (sigma_next - sigma).abs().sqrt()


def sampler_options(function: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    """The options a sampler function takes, out of those offered (A1111 passes only what a function accepts)."""
    parameters = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(offered)
    return {key: value for key, value in offered.items() if key in parameters}


def draws_noise(function: Callable[..., Any]) -> bool:
    """Whether a sampler takes step noise at all (a documented `noise` parameter)."""
    return "noise" in inspect.signature(function).parameters


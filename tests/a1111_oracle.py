"""The A1111 side of the seed-parity tests: k-diffusion's own code plus A1111's rules, written out independently.

k-diffusion (`requirements-oracle.txt`, installed with `pip install --no-deps --target .oracle`, never into the app's
environment) supplies the samplers, the CompVis denoiser and its sigma table; only its `utils.py`, `sampling.py` and
`external.py` are loaded (its package `__init__` pulls heavy dependencies). What A1111 adds around it is written here
from A1111 1.10's behaviour (modules/sd_samplers_kdiffusion.py, sd_samplers_cfg_denoiser.py, sd_schedulers.py,
rng.py, processing.py), never from the project's code:

- alphas_cumprod: LDM's scaled-linear betas in float64, kept in float32, or the checkpoint's stored table;
- noise: image i draws its start noise from a CPU generator seeded with its seed; k-diffusion's `torch.randn_like`
  is replaced by the next draws of those same generators (A1111's TorchHijack + ImageRNG.next());
- SDE samplers get `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=<the batch's seeds>)`;
- CFG on the denoised outputs of a [cond, uncond] batch; DPM2/DPM2 a/DPM++ 3M SDE drop the next-to-last sigma;
- 8-bit output by truncation: (255 * clamp((x + 1) / 2, 0, 1)).astype(uint8).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

ORACLE_DIR = Path(__file__).resolve().parents[1] / ".oracle" / "k_diffusion"
INSTALL_HINT = ".venv/bin/pip install --no-deps --target .oracle -r requirements-oracle.txt"

# A1111 1.10's k-diffusion sampler table: name -> (function, default schedule, options).
A1111_SAMPLERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "DPM++ 2M": ("sample_dpmpp_2m", "karras", {}),
    "DPM++ SDE": ("sample_dpmpp_sde", "karras", {"brownian_noise": True}),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", "exponential", {"brownian_noise": True}),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", "exponential", {"brownian_noise": True, "solver_type": "heun"}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", "karras", {}),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", "exponential",
                     {"brownian_noise": True, "discard_next_to_last_sigma": True}),
    "Euler a": ("sample_euler_ancestral", "uniform", {}),
    "Euler": ("sample_euler", "uniform", {}),
    "LMS": ("sample_lms", "uniform", {}),
    "Heun": ("sample_heun", "uniform", {}),
    "DPM2": ("sample_dpm_2", "karras", {"discard_next_to_last_sigma": True}),
    "DPM2 a": ("sample_dpm_2_ancestral", "karras", {"discard_next_to_last_sigma": True}),
}


def load_k_diffusion() -> types.SimpleNamespace | None:
    """k-diffusion's sampling and external modules from .oracle, or None when the oracle is not installed."""
    if not (ORACLE_DIR / "sampling.py").exists():
        return None
    name = "_oracle_k_diffusion"
    if name in sys.modules:
        package = sys.modules[name]
        return types.SimpleNamespace(sampling=package.sampling, external=package.external)
    package = types.ModuleType(name)
    package.__path__ = [str(ORACLE_DIR)]  # a bare package: its __init__ (heavy imports) never runs
    sys.modules[name] = package
    if "torchdiffeq" not in sys.modules and importlib.util.find_spec("torchdiffeq") is None:
        stub = types.ModuleType("torchdiffeq")  # only k-diffusion's log_likelihood uses it
        stub.odeint = lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("torchdiffeq is not installed"))
        sys.modules["torchdiffeq"] = stub
    for module in ("utils", "sampling", "external"):
        spec = importlib.util.spec_from_file_location(f"{name}.{module}", ORACLE_DIR / f"{module}.py")
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = loaded
        spec.loader.exec_module(loaded)
        setattr(package, module, loaded)
    return types.SimpleNamespace(sampling=package.sampling, external=package.external)


def ldm_alphas_cumprod() -> torch.Tensor:
    """LDM's register_schedule for SD: betas = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2 in float64 (numpy),
    cumulative product of 1 - betas, registered as float32."""
    betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2
    return torch.tensor(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)


class _CompVisModel(torch.nn.Module):
    """What CompVisDenoiser wraps: `alphas_cumprod` and `apply_model(x, t, cond)`, here on diffusers' U-Net."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.alphas_cumprod = alphas_cumprod

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond["context"], added_cond_kwargs=cond.get("added"),
                         return_dict=False)[0]


class _RandnLikeFromGenerators:
    """A1111's TorchHijack: k-diffusion's `torch.randn_like(x)` becomes the next draw of each image's generator."""

    def __init__(self, generators: list[torch.Generator], shape: tuple[int, ...]) -> None:
        self.generators, self.shape = generators, shape

    def __getattr__(self, item: str) -> Any:
        return getattr(torch, item)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(x.device, x.dtype)


@dataclass
class OracleRun:
    sampler: str
    schedule: str  # "Automatic" or an A1111 label
    steps: int
    cfg_scale: float
    seeds: list[int]
    width: int
    height: int


def a1111_sigmas(kd: types.SimpleNamespace, wrap: Any, schedule: str, steps: int, discard: bool) -> torch.Tensor:
    """A1111's KDiffusionSampler.get_sigmas for the schedules the tests use."""
    n = steps + 1 if discard else steps
    sigma_min, sigma_max = wrap.sigmas[0].item(), wrap.sigmas[-1].item()
    if schedule == "uniform":
        sigmas = wrap.get_sigmas(n)
    elif schedule == "karras":
        sigmas = kd.sampling.get_sigmas_karras(n=n, sigma_min=sigma_min, sigma_max=sigma_max, device="cpu")
    elif schedule == "exponential":
        sigmas = kd.sampling.get_sigmas_exponential(n=n, sigma_min=sigma_min, sigma_max=sigma_max, device="cpu")
    else:
        raise KeyError(schedule)
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


@torch.no_grad()
def a1111_txt2img(kd: types.SimpleNamespace, pipe: Any, run: OracleRun, prompt: str, negative: str,
                  alphas_cumprod: torch.Tensor | None = None, prediction: str = "epsilon",
                  init_latents: torch.Tensor | None = None, denoising_strength: float = 1.0) -> list[Image.Image]:
    """What A1111 1.10 makes of one batch on the CPU in fp32 (RNG: CPU, ENSD 0), on diffusers' modules.

    With `init_latents` it is A1111's img2img for k-diffusion samplers: t_enc = int(min(strength, 0.999) * steps),
    the sigmas of a `steps` schedule from entry steps - t_enc - 1 on, start = init + noise * that first sigma."""
    function_name, default_schedule, options = A1111_SAMPLERS[run.sampler]
    schedule = default_schedule if run.schedule == "Automatic" else run.schedule.lower()
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    batch = len(run.seeds)
    model = _CompVisModel(pipe.unet, ldm_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.float())
    wrap = (kd.external.CompVisVDenoiser if prediction == "v_prediction" else kd.external.CompVisDenoiser)(model)

    if sdxl:
        cond, uncond, pooled, pooled_uncond = pipe.encode_prompt(
            prompt, device="cpu", num_images_per_prompt=batch, do_classifier_free_guidance=True,
            negative_prompt=negative)
        time_ids = torch.tensor([[run.height, run.width, 0, 0, run.height, run.width]], dtype=cond.dtype)
        added = {"text_embeds": torch.cat([pooled, pooled_uncond]), "time_ids": time_ids.repeat(2 * batch, 1)}
    else:
        cond, uncond = pipe.encode_prompt(prompt, "cpu", batch, True, negative_prompt=negative)
        added = None
    context = {"context": torch.cat([cond, uncond]), "added": added}

    def cfg_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        out = wrap(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=context)  # A1111: [cond..., uncond...]
        denoised_cond, denoised_uncond = out[:batch], out[batch:]
        return denoised_uncond + (denoised_cond - denoised_uncond) * run.cfg_scale

    shape = (4, run.height // 8, run.width // 8)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in run.seeds]
    x = torch.stack([torch.randn(shape, generator=g) for g in generators])  # ImageRNG.first()
    sigmas = a1111_sigmas(kd, wrap, schedule, run.steps, options.get("discard_next_to_last_sigma", False))
    kwargs: dict[str, Any] = {}
    if options.get("brownian_noise"):
        sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
        kwargs["noise_sampler"] = kd.sampling.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=list(run.seeds))
    if init_latents is None:
        x = x * sigmas[0]
    else:
        t_enc = int(min(denoising_strength, 0.999) * run.steps)
        sigmas = sigmas[run.steps - t_enc - 1:]
        x = init_latents + x * sigmas[0]
    if "solver_type" in options:
        kwargs["solver_type"] = options["solver_type"]
    function: Callable[..., torch.Tensor] = getattr(kd.sampling, function_name)
    saved = kd.sampling.torch
    kd.sampling.torch = _RandnLikeFromGenerators(generators, shape)
    try:
        samples = function(cfg_denoiser, x, sigmas, disable=True, **kwargs)
    finally:
        kd.sampling.torch = saved
    decoded = pipe.vae.decode(samples / pipe.vae.config.scaling_factor, return_dict=False)[0]
    pixels = torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0)
    arrays = (255.0 * np.moveaxis(pixels.cpu().numpy(), 1, 3)).astype(np.uint8)
    return [Image.fromarray(array) for array in arrays]

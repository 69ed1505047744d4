"""Noise and loss weighting shared by every diffusion trainer (the default model, its ControlNet, LoRAs)."""

from __future__ import annotations

import torch


def training_noise(shape: torch.Size, offset: float, generator: torch.Generator, pyramid: float = 0.0) -> torch.Tensor:
    """Gaussian noise, plus `offset` x a per-sample, per-channel constant ("offset noise"), plus `pyramid` x smooth
    noise on 2x2, 4x4 and 8x8 grids upsampled to the latent size.

    SD's schedule keeps ~7% of the signal at t=999, so a model learns to read the background colour (the latent's mean)
    and the object's position (its low frequencies) from the starting noise instead of from the prompt. Noise with
    more power at those frequencies makes that shortcut unreliable, so the model has to learn them from the text.
    """
    noise = torch.randn(shape, generator=generator)
    if offset > 0:
        noise = noise + offset * torch.randn((*shape[:2], 1, 1), generator=generator)
    if pyramid > 0:
        height, width = shape[-2:]
        for grid in (2, 4, 8):
            if grid < min(height, width):
                coarse = torch.randn((*shape[:2], grid, grid), generator=generator)
                noise = noise + pyramid * torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")
    return noise


def epsilon_loss_weights(alphas_cumprod: torch.Tensor, gamma: float, snr_floor: float) -> torch.Tensor:
    """Per-sample weights for the ε-MSE: x0-loss weighted by clamp(snr, snr_floor, gamma).

    ε-MSE equals snr * x0-MSE, so the plain loss barely rewards getting the layout right at high noise, where colour and
    position are decided. The upper clamp is Min-SNR-γ (Hang et al. 2023: don't spend capacity on easy low-noise
    steps); the floor lifts the high-noise steps. Both 0 gives weight 1 (plain ε-loss).
    """
    snr = alphas_cumprod / (1 - alphas_cumprod)
    return snr.clamp(min=max(snr_floor, 0.0), max=gamma if gamma > 0 else float("inf")) / snr


def min_snr_weights(alphas_cumprod: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ per-sample weights (Hang et al. 2023) for the model's own target: min(snr, γ)/snr for ε,
    min(snr, γ)/(snr + 1) for v. γ <= 0 gives weight 1 (plain MSE)."""
    if gamma <= 0:
        return torch.ones_like(alphas_cumprod)
    snr = alphas_cumprod / (1 - alphas_cumprod)
    clamped = snr.clamp(max=gamma)
    return clamped / (snr + 1) if prediction_type == "v_prediction" else clamped / snr


def step_generator(seed: int, step: int) -> torch.Generator:
    """Every (seed, step) has its own generator: a resumed run replays exactly the batches it would have drawn."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 64)


def draw_latents(mean: torch.Tensor, std: torch.Tensor, scale: float, count: int,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` rows drawn from a pool of cached posteriors (mean, std): their indices, and a sample of each posterior
    times the latent scale factor."""
    index = torch.randint(0, len(mean), (count,), generator=generator)
    latents = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)) * scale
    return index, latents


def weighted_epsilon_loss(pred: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float,
                          snr_floor: float) -> torch.Tensor:
    """The batch's ε-MSE in fp32, each sample weighted by `epsilon_loss_weights` at its timestep's alpha."""
    per_sample = (pred.float() - noise.float()).pow(2).flatten(1).mean(1)
    return (per_sample * epsilon_loss_weights(alphas_cumprod, gamma, snr_floor)).mean()

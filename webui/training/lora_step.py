"""One LoRA training step's forward pass and loss, apart from the loop that schedules, saves and reports.

`StepLoss` builds a batch's U-Net inputs (posterior sample, caption dropout, noise, timesteps) and returns its loss:
kohya's noise loss with min-SNR and prior-loss weights, plus the optional output-preservation and prior-guidance rows,
which reuse the batch's noisy latents with other captions so that one forward and backward pass covers them all.
Every random draw comes from the step's generator in a fixed order, so a resumed run, and each process of a
multi-process run, draws exactly what one uninterrupted process would.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers import DDPMScheduler

from webui.engine.conditioning import Conditioning, encode_training_windows
from webui.engine.generation import sdxl_time_ids
from webui.engine.loader import LoadedModel
from webui.engine.tokenizer import tokenize_prompt

from .diffusion_loss import min_snr_weights, training_noise
from .lora_dataset import Batch, LoraDataset, load_for_bucket
from .lora_network import LoraNetwork
from .models import sd_noise_scheduler
from .trigger_embedding import TriggerEmbedding

if TYPE_CHECKING:  # the settings live with the loop, which imports this module
    from .train_lora import LoraTrainingSettings


def caption_ids(model: LoadedModel, captions: Sequence[str]) -> list[torch.Tensor]:
    """Per text encoder, [N, 77] token ids of each caption's first window (kohya trains 75 tokens by default)."""
    return [torch.tensor([tokenize_prompt(c, encoder.slot.pad_token_id).windows[0] for c in captions], dtype=torch.long)
            for encoder in model.text_encoders]


def encode_batch(model: LoadedModel, ids: Sequence[torch.Tensor]) -> Conditioning:
    """Training-mode text conditioning by each family's rule (gradients flow into text-encoder adapters)."""
    contexts, pooled = [], None
    for encoder, encoder_ids in zip(model.text_encoders, ids):
        hidden, pool = encode_training_windows(encoder, encoder_ids.to(model.device))
        contexts.append(hidden)
        pooled = pool if pool is not None else pooled
    return Conditioning(context=torch.cat(contexts, dim=-1), pooled=pooled)


def swap_word(caption: str, word: str, replacement: str) -> str:
    """`caption` with each whole-word `word` (any case) replaced."""
    return re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", replacement, caption, flags=re.IGNORECASE)


def encode_latents(model: LoadedModel, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior (mean, std) of uint8 [N, H, W, 3] images."""
    x = torch.from_numpy(np.ascontiguousarray(pixels).copy()).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    with torch.no_grad():
        dist = model.vae.encode(x.to(model.device, model.vae_dtype)).latent_dist
    return dist.mean.float().cpu(), dist.std.float().cpu()


class Denoiser(torch.nn.Module):
    """Text encoders + U-Net in one forward, so accelerate's DDP syncs every adapter's gradient."""

    def __init__(self, model: LoadedModel, trigger: TriggerEmbedding | None) -> None:
        super().__init__()
        self.unet = model.unet
        self.text_encoders = torch.nn.ModuleList([encoder.model for encoder in model.text_encoders])
        self.trigger = trigger  # its vectors enter through a hook on the token lookup; a sub-module so DDP syncs them
        self.model = [model]  # in a list: not a sub-module

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, ids: list[torch.Tensor],
                time_ids: torch.Tensor | None) -> torch.Tensor:
        model = self.model[0]
        cond = encode_batch(model, ids)
        extra = {}
        if model.family.is_sdxl:
            extra["added_cond_kwargs"] = {"text_embeds": cond.pooled, "time_ids": time_ids}
        return self.unet(noisy, timesteps, cond.context, **extra).sample


@dataclass
class StepInputs:
    """One step's U-Net inputs with their targets and loss weights. Output preservation and prior guidance append
    rows (a batch row again, with another caption), so one forward and backward pass covers them all."""

    noisy: torch.Tensor
    timesteps: torch.Tensor
    ids: list[torch.Tensor]  # per text encoder
    time_ids: torch.Tensor | None  # SDXL only
    target: torch.Tensor
    weights: torch.Tensor

    def base_prediction(self, denoiser: Denoiser, network: LoraNetwork, rows: list[int],
                        ids: list[torch.Tensor]) -> torch.Tensor:
        """The base model's own prediction (adapters off, no gradient) for `rows` with captions `ids`."""
        time_ids = self.time_ids[rows] if self.time_ids is not None else None
        with torch.no_grad(), network.disabled():
            return denoiser(self.noisy[rows], self.timesteps[rows], ids, time_ids).float()

    def append(self, rows: list[int], ids: list[torch.Tensor], target: torch.Tensor, weights: torch.Tensor) -> int:
        """Rows `rows` again with captions `ids`; returns the index of the first new row."""
        first = self.noisy.shape[0]
        self.noisy = torch.cat([self.noisy, self.noisy[rows]])
        self.timesteps = torch.cat([self.timesteps, self.timesteps[rows]])
        self.ids = [torch.cat([mine, extra]) for mine, extra in zip(self.ids, ids)]
        if self.time_ids is not None:
            self.time_ids = torch.cat([self.time_ids, self.time_ids[rows]])
        self.target = torch.cat([self.target, target])
        self.weights = torch.cat([self.weights, weights])
        return first


@dataclass
class StepLoss:
    """The loss of this process's share of one global batch (see the module docstring)."""

    settings: LoraTrainingSettings
    model: LoadedModel
    dataset: LoraDataset
    network: LoraNetwork
    device: torch.device
    world: int  # processes sharing each global batch
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]]  # image index -> posterior (mean, std), when cached
    ids_all: list[torch.Tensor] = field(init=False)  # per text encoder, every image's caption ids
    empty_ids: list[torch.Tensor] = field(init=False)
    sample_weight: torch.Tensor = field(init=False)  # the prior loss weight on regularisation images, else 1
    swapped_ids: dict[tuple[int, str], list[torch.Tensor]] = field(init=False, default_factory=dict)
    noise_scheduler: DDPMScheduler = field(init=False)
    alphas: torch.Tensor = field(init=False)  # the schedule's alphas_cumprod, on the device

    def __post_init__(self) -> None:
        self.ids_all = caption_ids(self.model, [image.caption for image in self.dataset.images])
        self.empty_ids = caption_ids(self.model, [""])
        self.sample_weight = torch.tensor([self.settings.prior_loss_weight if image.regularization else 1.0
                                           for image in self.dataset.images])
        self.noise_scheduler = sd_noise_scheduler()
        self.alphas = self.noise_scheduler.alphas_cumprod.to(self.device)

    def __call__(self, denoiser: Denoiser, unwrapped: Denoiser, whole: Batch, mine: list[int],
                 g: torch.Generator) -> torch.Tensor:
        """`whole` is the global batch, `mine` this process's rows of it; `unwrapped` is `denoiser` without DDP."""
        settings = self.settings
        batch = replace(whole, indices=tuple(whole.indices[i] for i in mine))
        inputs = self._inputs(whole, batch, mine, g)
        is_prior = [self.dataset.images[index].regularization for index in batch.indices]
        if settings.preservation_words or settings.preserve_unconditional:
            self._add_preservation(inputs, unwrapped, whole, batch, mine, is_prior, g)
        guided_rows = [row for row, prior in enumerate(is_prior) if prior] if settings.prior_guidance else []
        if guided_rows:
            # Regularisation images hold the base model's CFG-guided prediction: sampling uses
            # s x cond - (s - 1) x uncond, so a drift of one branch reaches the image s times over.
            blank = [empty[0].expand(len(guided_rows), -1).to(self.device) for empty in self.empty_ids]
            base_cond = inputs.base_prediction(unwrapped, self.network, guided_rows,
                                               [i[guided_rows] for i in inputs.ids])
            base_uncond = inputs.base_prediction(unwrapped, self.network, guided_rows, blank)
            first_uncond = inputs.append(guided_rows, blank, base_uncond,
                                         torch.zeros(len(guided_rows), device=inputs.weights.device))
        pred = denoiser(inputs.noisy, inputs.timesteps, inputs.ids, inputs.time_ids)
        per_sample = (pred.float() - inputs.target).pow(2).flatten(1).mean(1)
        if guided_rows:
            scale = settings.prior_guidance
            uncond_pred = pred[first_uncond:first_uncond + len(guided_rows)].float()
            drift = (scale * pred[guided_rows].float() - (scale - 1) * uncond_pred
                     - (scale * base_cond - (scale - 1) * base_uncond))
            per_sample = per_sample.index_put((torch.tensor(guided_rows, device=per_sample.device),),
                                              drift.pow(2).flatten(1).mean(1))
        # This process's share of the global batch's mean: DDP averages over processes, which makes it the mean over
        # the whole batch, as one process would compute it.
        return (per_sample * inputs.weights).sum() * (self.world / len(whole.indices))

    def _inputs(self, whole: Batch, batch: Batch, mine: list[int], g: torch.Generator) -> StepInputs:
        """The batch's noisy latents, captions (some dropped), targets and weights."""
        model, settings = self.model, self.settings
        mean, std = self._posterior(batch)
        shape = (len(whole.indices), *mean.shape[1:])
        latents = (mean + std * torch.randn(shape, generator=g)[mine]) * model.vae_scale
        ids = [encoder_ids[list(batch.indices)].clone() for encoder_ids in self.ids_all]
        drop = (torch.rand(len(whole.indices), generator=g) < settings.caption_dropout)[mine]
        for encoder_ids, empty in zip(ids, self.empty_ids):
            encoder_ids[drop] = empty[0]
        noise = training_noise(shape, settings.noise_offset, g)[mine]
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(whole.indices),),
                                  generator=g)[mine]
        latents, noise, timesteps = (t.to(self.device) for t in (latents, noise, timesteps))
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if model.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        time_ids = (sdxl_time_ids(batch.bucket[0], batch.bucket[1], len(batch.indices), self.device, model.dtype)
                    if model.family.is_sdxl else None)
        weights = min_snr_weights(self.alphas[timesteps], settings.min_snr_gamma, model.prediction_type)
        weights = weights * self.sample_weight[list(batch.indices)].to(weights.device)
        return StepInputs(noisy.to(model.dtype), timesteps, [i.to(self.device) for i in ids], time_ids,
                          target.float(), weights)

    def _add_preservation(self, inputs: StepInputs, unwrapped: Denoiser, whole: Batch, batch: Batch,
                          mine: list[int], is_prior: list[bool], g: torch.Generator) -> None:
        """Each training image once more for each preserved caption (its trigger swapped for a preservation word;
        the empty prompt), towards the base model's own prediction for that caption on the same noisy latent."""
        settings = self.settings
        words = settings.preservation_words
        choice = torch.randint(0, max(1, len(words)), (len(whole.indices),), generator=g)[mine]
        rows, captions = [], []
        for row, index in enumerate(batch.indices):
            if is_prior[row]:
                continue
            if words:
                rows.append(row)
                captions.append(self._preservation_ids(index, words[choice[row]]))
            if settings.preserve_unconditional:
                rows.append(row)
                captions.append([empty[0] for empty in self.empty_ids])
        if rows:
            swapped = [torch.stack([caption[e] for caption in captions]).to(self.device)
                       for e in range(len(self.ids_all))]
            base = inputs.base_prediction(unwrapped, self.network, rows, swapped)
            inputs.append(rows, swapped, base, inputs.weights[rows] * settings.preservation_weight)

    def _preservation_ids(self, index: int, word: str) -> list[torch.Tensor]:
        """Token ids of image `index`'s caption with the trigger word swapped for `word` (computed once)."""
        if (index, word) not in self.swapped_ids:
            caption = swap_word(self.dataset.images[index].caption, self.settings.trigger.strip(), word)
            self.swapped_ids[(index, word)] = [t[0] for t in caption_ids(self.model, [caption])]
        return self.swapped_ids[(index, word)]

    def _posterior(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Each image's latent posterior (mean, std): cached, or encoded now; the caller draws the sample."""
        if self.cache:
            return (torch.stack([self.cache[i][0] for i in batch.indices]),
                    torch.stack([self.cache[i][1] for i in batch.indices]))
        pixels = np.stack([load_for_bucket(self.dataset.images[i].path, batch.bucket) for i in batch.indices])
        return encode_latents(self.model, pixels)

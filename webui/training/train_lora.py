"""LoRA training on a folder of captioned images: peft adapters, accelerate, a kohya-format file at the end.

The same function runs the CLI (`python -m webui train-lora`) and the app's training tab (a job); the caller passes
an observer for progress, a stop flag, and a device guard that makes each step wait for the device in turn with
generation jobs. `accelerate launch -m webui train-lora ...` trains on several GPUs (data-parallel over the adapters).

Files: `<run_dir>/checkpoint-latest.pt` (the resumable state, written atomically every `save_every` steps and when
interrupted), `<run_dir>/<name>-step000100.safetensors` snapshots, `<run_dir>/log.jsonl`, `<run_dir>/samples/`, and
the final `<output_dir>/<name>.safetensors`, written only when training completes (temp file, then rename).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import ContextManager, Protocol

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from webui.engine.embeddings import EMBEDDING_SUFFIXES
from webui.engine.loader import LoadedModel, load_checkpoint

from .common import JsonLog, load_training_state, save_training_state
from .lora_dataset import (
    Batch, DatasetError, LoraDataset, epoch_batches, load_for_bucket, make_buckets, nearest_bucket, scan_dataset,
    with_regularization,
)
from .lora_average import average_loras, average_tensors, averaged_metadata
from .lora_network import UNET_LAYER_CHOICES, LoraNetwork, LoraShape, LoraShapeError, kohya_metadata, save_lora
from .lora_step import Denoiser, StepLoss, encode_latents
from .trigger_embedding import TriggerEmbedding, embedding_owner, save_embedding, save_embedding_tensors

OPTIMIZERS = ("AdamW", "AdamW8bit", "Prodigy")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "cosine_with_restarts", "linear", "polynomial")
PRECISIONS = ("no", "fp16", "bf16")
DEFAULT_WEIGHT_DECAY = 1e-2  # torch's and kohya's AdamW default; ss_optimizer names the decay only when it differs

NAME_PATTERN = re.compile(r"^[\w][\w.\- ]{0,99}$")


class TrainingError(ValueError):
    """Training cannot start or go on; the message says what to change. Saved state is never lost by one."""


@dataclass
class LoraTrainingSettings:
    """Everything a run needs. Defaults train the shipped model's new concepts in minutes on a CPU and suit SD1.5."""

    base: Path
    data: Path
    name: str
    output_dir: Path = Path("models/Lora")
    run_dir: Path | None = None  # default: outputs/lora-training/<name>
    trigger: str = ""
    trigger_embedding: bool = True  # pivotal tuning: also learn the trigger word itself (models/embeddings/<trigger>)
    embedding_lr: float = 0.0  # 0 = automatic: 5e-3 (A1111's textual-inversion default), 1.0 for Prodigy
    embedding_dir: Path | None = None  # default: "embeddings" beside output_dir (models/embeddings)
    reg_data: Path | None = None  # kohya's regularisation folder (images + captions of what should not change)
    # kohya's default is 1.0; on the shipped model 1.25 with two averaged runs kept old prompts better at no cost to the
    # new word (docs/lora-training.md)
    prior_loss_weight: float = 1.25
    # Output preservation (ai-toolkit's "differential output preservation"): each training image is also seen with
    # the trigger word swapped for one of these words (and, with preserve_unconditional, with the empty prompt), and
    # the LoRA must then predict what the base model predicts: the concept stays out of its neighbours' captions.
    # Off by default: on the shipped model it halved those captions' drift but did not lift old-word adherence at
    # CFG 6, and preserving the empty prompt cost the new word most of what it learned (docs/lora-training.md).
    preserve_words: str = ""  # comma-separated, e.g. "square, circle"; empty = off
    preservation_weight: float = 1.0
    preserve_unconditional: bool = False
    # 0: regularisation images train towards the noise (kohya's prior loss). A CFG scale (>= 1): they hold the base
    # model's prediction guided at that scale, both branches (the caption and the empty prompt), since sampling's
    # s x cond - (s - 1) x uncond multiplies a drift of either branch (docs/lora-training.md).
    prior_guidance: float = 0.0
    resolution: int = 0  # 0 = the model's native resolution
    buckets: bool = True
    rank: int = 16
    alpha: float = 16.0
    train_unet: bool = True
    train_text_encoder: bool = True
    # LoCon by default: kohya's attention layers plus the ResNet 3x3 convolutions at a lower rank. A new shape needs
    # the convolutions: the shipped model has no attention at its full-resolution level, where corners are drawn
    # (docs/lora-training.md: 72% -> 90% on a new shape word). "attention" is kohya's plain LoRA.
    unet_layers: str = "attention+conv"
    conv_rank: int = 4  # kohya's conv_dim (0 = rank)
    conv_alpha: float = 4.0  # kohya's conv_alpha (0 = alpha)
    # kohya's network_dropout (peft's lora_dropout), off as kohya has it: on the shipped model 0.1 did not reliably
    # lessen a new word's drift onto the old ones (docs/lora-training.md, runs T3-T5)
    network_dropout: float = 0.0
    optimizer: str = "AdamW"
    learning_rate: float = 0.0  # 0 = automatic: 1e-4 for SD-sized U-Nets (>= 320 channels), 1e-3 for small ones
    text_encoder_lr: float = 0.0  # 0 = the same as learning_rate
    weight_decay: float = DEFAULT_WEIGHT_DECAY  # decoupled weight decay of the LoRA layers
    lr_scheduler: str = "cosine"
    warmup_steps: int = 10
    epochs: int = 40  # 30 images + 120 regularisation images at batch 4: 1520 steps, about 6 minutes on 2 CPU cores
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 4
    gradient_accumulation: int = 1
    caption_dropout: float = 0.0  # kohya's default; dropped captions teach the unconditional branch the new data
    noise_offset: float = 0.0
    min_snr_gamma: float = 5.0
    cache_latents: bool = True
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    seed: int = 0
    # Runs of this setting on seeds seed, seed + 1, ..., averaged exactly into the one file written (a "soup",
    # lora_average.py). 0 = automatic: 2 on small models, 1 (kohya's single run) on SD-sized ones. On the shipped model
    # two runs share little of their change but all of what they learned, and their mean draws a new word better
    # without changing old prompts more (docs/lora-training.md).
    average_runs: int = 0
    save_every: int = 100  # steps between resumable saves and snapshots (0 = only at the end)
    sample_every: int = 100  # steps between sample images (0 = none)
    sample_prompts: list[str] = field(default_factory=list)
    sample_steps: int = 20
    sample_cfg: float = 6.0
    sample_sampler: str = "Euler a"
    resume: bool = False
    threads: int = 0  # CPU threads (0 = torch's default)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("outputs/lora-training") / self.name

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir) / f"{self.name}.safetensors"

    @property
    def learns_trigger(self) -> bool:
        return self.trigger_embedding and bool(self.trigger.strip())

    @property
    def embedding_path(self) -> Path:
        folder = Path(self.embedding_dir) if self.embedding_dir else Path(self.output_dir).parent / "embeddings"
        return folder / f"{self.trigger.strip()}.safetensors"

    @property
    def preservation_words(self) -> list[str]:
        return [word.strip() for word in self.preserve_words.split(",") if word.strip()]

    @property
    def shape(self) -> LoraShape:
        return LoraShape(self.rank, self.alpha, self.train_unet, self.train_text_encoder, self.unet_layers,
                         self.conv_rank, self.conv_alpha, self.network_dropout)

    def check(self) -> None:
        """Refuse impossible settings before anything is loaded or written."""
        problems = []
        if not NAME_PATTERN.match(self.name or "") or self.name.endswith("."):
            problems.append(f"name {self.name!r} must be 1-100 letters, digits, spaces, '.', '_' or '-' (it becomes "
                            "the file name)")
        if self.learns_trigger and (not NAME_PATTERN.match(self.trigger.strip()) or self.trigger.strip().endswith(".")):
            problems.append(f"trigger word {self.trigger!r} becomes the embedding's file name: use letters, digits, "
                            "spaces, '.', '_' or '-', or turn off learning the trigger word")
        for label, value in (("learning rate", self.learning_rate),
                             ("text-encoder learning rate", self.text_encoder_lr),
                             ("embedding learning rate", self.embedding_lr),
                             ("caption dropout", self.caption_dropout), ("noise offset", self.noise_offset),
                             ("min-SNR gamma", self.min_snr_gamma), ("alpha", self.alpha),
                             ("prior loss weight", self.prior_loss_weight),
                             ("preservation weight", self.preservation_weight),
                             ("prior guidance", self.prior_guidance), ("weight decay", self.weight_decay)):
            if not math.isfinite(value):
                problems.append(f"{label} must be a number (got {value})")
        if math.isfinite(self.learning_rate) and self.learning_rate < 0:
            problems.append(f"learning rate must be above 0, or 0 for automatic (got {self.learning_rate})")
        if self.weight_decay < 0:
            problems.append(f"weight decay must be 0 (off) or above (got {self.weight_decay})")
        if self.embedding_lr < 0:
            problems.append(f"embedding learning rate must be 0 (automatic) or above (got {self.embedding_lr})")
        if self.text_encoder_lr < 0:
            problems.append("text-encoder learning rate must be 0 (same as the U-Net) or above "
                            f"(got {self.text_encoder_lr})")
        if not 0 <= self.caption_dropout < 1:
            problems.append(f"caption dropout must be in [0, 1) (got {self.caption_dropout})")
        if min(self.noise_offset, self.min_snr_gamma, self.prior_loss_weight, self.preservation_weight,
               self.prior_guidance) < 0:
            problems.append("noise offset, min-SNR gamma, prior loss weight, preservation weight and prior guidance "
                            "must be 0 (off) or above")
        for label, value, low in (("rank", self.rank, 1), ("batch size", self.batch_size, 1),
                                  ("gradient accumulation", self.gradient_accumulation, 1), ("epochs", self.epochs, 1),
                                  ("max steps", self.max_steps, 0), ("warm-up steps", self.warmup_steps, 0),
                                  ("save every", self.save_every, 0), ("sample every", self.sample_every, 0),
                                  ("sample steps", self.sample_steps, 1),
                                  ("runs to average", self.average_runs, 0)):
            if value < low:
                problems.append(f"{label} must be at least {low} (got {value})")
        if self.average_runs > 8:
            problems.append(f"runs to average must be 0 (automatic) to 8 (got {self.average_runs})")
        if self.resolution and not 32 <= self.resolution <= 4096:
            problems.append("resolution must be between 32 and 4096 pixels, or 0 for the model's own "
                            f"(got {self.resolution})")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if self.lr_scheduler not in LR_SCHEDULERS:
            problems.append(f"LR schedule {self.lr_scheduler!r} is not one of {', '.join(LR_SCHEDULERS)}")
        if math.isfinite(self.prior_guidance) and 0 < self.prior_guidance < 1:
            problems.append(f"prior guidance must be 0 (off) or a CFG scale of at least 1 (got {self.prior_guidance})")
        if self.preservation_words and not self.trigger.strip():
            problems.append("preservation words replace the trigger word in the captions: give a trigger word")
        if self.mixed_precision not in PRECISIONS:
            problems.append(f"mixed precision {self.mixed_precision!r} is not one of {', '.join(PRECISIONS)}")
        elif self.mixed_precision != "no" and not torch.cuda.is_available():
            problems.append(f"{self.mixed_precision} mixed precision needs a CUDA GPU; choose 'no' on this machine")
        if self.optimizer == "AdamW8bit" and not torch.cuda.is_available():
            problems.append("AdamW8bit (bitsandbytes) runs only on a CUDA GPU; choose AdamW or Prodigy here")
        try:
            self.shape.check()
        except LoraShapeError as exc:
            problems.append(str(exc))
        if problems:
            raise TrainingError("; ".join(dict.fromkeys(problems)))

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class TrainingProgress:
    step: int
    total_steps: int
    epoch: int
    loss: float
    smoothed_loss: float
    learning_rate: float
    elapsed: float
    samples_per_second: float

    @property
    def eta_seconds(self) -> float:
        if not self.step:
            return float("nan")
        return self.elapsed / self.step * (self.total_steps - self.step)


class TrainingObserver(Protocol):
    def started(self, total_steps: int, dataset: LoraDataset, resumed_from: int) -> None: ...
    def stepped(self, progress: TrainingProgress) -> None: ...
    def sampled(self, step: int, images: list[Image.Image], paths: list[Path]) -> None: ...
    def message(self, text: str) -> None: ...


def check_embedding_slot(settings: LoraTrainingSettings) -> None:
    """The learned trigger word may replace only an embedding that an earlier run of this same LoRA wrote: another
    embedding of that name would silently change every prompt that uses it."""
    if not settings.learns_trigger:
        return
    target = settings.embedding_path
    for suffix in EMBEDDING_SUFFIXES:
        existing = target.with_suffix(suffix)
        if existing.exists() and (suffix != ".safetensors" or embedding_owner(existing) != settings.name):
            raise TrainingError(f"an embedding named {settings.trigger.strip()!r} already exists ({existing}) and was "
                                "not made by this LoRA: choose another trigger word, or turn off learning the trigger "
                                "word")


class SilentObserver:
    """Reports nothing: the processes of a multi-process run other than the main one."""

    def started(self, total_steps: int, dataset: LoraDataset, resumed_from: int) -> None: ...

    def stepped(self, progress: TrainingProgress) -> None: ...

    def sampled(self, step: int, images: list[Image.Image], paths: list[Path]) -> None: ...

    def message(self, text: str) -> None: ...


class PrintObserver:
    """The CLI's observer: a line every `every` steps."""

    def __init__(self, every: int = 10) -> None:
        self.every = every

    def started(self, total_steps: int, dataset: LoraDataset, resumed_from: int) -> None:
        for warning in dataset.warnings:
            print(f"warning: {warning}")
        start = f" (resuming at step {resumed_from})" if resumed_from else ""
        print(f"{len(dataset.images)} images x repeats = {dataset.total_repeats} per epoch; {total_steps} steps{start}")

    def stepped(self, progress: TrainingProgress) -> None:
        if progress.step % self.every == 0 or progress.step == progress.total_steps:
            print(f"step {progress.step}/{progress.total_steps} loss {progress.smoothed_loss:.4f} "
                  f"lr {progress.learning_rate:.2e} {progress.samples_per_second:.2f} samples/s "
                  f"eta {progress.eta_seconds:.0f}s", flush=True)

    def sampled(self, step: int, images: list[Image.Image], paths: list[Path]) -> None:
        print(f"samples at step {step}: {paths[0].parent if paths else ''}")

    def message(self, text: str) -> None:
        print(text)


@dataclass
class TrainingResult:
    output: Path | None  # None when interrupted
    steps: int
    total_steps: int
    interrupted: bool
    final_loss: float
    seconds: float
    samples_per_second: float
    warnings: list[str]
    embedding: Path | None = None  # the learned trigger word (pivotal tuning), when one was learned


# -- the run's pieces (a step's own inputs, forward pass and loss are in lora_step.py) ---------------------------------

def automatic_learning_rate(model: LoadedModel, optimizer: str) -> float:
    """kohya's usual 1e-4 for SD-sized U-Nets; a small U-Net (the shipped model, 64 channels) learns in minutes at
    1e-3 and no faster at higher rates. Prodigy finds its own step size: its lr is a multiplier, 1.0."""
    if optimizer == "Prodigy":
        return 1.0
    return 1e-4 if _is_sd_sized(model) else 1e-3


def _make_optimizer(settings: LoraTrainingSettings, groups: list[dict]) -> torch.optim.Optimizer:
    if settings.optimizer == "AdamW":
        # foreach: one call per group instead of a Python loop over the adapters' tensors (torch picks it on CUDA by
        # itself, not on the CPU, where it makes the optimiser step about a quarter faster; the same numbers)
        return torch.optim.AdamW(groups, lr=settings.learning_rate, weight_decay=settings.weight_decay, foreach=True)
    if settings.optimizer == "AdamW8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise TrainingError("AdamW8bit needs bitsandbytes: pip install -r requirements-optional.txt") from exc
        return bnb.optim.AdamW8bit(groups, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    from prodigyopt import Prodigy

    # Prodigy estimates the step size itself; its lr is a multiplier (1.0 is the authors' advice).
    return Prodigy(groups, lr=settings.learning_rate, weight_decay=settings.weight_decay, safeguard_warmup=True,
                   use_bias_correction=True)


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


@contextlib.contextmanager
def _modules_in_mode(model: LoadedModel, training: bool) -> Iterator[None]:
    """The U-Net and text encoders in train (network dropout on) or eval mode, and back as they were afterwards."""
    modules = [model.unet] + [encoder.model for encoder in model.text_encoders]
    before = [module.training for module in modules]
    for module in modules:
        module.train(training)
    try:
        yield
    finally:
        for module, was_training in zip(modules, before):
            module.train(was_training)


def _cuda_devices() -> list[int]:
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


def _sample(model: LoadedModel, settings: LoraTrainingSettings, width: int, height: int) -> list[Image.Image]:
    from webui.engine.generation import SamplingParams, txt2img
    from webui.engine.samplers import SamplerRegistry

    images = []
    registry = SamplerRegistry()
    with _modules_in_mode(model, training=False):  # the network dropout is off while sampling
        for index, prompt in enumerate(settings.sample_prompts):
            params = SamplingParams(prompt=prompt, sampler=settings.sample_sampler, steps=settings.sample_steps,
                                    cfg_scale=settings.sample_cfg, width=width, height=height,
                                    seeds=[settings.seed + index])
            images.extend(txt2img(model, params, registry))
    return images


# -- the run -----------------------------------------------------------------------------------------------------------

def automatic_average_runs(model: LoadedModel) -> int:
    """Two runs averaged on small U-Nets (the shipped model: minutes each on a CPU, and each run's own noise is most of
    its change); one on SD-sized ones, as kohya trains."""
    return 1 if _is_sd_sized(model) else 2


def _is_sd_sized(model: LoadedModel) -> bool:
    """A U-Net of Stable Diffusion's width (320 channels or more), as opposed to a small one like the shipped model."""
    return model.unet.config.block_out_channels[0] >= 320


def train_lora(
    settings: LoraTrainingSettings,
    observer: TrainingObserver | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    device_guard: Callable[[], ContextManager] = contextlib.nullcontext,
    model: LoadedModel | None = None,
    dataset: LoraDataset | None = None,
) -> TrainingResult:
    """Train, save, and return what happened. `model` is a private copy to train on (loaded from `settings.base`
    when not given); it is modified in place, so never pass a cached model that generation also uses. `dataset` is
    `settings.data` already scanned by the caller (the service scans it to validate before starting a job)."""
    settings.check()
    observer = observer or PrintObserver()
    check_embedding_slot(settings)
    dataset = dataset or scan_dataset(settings.data, settings.trigger)
    if settings.reg_data:
        dataset = with_regularization(dataset, scan_dataset(settings.reg_data))
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model = model if model is not None else load_checkpoint(Path(settings.base))
    runs = settings.average_runs or automatic_average_runs(model)
    if runs == 1:
        return _train_one(settings, observer, should_stop, device_guard, model, dataset)
    return _train_averaged(settings, runs, observer, should_stop, device_guard, model, dataset)


def _train_one(settings: LoraTrainingSettings, observer: TrainingObserver, should_stop: Callable[[], bool],
               device_guard: Callable[[], ContextManager], model: LoadedModel, dataset: LoraDataset) -> TrainingResult:
    """One run, from its saved state when resuming."""
    saved = load_training_state(settings.run_path) if settings.resume else None
    if settings.resume and saved is None:
        raise TrainingError(f"nothing to resume in {settings.run_path}: no checkpoint-latest.pt there "
                            "(start without resume)")
    if saved is not None:
        _check_resumable(saved, settings)
    torch.manual_seed(settings.seed)  # the adapters' initial weights

    run = _LoraRun(settings, observer, device_guard, model, dataset)
    if settings.cache_latents and not run.cache_latents(should_stop):
        # nothing trained yet: any saved state is left exactly as it was
        run.observer.message("interrupted while caching latents; nothing was changed")
        return TrainingResult(None, int(saved["step"]) if saved else 0, 0, True, float("nan"), 0.0, 0.0,
                              dataset.warnings)
    run.start(saved)
    run.train(should_stop)
    return run.finish()


def _member_settings(settings: LoraTrainingSettings, index: int) -> LoraTrainingSettings:
    """Run `index` of an averaged training: its own seed, and its own folder under the run's for its state, samples,
    file and learned word (only the average is written under the final names)."""
    folder = settings.run_path / f"run{index + 1}"
    return replace(settings, seed=settings.seed + index, average_runs=1, run_dir=folder, output_dir=folder,
                   embedding_dir=folder / "embeddings")  # a LoRA named like its trigger word must not overwrite it


class _RunsObserver:
    """Reports the runs of an averaged training as one: steps, ETA and the loss plot continue from run to run."""

    def __init__(self, observer: TrainingObserver, runs: int) -> None:
        self.observer, self.runs = observer, runs
        self.index, self.offset, self.total, self.elapsed_before, self.reported = 0, 0, 0, 0.0, False

    def begin(self, index: int, elapsed_before: float) -> None:
        self.index, self.elapsed_before = index, elapsed_before

    def started(self, total_steps: int, dataset: LoraDataset, resumed_from: int) -> None:
        self.offset = self.index * total_steps
        self.total = total_steps * self.runs
        if not self.reported:
            self.observer.started(self.total, dataset, self.offset + resumed_from)
            self.reported = True
        self.observer.message(f"run {self.index + 1} of {self.runs} (seed offset {self.index}): steps "
                              f"{self.offset + 1}-{self.offset + total_steps} of {self.total}")

    def stepped(self, progress: TrainingProgress) -> None:
        self.observer.stepped(replace(progress, step=self.offset + progress.step, total_steps=self.total,
                                      elapsed=self.elapsed_before + progress.elapsed))

    def sampled(self, step: int, images: list[Image.Image], paths: list[Path]) -> None:
        self.observer.sampled(self.offset + step, images, paths)

    def message(self, text: str) -> None:
        self.observer.message(text)


def _train_averaged(settings: LoraTrainingSettings, runs: int, observer: TrainingObserver,
                    should_stop: Callable[[], bool], device_guard: Callable[[], ContextManager], model: LoadedModel,
                    dataset: LoraDataset) -> TrainingResult:
    """`runs` runs on consecutive seeds, one after another, then their exact average under the final names. Resuming
    skips the runs that completed and continues the one that was interrupted."""
    members = [_member_settings(settings, index) for index in range(runs)]
    if settings.resume and not any(m.output_path.exists() or (m.run_path / "checkpoint-latest.pt").exists()
                                   for m in members):
        raise TrainingError(f"nothing to resume in {settings.run_path}: no saved run there (start without resume)")
    chained = _RunsObserver(observer, runs)
    seconds = seen = 0.0
    last: TrainingResult | None = None
    for index, member in enumerate(members):
        if settings.resume and member.output_path.exists():
            continue  # completed before the interruption
        member.output_path.unlink(missing_ok=True)  # a fresh start never reuses an old run's file
        member = replace(member, resume=settings.resume and (member.run_path / "checkpoint-latest.pt").exists())
        chained.begin(index, seconds)
        last = _train_one(member, chained, should_stop, device_guard,
                          copy.deepcopy(model) if index < runs - 1 else model, dataset)
        seconds += last.seconds
        seen += last.samples_per_second * last.seconds
        if last.interrupted:
            return replace(last, steps=chained.offset + last.steps, total_steps=chained.total, seconds=seconds)
    if last is not None and last.output is None:  # another process of a multi-process run: the main one averages
        return replace(last, steps=chained.offset + last.steps, total_steps=chained.total, seconds=seconds)
    embedding = None
    if settings.learns_trigger:  # first, so the LoRA never appears without the word it was trained with
        vectors = average_tensors([load_file(str(m.embedding_path)) for m in members])
        embedding = save_embedding_tensors(settings.embedding_path, vectors, settings.trigger.strip(), settings.name)
        observer.message(f"the trigger word {settings.trigger.strip()!r} was learned as an embedding (the mean of "
                         f"{runs} runs): {embedding}")
    with safe_open(str(members[0].output_path), "pt") as handle:
        metadata = dict(handle.metadata() or {})
    metadata.pop("sshs_model_hash", None)
    metadata["ss_steps"] = metadata["ss_max_train_steps"] = str(int(metadata.get("ss_max_train_steps", 0)) * runs)
    output = save_lora(settings.output_path, average_loras([load_file(str(m.output_path)) for m in members]),
                       averaged_metadata(metadata, runs, [m.seed for m in members]))
    observer.message(f"averaged {runs} runs into {output}")
    return TrainingResult(output, int(metadata["ss_steps"]), int(metadata["ss_steps"]), False,
                          last.final_loss if last else float("nan"), seconds, seen / max(seconds, 1e-9),
                          dataset.warnings, embedding)


@dataclass(frozen=True)
class _BatchPlan:
    """Which images make up each global batch of an epoch. Several processes (accelerate launch) share each global
    batch of batch_size x processes images, every process drawing the whole batch's noise and taking its own images:
    the run equals one process with the global batch. The order depends only on (seed, epoch)."""

    bucket_of: list[tuple[int, int]]
    repeats: list[int]
    global_batch: int
    world: int
    seed: int

    def epoch_seed(self, epoch: int) -> int:
        return self.seed * 1_000_003 + epoch

    def batch_seed(self, epoch: int, position: int) -> int:
        """One batch's seed, which its noise and dropout seeds are made from: the same in a resumed run."""
        return self.epoch_seed(epoch) * 100_003 + position

    def noise_seed(self, epoch: int, position: int) -> int:
        """The seed of one batch's noise, timesteps and caption dropout (every process draws the whole batch's)."""
        return self.batch_seed(epoch, position) * 64

    def dropout_seed(self, epoch: int, position: int, rank: int) -> int:
        """The seed of one process's network-dropout masks in one batch: never a noise seed (those are multiples of
        64), and another one on each of up to 63 processes."""
        return self.noise_seed(epoch, position) + 1 + rank % 63

    def batches(self, epoch: int) -> list[Batch]:
        """The epoch's global batches; with several processes, a bucket's last batch with fewer images than
        processes is left out (a process without an image would stall the others)."""
        batches = epoch_batches(self.bucket_of, self.repeats, self.global_batch, self.epoch_seed(epoch))
        return [batch for batch in batches if len(batch.indices) >= self.world]


class _LoraRun:
    """One training run, in the order `train_lora` calls it: built (model, adapters, batch plan), latents cached,
    started (optimiser, schedule, saved state, log), trained, finished (files written, result). Its own class so
    that each phase can be read alone; the state they share is this object's, not a closure's."""

    # Set by `start`, once the latents are cached:
    denoiser: torch.nn.Module  # prepared by accelerate (DDP-wrapped with several processes)
    unwrapped_denoiser: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    trainable: list[torch.nn.Parameter]
    step_loss: StepLoss
    log: JsonLog | None
    started_at: _dt.datetime
    clock: float

    def __init__(self, settings: LoraTrainingSettings, observer: TrainingObserver,
                 device_guard: Callable[[], ContextManager], model: LoadedModel | None, dataset: LoraDataset) -> None:
        from accelerate import Accelerator

        self.device_guard = device_guard
        self.dataset = dataset
        self.accelerator = Accelerator(mixed_precision=settings.mixed_precision, cpu=not torch.cuda.is_available(),
                                       gradient_accumulation_steps=settings.gradient_accumulation)
        self.main = self.accelerator.is_main_process
        # one process of several reports; the others would only repeat it
        self.observer = observer if self.main else SilentObserver()
        self.model = model if model is not None else load_checkpoint(Path(settings.base))
        if self.model.variant != "normal":
            raise TrainingError(f"{self.model.name} is an {self.model.variant} model: train LoRAs on a normal "
                                "checkpoint")
        self.model.to(self.accelerator.device)
        self.network = LoraNetwork(self.model, settings.shape)
        self.trigger = (TriggerEmbedding(self.model, settings.trigger.strip(), [i.caption for i in dataset.images])
                        if settings.learns_trigger else None)
        if not settings.learning_rate:
            settings = replace(settings, learning_rate=automatic_learning_rate(self.model, settings.optimizer))
            self.observer.message(f"learning rate {settings.learning_rate:g} (automatic for this model)")
        self.settings = settings
        if settings.gradient_checkpointing:
            self.model.unet.enable_gradient_checkpointing()
            for encoder in self.model.text_encoders:
                encoder.model.gradient_checkpointing_enable()

        multiple = self.model.vae_downscale * 2 ** (len(self.model.unet.config.block_out_channels) - 1)
        resolution = settings.resolution or self.model.default_resolution[0]
        self.resolution = max(multiple, resolution // multiple * multiple)
        self.buckets = make_buckets(self.resolution, multiple) if settings.buckets else [(self.resolution,) * 2]
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.plan = _BatchPlan([nearest_bucket(image.size, self.buckets) for image in dataset.images],
                               [image.repeats for image in dataset.images], settings.batch_size * self.world,
                               self.world, settings.seed)
        per_epoch = len(self.plan.batches(0))
        if per_epoch < 1:
            raise TrainingError(f"{self.world} processes need batches of at least {self.world} images: add images "
                                "or repeats")
        self.updates_per_epoch = max(1, math.ceil(per_epoch / settings.gradient_accumulation))
        self.total_steps = settings.max_steps or settings.epochs * self.updates_per_epoch
        self.latent_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.step = self.last_saved = self.seen = 0
        self.smoothed: float | None = None
        self.loss_value = float("nan")
        self.interrupted = False

    @property
    def run_dir(self) -> Path:
        return self.settings.run_path

    def cache_latents(self, should_stop: Callable[[], bool]) -> bool:
        """Encode every image once (kohya's cache_latents); False when stopped before the end."""
        for index, image in enumerate(self.dataset.images):
            if should_stop():
                return False
            with self.device_guard():
                pixels = load_for_bucket(image.path, self.plan.bucket_of[index])[None]
                mean, std = encode_latents(self.model, pixels)
                self.latent_cache[index] = (mean[0], std[0])
        return True

    def start(self, saved: dict | None) -> None:
        """The optimiser and LR schedule (restored from `saved` when resuming), the log, and the run folder."""
        from diffusers.optimization import get_scheduler

        settings = self.settings
        groups = self.network.parameter_groups(settings.learning_rate, settings.text_encoder_lr or None)
        if self.trigger is not None:
            embedding_lr = settings.embedding_lr or (1.0 if settings.optimizer == "Prodigy" else 5e-3)
            groups.append({"params": list(self.trigger.parameters()), "lr": embedding_lr, "weight_decay": 0.0})
        optimizer = _make_optimizer(settings, groups)
        scheduler = get_scheduler(settings.lr_scheduler, optimizer,
                                  num_warmup_steps=settings.warmup_steps * self.world,
                                  num_training_steps=self.total_steps * self.world)
        if saved is not None:
            self.network.load_state(saved["adapters"])
            if self.trigger is not None and saved.get("trigger_embedding") is not None:
                self.trigger.load_state(saved["trigger_embedding"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            self.step = self.last_saved = int(saved["step"])
        self.denoiser, self.optimizer, self.scheduler = self.accelerator.prepare(
            Denoiser(self.model, self.trigger), optimizer, scheduler)
        # Looked up once: unwrapping walks every module, and so does listing the adapters' parameters (together
        # about 10 ms a step on the shipped model, 7% of a CPU step).
        self.unwrapped_denoiser = self.accelerator.unwrap_model(self.denoiser)
        self.trainable = self.network.trainable_parameters()
        self.step_loss = StepLoss(settings, self.model, self.dataset, self.network, self.accelerator.device,
                                  self.world, self.latent_cache)
        self.log = JsonLog(self.run_dir / "log.jsonl") if self.main else None
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "settings.json").write_text(json.dumps(settings.to_json(), indent=2))
        self.observer.started(self.total_steps, self.dataset, self.step)
        self.started_at = _dt.datetime.now(_dt.timezone.utc)
        self.clock = time.time()

    def train(self, should_stop: Callable[[], bool]) -> None:
        """Update until the last step or a stop; a resumed run skips the batches its saved steps used."""
        hooks = contextlib.ExitStack()
        # train mode for the network dropout (the CLIP text model's own dropout is 0, the U-Net's too)
        hooks.enter_context(_modules_in_mode(self.model, training=True))
        if self.trigger is not None:
            hooks.enter_context(self.trigger.installed(self.model))
        accumulation = self.settings.gradient_accumulation
        try:
            epoch = self.step // self.updates_per_epoch
            while self.step < self.total_steps and not self.interrupted:
                batches = self.plan.batches(epoch)
                skip = (self.step - epoch * self.updates_per_epoch) * accumulation
                for position in range(skip, len(batches)):
                    if should_stop():
                        self.interrupted = True
                        break
                    loss = self._forward_backward(batches[position], epoch, position)
                    self.seen += len(batches[position].indices)
                    if not self.accelerator.sync_gradients:
                        continue
                    self.step += 1
                    self._after_update(loss, epoch)
                    if self.step >= self.total_steps:
                        break
                epoch += 1
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise TrainingError(
                    f"ran out of memory at step {self.step + 1} (batch size {self.settings.batch_size}, resolution "
                    f"{self.resolution}): lower the batch size or resolution, or turn on gradient checkpointing; "
                    f"the last saved state (step {self.last_saved}) can be resumed") from exc
            raise
        finally:
            hooks.close()

    def _forward_backward(self, whole: Batch, epoch: int, position: int) -> torch.Tensor:
        """One micro-batch: loss, backward, and (when accumulation is complete) the optimiser step."""
        settings, accelerator = self.settings, self.accelerator
        # Noise depends only on (seed, epoch, batch): a resumed run draws what it would have drawn, and so does each
        # process of a multi-process run, which then keeps its share (`mine`) of every draw.
        g = torch.Generator().manual_seed(self.plan.noise_seed(epoch, position))
        mine = list(range(self.rank, len(whole.indices), self.world))
        # The dropout masks too (nn.Dropout draws from the global generator): seeded per batch inside a fork of the
        # global RNG state, so a resumed run drops what it would have and nothing else sees the seed. Their seed must
        # differ from the noise's (`g`): one seed for both would draw the masks from the very bits the noise and
        # timesteps were drawn from, tying which features are dropped to the noise.
        dropout_rng = torch.random.fork_rng(devices=_cuda_devices(), enabled=bool(settings.network_dropout))
        with dropout_rng, self.device_guard(), accelerator.accumulate(self.denoiser), accelerator.autocast():
            if settings.network_dropout:
                torch.manual_seed(self.plan.dropout_seed(epoch, position, self.rank))
            loss = self.step_loss(self.denoiser, self.unwrapped_denoiser, whole, mine, g)
            if not torch.isfinite(loss):
                raise TrainingError(f"the loss became {loss.item()} at step {self.step + 1}: lower the learning "
                                    f"rate; the last saved state (step {self.last_saved}) can be resumed")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.trainable, 1.0)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _after_update(self, loss: torch.Tensor, epoch: int) -> None:
        """Report the step, and sample and save when their turn comes."""
        settings, step = self.settings, self.step
        batch_loss = self.accelerator.reduce(loss.detach(), reduction="mean") if self.world > 1 else loss.detach()
        self.loss_value = float(batch_loss.item())
        self.smoothed = self.loss_value if self.smoothed is None else 0.9 * self.smoothed + 0.1 * self.loss_value
        elapsed = time.time() - self.clock
        progress = TrainingProgress(step, self.total_steps, epoch, self.loss_value, self.smoothed,
                                    float(self.scheduler.get_last_lr()[0]), elapsed, self.seen / max(elapsed, 1e-9))
        if self.log is not None:
            self.log.write(step=step, loss=round(self.loss_value, 6), smoothed=round(self.smoothed, 6),
                           lr=progress.learning_rate)
        self.observer.stepped(progress)
        if self.main and settings.sample_every and settings.sample_prompts and (
                step % settings.sample_every == 0 or step == self.total_steps):
            self._show_samples()
        if settings.save_every and step % settings.save_every == 0 and step < self.total_steps:
            self.save_state()

    def _show_samples(self) -> None:
        with self.device_guard():
            images = _sample(self.model, self.settings, self.resolution, self.resolution)
        paths = []
        for index, image in enumerate(images):
            path = self.run_dir / "samples" / f"step{self.step:06d}-{index:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            paths.append(path)
        self.observer.sampled(self.step, images, paths)

    def _facts(self) -> dict[str, object]:
        return _training_facts(self.settings, self.dataset, self.model, self.resolution, self.buckets,
                               self.total_steps, self.step, self.updates_per_epoch, self.started_at, self.world)

    def save_state(self) -> None:
        """The resumable state and a snapshot LoRA at the current step (main process only)."""
        if not self.main:
            return
        save_training_state(self.run_dir, self.step, {
            "adapters": self.network.state(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "settings": self.settings.to_json(),
            "trigger_embedding": self.trigger.state() if self.trigger is not None else None,
        })
        self.last_saved = self.step
        snapshot = self.run_dir / f"{self.settings.name}-step{self.step:06d}.safetensors"
        save_lora(snapshot, self.network.kohya_state_dict(),
                  kohya_metadata(self.model, self.settings.shape, self._facts()))

    def finish(self) -> TrainingResult:
        """Save what the run ends with: the resumable state if anything is unsaved, and when it completed, the
        trigger word's embedding and then the LoRA under their final names."""
        settings, step = self.settings, self.step
        seconds = time.time() - self.clock
        output = embedding_file = None
        if self.main:
            if step > self.last_saved or self.interrupted:
                self.save_state()  # interrupting keeps everything done so far resumable
            if not self.interrupted:
                if self.trigger is not None:  # first, so the LoRA never appears without the word it was trained with
                    embedding_file = save_embedding(settings.embedding_path, self.trigger, settings.name)
                    self.observer.message(f"the trigger word {self.trigger.trigger!r} was learned as an embedding: "
                                          f"{settings.embedding_path}")
                output = save_lora(settings.output_path, self.network.kohya_state_dict(),
                                   kohya_metadata(self.model, settings.shape, self._facts()))
            assert self.log is not None
            self.log.write(finished=step, interrupted=self.interrupted, seconds=round(seconds, 1))
        if self.interrupted:
            self.observer.message(f"interrupted at step {step}/{self.total_steps}; resume to continue from the "
                                  "saved state")
        return TrainingResult(output, step, self.total_steps, self.interrupted, self.loss_value, seconds,
                              self.seen / max(seconds, 1e-9), self.dataset.warnings, embedding_file)


def _check_resumable(saved: dict, settings: LoraTrainingSettings) -> None:
    before = saved.get("settings", {})
    changed = [key for key in ("rank", "alpha", "train_unet", "train_text_encoder", "optimizer", "base", "trigger",
                               "trigger_embedding")
               if key in before and str(before[key]) != str(settings.to_json()[key])]
    if changed:
        raise TrainingError(f"cannot resume: {', '.join(changed)} differ from the saved run in {settings.run_path} "
                            "(use the same settings, or train under a new name)")


def _training_facts(settings: LoraTrainingSettings, dataset: LoraDataset, model: LoadedModel, resolution: int,
                    buckets: list, total_steps: int, steps_done: int, updates_per_epoch: int,
                    started_at: _dt.datetime, world: int) -> dict[str, object]:
    now = _dt.datetime.now(_dt.timezone.utc)
    bucket_use: dict[str, int] = {}
    for image in dataset.images:
        key = "x".join(map(str, nearest_bucket(image.size, buckets)))
        bucket_use[key] = bucket_use.get(key, 0) + image.repeats
    return {
        "ss_session_id": str(uuid.uuid4().int % 2**32),
        "ss_output_name": settings.name,
        "ss_training_started_at": str(started_at.timestamp()),
        "ss_training_finished_at": str(now.timestamp()),
        "ss_sd_scripts_commit_hash": "latent-studio",
        "ss_learning_rate": str(settings.learning_rate),
        "ss_unet_lr": str(settings.learning_rate),
        "ss_text_encoder_lr": str(settings.text_encoder_lr or settings.learning_rate),
        "ss_lr_scheduler": settings.lr_scheduler,
        "ss_lr_warmup_steps": str(settings.warmup_steps),
        # kohya writes the optimiser's class and, in brackets, the arguments it was given beyond its defaults
        "ss_optimizer": {"AdamW": "torch.optim.adamw.AdamW", "AdamW8bit": "bitsandbytes.optim.adamw.AdamW8bit",
                         "Prodigy": "prodigyopt.prodigy.Prodigy"}[settings.optimizer]
                        + ("" if settings.weight_decay == DEFAULT_WEIGHT_DECAY
                           else f"(weight_decay={settings.weight_decay:g})"),
        "ss_num_train_images": str(dataset.total_repeats),
        "ss_num_reg_images": str(dataset.regularization_count),
        "ss_prior_loss_weight": str(settings.prior_loss_weight),
        "ss_num_batches_per_epoch": str(updates_per_epoch),
        "ss_num_epochs": str(math.ceil(total_steps / updates_per_epoch)),
        "ss_epoch": str(math.ceil(steps_done / updates_per_epoch)),
        "ss_steps": str(steps_done),
        "ss_max_train_steps": str(total_steps),
        "ss_batch_size_per_device": str(settings.batch_size),
        "ss_total_batch_size": str(settings.batch_size * settings.gradient_accumulation * world),
        "ss_gradient_accumulation_steps": str(settings.gradient_accumulation),
        "ss_gradient_checkpointing": str(settings.gradient_checkpointing),
        "ss_mixed_precision": settings.mixed_precision,
        "ss_full_fp16": "False",
        "ss_seed": str(settings.seed),
        "ss_resolution": f"({resolution}, {resolution})",
        "ss_enable_bucket": str(settings.buckets),
        "ss_min_bucket_reso": str(min(min(b) for b in buckets)),
        "ss_max_bucket_reso": str(max(max(b) for b in buckets)),
        "ss_bucket_info": {"buckets": bucket_use},
        "ss_cache_latents": str(settings.cache_latents),
        "ss_caption_dropout_rate": str(settings.caption_dropout),
        "ss_shuffle_caption": "False",
        "ss_keep_tokens": "0",
        "ss_flip_aug": "False",
        "ss_color_aug": "False",
        "ss_random_crop": "False",
        "ss_tag_frequency": dataset.tag_frequency(),
        "ss_dataset_dirs": _dataset_dirs(dataset),
        "ss_reg_dataset_dirs": _dataset_dirs(dataset, regularization=True),
        "ss_noise_offset": str(settings.noise_offset),
        "ss_min_snr_gamma": str(settings.min_snr_gamma),
        "ss_zero_terminal_snr": "False",
        "ss_loss_type": "l2",
        "ss_max_token_length": "75",
        "ss_clip_skip": "1",
        "ss_network_dropout": str(settings.network_dropout),
        "modelspec.title": settings.name,
        "modelspec.date": now.date().isoformat(),
        "modelspec.resolution": f"{resolution}x{resolution}",
        "modelspec.trigger_phrase": settings.trigger,
        "modelspec.author": "trained with Latent Studio",
    }


def _dataset_dirs(dataset: LoraDataset, regularization: bool = False) -> dict[str, dict[str, int]]:
    dirs: dict[str, dict[str, int]] = {}
    for image in (i for i in dataset.images if i.regularization == regularization):
        entry = dirs.setdefault(image.folder, {"n_repeats": image.repeats, "img_count": 0})
        entry["img_count"] += 1
    return dirs


# -- CLI ---------------------------------------------------------------------------------------------------------------

_HELP = {
    "average_runs": "runs on consecutive seeds averaged into one file (0 = automatic: 2 on small models, 1 on "
                    "SD-sized ones)",
    "trigger": "a word put in front of every caption that lacks it",
    "resolution": "training side in pixels (0 = the model's own)",
    "text_encoder_lr": "0 = the same as --learning-rate",
    "max_steps": "> 0 overrides --epochs",
    "save_every": "steps between resumable saves and snapshots (0 = only at the end)",
    "sample_every": "steps between sample images from --sample-prompt (0 = none)",
    "resume": "continue from the run folder's checkpoint-latest.pt",
    "reg_data": "regularisation images with captions (kohya's reg folder): what the LoRA should leave alone",
    "trigger_embedding": "also learn the trigger word as an embedding, written to "
                         "<embedding-dir>/<trigger>.safetensors (pivotal tuning)",
    "embedding_lr": "0 = automatic (5e-3; 1.0 with Prodigy)",
    "embedding_dir": "where the trigger word's embedding goes (default: 'embeddings' beside --output-dir)",
    "unet_layers": "attention: kohya's LoRA; attention+conv: also the ResNet 3x3 convolutions (LoCon); "
                   "cross-attention-kv: only the keys and values of cross-attention",
    "conv_rank": "attention+conv: the convolutions' rank, kohya's conv_dim (0 = --rank)",
    "conv_alpha": "attention+conv: kohya's conv_alpha (0 = --alpha)",
    "weight_decay": "AdamW's decoupled weight decay of the LoRA layers (not of the trigger word's vectors)",
    "network_dropout": "kohya's network_dropout: the share of each LoRA layer's input dropped while training (0 = off)",
    "preserve_words": "comma-separated words swapped in for the trigger word: for those captions the LoRA must "
                      "predict what the base model predicts (output preservation; keeps the concept out of its "
                      "neighbours)",
    "preservation_weight": "the preservation loss's weight",
    "prior_guidance": "0 = regularisation images train towards the noise (kohya); a CFG scale = they hold the base "
                      "model's prediction guided at that scale (both branches)",
    "preserve_unconditional": "also hold the empty prompt (CFG's unconditional branch) to the base model's prediction "
                              "on the training images",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", type=Path, required=True, help="checkpoint to train on (.safetensors)")
    parser.add_argument("--data", type=Path, required=True,
                        help="folder of images with .txt captions (N_name folders repeat)")
    parser.add_argument("--name", required=True, help="the LoRA's name: models/Lora/<name>.safetensors")
    defaults = LoraTrainingSettings(Path("."), Path("."), "x")
    for item in fields(LoraTrainingSettings):
        if item.name in ("base", "data", "name", "sample_prompts"):
            continue
        flag = "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        help_text = _HELP.get(item.name, "")
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif item.name in ("output_dir", "run_dir", "reg_data", "embedding_dir"):
            parser.add_argument(flag, type=Path, default=default, help=help_text or "folder")
        else:
            choices = {"optimizer": OPTIMIZERS, "lr_scheduler": LR_SCHEDULERS, "mixed_precision": PRECISIONS,
                       "unet_layers": UNET_LAYER_CHOICES}.get(item.name)
            parser.add_argument(flag, type=type(default), default=default, choices=choices,
                                help=f"{help_text} (default {default})".strip())
    parser.add_argument("--sample-prompt", action="append", default=[], dest="sample_prompts",
                        help="a prompt for the sample images (repeatable)")


def settings_from_args(args: argparse.Namespace) -> LoraTrainingSettings:
    values = {item.name: getattr(args, item.name) for item in fields(LoraTrainingSettings) if hasattr(args, item.name)}
    return LoraTrainingSettings(**values)


def run(args: argparse.Namespace) -> int:
    import signal
    import threading

    settings = settings_from_args(args)
    stop = threading.Event()

    def on_interrupt(signum, frame) -> None:  # the first Ctrl-C stops after the step and saves; a second one kills
        if stop.is_set():
            raise KeyboardInterrupt
        print("stopping after this step and saving a resumable state (Ctrl-C again to abort at once)", flush=True)
        stop.set()

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        result = train_lora(settings, should_stop=stop.is_set)
    except (TrainingError, DatasetError, LoraShapeError) as exc:
        raise SystemExit(f"error: {exc}") from None
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.interrupted:
        print(f"interrupted at step {result.steps}: continue with the same command plus --resume "
              f"(state in {settings.run_path})")
        return 130
    if result.output is None:  # another process of a multi-process run (accelerate launch) wrote the files
        return 0
    if result.embedding is not None:
        print(f"wrote {result.embedding}: write {settings.trigger.strip()!r} in a prompt to use the learned word")
    print(f"wrote {result.output} ({result.steps} steps, {result.seconds:.0f} s, "
          f"{result.samples_per_second:.2f} samples/s, final loss {result.final_loss:.4f})")
    return 0

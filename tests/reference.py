"""The reference side of parity tests: diffusers' own pipelines, loaded offline from the same single file.

The config-only folder written here is what a user would ship for offline `from_single_file`; it is built from the
test's ground-truth modules, never from the project's architecture inference, so the two paths stay independent.
Everything else the reference needs (scheduler, start noise, long-prompt embeddings, init-image latents) is computed
here from diffusers/transformers and the hand-written table in tests/sampler_table.py, never by project engine code.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTokenizer

from tests.sampler_table import expected_scheduler
from webui.engine.synthetic import SyntheticModel

LATENT_FACTOR = 8  # every SD family VAE (the tiny ones too) downsamples by 8
CHUNK = 75  # A1111: 75 prompt tokens per 77-token window

_HF_SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def write_clip_tokenizer(folder: Path, pad_token: str) -> None:
    """An HF CLIPTokenizer folder generated from open_clip's bundled BPE vocabulary (no download)."""
    folder.mkdir(parents=True, exist_ok=True)
    bpe = SimpleTokenizer()
    vocab = {_HF_SPECIALS.get(token, token): index for token, index in bpe.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    merges = sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])
    lines = ["#version: 0.2", *(" ".join(pair) for pair, _ in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token,
                              model_max_length=77)
    tokenizer.save_pretrained(str(folder))


def write_config_dir(model: SyntheticModel, folder: Path) -> Path:
    """A diffusers config-only folder for `from_single_file(config=folder, local_files_only=True)`."""
    folder.mkdir(parents=True, exist_ok=True)
    sdxl = model.family.name == "sdxl"
    pipeline = "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline"
    index = {
        "_class_name": pipeline,
        "_diffusers_version": diffusers.__version__,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
    }
    if sdxl:
        index.update(
            text_encoder_2=["transformers", "CLIPTextModelWithProjection"],
            tokenizer_2=["transformers", "CLIPTokenizer"],
            force_zeros_for_empty_prompt=True,
        )
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index))
    model.unet.save_config(str(folder / "unet"))
    model.vae.save_config(str(folder / "vae"))
    configs = list(model.text_configs)
    if model.family.name == "sd2":  # diffusers' SD2 text encoder stops at the penultimate layer
        configs[0] = configs[0].__class__(**{**configs[0].to_dict(),
                                             "num_hidden_layers": configs[0].num_hidden_layers - 1})
    configs[0].save_pretrained(str(folder / "text_encoder"))
    pad = "!" if model.family.name == "sd2" else "<|endoftext|>"
    write_clip_tokenizer(folder / "tokenizer", pad)
    if sdxl:
        configs[1].save_pretrained(str(folder / "text_encoder_2"))
        write_clip_tokenizer(folder / "tokenizer_2", "!")
    (folder / "scheduler").mkdir(exist_ok=True)
    cls, config = expected_scheduler("DDIM", "Automatic")  # replaced by each test; only needed to load the pipeline
    scheduler = {"_class_name": cls, **config}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


def load_reference_pipeline(checkpoint: Path, model: SyntheticModel, folder: Path):
    """diffusers' pipeline for the file, fully offline."""
    cls = diffusers.StableDiffusionXLPipeline if model.family.name == "sdxl" else diffusers.StableDiffusionPipeline
    kwargs = {} if model.family.name == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    pipe = cls.from_single_file(
        str(checkpoint), config=str(write_config_dir(model, folder)), local_files_only=True, **kwargs
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_scheduler(sampler: str, schedule: str, prediction_type: str, first_seed: int) -> SchedulerMixin:
    """The scheduler the expected table names, built by diffusers from the literal config.

    DPM++ SDE's Brownian tree is seeded with the batch's first seed (the project's documented rule, docs/samplers.md).
    """
    cls_name, config = expected_scheduler(sampler, schedule, prediction_type)
    if cls_name == "DPMSolverSDEScheduler":
        config["noise_sampler_seed"] = first_seed
    return getattr(diffusers, cls_name).from_config(config)


def batch_seeds(seed: int, batch: int) -> list[int]:
    """A1111: image i of a batch uses seed + i."""
    return [seed + i for i in range(batch)]


def reference_noise(seeds: list[int], height: int, width: int) -> torch.Tensor:
    """A1111's start noise: image i is randn((4, H/8, W/8)) from its own CPU generator seeded with its seed."""
    shape = (4, height // LATENT_FACTOR, width // LATENT_FACTOR)
    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed)) for seed in seeds])


def reference_generators(seeds: list[int]) -> list[torch.Generator]:
    """Fresh per-image CPU generators: diffusers draws the img2img start noise (and any step noise) from them."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def prompt_windows(tokenizer: CLIPTokenizer, text: str) -> torch.Tensor:
    """A1111 chunking for a prompt without commas or BREAK: [bos] + 75 ids + [eos] per window, pad after the last."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False).input_ids
    chunks = [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)] or [[]]
    windows = [
        [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id] + [tokenizer.pad_token_id] * (CHUNK - len(chunk))
        for chunk in chunks
    ]
    return torch.tensor(windows, dtype=torch.long)


@torch.no_grad()
def long_prompt_embeds(pipe, prompt: str, negative: str) -> dict[str, torch.Tensor]:
    """`prompt_embeds`/`negative_prompt_embeds` (+ pooled for SDXL) for prompts over 75 tokens, window by window.

    SD1: the text encoder's final hidden states. SDXL: hidden_states[-2] of both encoders side by side, and the
    first window's projected pooled output of text_encoder_2. Windows are concatenated along the sequence axis.
    """
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    out: dict[str, torch.Tensor] = {}
    for key, text in (("prompt_embeds", prompt), ("negative_prompt_embeds", negative)):
        windows = prompt_windows(pipe.tokenizer, text)
        if not sdxl:
            hidden = pipe.text_encoder(windows)[0]
            out[key] = hidden.reshape(1, -1, hidden.shape[-1])
            continue
        first = pipe.text_encoder(windows, output_hidden_states=True).hidden_states[-2]
        second = pipe.text_encoder_2(prompt_windows(pipe.tokenizer_2, text), output_hidden_states=True)
        hidden = torch.cat([first, second.hidden_states[-2]], dim=-1)
        out[key] = hidden.reshape(1, -1, hidden.shape[-1])
        pooled_key = "pooled_prompt_embeds" if key == "prompt_embeds" else "negative_pooled_prompt_embeds"
        out[pooled_key] = second.text_embeds[:1]
    return out


@torch.no_grad()
def reference_latents(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """The reference VAE's posterior mode, scaled: A1111 encodes the init image deterministically.

    diffusers' pipelines would *sample* the posterior with the seed generators (shifting the start noise too), so the
    tests hand them latents made by the reference pipeline's own VAE instead; the pipelines accept 4-channel latents.
    """
    pixels = pixels.to(device=pipe.vae.device, dtype=pipe.vae.dtype)  # a no-op on the CPU in fp32
    return pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor


class PosteriorModeDepth2ImgPipeline(diffusers.StableDiffusionDepth2ImgPipeline):
    """diffusers' depth2img pipeline, except that the init image's latent is the VAE posterior's mode.

    Its `prepare_latents` would *sample* the posterior with the seed generators (shifting the start noise too);
    unlike the img2img pipelines it cannot simply be handed latents, because it sizes the depth map from `image`.
    So the image goes in as pixels and only this step swaps in `reference_latents` from the pipeline's own VAE;
    diffusers' 4-channel path then draws the start noise from the generators and noises them as usual.
    """

    def prepare_latents(self, image, timestep, batch_size, num_images_per_prompt, dtype, device, generator=None):
        if image.shape[1] != 4:
            latents = reference_latents(self, image.to(device=device, dtype=dtype))
            image = latents.repeat(batch_size * num_images_per_prompt // latents.shape[0], 1, 1, 1)
        return super().prepare_latents(image, timestep, batch_size, num_images_per_prompt, dtype, device, generator)


def depth_reference_pipeline(pipe) -> PosteriorModeDepth2ImgPipeline:
    """The depth2img pipeline on a loaded reference pipeline's modules; no depth estimator (tests pass `depth_map`)."""
    depth = PosteriorModeDepth2ImgPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
        scheduler=pipe.scheduler, depth_estimator=None, feature_extractor=None,
    )
    depth.set_progress_bar_config(disable=True)
    return depth

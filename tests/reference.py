"""The reference side of parity tests: diffusers' own pipelines, loaded offline from the same single file.

The config-only folder written here is what a user would ship for offline `from_single_file`; it is built from the
test's ground-truth modules, never from the project's architecture inference, so the two paths stay independent.
"""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
from open_clip.tokenizer import SimpleTokenizer
from transformers import CLIPTokenizer

from webui.engine.samplers import BASE_SCHEDULER_CONFIG
from webui.engine.synthetic import SyntheticModel

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
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token, model_max_length=77)
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
        configs[0] = configs[0].__class__(**{**configs[0].to_dict(), "num_hidden_layers": configs[0].num_hidden_layers - 1})
    configs[0].save_pretrained(str(folder / "text_encoder"))
    pad = "!" if model.family.name == "sd2" else "<|endoftext|>"
    write_clip_tokenizer(folder / "tokenizer", pad)
    if sdxl:
        configs[1].save_pretrained(str(folder / "text_encoder_2"))
        write_clip_tokenizer(folder / "tokenizer_2", "!")
    (folder / "scheduler").mkdir(exist_ok=True)
    scheduler = {"_class_name": "DDIMScheduler", **BASE_SCHEDULER_CONFIG, "timestep_spacing": "leading"}
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

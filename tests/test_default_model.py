"""The shipped default model: one ordinary SD1-layout file that the normal loader reads, and that follows prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.cpu_share import cpu_share
from webui.engine.loader import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "Stable-diffusion" / "latent-studio-shapes.safetensors"
CARD = CHECKPOINT.with_suffix(".md")

FLOOR_COLOUR = 0.85
FLOOR_POSITION = 0.8


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(cpu_share())
    return load_checkpoint(CHECKPOINT)


def test_file_is_small_standard_and_documented():
    assert CHECKPOINT.stat().st_size <= 25 * 1024 * 1024
    assert CARD.exists() and "python -m webui train-ldm" in CARD.read_text()
    with safe_open(str(CHECKPOINT), "pt") as handle:
        keys = set(handle.keys())
        metadata = handle.metadata()
    prefixes = {"model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."}
    assert all(any(k.startswith(p) for k in keys) for p in prefixes)
    assert "scale_factor" in keys
    for key in ("modelspec.sai_model_spec", "modelspec.architecture", "modelspec.title", "modelspec.date",
                "modelspec.description"):
        assert metadata.get(key)
    assert metadata["modelspec.resolution"] == "64x64"
    assert metadata["modelspec.prediction_type"] == "epsilon"


def test_loads_as_an_sd1_model_through_the_normal_loader(model):
    assert model.family.name == "sd1" and model.variant == "normal" and model.prediction_type == "epsilon"
    assert model.default_resolution == (64, 64)
    assert model.vae_downscale in (4, 8)
    assert model.vae_scale != pytest.approx(0.18215)  # the measured scale_factor, not the family default


def test_is_the_apps_default_model():
    from webui.services.model_manager import DEFAULT_MODEL_NAME

    assert CHECKPOINT.stem == DEFAULT_MODEL_NAME


@pytest.fixture(scope="module")
def adherence_20(model):
    """20 held-out single-object prompts, the app's own sampler (Euler a, 20 steps, CFG 6), scored model-free."""
    from webui.evaluation.adherence import generate_and_score
    from webui.shapes import eval_scenes

    return generate_and_score(model, eval_scenes(20, objects=1), cfg=6.0, steps=20, sampler="Euler a")


@pytest.fixture(scope="module")
def adherence_20_unguided(model):
    """The same 20 prompts and seeds at CFG 1 (no classifier-free guidance)."""
    from webui.evaluation.adherence import generate_and_score
    from webui.shapes import eval_scenes

    return generate_and_score(model, eval_scenes(20, objects=1), cfg=1.0, steps=20, sampler="Euler a")


def test_small_adherence_check_meets_the_goal(adherence_20):
    """The issue's check at the guided setting users get (CFG 6): 90% here, 92.5% on 200 prompts (model card)."""
    assert adherence_20["shape_colour"] >= 0.8, adherence_20


def test_small_adherence_check_meets_the_goal_without_guidance(adherence_20_unguided):
    """Without guidance too (95% here, 96% on 200 prompts)."""
    assert adherence_20_unguided["shape_colour"] >= 0.8, adherence_20_unguided
    assert adherence_20_unguided["position"] >= FLOOR_POSITION, adherence_20_unguided


def test_small_adherence_check_beats_chance(adherence_20):
    """A regression floor for the model as shipped: clearly better than chance (colour 1/8, position 1/5)."""
    assert adherence_20["colour"] >= FLOOR_COLOUR, adherence_20
    assert adherence_20["position"] >= FLOOR_POSITION, adherence_20


def test_the_zero_attention_variant_draws_exactly_what_the_shipped_model_draws(model, tmp_path: Path) -> None:
    """bench/zero_attention_variant.py (docs/lora-training.md, runs F1-F3) adds cross-attention to the full-resolution
    level with a zero output projection: read back by the normal loader, it has attention at every level and draws
    the shipped model's images bit for bit, so a LoRA trained on it starts from the same model."""
    import subprocess
    import sys

    import numpy as np

    from webui.engine.generation import SamplingParams, txt2img
    from webui.engine.samplers import SamplerRegistry

    out = tmp_path / "variant.safetensors"
    subprocess.run([sys.executable, str(ROOT / "bench/zero_attention_variant.py"), "--out", str(out),
                    "--ae-out", str(tmp_path / "ae")], check=True, capture_output=True, timeout=300)
    variant = load_checkpoint(out)
    # --ae-out: the autoencoder as the stage-1 folder `train-ldm --ae` reads, with the shipped weights
    from diffusers import AutoencoderKL

    stage_one = AutoencoderKL.from_pretrained(tmp_path / "ae" / "vae", local_files_only=True).state_dict()
    assert all(torch.equal(stage_one[k], v.float()) for k, v in model.vae.state_dict().items())
    assert list(variant.unet.config.down_block_types) == ["CrossAttnDownBlock2D"] * 3
    assert list(model.unet.config.down_block_types)[0] == "DownBlock2D"
    params = SamplingParams(prompt="a small red star at the top left on a blue background", sampler="Euler a",
                            steps=20, cfg_scale=6, width=64, height=64, seeds=[0, 1])
    registry = SamplerRegistry()
    for ours, theirs in zip(txt2img(model, params, registry), txt2img(variant, params, registry)):
        assert np.array_equal(np.asarray(ours), np.asarray(theirs))

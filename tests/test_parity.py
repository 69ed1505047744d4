"""The project's txt2img equals diffusers' own pipelines on the same file, noise and scheduler (CPU, fp32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.reference import load_reference_pipeline
from webui.engine.generation import SamplingParams, initial_noise, step_generators, txt2img
from webui.engine.loader import load_checkpoint
from webui.engine.samplers import SamplerRegistry

MAX_PIXEL_DIFF = 2  # of 255
REGISTRY = SamplerRegistry()


_LOADED: dict[tuple[Path, str], tuple] = {}


def _models(tiny, tmp_path: Path, prediction: str) -> tuple:
    """Our model and the reference pipeline, loaded once per file (loading is not what these tests compare)."""
    key = (tiny.path, prediction)
    if key not in _LOADED:
        ours = load_checkpoint(tiny.path, prediction_override=prediction)
        _LOADED[key] = (ours, load_reference_pipeline(tiny.path, tiny.model, tmp_path / "config"))
    return _LOADED[key]


def _compare(tiny, tmp_path: Path, sampler: str, schedule: str = "Automatic", prediction: str = "epsilon",
             negative: str = "blurry, low quality", seeds=(11, 12), steps: int = 5) -> int:
    ours_model, pipe = _models(tiny, tmp_path, prediction)
    spec, label = REGISTRY.resolve(sampler, schedule)
    pipe.scheduler = spec.build(label, prediction, noise_seed=seeds[0])
    params = SamplingParams(
        prompt="a red circle on a blue background", negative_prompt=negative, sampler=sampler, schedule=schedule,
        steps=steps, cfg_scale=6.5, width=64, height=64, seeds=list(seeds),
    )
    ours = txt2img(ours_model, params, REGISTRY)
    noise = initial_noise(list(seeds), 4, 8, 8)
    ref = pipe(
        prompt=params.prompt, negative_prompt=negative or None, num_inference_steps=steps, guidance_scale=6.5,
        width=64, height=64, latents=noise, num_images_per_prompt=len(seeds), generator=step_generators(list(seeds)),
    ).images
    assert len(ours) == len(ref) == len(seeds)
    diffs = [np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max() for a, b in zip(ours, ref)]
    # A constant image would make the comparison meaningless.
    assert all(np.asarray(image).std() > 5 for image in ours)
    return max(diffs)


@pytest.mark.parametrize("family", ["tiny_sd1", "tiny_sd2", "tiny_sdxl"])
def test_ddim_matches_diffusers_pipeline(family: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    tiny = request.getfixturevalue(family)
    assert _compare(tiny, tmp_path, "DDIM") <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("sampler", REGISTRY.names())
def test_every_sampler_matches_its_documented_scheduler(sampler: str, tiny_sd1, tmp_path: Path) -> None:
    assert _compare(tiny_sd1, tmp_path, sampler) <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("sampler,schedule", [("DPM++ 2M", "Karras"), ("Euler a", "Automatic"), ("DPM++ 2M SDE", "Exponential")])
def test_sdxl_samplers_match(sampler: str, schedule: str, tiny_sdxl, tmp_path: Path) -> None:
    assert _compare(tiny_sdxl, tmp_path, sampler, schedule) <= MAX_PIXEL_DIFF


def test_sdxl_empty_negative_prompt_is_zeroed_like_diffusers(tiny_sdxl, tmp_path: Path) -> None:
    assert _compare(tiny_sdxl, tmp_path, "Euler", negative="") <= MAX_PIXEL_DIFF


def test_sd2_v_prediction_matches(tiny_sd2, tmp_path: Path) -> None:
    assert _compare(tiny_sd2, tmp_path, "DPM++ 2M", "Karras", prediction="v_prediction") <= MAX_PIXEL_DIFF

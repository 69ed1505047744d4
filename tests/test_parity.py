"""The project's txt2img equals diffusers' own pipelines on the same file, noise and scheduler (CPU, fp32), for every
diffusers-backed sampler name (the k-diffusion names are checked against A1111 in test_a1111_seed_parity.py).

The reference side never calls project engine code: its scheduler comes from the hand-written table in
tests/sampler_table.py, its start noise and long-prompt embeddings are computed in tests/reference.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.reference import (
    CHUNK,
    batch_seeds,
    long_prompt_embeds,
    reference_generators,
    reference_noise,
    reference_scheduler,
)
from tests.sampler_table import SAMPLERS
from webui.engine.generation import SamplingParams, txt2img
from webui.engine.samplers import SamplerRegistry

if TYPE_CHECKING:
    from tests.conftest import ParityModels

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MAX_PIXEL_DIFF = 2  # of 255
REGISTRY = SamplerRegistry()
PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry, low quality"
# No commas, so A1111's chunking is exactly 75 tokens per window; both need two windows.
LONG_PROMPT = " ".join(
    ["a small red house with a green door and two windows stands on a hill under a bright blue sky"] * 3
    + ["while a yellow dog sleeps near the old wooden fence and birds fly over the quiet river"]
)
LONG_NEGATIVE = " ".join(["blurry grainy dark low quality washed out colours bad anatomy extra fingers"] * 7)


def _compare(models: ParityModels, tiny, sampler: str, schedule: str = "Automatic", prediction: str = "epsilon",
             prompt: str = PROMPT, negative: str = NEGATIVE, seed: int = 11, batch: int = 2, steps: int = 5,
             width: int = 64, height: int = 64) -> int:
    """Max pixel difference over a batch; long prompts go to the reference as embeddings built window by window."""
    ours_model, pipe = models.get(tiny, prediction)
    seeds = batch_seeds(seed, batch)
    params = SamplingParams(
        prompt=prompt, negative_prompt=negative, sampler=sampler, schedule=schedule,
        steps=steps, cfg_scale=6.5, width=width, height=height, seeds=seeds,
    )
    ours = txt2img(ours_model, params, REGISTRY)

    pipe.scheduler = reference_scheduler(sampler, schedule, prediction, seeds[0])
    if len(pipe.tokenizer(prompt, verbose=False).input_ids) > CHUNK + 2:
        text = long_prompt_embeds(pipe, prompt, negative)
    else:
        text = {"prompt": prompt, "negative_prompt": negative or None}
    ref = pipe(
        **text, num_inference_steps=steps, guidance_scale=6.5, width=width, height=height,
        latents=reference_noise(seeds, height, width), num_images_per_prompt=batch,
        generator=reference_generators(seeds),
    ).images
    assert len(ours) == len(ref) == batch
    assert all(image.size == (width, height) for image in [*ours, *ref])
    diff = max(int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max()) for a, b in zip(ours, ref))
    print(f"\nparity {tiny.path.stem} {sampler}/{schedule} {width}x{height} batch {batch}: max diff {diff}/255")
    # A constant image would make the comparison meaningless.
    assert all(np.asarray(image).std() > 5 for image in ours)
    return diff


@pytest.mark.parametrize("family", ["tiny_sd1", "tiny_sd2", "tiny_sdxl"])
def test_ddim_matches_diffusers_pipeline(
    family: str, request: pytest.FixtureRequest, parity_models: ParityModels
) -> None:
    tiny = request.getfixturevalue(family)
    assert _compare(parity_models, tiny, "DDIM") <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("sampler", [name for name in REGISTRY.names()
                                     if REGISTRY.resolve(name)[0].path == "diffusers"])
def test_every_sampler_matches_its_documented_scheduler(sampler: str, tiny_sd1, parity_models: ParityModels) -> None:
    assert sampler in SAMPLERS, "add the sampler to tests/sampler_table.py"
    assert _compare(parity_models, tiny_sd1, sampler) <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("sampler,schedule", [("DPM++ 2M (diffusers)", "Karras"), ("Euler a (diffusers)", "Automatic"),
                                              ("DPM++ 2M SDE (diffusers)", "Exponential")])
def test_sdxl_samplers_match(sampler: str, schedule: str, tiny_sdxl, parity_models: ParityModels) -> None:
    assert _compare(parity_models, tiny_sdxl, sampler, schedule) <= MAX_PIXEL_DIFF


def test_sdxl_empty_negative_prompt_is_zeroed_like_diffusers(tiny_sdxl, parity_models: ParityModels) -> None:
    assert _compare(parity_models, tiny_sdxl, "Euler (diffusers)", negative="") <= MAX_PIXEL_DIFF


def test_sd2_v_prediction_matches(tiny_sd2, parity_models: ParityModels) -> None:
    assert _compare(parity_models, tiny_sd2, "DPM++ 2M (diffusers)", "Karras",
                    prediction="v_prediction") <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("family", ["tiny_sd1", "tiny_sdxl"])
@pytest.mark.parametrize("width,height", [(64, 96), (96, 64)])
def test_non_square_matches(
    family: str, width: int, height: int, request: pytest.FixtureRequest, parity_models: ParityModels
) -> None:
    """Width and height must not be swapped anywhere: latent shape, and SDXL's size micro-conditioning."""
    tiny = request.getfixturevalue(family)
    assert _compare(parity_models, tiny, "Euler (diffusers)", width=width, height=height) <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("family", ["tiny_sd1", "tiny_sdxl"])
def test_prompts_over_75_tokens_match_a1111_windows(
    family: str, request: pytest.FixtureRequest, parity_models: ParityModels
) -> None:
    """Two 77-token windows each for prompt and negative, encoded separately and concatenated, as A1111 does."""
    tiny = request.getfixturevalue(family)
    _, pipe = parity_models.get(tiny, "epsilon")
    for text in (LONG_PROMPT, LONG_NEGATIVE):
        assert CHUNK < len(pipe.tokenizer(text, add_special_tokens=False, verbose=False).input_ids) <= 2 * CHUNK
    diff = _compare(parity_models, tiny, "DPM++ 2M (diffusers)", "Karras", prompt=LONG_PROMPT, negative=LONG_NEGATIVE)
    assert diff <= MAX_PIXEL_DIFF

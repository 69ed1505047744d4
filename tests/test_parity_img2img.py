"""img2img and inpainting equal diffusers' own img2img/inpaint pipelines on the same file (CPU, fp32).

Same scheduler (the hand-written table), same start noise (per-image CPU generators seeded seed + i), same number of
steps (A1111's rule, translated into the diffusers `strength` that runs that many), same init latents. The one
deliberate difference is handled openly: diffusers *samples* the VAE posterior of the init/masked image with the seed
generators, A1111 (and the project) takes its mode, so the reference pipelines get latents encoded by the reference
pipeline's own VAE (`tests/reference.py: reference_latents`). Nothing on the reference side calls project engine code.

Each case is compared before the final composite (latents, and decoded images: diffusers has no overlay without
`padding_mask_crop`) and after it (the project's full `img2img` vs the diffusers image pasted through the mask here).
Only deterministic samplers: diffusers draws ancestral step noise from the generator that drew the start noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import diffusers
import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from tests.reference import (
    batch_seeds,
    reference_generators,
    reference_latents,
    reference_noise,
    reference_scheduler,
)
from tests.sampler_table import is_stochastic
from webui.engine.generation import SamplingParams, generate_latents, latents_to_images, txt2img
from webui.engine.img2img import ORIGINAL, Img2ImgOptions, img2img, img2img_latents, prepare_inputs
from webui.engine.loader import LoadedModel
from webui.engine.samplers import SamplerRegistry

if TYPE_CHECKING:
    from tests.conftest import ParityModels

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MAX_PIXEL_DIFF = 2  # of 255, as in test_parity.py
MAX_LATENT_DIFF = 1e-4
STEPS = 5  # A1111 runs 3 of them at strength 0.5, 4 at 0.7, all 5 at 0.8
CFG = 6.0
PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry, low quality"
REGISTRY = SamplerRegistry()


def a1111_steps(steps: int, strength: float) -> int:
    """A1111's img2img step count, written out: int(min(strength, 0.999) * steps) + 1."""
    return int(min(strength, 0.999) * steps) + 1


def diffusers_strength(steps: int, strength: float) -> float:
    """The diffusers `strength` whose int(steps * strength) is A1111's count (halfway up, clear of float rounding)."""
    run = a1111_steps(steps, strength)
    value = min(1.0, (run + 0.5) / steps)
    assert min(int(steps * value), steps) == run
    return value


@dataclass
class Pair:
    """The project's model and diffusers' txt2img pipeline for one file (loaded once per session)."""

    ours: LoadedModel
    pipe: Any
    sdxl: bool


def _pair(models: ParityModels, tiny) -> Pair:
    ours, pipe = models.get(tiny, "epsilon")
    return Pair(ours, pipe, tiny.model.family.name == "sdxl")


@pytest.fixture(scope="module")
def sd1(parity_models: ParityModels, tiny_sd1) -> Pair:
    return _pair(parity_models, tiny_sd1)


@pytest.fixture(scope="module")
def sdxl(parity_models: ParityModels, tiny_sdxl) -> Pair:
    return _pair(parity_models, tiny_sdxl)


@pytest.fixture(scope="module")
def sd1_inpaint(parity_models: ParityModels, tiny_sd1_inpaint) -> Pair:
    pair = _pair(parity_models, tiny_sd1_inpaint)
    assert pair.ours.variant == "inpaint" and pair.pipe.unet.config.in_channels == 9
    return pair


@pytest.fixture(scope="module")
def sdxl_inpaint(parity_models: ParityModels, tiny_sdxl_inpaint) -> Pair:
    pair = _pair(parity_models, tiny_sdxl_inpaint)
    assert pair.ours.variant == "inpaint" and pair.pipe.unet.config.in_channels == 9
    return pair


def picture(width: int, height: int) -> Image.Image:
    """Gradients, a disc and a bar: varied enough that the VAE latent is far from constant."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x + y) * 255 // (width + height - 2)], -1)
    rgb[(x - width // 3) ** 2 + (y - height // 3) ** 2 < (min(width, height) // 5) ** 2] = (230, 230, 30)
    rgb[height * 2 // 3: height * 2 // 3 + 6, width // 8: width * 7 // 8] = (20, 40, 200)
    return Image.fromarray(rgb.astype(np.uint8))


def grid_box_mask(width: int, height: int) -> Image.Image:
    """A box on the 8-px latent grid: with blur 0 the latent masks of both sides agree exactly."""
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, (width // 4, height // 4, width * 3 // 4, height * 3 // 4))
    return mask


def _pixel_diff(a: list[Image.Image], b: list[Image.Image]) -> int:
    assert len(a) == len(b)
    return max(int(np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max()) for x, y in zip(a, b))


def _reference(pair: Pair, sampler: str, schedule: str, seeds: list[int], width: int, height: int,
               image: Image.Image | None, mask: Image.Image | None, strength: float) -> tuple[torch.Tensor, list]:
    """diffusers' img2img/inpaint pipeline: (final latents, images before any composite)."""
    if mask is None:
        cls = diffusers.StableDiffusionXLImg2ImgPipeline if pair.sdxl else diffusers.StableDiffusionImg2ImgPipeline
    else:
        cls = diffusers.StableDiffusionXLInpaintPipeline if pair.sdxl else diffusers.StableDiffusionInpaintPipeline
    pipe = cls.from_pipe(pair.pipe, torch_dtype=pair.pipe.dtype)  # from_pipe would cast the shared modules to fp32
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = reference_scheduler(sampler, schedule, "epsilon", seeds[0])

    kwargs: dict[str, Any] = {}
    if image is None:  # txt2img on a 9-channel model: a grey image, all repainted, from pure noise
        pixels = torch.zeros((1, 3, height, width))
        kwargs.update(image=torch.full((1, 3, height, width), 0.5), latents=reference_noise(seeds, height, width))
    else:
        pixels = pipe.image_processor.preprocess(image)
        kwargs["image"] = reference_latents(pipe, pixels).repeat(len(seeds), 1, 1, 1)
    if mask is not None:
        condition = pipe.mask_processor.preprocess(mask, height=height, width=width)
        kwargs.update(mask_image=mask, height=height, width=width,
                      masked_image_latents=reference_latents(pipe, pixels * (condition < 0.5)))

    captured: dict[str, torch.Tensor] = {}

    def keep_latents(_pipe, _step: int, _t, state: dict) -> dict:
        captured["latents"] = state["latents"]
        return state

    images = pipe(
        prompt=PROMPT, negative_prompt=NEGATIVE, strength=strength, num_inference_steps=STEPS, guidance_scale=CFG,
        num_images_per_prompt=len(seeds), generator=reference_generators(seeds),
        callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"], **kwargs,
    ).images
    return captured["latents"], images


def _params(sampler: str, schedule: str, seeds: list[int], width: int, height: int) -> SamplingParams:
    return SamplingParams(prompt=PROMPT, negative_prompt=NEGATIVE, sampler=sampler, schedule=schedule, steps=STEPS,
                          cfg_scale=CFG, width=width, height=height, seeds=seeds)


def _check(name: str, latent_diff: float, before: int, after: int, ours: list[Image.Image]) -> None:
    print(f"\n{name}: latents {latent_diff:.2e}, pixels before composite {before}/255, after {after}/255")
    assert all(np.asarray(image).std() > 5 for image in ours), "a constant image makes the comparison meaningless"
    assert latent_diff <= MAX_LATENT_DIFF
    assert before <= MAX_PIXEL_DIFF
    assert after <= MAX_PIXEL_DIFF


def _compare_img2img(pair: Pair, sampler: str, schedule: str, strength: float, width: int, height: int,
                     masked: bool, seed: int = 21, batch: int = 2) -> None:
    assert not is_stochastic(sampler)
    # With every step run, diffusers' inpaint pipelines start from pure noise (strength 1), A1111 from the noised image.
    assert not masked or a1111_steps(STEPS, strength) < STEPS
    seeds = batch_seeds(seed, batch)
    image = picture(width, height)
    mask = grid_box_mask(width, height) if masked else None
    options = Img2ImgOptions(denoising_strength=strength, mask=mask, mask_blur=0, inpainting_fill=ORIGINAL)
    params = _params(sampler, schedule, seeds, width, height)
    latents = img2img_latents(pair.ours, params, REGISTRY, prepare_inputs(image, options, width, height), options)
    before = latents_to_images(pair.ours, latents)
    after = img2img(pair.ours, params, REGISTRY, image, options)

    ref_latents, ref_images = _reference(
        pair, sampler, schedule, seeds, width, height, image, mask, diffusers_strength(STEPS, strength)
    )
    composited = ref_images
    if mask is not None:  # blur 0: the composite is a hard paste through the mask
        inside = np.asarray(mask)[..., None] > 127
        original = np.asarray(image.convert("RGB"))
        composited = [Image.fromarray(np.where(inside, np.asarray(ref), original)) for ref in ref_images]
        repainted = inside[..., 0]
        assert all(np.abs(np.asarray(ref, int)[repainted] - original[repainted]).mean() > 5 for ref in ref_images)
    name = f"{pair.ours.name} {'inpaint' if masked else 'img2img'} {sampler}/{schedule} s={strength} {width}x{height}"
    _check(name, float((latents - ref_latents).abs().max()), _pixel_diff(before, ref_images),
           _pixel_diff(after, composited), after)


@pytest.mark.parametrize(
    "family,sampler,schedule,strength,width,height",
    [
        ("sd1", "Euler (diffusers)", "Automatic", 0.5, 64, 96),
        ("sd1", "Heun (diffusers)", "Karras", 0.7, 96, 64),  # second order: the start index is (steps - run) * order
        # A1111 runs all 5 steps: diffusers needs strength 1 here
        ("sdxl", "Euler (diffusers)", "Automatic", 0.8, 64, 96),
        ("sdxl", "DDIM", "Automatic", 0.5, 96, 64),
    ],
)
def test_img2img_matches_diffusers(family: str, sampler: str, schedule: str, strength: float, width: int, height: int,
                                   request: pytest.FixtureRequest) -> None:
    _compare_img2img(request.getfixturevalue(family), sampler, schedule, strength, width, height, masked=False)


@pytest.mark.parametrize(
    "family,sampler,schedule,strength,width,height",
    [
        # 4 channels: the known region is blended back every step
        ("sd1", "Euler (diffusers)", "Automatic", 0.7, 64, 96),
        ("sdxl", "DPM++ 2M (diffusers)", "Karras", 0.5, 96, 64),
        ("sd1_inpaint", "UniPC", "Automatic", 0.7, 96, 64),  # 9 channels: mask + masked-image latent as input
        ("sdxl_inpaint", "Euler (diffusers)", "Automatic", 0.5, 64, 96),
    ],
)
def test_inpaint_matches_diffusers(family: str, sampler: str, schedule: str, strength: float, width: int, height: int,
                                   request: pytest.FixtureRequest) -> None:
    _compare_img2img(request.getfixturevalue(family), sampler, schedule, strength, width, height, masked=True)


@pytest.mark.parametrize("family,width,height", [("sd1_inpaint", 64, 96), ("sdxl_inpaint", 96, 64)])
def test_txt2img_on_nine_channel_model_matches_diffusers_inpaint(family: str, width: int, height: int,
                                                                 request: pytest.FixtureRequest) -> None:
    """A1111 feeds a 9-channel model mask = 1 and the latent of a grey image: diffusers' inpaint at strength 1."""
    pair: Pair = request.getfixturevalue(family)
    seeds = batch_seeds(31, 2)
    params = _params("Euler (diffusers)", "Automatic", seeds, width, height)
    latents = generate_latents(pair.ours, params, REGISTRY)
    ours = txt2img(pair.ours, params, REGISTRY)
    white = Image.new("L", (width, height), 255)
    ref_latents, ref_images = _reference(pair, "Euler (diffusers)", "Automatic", seeds, width, height, None, white, 1.0)
    diff = _pixel_diff(ours, ref_images)
    _check(f"{pair.ours.name} txt2img {width}x{height}", float((latents - ref_latents).abs().max()), diff, diff, ours)


def test_pipelines_draw_the_a1111_start_noise_from_per_image_generators() -> None:
    """What the img2img cases rely on: diffusers' draw from a list of fresh generators is A1111's per-seed noise."""
    seeds = batch_seeds(21, 2)
    drawn = randn_tensor((2, 4, 12, 8), generator=reference_generators(seeds), device=torch.device("cpu"))
    assert torch.equal(drawn, reference_noise(seeds, 96, 64))

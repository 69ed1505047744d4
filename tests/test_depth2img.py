"""Depth-to-image (SD 2 depth models): loading, parity with diffusers' StableDiffusionDepth2ImgPipeline, errors and
the service's depth source rule, on a tiny random-weight SD 2 depth file in the real layout (5-channel U-Net plus
the `depth_model.*` MiDaS tensors the real 512-depth-ema file carries).

Parity is set up like test_parity_img2img.py: the same scheduler (the hand-written table), start noise (per-image CPU
generators), step count (A1111's rule as a diffusers strength) and depth map (a tensor for diffusers, the same values
as an image or tensor for us). diffusers samples the init image's VAE posterior where A1111 and the project take its
mode; the reference swaps in the mode inside its own pipeline (`tests/reference.py: PosteriorModeDepth2ImgPipeline`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reference import (
    batch_seeds,
    depth_reference_pipeline,
    load_reference_pipeline,
    reference_generators,
    reference_scheduler,
)
from tests.test_parity_img2img import diffusers_strength, picture
from webui.engine.checkpoint_io import read_checkpoint
from webui.engine.depth import DepthChannels, DepthModelCannotInpaint, depth_conditioning, depth_values
from webui.engine.families import UnsupportedCheckpointError, detect_variant
from webui.engine.generation import SamplingParams, latents_to_images, txt2img
from webui.engine.img2img import Img2ImgOptions, img2img, img2img_latents, prepare_inputs
from webui.engine.loader import DepthMapRequired, LoadedModel, load_checkpoint
from webui.engine.preprocessors import PreprocessorRegistry, PreprocessorRunner, PreprocessorSpec, default_preprocessors
from webui.engine.samplers import SamplerRegistry
from webui.engine.synthetic import SyntheticModel, write_synthetic_checkpoint
from webui.services.img2img import Img2ImgRequest, Img2ImgRunner, OutpaintRunner
from webui.services.requests import RequestError
from webui.services.uploads import load_image

pytestmark = pytest.mark.usefixtures("single_torch_thread")

REGISTRY = SamplerRegistry()
STEPS = 5
CFG = 6.0
PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry, low quality"
MAX_PIXEL_DIFF = 2  # of 255, as the other parity tests
MAX_LATENT_DIFF = 1e-4
MIDAS_FILE = "dpt_hybrid-midas-501f0c75.pt"


@dataclass
class DepthPair:
    path: Path
    truth: SyntheticModel
    ours: LoadedModel
    pipe: Any  # diffusers' StableDiffusionPipeline on the same file


@pytest.fixture(scope="module")
def depth(tmp_path_factory: pytest.TempPathFactory) -> DepthPair:
    folder = tmp_path_factory.mktemp("depth")
    path = folder / "tiny-sd2-depth.safetensors"
    truth = write_synthetic_checkpoint(path, "sd2", depth=True, seed=8)
    return DepthPair(path, truth, load_checkpoint(path), load_reference_pipeline(path, truth, folder / "reference"))


def depth_picture(width: int, height: int, flip: bool = False) -> Image.Image:
    """A plausible depth map (L, larger = nearer): a floor receding upwards and a near disc, unlike `picture`."""
    y, x = np.mgrid[0:height, 0:width]
    values = 40 + 120 * y / (height - 1)
    values[(x - width * 2 // 3) ** 2 + (y - height // 2) ** 2 < (min(width, height) // 4) ** 2] = 240
    if flip:
        values = values[::-1, ::-1]
    return Image.fromarray(values.astype(np.uint8), "L")


def _params(sampler: str, schedule: str, seeds: list[int], width: int, height: int) -> SamplingParams:
    return SamplingParams(prompt=PROMPT, negative_prompt=NEGATIVE, sampler=sampler, schedule=schedule, steps=STEPS,
                          cfg_scale=CFG, width=width, height=height, seeds=seeds)


def _latents(model: LoadedModel, params: SamplingParams, image: Image.Image, options: Img2ImgOptions) -> torch.Tensor:
    prepared = prepare_inputs(image, options, params.width, params.height)
    return img2img_latents(model, params, REGISTRY, prepared, options)


def _pixel_diff(a: list[Image.Image], b: list[Image.Image]) -> int:
    return max(int(np.abs(np.asarray(x, dtype=int) - np.asarray(y, dtype=int)).max()) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------------------ loading


def test_depth_file_loads_as_a_depth_model_and_its_midas_tensors_are_ignored(depth: DepthPair) -> None:
    keys = read_checkpoint(depth.path).state_dict.keys()
    assert any(k.startswith("depth_model.model.pretrained.") for k in keys)  # the real file's layout
    ours = depth.ours
    assert ours.variant == "depth" and ours.family.name == "sd2" and ours.unet.config.in_channels == 5
    assert ours.prediction_type == "epsilon"  # 512-depth-ema is eps, unlike the SD 2 family's 768-v default
    assert ours.default_resolution == (512, 512)
    for module, truth in ((ours.unet, depth.truth.unet), (ours.vae, depth.truth.vae)):
        expected = truth.state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in module.state_dict().items())


def test_variant_detection_by_unet_input_channels() -> None:
    key = "model.diffusion_model.input_blocks.0.0.weight"
    assert [detect_variant({key: (320, c, 3, 3)}, "m") for c in (4, 5, 9)] == ["normal", "depth", "inpaint"]
    with pytest.raises(UnsupportedCheckpointError, match="instruct-pix2pix checkpoints are not supported"):
        detect_variant({key: (320, 8, 3, 3)}, "m")


# ------------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("sampler,schedule,strength,width,height", [
    ("Euler (diffusers)", "Automatic", 0.7, 64, 96),
    ("DDIM", "Automatic", 0.5, 96, 64),
    ("DPM++ 2M (diffusers)", "Karras", 0.8, 64, 64),  # A1111 runs all 5 steps: diffusers' strength 1
])
def test_depth2img_matches_diffusers(depth: DepthPair, sampler: str, schedule: str, strength: float, width: int,
                                     height: int) -> None:
    seeds = batch_seeds(21, 2)
    image, depth_map = picture(width, height), depth_picture(width, height)
    depth_tensor = torch.from_numpy(np.asarray(depth_map, dtype=np.float32).copy())[None]  # [1, H, W]
    params = _params(sampler, schedule, seeds, width, height)
    options = Img2ImgOptions(denoising_strength=strength, depth_map=depth_map)
    latents = _latents(depth.ours, params, image, options)
    ours = img2img(depth.ours, params, REGISTRY, image, options)
    from_tensor = _latents(depth.ours, params, image, replace(options, depth_map=depth_tensor))

    pipe = depth_reference_pipeline(depth.pipe)
    pipe.scheduler = reference_scheduler(sampler, schedule, "epsilon", seeds[0])
    captured: dict[str, torch.Tensor] = {}

    def keep_latents(_pipe, _step: int, _t, state: dict) -> dict:
        captured["latents"] = state["latents"]
        return state

    ref_images = pipe(
        prompt=PROMPT, negative_prompt=NEGATIVE, image=image, depth_map=depth_tensor,
        strength=diffusers_strength(STEPS, strength), num_inference_steps=STEPS, guidance_scale=CFG,
        num_images_per_prompt=len(seeds), generator=reference_generators(seeds),
        callback_on_step_end=keep_latents, callback_on_step_end_tensor_inputs=["latents"],
    ).images
    latent_diff = float((latents - captured["latents"]).abs().max())
    pixel_diff = _pixel_diff(ours, ref_images)
    print(f"\ndepth2img {sampler}/{schedule} s={strength} {width}x{height}: latents {latent_diff:.2e}, "
          f"pixels {pixel_diff}/255")
    assert all(np.asarray(result).std() > 5 for result in ours), "a constant image makes the comparison meaningless"
    assert latent_diff <= MAX_LATENT_DIFF
    assert pixel_diff <= MAX_PIXEL_DIFF
    assert torch.equal(from_tensor, latents)  # the same values as an image or as diffusers' tensor


def test_the_depth_map_changes_the_result(depth: DepthPair) -> None:
    params = _params("Euler", "Automatic", [3], 64, 64)
    image = picture(64, 64)
    options = [Img2ImgOptions(denoising_strength=0.7, depth_map=depth_picture(64, 64, flip)) for flip in (False, True)]
    runs = [_latents(depth.ours, params, image, option) for option in options]
    assert float((runs[0] - runs[1]).abs().max()) > 0.05
    assert _pixel_diff(latents_to_images(depth.ours, runs[0]), latents_to_images(depth.ours, runs[1])) > 5


# -------------------------------------------------------------------------------------------- depth conditioning


def test_depth_conditioning_normalises_each_map_to_minus_one_one() -> None:
    maps = torch.stack([torch.linspace(0, 1, 32 * 48).reshape(32, 48), torch.rand(32, 48) * 7 + 3])
    out = depth_conditioning(maps, (4, 6), 2, "cpu", torch.float16)
    assert out.shape == (2, 1, 4, 6) and out.dtype == torch.float16
    assert out.flatten(1).amin(1).tolist() == [-1, -1] and out.flatten(1).amax(1).tolist() == [1, 1]
    single = depth_conditioning(depth_picture(48, 32), (4, 6), 3, "cpu", torch.float32)
    assert single.shape == (3, 1, 4, 6) and torch.equal(single[0], single[2])
    flat = depth_conditioning(Image.new("L", (16, 16), 90), (2, 2), 1, "cpu", torch.float32)
    assert torch.equal(flat, torch.zeros(1, 1, 2, 2))  # not diffusers' 0/0 NaN
    with pytest.raises(ValueError, match="3 depth maps for a batch of 2"):
        depth_conditioning(torch.rand(3, 8, 8), (2, 2), 2, "cpu", torch.float32)


def test_depth_images_are_read_as_luminance_or_their_own_values() -> None:
    grey = depth_picture(20, 10)
    assert torch.equal(depth_values(grey.convert("RGB")), depth_values(grey))
    sixteen = Image.fromarray((np.arange(200, dtype=np.uint16).reshape(10, 20) * 300), "I;16")
    assert depth_values(sixteen).max() == 199 * 300  # 16-bit maps keep their precision
    assert depth_values(torch.rand(2, 3, 5, 7)).shape == (2, 5, 7)  # [B, C, H, W]: the first channel


@pytest.mark.parametrize("resize_mode,restore", [(0, False), (1, False), (2, False), (3, False), (0, True)])
def test_a_depth_image_is_fitted_to_the_generation_size_as_the_image_is(resize_mode: int, restore: bool) -> None:
    """Crop, fill, latent upscale and pad-to-size move the depth map with the image, so the two stay aligned."""
    image = picture(80, 48)
    options = Img2ImgOptions(resize_mode=resize_mode, depth_map=image.convert("L").resize((40, 24)),
                             restore_size=(80, 48) if restore else None)
    size = (80, 64) if restore else (64, 64)  # restore: the image is padded up to the generation size
    prepared = prepare_inputs(image, options, *size)
    assert prepared.depth.size == size
    fitted_luminance = np.asarray(prepared.original.convert("L"), dtype=np.float32)
    assert np.abs(np.asarray(prepared.depth) - fitted_luminance).mean() < 6  # the half-size map, upscaled


def test_depth_channels_feed_both_cfg_halves() -> None:
    from webui.engine.denoise import UNetCall

    extra = torch.rand(2, 1, 4, 4)
    call = UNetCall(torch.zeros(4, 4, 4, 4), torch.tensor(1), None, ("uncond", "cond"), None)
    DepthChannels(extra).before_unet(None, call)
    assert torch.equal(call.channel_inputs[0], torch.cat([extra, extra]))


# ------------------------------------------------------------------------------------------------------- errors


def test_a_depth_model_without_a_depth_map_says_to_use_img2img_with_one(depth: DepthPair) -> None:
    params = _params("Euler", "Automatic", [1], 64, 64)
    with pytest.raises(DepthMapRequired, match="tiny-sd2-depth is a depth model: it needs a depth map, so it works "
                                               "only in img2img; use img2img with a depth image"):
        txt2img(depth.ours, params, REGISTRY)
    with pytest.raises(DepthMapRequired, match="use img2img with a depth image"):
        img2img(depth.ours, params, REGISTRY, picture(64, 64), Img2ImgOptions(denoising_strength=0.5))
    # strength 0 denoises nothing, so it needs no depth map (the image is only encoded and decoded)
    assert len(img2img(depth.ours, params, REGISTRY, picture(64, 64), Img2ImgOptions(denoising_strength=0.0))) == 1


def test_a_depth_model_cannot_inpaint(depth: DepthPair) -> None:
    params = _params("Euler", "Automatic", [1], 64, 64)
    options = Img2ImgOptions(mask=Image.new("L", (64, 64), 255), depth_map=depth_picture(64, 64))
    with pytest.raises(DepthModelCannotInpaint, match="is a depth model, which cannot inpaint or outpaint"):
        img2img(depth.ours, params, REGISTRY, picture(64, 64), options)


# ------------------------------------------------------------------------------------------------------ service


def _request(**fields: Any) -> Img2ImgRequest:
    base = dict(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="Euler", steps=STEPS, cfg_scale=CFG, seed=4,
                init_image=picture(64, 64), denoising_strength=0.6)
    return Img2ImgRequest(**{**base, **fields})


def _sample(runner: Img2ImgRunner, model: LoadedModel, request: Img2ImgRequest) -> list[Image.Image]:
    valid = runner.validate(request, model)
    params = _params("Euler", "Automatic", [4], valid.width, valid.height)
    return runner.sample(model, valid, params, [])


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_service_uses_an_uploaded_depth_image(depth: DepthPair, tmp_path: Path) -> None:
    runner = Img2ImgRunner(REGISTRY, tmp_path / "ControlNetPreprocessor")  # no MiDaS weights: never needed here
    uploaded = load_image(_png(depth_picture(128, 128).convert("RGB")), "depth_image")  # twice the size, RGB
    results = _sample(runner, depth.ours, _request(depth_image=uploaded))
    expected = img2img(depth.ours, _params("Euler", "Automatic", [4], 64, 64), REGISTRY, picture(64, 64),
                       Img2ImgOptions(denoising_strength=0.6, depth_map=depth_picture(128, 128)))
    assert _pixel_diff(results, expected) == 0
    assert runner.infotext_params(_request(depth_image=uploaded)) == {"Denoising strength": 0.6}  # as A1111


def test_service_without_depth_image_names_the_missing_midas_weights(depth: DepthPair, tmp_path: Path) -> None:
    folder = tmp_path / "ControlNetPreprocessor"
    runner = Img2ImgRunner(REGISTRY, PreprocessorRunner(default_preprocessors(), folder))
    with pytest.raises(RequestError) as err:
        runner.validate(_request(), depth.ours)
    assert err.value.field_name == "depth_image"
    message = str(err.value)
    assert MIDAS_FILE in message and str(folder) in message and "or upload a depth image" in message
    assert "tiny-sd2-depth is a depth model and needs a depth map" in message
    with pytest.raises(RequestError, match="depth_image: .* upload a depth image \\(no depth preprocessor"):
        Img2ImgRunner(REGISTRY).validate(_request(), depth.ours)


def test_service_estimates_depth_with_the_preprocessor_runner(depth: DepthPair, tmp_path: Path) -> None:
    """Without an upload the service asks the runner for depth_midas on the init image and uses that map."""
    estimate = depth_picture(64, 64)
    seen: list[tuple[int, int]] = []

    def fake_midas(inp, nets) -> np.ndarray:
        seen.append(inp.image.shape[:2])
        return np.asarray(estimate)

    registry = PreprocessorRegistry()
    registry.register(PreprocessorSpec("depth_midas", "depth_midas"), fake_midas)
    runner = Img2ImgRunner(REGISTRY, PreprocessorRunner(registry, tmp_path))
    valid = runner.validate(_request(), depth.ours)
    assert seen == [(64, 64)] and np.array_equal(np.asarray(valid.depth_image.convert("L")), np.asarray(estimate))
    uploaded = _sample(Img2ImgRunner(REGISTRY), depth.ours, _request(depth_image=estimate))
    assert _pixel_diff(_sample(runner, depth.ours, _request()), uploaded) == 0


def test_service_refuses_what_a_depth_model_cannot_do(depth: DepthPair) -> None:
    runner, upload = Img2ImgRunner(REGISTRY), depth_picture(64, 64)
    with pytest.raises(RequestError, match="mask: tiny-sd2-depth is a depth model, which cannot inpaint"):
        runner.validate(_request(depth_image=upload, mask=Image.new("L", (64, 64), 255)), depth.ours)
    with pytest.raises(RequestError, match="model: tiny-sd2-depth is a depth model, which cannot outpaint"):
        OutpaintRunner(REGISTRY).validate(_request(depth_image=upload, outpaint_left=64), depth.ours)
    with pytest.raises(RequestError, match="depth_image: the depth image is 64x32 but the image is 64x64"):
        runner.validate(_request(depth_image=depth_picture(64, 32)), depth.ours)
    normal = replace(depth.ours, variant="normal")  # validation reads only the variant and the sizes
    with pytest.raises(RequestError, match="depth_image: tiny-sd2-depth is not a depth model"):
        runner.validate(_request(depth_image=upload), normal)


def test_depth_map_section_of_the_builtin_extension_reaches_the_request(tmp_path: Path, depth: DepthPair) -> None:
    """The img2img UI's depth upload (the builtin `depth` extension) works through the real extension manager; an
    upload over the limit stops the job with the upload's message and leaves the extension on."""
    from webui.context import AppPaths, build_context
    from webui.services.img2img import Img2ImgRequest, Img2ImgRunner
    from webui.services.requests import RequestError

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion" / "depth.safetensors").symlink_to(depth.path)
    context = build_context(AppPaths(models, tmp_path / "out", tmp_path / "data", ()), device="cpu")
    assert {r.name: r.status for r in context.extensions.records}["depth"] == "active"
    request = dict(prompt="x", steps=2, width=64, height=64, seed=1, sampler_name="Euler", init_image=picture(64, 64),
                   denoising_strength=0.6)
    runner = Img2ImgRunner(context.samplers)  # no estimator: without the upload the depth model could not run
    result = context.generation.run(context.jobs.create("t", "img2img"), Img2ImgRequest(
        **request, extensions={"depth": {"image": depth_picture(64, 64)}}), runner)
    assert len(result.images) == 1 and result.request.depth_image is not None
    with pytest.raises(RequestError, match="depth_image"):
        context.generation.run(context.jobs.create("t", "img2img"), Img2ImgRequest(**request), runner)
    with pytest.raises(RequestError, match="depth_image"):
        context.generation.run(context.jobs.create("t", "img2img"), Img2ImgRequest(
            **request, extensions={"depth": {"image": Image.new("L", (9000, 9000))}}), runner)
    assert {r.name: r.status for r in context.extensions.records}["depth"] == "active"

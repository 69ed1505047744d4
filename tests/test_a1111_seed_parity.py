"""Seeds that reproduce A1111: the project's image equals A1111 1.10's (k-diffusion + A1111's noise and sigma rules,
tests/a1111_oracle.py) within 2/255, CPU fp32, for each k-diffusion sampler, on tiny real-layout checkpoints.

The oracle runs k-diffusion's own sampling.py/external.py around the diffusers U-Net and VAE of the reference pipeline
(tests/reference.py); nothing on that side calls project engine code.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.a1111_oracle import INSTALL_HINT, OracleRun, a1111_txt2img, ldm_alphas_cumprod, load_k_diffusion
from tests.reference import batch_seeds
from webui.engine.generation import SamplingParams, txt2img
from webui.engine.loader import load_checkpoint
from webui.engine.samplers import SamplerRegistry

if TYPE_CHECKING:
    from tests.conftest import ParityModels, TinyCheckpoint

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MAX_PIXEL_DIFF = 2  # of 255
PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry, low quality"
STEPS, CFG, SIZE = 5, 6.5, 64


@pytest.fixture(scope="module")
def kd():
    oracle = load_k_diffusion()
    if oracle is None:
        pytest.fail(f"the k-diffusion test oracle is not installed; run: {INSTALL_HINT}")
    return oracle


def _pixel_diff(ours: list, theirs: list) -> int:
    return max(int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max()) for a, b in zip(ours, theirs))


def _compare(kd, models: ParityModels, tiny: TinyCheckpoint, sampler: str, schedule: str = "Automatic",
             seed: int = 21, ours_model=None, alphas_cumprod: torch.Tensor | None = None,
             prediction: str = "epsilon") -> int:
    model, pipe = models.get(tiny, prediction)
    seeds = batch_seeds(seed, 2)
    params = SamplingParams(prompt=PROMPT, negative_prompt=NEGATIVE, sampler=sampler, schedule=schedule, steps=STEPS,
                            cfg_scale=CFG, width=SIZE, height=SIZE, seeds=seeds)
    ours = txt2img(ours_model or model, params, SamplerRegistry())
    run = OracleRun(sampler, schedule, STEPS, CFG, seeds, SIZE, SIZE)
    theirs = a1111_txt2img(kd, pipe, run, PROMPT, NEGATIVE, alphas_cumprod=alphas_cumprod, prediction=prediction)
    assert all(np.asarray(image).std() > 5 for image in ours), "a flat image would make the comparison meaningless"
    diff = _pixel_diff(ours, theirs)
    print(f"\nA1111 parity {tiny.path.stem} {sampler}/{schedule}: max diff {diff}/255")
    return diff


SD1_CASES = [
    ("Euler", "Automatic"), ("Euler a", "Automatic"), ("DPM++ 2M", "Karras"), ("DPM++ 2M", "Uniform"),
    ("DPM++ SDE", "Automatic"), ("DPM++ 2M SDE", "Automatic"), ("Heun", "Automatic"), ("DPM2", "Automatic"),
    ("DPM2 a", "Automatic"), ("LMS", "Automatic"), ("DPM++ 2S a", "Automatic"), ("DPM++ 2M SDE Heun", "Automatic"),
    ("DPM++ 3M SDE", "Automatic"), ("Euler a", "Karras"), ("DPM++ SDE", "Exponential"),
]


@pytest.mark.parametrize("sampler,schedule", SD1_CASES)
def test_sd1_image_equals_a1111(sampler: str, schedule: str, kd, tiny_sd1, parity_models: ParityModels) -> None:
    assert _compare(kd, parity_models, tiny_sd1, sampler, schedule) <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("sampler,schedule", [("Euler a", "Automatic"), ("DPM++ 2M SDE", "Automatic"),
                                              ("DPM++ 2M", "Karras")])
def test_sdxl_image_equals_a1111(sampler: str, schedule: str, kd, tiny_sdxl, parity_models: ParityModels) -> None:
    assert _compare(kd, parity_models, tiny_sdxl, sampler, schedule) <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("sampler,strength", [("Euler a", 0.6), ("DPM++ 2M SDE", 0.5), ("DPM++ 2M", 1.0)])
def test_img2img_equals_a1111(sampler: str, strength: float, kd, tiny_sd1, parity_models: ParityModels) -> None:
    """A1111's k-diffusion img2img: the `steps` schedule from entry steps - t_enc - 1, init + noise * that sigma (also
    at strength 1), step noise continuing the images' generators. Both sides start from the VAE posterior's mode."""
    from PIL import Image

    from tests.reference import reference_latents
    from webui.engine.img2img import Img2ImgOptions, img2img

    model, pipe = parity_models.get(tiny_sd1, "epsilon")
    ramp = np.linspace(0, 255, SIZE, dtype=np.uint8)
    image = Image.fromarray(np.stack([np.tile(ramp, (SIZE, 1)), np.tile(ramp[:, None], (1, SIZE)),
                                      np.full((SIZE, SIZE), 90, np.uint8)], axis=-1))
    seeds = batch_seeds(8, 2)
    params = SamplingParams(prompt=PROMPT, negative_prompt=NEGATIVE, sampler=sampler, steps=STEPS, cfg_scale=CFG,
                            width=SIZE, height=SIZE, seeds=seeds)
    ours = img2img(model, params, SamplerRegistry(), image, Img2ImgOptions(denoising_strength=strength))
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0 * 2.0 - 1.0).permute(2, 0, 1)[None]
    with torch.no_grad():
        init = reference_latents(pipe, pixels).repeat(2, 1, 1, 1)
    run = OracleRun(sampler, "Automatic", STEPS, CFG, seeds, SIZE, SIZE)
    theirs = a1111_txt2img(kd, pipe, run, PROMPT, NEGATIVE, init_latents=init, denoising_strength=strength)
    diff = _pixel_diff(ours, theirs)
    print(f"\nA1111 img2img parity {sampler} strength {strength}: max diff {diff}/255")
    assert diff <= MAX_PIXEL_DIFF


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a"])
def test_sd2_v_prediction_image_equals_a1111(sampler: str, kd, tiny_sd2, parity_models: ParityModels) -> None:
    """v models: A1111 wraps them in k-diffusion's CompVisVDenoiser (x0 = c_skip * x + c_out * v)."""
    assert _compare(kd, parity_models, tiny_sd2, sampler, prediction="v_prediction") <= MAX_PIXEL_DIFF


def test_a_stored_fp16_alphas_cumprod_is_the_sigma_table(kd, tiny_sd1, parity_models: ParityModels,
                                                         tmp_path: Path) -> None:
    """A checkpoint's own `alphas_cumprod` (here fp16, and a different schedule, so the table visibly matters) is what
    A1111 builds its sigmas from, at the file's precision."""
    stored = torch.tensor(np.cumprod(1.0 - np.linspace(0.0009 ** 0.5, 0.016 ** 0.5, 1000) ** 2)).to(torch.float16)
    state = load_file(str(tiny_sd1.path))
    path = tmp_path / "tiny-sd1-stored-alphas.safetensors"
    save_file({**state, "alphas_cumprod": stored}, str(path))
    ours_model = load_checkpoint(path)
    assert _compare(kd, parity_models, tiny_sd1, "Euler a", ours_model=ours_model,
                    alphas_cumprod=stored.float()) <= MAX_PIXEL_DIFF
    # ...and the table is not a no-op: A1111 on LDM's computed table draws a clearly different image.
    assert _compare(kd, parity_models, tiny_sd1, "Euler a", ours_model=ours_model,
                    alphas_cumprod=ldm_alphas_cumprod()) > 4 * MAX_PIXEL_DIFF


# --- An extension's sampler function runs through the service like a built-in one ----------------------------------

EULER_ANCESTRAL_EXTENSION = '''
import torch
from webui.services.extensions import SamplerSpec

CALLS = []


def my_euler_ancestral(model, x, sigmas, *, callback=None, noise=None):
    """Euler ancestral written out here (eta 1), in the documented sampler-function shape."""
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, sigma)
        sigma_up = min(sigma_next, (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
        sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
        x = x + (x - denoised) / sigma * (sigma_down - sigma)
        if sigma_next > 0:
            x = x + noise(sigma, sigma_next) * sigma_up
        CALLS.append(i)
        if callback is not None:
            callback({"i": i, "x": x, "denoised": denoised})
    return x


def register(api):
    api.add_sampler(SamplerSpec("My Euler a", function=my_euler_ancestral, default_schedule="Karras", ancestral=True))
'''


def test_an_extension_sampler_function_runs_through_the_service(tmp_path: Path, tiny_sd1) -> None:
    """Registered through `api.add_sampler`, a sampler function gets the model, A1111's sigmas and the images' own
    step noise: the same maths as the built-in Euler a gives the same image, and each step reports progress."""
    import sys

    from tests.extension_folders import write_extension
    from webui.context import AppPaths, build_context
    from webui.services.requests import GenerationRequest

    write_extension(tmp_path / "ext", "my-sampler", EULER_ANCESTRAL_EXTENSION)
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    (models / "tiny.safetensors").symlink_to(tiny_sd1.path)
    context = build_context(AppPaths(tmp_path / "models", tmp_path / "outputs", tmp_path / "data",
                                     (tmp_path / "ext",)), device="cpu")
    assert context.samplers.resolve("my euler a")[0].path == "k-diffusion"
    images, infotexts = {}, {}
    for name in ("My Euler a", "Euler a"):
        request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, steps=4, width=64, height=64, seed=5,
                                    batch_size=2, sampler_name=name, scheduler="Karras", cfg_scale=CFG)
        result = context.generation.run(context.jobs.create("test", "txt2img"), request)
        images[name], infotexts[name] = result.images, result.infotexts
    calls = sys.modules["latent_studio_extensions.my_sampler"].CALLS
    assert calls == [0, 1, 2, 3]
    assert "Sampler: My Euler a" in infotexts["My Euler a"][0]
    assert _pixel_diff(images["My Euler a"], images["Euler a"]) == 0

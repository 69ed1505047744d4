"""Hires fix through the generation service, against references composed here from the parts A1111 chains.

The references run the first pass as plain txt2img (the service itself with hires off, or the engine's own txt2img
latents, checked against the service's image), upscale it in the test (torch.nn.functional.interpolate for a latent
mode, Pillow's Lanczos for the image upscaler), then run the engine's img2img on the result at the hires size with
the request's denoising strength, seeds and prompt. The hires image must equal that composition.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from tests.conftest import tiny_service_context
from webui.engine.synthetic import write_synthetic_checkpoint
from webui.engine.generation import SamplingParams, generate_latents, latents_to_images
from webui.engine.hires import hires_size
from webui.engine.img2img import Img2ImgOptions, img2img, img2img_latents, _Prepared
from webui.services.infotext import parse_infotext
from webui.services.requests import GenerationRequest, RequestError

OWNER = "hires-tester"
BASE = dict(prompt="a red circle", negative_prompt="blurry", sampler_name="Euler", scheduler="Automatic", steps=3,
            cfg_scale=5.0, width=64, height=64, seed=321, rng="CPU")


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory, tiny_sd1):
    return tiny_service_context(tmp_path_factory.mktemp("hires"), tiny_sd1)


def _run(context, job=None, **fields):
    request = GenerationRequest(**{**BASE, **fields})
    return context.generation.run(job or context.jobs.create(OWNER, "txt2img"), request, save=False)


def _params(width: int, height: int, steps: int = 3, prompt: str = "a red circle") -> SamplingParams:
    return SamplingParams(prompt=prompt, negative_prompt="blurry", sampler="Euler", schedule="Automatic", steps=steps,
                          cfg_scale=5.0, width=width, height=height, seeds=[321], rng_source="CPU")


def _close(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size
    return int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())


def test_latent_mode_equals_interpolate_then_img2img(context) -> None:
    model = context.models.get("tiny")
    samplers = context.samplers
    first = generate_latents(model, _params(64, 64), samplers)
    plain = _run(context).images[0]  # the service's own txt2img, hires off
    assert _close(latents_to_images(model, first)[0], plain) == 0  # the reference starts from the same first pass

    upscaled = F.interpolate(first.float(), size=(16, 16), mode="bicubic", antialias=True)
    prepared = _Prepared(image=None, original=None, overlay=None, mask=None, paste_box=None)
    reference = latents_to_images(model, img2img_latents(
        model, _params(128, 128, steps=2, prompt="a red circle, detailed"), samplers, prepared,
        Img2ImgOptions(denoising_strength=0.6), init_latents=upscaled))[0]

    job = context.jobs.create(OWNER, "txt2img")
    result = _run(context, job, enable_hr=True, hr_upscaler="Latent (bicubic antialiased)", hr_scale=2.0,
                  denoising_strength=0.6, hr_second_pass_steps=2, hr_prompt="a red circle, detailed")
    assert result.images[0].size == (128, 128)
    assert job.total_steps == 3 + 2  # one bar: 3 first-pass steps, then int(0.6 x 2) + 1 of the 2 hires steps
    assert _close(result.images[0], reference) <= 1
    assert _close(result.images[0], plain.resize((128, 128))) > 10  # the second pass did change the picture


def test_lanczos_equals_resize_then_img2img_and_writes_a1111_keys(context) -> None:
    model = context.models.get("tiny")
    plain = _run(context).images[0]
    upscaled = plain.resize((128, 128), Image.Resampling.LANCZOS)
    reference = img2img(model, _params(128, 128), context.samplers, upscaled, Img2ImgOptions(denoising_strength=0.5))

    # Resize-to overrides the scale (4 would give 256x256); a zero side follows the aspect ratio.
    result = _run(context, enable_hr=True, hr_upscaler="Lanczos", hr_scale=4.0, hr_resize_x=128, hr_resize_y=0,
                  denoising_strength=0.5, hr_sampler_name="Euler", hr_scheduler="Karras")
    info = result.infotexts[0]
    keys = [part.split(":")[0] for part in info.splitlines()[-1].split(", ")]
    assert keys.index("Seed") < keys.index("Size") < keys.index("Denoising strength") < keys.index("Hires resize")
    assert keys[keys.index("Hires schedule type"):keys.index("Version")] == [
        "Hires schedule type", "Hires resize", "Hires upscaler"]
    parsed = parse_infotext(info)
    assert parsed["Size"] == "64x64" and parsed["Denoising strength"] == 0.5 and result.images[0].size == (128, 128)
    assert parsed["Hires resize-1"] == 128 and parsed["Hires resize-2"] == 0
    assert parsed["Hires upscaler"] == "Lanczos" and parsed["Hires schedule type"] == "Karras"
    assert "Hires sampler" not in parsed and "Hires upscale" not in parsed and "Hires steps" not in parsed

    same = _run(context, enable_hr=True, hr_upscaler="Lanczos", hr_scale=2.0, denoising_strength=0.5)
    assert _close(same.images[0], reference[0]) <= 1
    assert "Hires upscale: 2, Hires upscaler: Lanczos, Version" in same.infotexts[0]


def test_hires_checkpoint_runs_the_second_pass_and_switches_back(context, tmp_path) -> None:
    write_synthetic_checkpoint(context.paths.checkpoint_dir / "other.safetensors", "sd1", seed=77)
    context.models.refresh()
    first_model = context.models.get("tiny")
    first = generate_latents(first_model, _params(64, 64), context.samplers)
    upscaled = F.interpolate(first.float(), size=(16, 16), mode="nearest-exact")
    other = context.models.get("other")
    prepared = _Prepared(image=None, original=None, overlay=None, mask=None, paste_box=None)
    reference = latents_to_images(other, img2img_latents(other, _params(128, 128), context.samplers, prepared,
                                                         Img2ImgOptions(denoising_strength=0.5), init_latents=upscaled))

    result = _run(context, model="tiny", enable_hr=True, hr_upscaler="Latent (nearest-exact)", denoising_strength=0.5,
                  hr_checkpoint_name="other")
    assert _close(result.images[0], reference[0]) <= 1
    assert context.models.active_name == "tiny"  # the next batch runs on the first checkpoint again
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Model"] == "tiny" and parsed["Hires checkpoint"].startswith("other [")


def test_resize_cover_and_crop_match_a1111_numbers() -> None:
    # A1111 calculate_target_resolution, worked by hand: 512x768 to 1024x1024 fits the width (1024x1536) and crops
    # (1536 - 1024) / 8 = 64 latent rows; one zero side follows the aspect ratio; no resize multiplies.
    both = hires_size(512, 768, 2.0, 1024, 1024)
    assert both.upscale_to == (1024, 1536) and both.crop == (0, 64) and both.final_size == (1024, 1024)
    assert hires_size(512, 768, 2.0, 0, 1000).upscale_to == (666, 1000)
    assert hires_size(512, 768, 2.0, 640, 0).final_size == (640, 960)
    assert hires_size(512, 512, 1.5).final_size == (768, 768)


def test_clear_errors(context) -> None:
    with pytest.raises(RequestError, match=r"^hr_upscaler: no upscaler named 'Magic 9x'; choose one of: Latent, "):
        _run(context, enable_hr=True, hr_upscaler="Magic 9x")
    with pytest.raises(RequestError, match=r"^hr_scale: the hires size 8192x8192 is larger than 4096 pixels a side"):
        _run(context, enable_hr=True, width=1024, height=1024, hr_scale=8.0)
    with pytest.raises(RequestError, match=r"^hr_sampler_name: unknown sampler 'Nope'"):
        _run(context, enable_hr=True, hr_sampler_name="Nope")
    with pytest.raises(RequestError, match=r"^hr_checkpoint_name: model 'elsewhere' not found"):
        _run(context, enable_hr=True, hr_checkpoint_name="elsewhere")


def test_api_hires_fields_through_http(browser_app) -> None:
    body = {"prompt": "a red circle", "seed": 5, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
            "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent (nearest)", "hr_second_pass_steps": 2,
            "hr_sampler_name": "Euler a", "hr_negative_prompt": "grey"}
    response = httpx.post(browser_app.url + "sdapi/v1/txt2img", json=body, timeout=300)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    parsed = parse_infotext(info["infotexts"][0])
    assert parsed["Denoising strength"] == 0.75  # A1111's API default
    assert parsed["Hires upscale"] == 1.5 and parsed["Hires steps"] == 2 and parsed["Hires sampler"] == "Euler a"
    assert parsed["Hires upscaler"] == "Latent (nearest)" and parsed["Hires negative prompt"] == "grey"
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert image.size == (96, 96)
    bad = httpx.post(browser_app.url + "sdapi/v1/txt2img", json={**body, "hr_upscaler": "Magic 9x"}, timeout=60)
    assert bad.status_code == 422 and "no upscaler named 'Magic 9x'" in bad.json()["detail"]


def test_txt2img_gradio_endpoint_runs_hires(browser_app) -> None:
    from gradio_client import Client

    client = Client(browser_app.url, verbose=False)
    title = client.predict(api_name="/refresh_checkpoints")["value"]
    gallery, _, infotext, _ = client.predict(
        checkpoint=title, prompt="a red circle <lora:tiny_style:0.5>", negative_prompt="", sampler_name="Euler",
        scheduler="Automatic",
        steps=2, cfg_scale=5, width=64, height=64, seed=9, n_iter=1, batch_size=1, enable_hr=True,
        hr_upscaler="Nearest", hr_resize_x=0, hr_resize_y=96, denoising_strength=0.4, api_name="/txt2img")
    assert Image.open(gallery[0]["image"]).size == (96, 96)
    parsed = parse_infotext(infotext)
    assert parsed["Hires resize"] == "0x96" and parsed["Hires upscaler"] == "Nearest"
    assert parsed["Denoising strength"] == 0.4 and parsed["Size"] == "64x64"
    assert infotext.index("Hires upscaler: Nearest") < infotext.index("Lora hashes:")  # A1111 sets the mode's first


def test_pasted_a1111_infotext_fills_the_hires_fields() -> None:
    from webui.ui.hires import paste_values, size_summary

    text = ('a cat\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, '
            'Seed: 1, Size: 512x768, Model hash: 0123456789, Model: m, Denoising strength: 0.45, '
            'Hires prompt: "a cat, detailed", Hires schedule type: Exponential, Hires upscale: 1.5, Hires steps: 12, '
            'Hires upscaler: R-ESRGAN 4x+, Version: v1.10.1')
    values = paste_values(parse_infotext(text))
    assert values == {"enabled": True, "upscaler": "R-ESRGAN 4x+", "steps": 12, "denoising_strength": 0.45,
                      "scale": 1.5, "resize_x": 0, "resize_y": 0, "checkpoint": "Use same checkpoint",
                      "sampler": "Use same sampler", "scheduler": "Exponential", "prompt": "a cat, detailed",
                      "negative_prompt": ""}
    assert paste_values(parse_infotext("x\nSteps: 20, Sampler: Euler, Seed: 1, Denoising strength: 0.5")) == {
        "enabled": False}
    assert "from <strong>512x768</strong> to <strong>1024x1024</strong>" in size_summary(True, 512, 768, 2, 1024, 1024)
    assert size_summary(False, 512, 768, 2, 0, 0) == ""

"""Noise sources and seed options (A1111's RNG GPU/CPU/NV, variation seeds, resize seed from, ENSD).

Expected noise comes from independent computations: randomgen's Philox4x32-10 for NVIDIA's generator (with the
Box-Muller transform written here), torch's own generators for CPU/GPU, and the slerp and the centred placement
written here from A1111's documented behaviour. End to end, a real HTTP client talks to the shared app server.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.rng import ImageRNG
from webui.services.infotext import parse_infotext
from webui.services.requests import GenerationRequest, RequestError, parse_request
from webui.ui.seed_extras import paste_values, request_fields

randomgen = pytest.importorskip("randomgen")  # test-only dependency (requirements-test.txt)

SHAPE = (4, 6, 5)  # (C, H, W) of one image's latent noise


def torch_randn(seed: int, shape: tuple[int, ...], draws: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator("cpu").manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(draws)]


def philox_normals(seed: int, draw: int, count: int) -> np.ndarray:
    """cuRAND-style normals from randomgen's Philox4x32-10: element j of draw k uses counter words (k, 0, j, 0) and
    the 64-bit seed as key; the first two output words go through Box-Muller, the sine half kept."""
    values = np.empty(count, dtype=np.float32)
    for j in range(count):
        counter = (draw + (j << 64) - 1) % 2**128  # randomgen increments the counter before each block
        bits = randomgen.Philox(counter=counter, key=seed, number=4, width=32).random_raw(2)
        scale = float(np.float32(2.0**-32))
        angle_scale = float(np.float32(2.0**-32 * 2 * np.pi))
        u = float(bits[0]) * scale + scale / 2
        v = float(bits[1]) * angle_scale + angle_scale / 2
        values[j] = np.sqrt(-2.0 * np.log(u)) * np.sin(v)
    return values


def a1111_slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's slerp on one image's (C, H, W) noise: norms along dim 1, one angle per (channel, column)."""
    low_n = low / low.norm(dim=1, keepdim=True)
    high_n = high / high.norm(dim=1, keepdim=True)
    omega = torch.acos((low_n * high_n).sum(1))
    return (torch.sin((1 - t) * omega) / torch.sin(omega)).unsqueeze(1) * low + (
        torch.sin(t * omega) / torch.sin(omega)).unsqueeze(1) * high


@pytest.mark.parametrize("seed", [0, 3_141_592_653, 2**40 + 17])  # the last one uses the key's high word
def test_nv_source_is_philox4x32_10_with_box_muller(seed: int) -> None:
    rng = ImageRNG(SHAPE, [seed], source="NV")
    count = int(np.prod(SHAPE))
    for draw, noise in enumerate([rng.first(), rng.next()]):
        expected = philox_normals(seed, draw, count).reshape(SHAPE)
        np.testing.assert_allclose(noise[0].numpy(), expected, rtol=0, atol=2e-6)


def test_nv_seed_0_gives_torch_cuda_randn() -> None:
    # torch.manual_seed(0); torch.randn(3, 4, device="cuda") on NVIDIA cards (the values A1111's NV docs quote)
    cuda_values = [[-0.92466259, -0.42534415, -2.6438457, 0.14518388],
                   [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
                   [-1.07454231, -0.36314407, -1.67105067, 2.26550497]]
    noise = ImageRNG((1, 3, 4), [0], source="NV").first()[0, 0]
    np.testing.assert_allclose(noise.numpy(), cuda_values, rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_nv_equals_cuda_randn_on_a_gpu() -> None:
    for seed in (0, 12345, 3_000_000_000):
        generator = torch.Generator("cuda").manual_seed(seed)
        cuda = torch.randn((4, 64, 64), generator=generator, device="cuda").cpu()
        nv = ImageRNG((4, 64, 64), [seed], source="NV").first()[0]
        torch.testing.assert_close(nv, cuda, rtol=0, atol=1e-5)
        gpu = ImageRNG((4, 64, 64), [seed], source="GPU", device=torch.device("cuda")).first()[0].cpu()
        assert torch.equal(gpu, cuda)


def test_gpu_source_without_a_gpu_is_the_cpu_generator() -> None:
    seeds = [11, 12]
    gpu = ImageRNG(SHAPE, seeds, source="GPU", ensd=5)
    cpu = ImageRNG(SHAPE, seeds, source="CPU", ensd=5)
    assert torch.equal(gpu.first(), cpu.first())
    assert torch.equal(gpu.next(), cpu.next())
    assert torch.equal(cpu.next(), torch.stack([torch_randn(seed + 5, SHAPE, 2)[1] for seed in seeds]))


def test_step_noise_continues_the_image_generator_and_ensd_reseeds_it() -> None:
    seeds = [7, 8]
    rng = ImageRNG(SHAPE, seeds)
    draws = [rng.first(), rng.next(), rng.next()]
    assert torch.equal(rng.first(), draws[0])  # asking again for the initial noise neither redraws nor advances
    for index, seed in enumerate(seeds):
        expected = torch_randn(seed, SHAPE, 3)
        for draw, want in zip(draws, expected):
            assert torch.equal(draw[index], want)
    with_ensd = ImageRNG(SHAPE, seeds, ensd=31337)
    assert torch.equal(with_ensd.first(), draws[0])  # never the initial noise
    steps = [with_ensd.next(), with_ensd.next()]
    for index, seed in enumerate(seeds):
        expected = torch_randn(seed + 31337, SHAPE, 2)
        assert torch.equal(steps[0][index], expected[0]) and torch.equal(steps[1][index], expected[1])
    nv = ImageRNG(SHAPE, [seeds[0]], source="NV", ensd=31337)
    nv.first()
    expected = philox_normals(seeds[0] + 31337, 0, int(np.prod(SHAPE))).reshape(SHAPE)
    np.testing.assert_allclose(nv.next()[0].numpy(), expected, rtol=0, atol=2e-6)


def test_variation_seed_is_a1111_slerp_of_the_two_noises() -> None:
    rng = ImageRNG(SHAPE, [100, 100], subseeds=[200, 201], subseed_strength=0.3)
    noise = rng.first()
    for index, subseed in enumerate([200, 201]):
        expected = a1111_slerp(0.3, torch_randn(100, SHAPE)[0], torch_randn(subseed, SHAPE)[0])
        torch.testing.assert_close(noise[index], expected, rtol=0, atol=1e-5)
    assert not torch.allclose(noise[0], noise[1])  # each image its own variation seed
    full = ImageRNG(SHAPE, [100], subseeds=[200], subseed_strength=1.0).first()[0]
    torch.testing.assert_close(full, torch_randn(200, SHAPE)[0], rtol=0, atol=1e-5)
    # the step noise still continues the seed's own generator
    assert torch.equal(rng.next()[0], torch_randn(100, SHAPE, 2)[1])


def test_resize_seed_from_places_the_old_noise_centred() -> None:
    # new latent 8x10 (H x W); old size 48x96 pixels (w x h) = latent 12 x 6: taller and narrower
    shape = (4, 8, 10)
    rng = ImageRNG(shape, [42], seed_resize_from=(48, 96))
    noise = rng.first()[0]
    old = torch_randn(42, (4, 12, 6))[0]
    new = torch_randn(42, shape)[0]  # the image's own generator draws the new size
    expected = new.clone()
    expected[:, 0:8, 2:8] = old[:, 2:10, 0:6]  # rows cropped by 2 top and bottom, columns inset by 2
    assert torch.equal(noise, expected)
    assert torch.equal(rng.next()[0], torch_randn(42, shape, 2)[1])  # the image's generator has drawn once
    # NV with a variation seed at the old size: slerp at the old size, then placement
    nv = ImageRNG(shape, [42], source="NV", subseeds=[9], subseed_strength=0.5, seed_resize_from=(48, 96)).first()[0]
    old_nv = torch.from_numpy(philox_normals(42, 0, 4 * 12 * 6).reshape(4, 12, 6))
    sub_nv = torch.from_numpy(philox_normals(9, 0, 4 * 12 * 6).reshape(4, 12, 6))
    mixed = a1111_slerp(0.5, old_nv, sub_nv)
    torch.testing.assert_close(nv[:, 0:8, 2:8], mixed[:, 2:10, 0:6], rtol=0, atol=1e-5)
    own = torch.from_numpy(philox_normals(42, 0, 4 * 8 * 10).reshape(shape))  # the image's stream, new size
    torch.testing.assert_close(nv[:, :, :2], own[:, :, :2], rtol=0, atol=1e-5)


def test_pasted_infotext_fills_the_extra_seed_options_of_the_request() -> None:
    text = ("a cat\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 77, Size: 64x64, Variation seed: 500, "
            "Variation seed strength: 0.25, Seed resize from: 48x96, RNG: NV")
    values = paste_values(parse_infotext(text))
    assert values == {"enabled": True, "subseed": 500, "subseed_strength": 0.25, "resize_from_w": 48,
                      "resize_from_h": 96, "rng": "NV"}
    names = ("enabled", "subseed", "subseed_strength", "resize_from_w", "resize_from_h", "rng")
    request = parse_request(GenerationRequest, {"prompt": "a cat", **request_fields(*(values[n] for n in names))})
    assert (request.subseed, request.subseed_strength, request.seed_resize_from_w, request.seed_resize_from_h,
            request.rng) == (500, 0.25, 48, 96, "NV")
    assert request_fields(False, 5, 0.5, 64, 64, "NV") == {}  # hidden options count only while Extra is ticked
    # A1111 leaves out RNG: GPU; such a paste names the source but asks for no extra options
    assert paste_values(parse_infotext("a cat\nSteps: 3, Seed: 1, Size: 64x64")) == {"rng": "GPU"}
    with pytest.raises(RequestError, match="subseed_strength: 1.5 is out of range"):
        GenerationRequest(subseed_strength=1.5)


# ---- through the app: HTTP API, service, infotext --------------------------------------------------------------------

SMALL = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 3, "sampler_name": "Euler", "cfg_scale": 5.0}


def _txt2img(client: httpx.Client, **fields) -> tuple[np.ndarray, dict, str]:
    response = client.post("txt2img", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    info = json.loads(body["info"])
    return np.asarray(image.convert("RGB"), dtype=int), info, info["infotexts"][0]


def test_api_variation_seed_rng_and_infotext_round_trip(browser_app) -> None:
    with httpx.Client(base_url=browser_app.url + "sdapi/v1/", timeout=300) as client:
        plain, _, plain_text = _txt2img(client, seed=500)
        assert "RNG" not in plain_text.splitlines()[-1] and "Variation" not in plain_text  # A1111's defaults: omitted
        # strength 1 takes the variation seed's noise: the image of seed 500 again (slerp rounding aside)
        varied, info, text = _txt2img(client, seed=77, subseed=500, subseed_strength=1.0, batch_size=2)
        assert np.abs(varied - plain).max() <= 1
        assert info["subseed"] == 500 and info["all_subseeds"] == [500, 501] and info["subseed_strength"] == 1.0
        assert info["all_seeds"] == [77, 77]  # A1111: with a variation strength the seed stays, subseeds vary
        parsed = parse_infotext(text)
        assert parsed["Variation seed"] == 500 and parsed["Variation seed strength"] == 1
        # NV source and resize-from through override_settings and A1111's fields; written back as A1111 does
        nv, info, text = _txt2img(client, seed=500, seed_resize_from_w=48, seed_resize_from_h=96,
                                  override_settings={"randn_source": "NV"})
        parsed = parse_infotext(text)
        assert parsed["RNG"] == "NV" and parsed["Seed resize from"] == "48x96"
        assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (48, 96)
        assert np.abs(nv - plain).max() > 10  # another noise, another image
        refused = client.post("txt2img", json={**SMALL, "override_settings": {"randn_source": "AMD"}})
        assert refused.status_code == 422 and "override_settings.randn_source" in refused.text


def test_browser_paste_fills_extra_seed_options_and_the_image_keeps_them(ui_browser, browser_app) -> None:
    """↙ on an infotext with A1111's seed keys ticks Extra and fills its fields; Generate then writes them back."""
    from tests.ui_artifacts import open_app_page, save_screenshot

    page = open_app_page(ui_browser, browser_app.url, "desktop")
    try:
        pasted = ("a red circle\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 77, Size: 64x64, Variation seed: 500, "
                  "Variation seed strength: 0.25, Seed resize from: 48x96, RNG: NV")
        page.fill("#txt2img_prompt textarea", pasted)
        page.click("#txt2img_paste")
        page.wait_for_function("() => document.querySelector('#txt2img_subseed input')?.value === '500'",
                               timeout=60_000)
        assert page.is_checked("#txt2img_subseed_show input")
        assert page.is_visible("#txt2img_seed_extras")
        assert page.input_value("#txt2img_subseed_strength input[type=number]") == "0.25"
        assert page.input_value("#txt2img_seed_resize_from_w input[type=number]") == "48"
        assert page.input_value("#txt2img_seed_resize_from_h input[type=number]") == "96"
        assert page.input_value("#txt2img_rng input") == "NV"
        save_screenshot(page, "seed_extras_pasted-desktop")
        page.click("#txt2img_generate")
        page.wait_for_function("() => document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 77')",
                               timeout=120_000)
        written = parse_infotext(page.input_value("#txt2img_infotext textarea"))
        assert (written["Variation seed"], written["Variation seed strength"], written["Seed resize from"],
                written["RNG"]) == (500, 0.25, "48x96", "NV")
        # unticking Extra drops them all, as in A1111
        page.click("#txt2img_subseed_show input")
        page.wait_for_selector("#txt2img_seed_extras", state="hidden")
        page.fill("#txt2img_seed input", "78")
        page.click("#txt2img_generate")
        page.wait_for_function("() => document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 78')",
                               timeout=120_000)
        plain = page.input_value("#txt2img_infotext textarea").splitlines()[-1]
        assert "Variation" not in plain and "RNG" not in plain and "Seed resize" not in plain
    finally:
        page.context.close()

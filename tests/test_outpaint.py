"""The img2img service end to end (runners, request checks, infotext, saved files) and outpainting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cpu_share import cpu_share
from webui.context import AppPaths, build_context
from webui.engine.masking import blur_reach
from webui.services.img2img import Img2ImgRequest, Img2ImgRunner, OutpaintRunner
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext
from webui.services.requests import RequestError


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(cpu_share())
    root = tmp_path_factory.mktemp("img2img-service")
    return build_context(AppPaths(root / "models", root / "outputs", root / "cache"), device="cpu")


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    rgb = np.stack([x * 4 % 256, y * 3 % 256, rng.integers(60, 90, x.shape)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def run(context, request: Img2ImgRequest, runner_type=Img2ImgRunner):
    job = context.jobs.create(owner="test", kind="img2img")
    return context.generation.run(job, request, runner_type(context.samplers))


def base(model_path: Path, **fields) -> dict:
    return dict(prompt="a blue sky", sampler_name="Euler", steps=4, cfg_scale=5, seed=11, model=str(model_path),
                **fields)


@pytest.mark.parametrize("left,right,up,down", [(16, 0, 0, 0), (0, 24, 8, 0), (8, 8, 16, 32)])
def test_outpaint_gives_the_requested_size_and_keeps_the_original(context, tiny_sd1, left, right, up, down) -> None:
    image = picture(64, 48)
    request = Img2ImgRequest(init_image=image, outpaint_left=left, outpaint_right=right, outpaint_up=up,
                             outpaint_down=down, denoising_strength=0.9, **base(tiny_sd1.path))
    result = run(context, request, OutpaintRunner)
    out = np.asarray(result.images[0], int)
    assert result.images[0].size == (64 + left + right, 48 + up + down)
    seam = max(8, blur_reach(4)) + blur_reach(4)  # mask overlap into the original, then the blur band
    inner = np.asarray(image, int)[
        (seam if up else 0):48 - (seam if down else 0), (seam if left else 0):64 - (seam if right else 0)]
    kept = out[up + (seam if up else 0):up + 48 - (seam if down else 0),
               left + (seam if left else 0):left + 64 - (seam if right else 0)]
    assert np.array_equal(kept, inner)
    new_area = np.ones(out.shape[:2], bool)
    new_area[up:up + 48, left:left + 64] = False
    assert out[new_area].std() > 3  # generated, not a flat fill
    info = parse_infotext(read_infotext(Path(result.paths[0])))
    assert info["Denoising strength"] == 0.9 and info["Mask blur"] == 4 and "Outpaint" in info
    assert Path(result.paths[0]).parent.parent.name == "img2img"


def test_outpaint_noise_fill_and_nine_channel_model(context, tiny_sd1_inpaint) -> None:
    request = Img2ImgRequest(init_image=picture(64, 64), outpaint_right=32, outpaint_fill="noise",
                             **base(tiny_sd1_inpaint.path))
    result = run(context, request, OutpaintRunner)
    assert result.images[0].size == (96, 64)
    assert np.array_equal(np.asarray(result.images[0])[:, :40], np.asarray(picture(64, 64))[:, :40])
    assert parse_infotext(result.infotexts[0])["Masked content"] == "latent noise"


def test_outpaint_rejects_bad_extents(context, tiny_sd1) -> None:
    for fields, message in [
        ({"outpaint_left": 12}, "outpaint_left: 12 is not a multiple of 8 (use 8 or 16)"),
        ({}, "choose how many pixels to add"),
        ({"outpaint_up": -8}, "outpaint_up: -8 is out of range"),
    ]:
        with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
            run(context, Img2ImgRequest(init_image=picture(64, 64), **fields, **base(tiny_sd1.path)), OutpaintRunner)


def test_inpaint_infotext_keys_are_a1111s(context, tiny_sd1) -> None:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (10, 10, 30, 30))
    request = Img2ImgRequest(init_image=picture(64, 64), mask=mask, denoising_strength=0.6, mask_blur=6,
                             inpainting_fill=0, inpaint_full_res=True, inpaint_full_res_padding=24,
                             inpainting_mask_invert=1, **base(tiny_sd1.path))
    text = run(context, request).infotexts[0]
    line = text.splitlines()[-1]
    assert "Denoising strength: 0.6, " in line
    assert ("Mask mode: Inpaint not masked, Mask blur: 6, Masked content: fill, Inpaint area: Only masked, "
            "Masked area padding: 24, Version: ") in line
    assert line.index("Model:") < line.index("Denoising strength") < line.index("Mask blur")
    plain = run(context, Img2ImgRequest(init_image=picture(64, 64), **base(tiny_sd1.path))).infotexts[0]
    assert "Denoising strength: 0.75" in plain and "Mask blur" not in plain and "Masked content" not in plain


def test_odd_sized_image_comes_back_at_its_size(context, tiny_sd1) -> None:
    image = picture(70, 45)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (50, 20, 70, 45))
    result = run(context, Img2ImgRequest(init_image=image, mask=mask, mask_blur=0, denoising_strength=1.0,
                                         **base(tiny_sd1.path)))
    out = np.asarray(result.images[0])
    assert result.images[0].size == (70, 45)
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], np.asarray(image)[keep])


def test_explicit_size_overrides_the_image(context, tiny_sd1) -> None:
    result = run(context, Img2ImgRequest(init_image=picture(100, 50), width=64, height=96, resize_mode=1,
                                         **base(tiny_sd1.path)))
    assert result.images[0].size == (64, 96)
    request = Img2ImgRequest(init_image=picture(100, 50), width=128, **base(tiny_sd1.path))
    assert (request.width, request.height) == (128, 64)  # the other side keeps the aspect ratio


def test_mask_checks(context, tiny_sd1) -> None:
    image = picture(64, 64)
    empty = Image.new("L", (64, 64), 0)
    with pytest.raises(RequestError, match="mask: the mask is empty: nothing to inpaint"):
        run(context, Img2ImgRequest(init_image=image, mask=empty, **base(tiny_sd1.path)))
    white = Image.new("L", (64, 64), 255)
    with pytest.raises(RequestError, match="nothing to inpaint"):  # all white, inverted: nothing left
        run(context, Img2ImgRequest(init_image=image, mask=white, inpainting_mask_invert=1, **base(tiny_sd1.path)))
    all_white = run(context, Img2ImgRequest(init_image=image, mask=white, denoising_strength=1.0,
                                            **base(tiny_sd1.path))).images[0]
    assert np.abs(np.asarray(all_white, int) - np.asarray(image, int)).mean() > 10  # everything repainted
    with pytest.raises(RequestError, match="mask: the mask is 64x32 but the image is 64x64"):
        run(context, Img2ImgRequest(init_image=image, mask=Image.new("L", (64, 32), 255), **base(tiny_sd1.path)))
    big = Image.new("L", (128, 128), 0)
    big.paste(255, (64, 64, 128, 128))  # same shape, twice the size: scaled to the image
    out = np.asarray(run(context, Img2ImgRequest(init_image=image, mask=big, mask_blur=0, denoising_strength=1.0,
                                                 **base(tiny_sd1.path))).images[0])
    assert np.array_equal(out[:30, :30], np.asarray(image)[:30, :30])


@pytest.mark.parametrize("field,value,message", [
    ("denoising_strength", 1.5, "denoising_strength: 1.5 is out of range (0 to 1)"),
    ("resize_mode", 7, "resize_mode: 7 is not one of"),
    ("mask_blur", 65, "mask_blur: 65 is out of range"),
    ("inpainting_fill", 4, "inpainting_fill: 4 is not one of"),
    ("inpaint_full_res_padding", 300, "inpaint_full_res_padding: 300 is out of range"),
])
def test_bad_fields_have_clear_messages(context, tiny_sd1, field, value, message) -> None:
    with pytest.raises(RequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(context, Img2ImgRequest(init_image=picture(64, 64), **{field: value}, **base(tiny_sd1.path)))


def test_missing_image_is_a_clear_error(context, tiny_sd1) -> None:
    with pytest.raises(RequestError, match="init_image: no image"):
        run(context, Img2ImgRequest(**base(tiny_sd1.path)))

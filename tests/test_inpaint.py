"""Inpainting on tiny checkpoints (4- and 9-channel): outside the mask and its blur band the output is the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from webui.engine.generation import SamplingParams
from webui.engine.img2img import FILL, LATENT_NOISE, LATENT_NOTHING, ORIGINAL, Img2ImgOptions, img2img
from webui.engine.loader import load_checkpoint
from webui.engine.masking import binary_mask, blur_mask, blur_reach, crop_region, expand_to_ratio
from webui.engine.samplers import SamplerRegistry

REGISTRY = SamplerRegistry()


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    torch.set_num_threads(2)
    return load_checkpoint(tiny_sd1.path)


@pytest.fixture(scope="module")
def sd1_inpaint(tiny_sd1_inpaint):
    model = load_checkpoint(tiny_sd1_inpaint.path)
    assert model.variant == "inpaint" and model.unet.config.in_channels == 9
    return model


def picture(width: int = 64, height: int = 64) -> Image.Image:
    """A smooth picture (gradients and a disc), so a changed pixel is easy to see."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), np.full_like(x, 90)], -1)
    rgb[(x - width // 3) ** 2 + (y - height // 3) ** 2 < (min(width, height) // 6) ** 2] = (230, 230, 30)
    return Image.fromarray(rgb.astype(np.uint8))


def box_mask(size=(64, 64), box=(36, 36, 56, 56)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def params(sampler: str = "Euler", seeds=(3,), size=(64, 64), steps: int = 4) -> SamplingParams:
    return SamplingParams(prompt="a green square", sampler=sampler, steps=steps, cfg_scale=6.0,
                          width=size[0], height=size[1], seeds=list(seeds))


def assert_only_mask_changed(out: Image.Image, image: Image.Image, mask: Image.Image, blur: int) -> None:
    keep = np.asarray(blur_mask(binary_mask(mask), blur)) == 0
    a, b = np.asarray(out, int), np.asarray(image.convert("RGB"), int)
    assert keep.sum() > 0.25 * keep.size
    assert np.array_equal(a[keep], b[keep]), "pixels outside the mask and its blur band changed"
    inside = np.asarray(binary_mask(mask)) > 0
    assert np.abs(a[inside] - b[inside]).mean() > 10, "the masked region did not change"


@pytest.mark.parametrize("fill", [FILL, ORIGINAL, LATENT_NOISE, LATENT_NOTHING])
@pytest.mark.parametrize("full_res", [False, True], ids=["whole", "only-masked"])
def test_normal_model_changes_only_the_mask(sd1, fill: int, full_res: bool) -> None:
    image, mask = picture(), box_mask()
    options = Img2ImgOptions(denoising_strength=0.9, mask=mask, mask_blur=4, inpainting_fill=fill,
                             inpaint_full_res=full_res, inpaint_full_res_padding=8)
    outs = img2img(sd1, params(seeds=(3, 4)), REGISTRY, image, options)
    for out in outs:
        assert_only_mask_changed(out, image, mask, 4)


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "Euler a", "DDIM", "Heun", "UniPC", "DPM++ 2M SDE"])
def test_samplers_keep_the_outside(sd1, sampler: str) -> None:
    image, mask = picture(), box_mask()
    out = img2img(sd1, params(sampler=sampler), REGISTRY, image, Img2ImgOptions(0.8, mask=mask, mask_blur=2))[0]
    assert_only_mask_changed(out, image, mask, 2)


def test_inverted_mask_repaints_the_rest(sd1) -> None:
    image, mask = picture(), box_mask(box=(8, 8, 56, 56))
    out = img2img(sd1, params(), REGISTRY, image, Img2ImgOptions(0.9, mask=mask, mask_blur=0, invert_mask=True))[0]
    inverted = Image.eval(mask, lambda v: 255 - v)
    assert_only_mask_changed(out, image, inverted, 0)


def test_no_blur_keeps_every_pixel_outside_exactly(sd1) -> None:
    image, mask = picture(), box_mask(box=(20, 20, 40, 40))
    out = np.asarray(img2img(sd1, params(), REGISTRY, image, Img2ImgOptions(1.0, mask=mask, mask_blur=0))[0])
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], np.asarray(image)[keep])


def test_nine_channel_model_sees_mask_and_masked_image(sd1_inpaint, monkeypatch) -> None:
    image, mask = picture(), box_mask(box=(32, 0, 64, 64))  # right half
    seen: list[torch.Tensor] = []
    forward = sd1_inpaint.unet.forward

    def spy(sample, *args, **kwargs):
        seen.append(sample.detach().clone())
        return forward(sample, *args, **kwargs)

    monkeypatch.setattr(sd1_inpaint.unet, "forward", spy)
    out = img2img(sd1_inpaint, params(), REGISTRY, image, Img2ImgOptions(0.9, mask=mask, mask_blur=4))[0]
    monkeypatch.undo()
    assert seen and all(s.shape[1] == 9 for s in seen)
    latent_mask = seen[0][0, 4]
    assert torch.all(latent_mask[:, 4:] == 1) and torch.all(latent_mask[:, :4] == 0)  # 64 px / 8 = 8 latent columns
    assert not torch.equal(seen[0][0, 5:], torch.zeros_like(seen[0][0, 5:]))  # the masked image's latent
    assert_only_mask_changed(out, image, mask, 4)


@pytest.mark.parametrize("full_res", [False, True])
def test_nine_channel_model_keeps_the_outside(sd1_inpaint, full_res: bool) -> None:
    image, mask = picture(), box_mask()
    out = img2img(sd1_inpaint, params(seeds=(1, 2)), REGISTRY, image,
                  Img2ImgOptions(1.0, mask=mask, mask_blur=4, inpaint_full_res=full_res))
    for o in out:
        assert_only_mask_changed(o, image, mask, 4)


def test_only_masked_crop_region_matches_aspect_and_stays_inside() -> None:
    mask = box_mask(size=(200, 100), box=(150, 40, 170, 60))
    box = crop_region(mask, 8)
    assert box == (142, 32, 178, 68)
    left, top, right, bottom = expand_to_ratio(box, 64, 32, 200, 100)
    assert (right - left) / (bottom - top) == pytest.approx(2.0, abs=0.1)
    assert 0 <= left and right <= 200 and 0 <= top and bottom <= 100
    edge = expand_to_ratio(crop_region(box_mask((200, 100), (190, 0, 200, 10)), 4), 32, 64, 200, 100)
    assert edge[2] <= 200 and edge[1] >= 0 and edge[3] - edge[1] > edge[2] - edge[0]


def test_mask_from_alpha_layer_and_from_grey() -> None:
    layer = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    layer.putpixel((2, 3), (255, 255, 255, 200))
    assert np.argwhere(np.asarray(binary_mask(layer))).tolist() == [[3, 2]]
    grey = Image.new("L", (8, 8), 100)
    grey.putpixel((1, 1), 200)
    assert np.argwhere(np.asarray(binary_mask(grey))).tolist() == [[1, 1]]


def test_blur_band_reach_matches_the_kernel() -> None:
    mask = box_mask(box=(30, 30, 34, 34))
    blurred = np.asarray(blur_mask(mask, 4))
    cols = np.nonzero(blurred[32])[0]
    assert cols.min() >= 30 - blur_reach(4) and cols.max() < 34 + blur_reach(4)

"""Inpainting on tiny checkpoints (4- and 9-channel): outside the mask and its blur band the output is the input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cpu_share import cpu_share
from webui.engine.generation import SamplingParams
from webui.engine.img2img import FILL, LATENT_NOISE, LATENT_NOTHING, ORIGINAL, Img2ImgOptions, img2img
from webui.engine.loader import load_checkpoint
from webui.engine.masking import binary_mask, blur_mask, blur_reach, crop_region, expand_to_ratio
from webui.engine.samplers import SamplerRegistry

REGISTRY = SamplerRegistry()


@pytest.fixture(scope="module")
def sd1(tiny_sd1):
    torch.set_num_threads(cpu_share())
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


def test_an_opaque_rgba_mask_is_read_by_brightness() -> None:
    """A mask saved as RGBA with no transparency (a flattened drawing) is read like a grey mask."""
    rgba = Image.new("RGBA", (8, 8), (0, 0, 0, 255))
    rgba.putpixel((5, 2), (250, 250, 250, 255))
    rgba.putpixel((1, 6), (90, 90, 90, 255))  # dark: not masked
    assert np.argwhere(np.asarray(binary_mask(rgba))).tolist() == [[2, 5]]


def test_latent_noise_fill_starts_from_the_seed_noise_inside_and_the_image_outside(sd1) -> None:
    """At strength 0 the starting latents come back unchanged: inside the mask they must be the seed's noise
    (torch.Generator("cpu").manual_seed(seed), computed here), outside the image's own latents."""
    from webui.engine.img2img import img2img_latents, prepare_inputs

    mask = box_mask(box=(32, 0, 64, 64))  # the right half
    run = params(seeds=(17,))
    latents = {}
    for fill in (LATENT_NOISE, ORIGINAL):
        options = Img2ImgOptions(denoising_strength=0.0, mask=mask, mask_blur=0, inpainting_fill=fill)
        latents[fill] = img2img_latents(sd1, run, REGISTRY, prepare_inputs(picture(), options, 64, 64), options)
    noise = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(17))
    inside, outside = (slice(None), slice(None), slice(5, 8)), (slice(None), slice(None), slice(0, 3))
    torch.testing.assert_close(latents[LATENT_NOISE][0][inside], noise[inside])
    torch.testing.assert_close(latents[LATENT_NOISE][0][outside], latents[ORIGINAL][0][outside])


def test_only_masked_pastes_the_generated_crop_back_with_lanczos(sd1) -> None:
    """"Only masked" renders the crop at the generation size; it goes back into the original resized with LANCZOS
    (A1111's paste), then through the mask. Checked on a known crop image instead of a sampled one."""
    from webui.engine.img2img import finish, prepare_inputs

    image, mask = picture(64, 64), box_mask((64, 64), (24, 24, 40, 40))
    options = Img2ImgOptions(mask=mask, mask_blur=0, inpaint_full_res=True, inpaint_full_res_padding=8)
    prepared = prepare_inputs(image, options, 64, 64)
    assert prepared.paste_box is not None
    left, top, right, bottom = prepared.paste_box
    assert (right - left, bottom - top) != (64, 64)  # the crop is scaled on the way back
    rng = np.random.default_rng(0)
    generated = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    out = np.asarray(finish([generated], prepared, options)[0], dtype=int)
    pasted = np.asarray(generated.resize((right - left, bottom - top), Image.Resampling.LANCZOS), dtype=int)
    inside = np.asarray(mask) > 0
    expected = np.asarray(image, dtype=int).copy()
    expected[top:bottom, left:right] = pasted
    assert np.array_equal(out[inside], expected[inside])
    assert np.array_equal(out[~inside], np.asarray(image, dtype=int)[~inside])


def test_an_empty_mask_is_refused_with_a_message_saying_so(sd1) -> None:
    from webui.engine.img2img import NothingToInpaint

    with pytest.raises(NothingToInpaint, match="the mask is empty: nothing to inpaint"):
        img2img(sd1, params(), REGISTRY, picture(), Img2ImgOptions(mask=Image.new("L", (64, 64), 0)))


def test_nine_channel_model_does_plain_img2img_with_an_all_masked_grey_input(sd1_inpaint) -> None:
    """Without a mask a 9-channel model gets txt2img's extra channels (mask 1, grey masked image), as in A1111:
    its img2img at strength 1 then equals its txt2img from the same seed. A diffusers scheduler, because A1111's
    k-diffusion img2img keeps the input under sigma-max noise even at strength 1 (init + noise * sigma_max)."""
    from webui.engine.generation import txt2img

    diffusers_euler = params("Euler (diffusers)")
    out = img2img(sd1_inpaint, diffusers_euler, REGISTRY, picture(), Img2ImgOptions(denoising_strength=1.0))
    reference = txt2img(sd1_inpaint, diffusers_euler, REGISTRY)
    assert np.array_equal(np.asarray(out[0]), np.asarray(reference[0]))

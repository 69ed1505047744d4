"""Inpainting and outpainting with the shipped default model: a masked shape is repainted in the prompted colour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from tests.cpu_share import cpu_share
from webui.engine.generation import SamplingParams
from webui.engine.img2img import Img2ImgOptions, img2img
from webui.engine.loader import load_checkpoint
from webui.engine.masking import blur_mask
from webui.engine.samplers import SamplerRegistry

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "models" / "Stable-diffusion" / "latent-studio-shapes.safetensors"

REGISTRY = SamplerRegistry()


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(cpu_share())
    return load_checkpoint(CHECKPOINT)


def _scene(colour: str) -> tuple[Image.Image, Image.Image]:
    """A large circle at the centre on a blue background, and a mask a little larger than the circle."""
    from webui.shapes import COLOURS, Scene, ShapeObject, render

    scene = Scene((ShapeObject("circle", colour, "center", "large"),), ("blue",))
    image = render(scene, 64)
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).ellipse([14, 14, 50, 50], fill=255)
    assert COLOURS[colour]
    return image, mask


def _closest_colour(rgb: np.ndarray) -> str:
    from webui.shapes import COLOURS

    return min(COLOURS, key=lambda name: float(np.sum((np.asarray(COLOURS[name], float) - rgb) ** 2)))


def test_inpaint_repaints_the_masked_shape_in_the_prompted_colour(model) -> None:
    """A red circle, masked, prompted green at the UI's default strength (0.75): green-dominant, red gone.

    The model draws its green darker than the training palette, so the check is on channel dominance rather
    than on the nearest palette colour. Outside the mask's blur band the pixels are the input's.
    """
    image, mask = _scene("red")
    params = SamplingParams(prompt="a large green circle at the center on a blue background", sampler="Euler a",
                            steps=20, cfg_scale=6.0, width=64, height=64, seeds=[1, 2, 3, 4])
    outs = img2img(model, params, REGISTRY, image, Img2ImgOptions(denoising_strength=0.75, mask=mask, mask_blur=2))
    keep = np.asarray(blur_mask(mask, 2)) == 0
    core = np.zeros((64, 64), bool)
    core[26:38, 26:38] = True
    for out in outs:
        array = np.asarray(out)
        assert np.array_equal(array[keep], np.asarray(image)[keep])
        red, green, blue = array[core].reshape(-1, 3).mean(0)
        assert green > red + 30 and green > blue + 15 and red < 100, (red, green, blue)


def test_outpaint_extends_the_background(model) -> None:
    """The new border of a plain blue scene comes out blue too."""
    from webui.engine.masking import outpaint_canvas

    image, _ = _scene("yellow")
    canvas, mask = outpaint_canvas(image.crop((0, 0, 48, 64)), 16, 0, 0, 0, overlap=8)
    params = SamplingParams(prompt="a large yellow circle at the center on a blue background", sampler="Euler a",
                            steps=20, cfg_scale=6.0, width=64, height=64, seeds=[5])
    out = np.asarray(img2img(model, params, REGISTRY, canvas, Img2ImgOptions(denoising_strength=0.9, mask=mask))[0])
    assert out.shape == (64, 64, 3)
    assert _closest_colour(out[:, :6].reshape(-1, 3).mean(0)) == "blue"

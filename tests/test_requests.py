"""The request schema: every bad value is refused with a one-line message naming the field, whichever way the request
is built (the constructor, `dataclasses.replace`, or `parse_request` from an API/UI/CLI mapping)."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest
from PIL import Image
from pydantic import TypeAdapter

from webui.services.img2img import Img2ImgRequest
from webui.services.requests import (
    GenerationRequest,
    RequestError,
    parse_request,
    resolve_for_model,
    seeds_for_iteration,
)

BAD_VALUES = [
    ({"width": 699}, "width: 699 is not a multiple of 8 (use 696 or 704)"),
    ({"height": 316}, "height: 316 is not a multiple of 8"),
    ({"width": -64}, "width: -64 is out of range (64 to 4096)"),
    ({"width": "wide"}, "width: 'wide' is not a whole number"),
    ({"steps": 0}, "steps: 0 is out of range (1 to 1000)"),
    ({"steps": 20.5}, "steps: 20.5 is not a whole number"),
    ({"steps": True}, "steps: True is not a number"),
    ({"steps": math.nan}, "steps: nan is not a finite number"),
    ({"cfg_scale": math.nan}, "cfg_scale: nan is not a finite number"),
    ({"cfg_scale": math.inf}, "cfg_scale: inf is not a finite number"),
    ({"cfg_scale": -1e9}, "cfg_scale: -1000000000.0 is out of range (0 to 100)"),
    ({"seed": 2**70}, f"seed: {2**70} is out of range (-1 to {2**32 - 1})"),
    ({"seed": -1e9}, "seed: -1000000000.0 is out of range"),
    ({"batch_size": 0}, "batch_size: 0 is out of range (1 to 64)"),
    ({"n_iter": 1001}, "n_iter: 1001 is out of range (1 to 1000)"),
    ({"prompt": "x" * 30_000}, "prompt: is 30000 characters long; the limit is 20000"),
    ({"prompt": None}, "prompt: must be text"),
    ({"stepz": 4}, "stepz: unknown field"),
    ({"extensions": {"controlnet": 3}}, "extensions: controlnet: must be an object of fields, not int"),
]


@pytest.mark.parametrize("change,message", BAD_VALUES)
def test_case_04_bad_values_are_refused_with_field_names(change: dict, message: str) -> None:
    for build in (lambda: GenerationRequest(**change), lambda: parse_request(GenerationRequest, change),
                  lambda: dataclasses.replace(GenerationRequest(), **change)):
        with pytest.raises(RequestError) as info:
            build()
        assert str(info.value).startswith(message)
        assert info.value.field_name == message.split(":")[0]
        assert "\n" not in str(info.value)


def test_values_as_json_and_sliders_send_them_are_accepted() -> None:
    request = parse_request(GenerationRequest, json.loads('{"steps": 20.0, "cfg_scale": 7, "width": 512.0, "seed": 3}'))
    assert (request.steps, request.cfg_scale, request.width, request.seed) == (20, 7.0, 512, 3)
    assert isinstance(request.steps, int) and isinstance(request.width, int) and isinstance(request.cfg_scale, float)
    assert GenerationRequest(steps="7").steps == 7  # form fields arrive as text


def test_case_04_python_json_nan_is_refused() -> None:
    """Python's json module reads NaN and Infinity; the schema refuses them."""
    with pytest.raises(RequestError, match="^cfg_scale: nan is not a finite number$"):
        parse_request(GenerationRequest, json.loads('{"cfg_scale": NaN}'))
    with pytest.raises(RequestError, match="^seed: inf is not a finite number$"):
        parse_request(GenerationRequest, json.loads('{"seed": Infinity}'))


def test_parse_request_names_the_first_unknown_field_and_refuses_non_objects() -> None:
    parsed = parse_request(GenerationRequest, {"prompt": "a cat", "steps": 4})
    assert parsed == GenerationRequest(prompt="a cat", steps=4)
    with pytest.raises(RequestError) as info:
        parse_request(GenerationRequest, {"prompt": "a cat", "stepz": 4, "zz_top": 1})
    assert str(info.value) == "stepz: unknown field"
    with pytest.raises(RequestError, match="^request: must be an object of fields, not list$"):
        parse_request(GenerationRequest, [1, 2])


@pytest.mark.parametrize("change,message", [
    ({"denoising_strength": 1.5}, "denoising_strength: 1.5 is out of range (0 to 1)"),
    ({"denoising_strength": math.nan}, "denoising_strength: nan is not a finite number"),
    ({"resize_mode": 7}, "resize_mode: 7 is not one of 0, 1, 2 or 3 (0 just resize, 1 crop and resize"),
    ({"inpainting_fill": 4}, "inpainting_fill: 4 is not one of 0, 1, 2 or 3 (0 fill, 1 original"),
    ({"inpainting_mask_invert": 2}, "inpainting_mask_invert: 2 is not one of 0 or 1"),
    ({"mask_blur": 65}, "mask_blur: 65 is out of range (0 to 64)"),
    ({"inpaint_full_res_padding": -1}, "inpaint_full_res_padding: -1 is out of range (0 to 256)"),
    ({"outpaint_left": 12}, "outpaint_left: 12 is not a multiple of 8 (use 8 or 16)"),
    ({"outpaint_down": 4096}, "outpaint_down: 4096 is out of range (0 to 2048)"),
    ({"outpaint_fill": "mirror"}, "outpaint_fill: 'mirror' is not one of 'edge' or 'noise'"),
    ({"init_image": "cat.png"}, "init_image: expected Image, not str"),
])
def test_img2img_fields_are_refused_with_field_names(change: dict, message: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(Img2ImgRequest, {"init_image": Image.new("RGB", (64, 64)), **change})
    assert str(info.value).startswith(message)


def test_the_json_schema_carries_the_constraints() -> None:
    schema = TypeAdapter(GenerationRequest).json_schema()
    properties = schema["properties"]
    assert schema["additionalProperties"] is False
    assert (properties["steps"]["minimum"], properties["steps"]["maximum"]) == (1, 1000)
    assert properties["steps"]["type"] == "integer"
    assert (properties["cfg_scale"]["minimum"], properties["cfg_scale"]["maximum"]) == (0, 100)
    width = next(option for option in properties["width"]["anyOf"] if option["type"] == "integer")
    assert (width["minimum"], width["maximum"], width["multipleOf"]) == (64, 4096, 8)
    assert properties["seed"]["maximum"] == 2**32 - 1 and properties["prompt"]["maxLength"] == 20_000
    img2img = TypeAdapter(Img2ImgRequest).json_schema()["properties"]
    assert img2img["resize_mode"]["enum"] == [0, 1, 2, 3] and img2img["denoising_strength"]["maximum"] == 1
    assert "init_image" not in img2img and "mask" not in img2img  # images arrive decoded, not as schema fields


def _model(multiple: int, default: tuple[int, int]) -> SimpleNamespace:
    """What resolve_for_model reads of a LoadedModel: the VAE factor, the U-Net levels and the default size."""
    levels = multiple.bit_length() - 3  # 8 x 2**(levels - 1) = multiple
    unet = SimpleNamespace(config=SimpleNamespace(block_out_channels=[32] * levels))
    return SimpleNamespace(vae_downscale=8, unet=unet, default_resolution=default)


def test_defaults_follow_model_size_and_random_seed_is_drawn() -> None:
    valid = resolve_for_model(GenerationRequest(seed=-1), _model(16, (64, 96)))
    assert (valid.width, valid.height) == (64, 96)
    assert 0 <= valid.seed < 2**32


def test_sizes_off_the_models_multiple_are_refused_with_the_nearest_valid_sizes() -> None:
    with pytest.raises(RequestError, match=r"^width: 72 is not a multiple of 16 for this model \(use 64 or 80\)$"):
        resolve_for_model(GenerationRequest(width=72, height=64), _model(16, (64, 64)))
    with pytest.raises(RequestError, match=r"^height: 40 is not a multiple of 64 for this model \(use 64\)$"):
        resolve_for_model(GenerationRequest(width=64), _model(64, (64, 40)))


def test_image_i_uses_seed_plus_i_across_batches() -> None:
    request = resolve_for_model(GenerationRequest(seed=100, batch_size=3, n_iter=2), _model(16, (512, 512)))
    assert seeds_for_iteration(request, 0) == [100, 101, 102]
    assert seeds_for_iteration(request, 1) == [103, 104, 105]

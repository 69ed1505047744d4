"""Request validation: every bad value gets a one-line message naming the field."""

from __future__ import annotations

import math

import pytest

from webui.services.requests import GenerationRequest, RequestError, seeds_for_iteration, validate_request


@pytest.mark.parametrize(
    "change,message",
    [
        ({"width": 699}, "width: 699 is not a multiple of 8 (use 696 or 704)"),
        ({"height": 316}, "height: 316 is not a multiple of 8"),
        ({"steps": 0}, "steps: 0 is out of range"),
        ({"cfg_scale": math.nan}, "cfg_scale: nan is not a finite number"),
        ({"cfg_scale": math.inf}, "cfg_scale: inf is not a finite number"),
        ({"seed": 2**70}, "seed: "),
        ({"batch_size": 0}, "batch_size: 0 is out of range"),
        ({"width": -64}, "width: -64 is out of range"),
        ({"prompt": "x" * 30_000}, "prompt: is 30000 characters long"),
    ],
)
def test_bad_values_are_rejected_with_field_names(change: dict, message: str) -> None:
    with pytest.raises(RequestError) as info:
        validate_request(GenerationRequest(**change), (512, 512))
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_defaults_follow_model_size_and_random_seed_is_drawn() -> None:
    valid = validate_request(GenerationRequest(seed=-1), (64, 96))
    assert (valid.width, valid.height) == (64, 96)
    assert 0 <= valid.seed < 2**32


def test_image_i_uses_seed_plus_i_across_batches() -> None:
    request = validate_request(GenerationRequest(seed=100, batch_size=3, n_iter=2), (512, 512))
    assert seeds_for_iteration(request, 0) == [100, 101, 102]
    assert seeds_for_iteration(request, 1) == [103, 104, 105]


def test_from_dict_refuses_unknown_fields_by_name() -> None:
    assert GenerationRequest.from_dict({"prompt": "a cat", "steps": 4}) == GenerationRequest(prompt="a cat", steps=4)
    with pytest.raises(RequestError) as info:
        GenerationRequest.from_dict({"prompt": "a cat", "stepz": 4, "zz_top": 1})
    assert str(info.value) == "stepz: unknown field"

"""A1111 infotext formatting and parsing (a1111-compat.md §1)."""

from __future__ import annotations

import random
import re
import time

import pytest

from webui.services.infotext import (
    INFOTEXT_KEY_ORDER,
    format_infotext,
    parse_infotext,
    split_sampler_name,
)

# A1111 1.10.1's own parameter regex (infotext_utils.re_param), used only as the oracle for the scanner.
A1111_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')

# Written the way A1111 1.10.1 writes it: multi-line prompt and negative prompt, quoted Lora/TI hashes, extras
# after the core keys, Version last.
A1111_EXAMPLE = (
    "masterpiece, best quality, 1girl, (red hair:1.2), <lora:detail:0.8>, <lora:style:0.5>\n"
    "looking at viewer, city street at night\n"
    "Negative prompt: lowres, (worst quality:1.4), bad hands,\n"
    "extra fingers, easynegative\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234567890, Size: 512x768, "
    "Model hash: 0123456789, Model: my_model_v2, VAE hash: 235745af8d, VAE: vae-ft-mse-840000-ema-pruned.safetensors, "
    "Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+, "
    'Lora hashes: "detail: 0123456789ab, style: ba9876543210", TI hashes: "easynegative: c74b4e810b03", '
    "Emphasis: No norm, Version: v1.10.1"
)


def test_key_order_constant_follows_a1111() -> None:
    assert INFOTEXT_KEY_ORDER[:4] == ("Steps", "Sampler", "Schedule type", "CFG scale")
    assert INFOTEXT_KEY_ORDER[-2:] == ("Version", "User")
    assert INFOTEXT_KEY_ORDER.index("Seed") < INFOTEXT_KEY_ORDER.index("Size") < INFOTEXT_KEY_ORDER.index("Model hash")
    assert INFOTEXT_KEY_ORDER.index("Clip skip") < INFOTEXT_KEY_ORDER.index("RNG") < INFOTEXT_KEY_ORDER.index("Tiling")
    assert len(set(INFOTEXT_KEY_ORDER)) == len(INFOTEXT_KEY_ORDER)


def test_exact_string_for_known_parameters() -> None:
    # Deliberately given out of order: the output order is A1111's, not the caller's.
    params = {
        "Version": "v1.10.1",
        "Model": "my_model",
        "Seed": 42,
        "CFG scale": 7.0,
        "Size": "512x768",
        "Steps": 20,
        "Model hash": "0123456789",
        "Schedule type": "Karras",
        "Sampler": "DPM++ 2M",
    }
    assert format_infotext("a cat", "blurry", params) == (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, "
        "Model hash: 0123456789, Model: my_model, Version: v1.10.1"
    )


def test_extras_keep_insertion_order_between_core_keys_and_version_user() -> None:
    params = {
        "User": "alice",
        "Lora hashes": "detail: 0123456789ab, style: ba9876543210",
        "Version": "v1.10.1",
        "Hires upscale": 2,
        "Steps": 20,
        "Emphasis": "No norm",
        "Seed": 1,
        "Denoising strength": 0.45,
    }
    assert format_infotext("p", "", params) == (
        "p\nSteps: 20, Seed: 1, Denoising strength: 0.45, "
        'Lora hashes: "detail: 0123456789ab, style: ba9876543210", Hires upscale: 2, Emphasis: No norm, '
        "Version: v1.10.1, User: alice"
    )


def test_none_dropped_negative_line_omitted_and_quoting() -> None:
    params = {
        "Steps": 20,
        "Sampler": "Euler a",
        "Seed": 7,
        "VAE": None,
        "CFG scale": 7.5,
        "Style": "a, b",
        "Note": "first\nsecond",
        "Label": "ключ: значение",
        "Plain": "日本語",
    }
    text = format_infotext("a dog", "", params)
    assert "Negative prompt" not in text
    assert "VAE" not in text
    assert text == (
        "a dog\nSteps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 7, "
        'Style: "a, b", Note: "first\\nsecond", Label: "ключ: значение", Plain: 日本語'
    )


def test_number_formatting_matches_a1111() -> None:
    params = {"Steps": 30, "CFG scale": 7.0, "Denoising strength": 0.7, "Eta": 1e-05, "Tiling": True}
    text = format_infotext("", "", params)
    assert text == "Steps: 30, CFG scale: 7, Denoising strength: 0.7, Tiling: True, Eta: 1e-05"


def test_empty_prompt_is_stripped_like_a1111() -> None:
    assert format_infotext("", "ugly", {"Steps": 20, "Seed": 1, "Sampler": "Euler"}) == (
        "Negative prompt: ugly\nSteps: 20, Sampler: Euler, Seed: 1"
    )


def test_key_that_cannot_round_trip_is_refused() -> None:
    with pytest.raises(ValueError, match="Bad: key"):
        format_infotext("p", "", {"Bad: key": 1})


def test_round_trip() -> None:
    params = {
        "Steps": 25,
        "Sampler": "DPM++ SDE",
        "Schedule type": "Exponential",
        "CFG scale": 6.5,
        "Seed": 3_141_592_653,
        "Size": "640x960",
        "Model hash": "00ab12cd34",
        "Model": "1234",
        "Denoising strength": 0.35,
        "Clip skip": 2,
        "RNG": "CPU",
        "Lora hashes": "detail: 0123456789ab, style: ba9876543210",
        "Prompt note": 'quote " and backslash \\, comma',
        "Version": "v1.10.1",
    }
    prompt = "a castle on a hill, (sunset:1.3)\nvolumetric light"
    negative = "blurry, lowres\nwatermark"
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == negative
    for key, value in params.items():
        assert parsed[key] == value, key
    assert (parsed["Size-1"], parsed["Size-2"]) == (640, 960)


def test_parse_verbatim_a1111_infotext() -> None:
    parsed = parse_infotext(A1111_EXAMPLE)
    assert parsed["Prompt"] == (
        "masterpiece, best quality, 1girl, (red hair:1.2), <lora:detail:0.8>, <lora:style:0.5>\n"
        "looking at viewer, city street at night"
    )
    assert parsed["Negative prompt"] == "lowres, (worst quality:1.4), bad hands,\nextra fingers, easynegative"
    assert parsed["Steps"] == 28
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["CFG scale"] == 6.5
    assert parsed["Seed"] == 1234567890
    assert parsed["Size"] == "512x768"
    assert (parsed["Size-1"], parsed["Size-2"]) == (512, 768)
    assert parsed["Model hash"] == "0123456789"  # a hash, not the number 123456789
    assert parsed["Model"] == "my_model_v2"
    assert parsed["VAE hash"] == "235745af8d"
    assert parsed["VAE"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert parsed["Denoising strength"] == 0.45
    assert parsed["Clip skip"] == 2
    assert parsed["Hires upscale"] == 2
    assert parsed["Hires upscaler"] == "R-ESRGAN 4x+"
    assert parsed["Lora hashes"] == "detail: 0123456789ab, style: ba9876543210"
    assert parsed["TI hashes"] == "easynegative: c74b4e810b03"
    assert parsed["Emphasis"] == "No norm"
    assert parsed["Version"] == "v1.10.1"
    assert parsed["RNG"] == "GPU"  # default filled


def test_defaults_filled_when_left_out() -> None:
    parsed = parse_infotext("a cat\nSteps: 20, Sampler: Euler a, Seed: 5")
    assert parsed["Clip skip"] == 1
    assert parsed["Schedule type"] == "Automatic"
    assert parsed["RNG"] == "GPU"
    assert parsed["Negative prompt"] == ""


@pytest.mark.parametrize(
    ("combined", "sampler", "schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE Heun Exponential", "DPM++ 2M SDE Heun", "Exponential"),
        ("DPM2 a Karras", "DPM2 a", "Karras"),
        ("LMS Karras", "LMS", "Karras"),
        ("Euler SGM Uniform", "Euler", "SGM Uniform"),
        ("Euler a", "Euler a", "Automatic"),
        ("DDIM", "DDIM", "Automatic"),
    ],
)
def test_old_combined_sampler_names(combined: str, sampler: str, schedule: str) -> None:
    parsed = parse_infotext(f"a cat\nSteps: 20, Sampler: {combined}, CFG scale: 7, Seed: 1")
    assert (parsed["Sampler"], parsed["Schedule type"]) == (sampler, schedule)


def test_explicit_schedule_type_is_not_overridden() -> None:
    parsed = parse_infotext("a\nSteps: 20, Sampler: DPM++ 2M Karras, Schedule type: Uniform, Seed: 1")
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M Karras", "Uniform")
    assert split_sampler_name("Karras") == ("Karras", None)


def test_last_line_needs_three_pairs_to_be_parameters() -> None:
    parsed = parse_infotext("portrait\nstyle: oil, mood: calm")
    assert parsed["Prompt"] == "portrait\nstyle: oil, mood: calm"
    assert "style" not in parsed
    assert "Sampler" not in parsed


def test_crlf_and_values_kept_as_text() -> None:
    parsed = parse_infotext("p\r\nNegative prompt: n\r\nSteps: 20, Seed: 007, Model: 1234, CFG scale: nan, Eta: .5\r\n")
    assert parsed["Prompt"] == "p"
    assert parsed["Negative prompt"] == "n"
    assert parsed["Seed"] == "007"  # leading zeros are not silently dropped
    assert parsed["Model"] == "1234"
    assert parsed["CFG scale"] == "nan"
    assert parsed["Eta"] == 0.5


def test_scanner_matches_a1111_regex() -> None:
    rng = random.Random(1234)
    alphabet = 'ab :,"\\-/\t1é'
    from webui.services.infotext import _scan_parameters

    for _ in range(3000):
        line = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 16)))
        assert _scan_parameters(line) == A1111_RE_PARAM.findall(line), line
    params_line = A1111_EXAMPLE.splitlines()[-1]
    assert _scan_parameters(params_line) == A1111_RE_PARAM.findall(params_line)


def test_very_long_text_is_parsed_quickly() -> None:
    # Long runs of key characters without a colon make A1111's regex quadratic; the scanner stays linear.
    long_prompt = "word " * 40_000
    long_last_line = "a b c d e f " * 20_000 + ", Steps: 20, Seed: 1, CFG scale: 7"
    quoted_junk = '"' + "x\\" * 10_000
    start = time.perf_counter()
    parsed = parse_infotext(f"{long_prompt}\nNegative prompt: {quoted_junk}\n{long_last_line}")
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert parsed["Steps"] == 20
    assert parsed["Prompt"] == long_prompt.strip()
    assert parse_infotext("x" * 100_000)["Prompt"] == "x" * 100_000

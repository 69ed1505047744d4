"""The field table behind ↙ and dropped images: each infotext key fills its component with a value the component
takes; a value that does not fit (outside a slider's range, a sampler this app lacks) leaves the field as it was and
says why; keys the infotext lacks are left alone. Real Gradio components and the real sampler table, no server."""

from __future__ import annotations

import gradio as gr
import pytest

from webui.engine.samplers import SamplerRegistry
from webui.services.infotext import has_parameter_line, parse_infotext
from webui.ui.paste_params import PasteField, paste_updates, sampler_check


def test_fills_what_fits_and_names_what_does_not() -> None:
    samplers = SamplerRegistry()
    with gr.Blocks():
        prompt = gr.Textbox()
        sampler = gr.Dropdown(samplers.names(), value="DPM++ 2M")
        schedule = gr.Dropdown(["Automatic"], value="Automatic")  # choices follow the sampler: the table decides
        steps = gr.Slider(1, 150, value=20, step=1)
        cfg = gr.Slider(1, 30, value=7, step=0.5)
        width = gr.Slider(64, 2048, value=512, step=8)
        seed = gr.Number(value=-1, precision=0)
        denoise = gr.Slider(0, 1, value=0.75, step=0.01)
    fields = [PasteField("Prompt", prompt), PasteField("Sampler", sampler, sampler_check(samplers, "sampler")),
              PasteField("Schedule type", schedule, sampler_check(samplers, "schedule")),
              PasteField("Steps", steps), PasteField("CFG scale", cfg), PasteField("Size-1", width),
              PasteField("Seed", seed), PasteField("Denoising strength", denoise)]

    # an old combined sampler name, a Size beyond the slider, no denoising strength in the text
    text = "a cat\nSteps: 30, Sampler: k_euler_a, Schedule type: Karras, CFG scale: 6.5, Seed: 12, Size: 4096x512"
    updates, notes, filled = paste_updates(fields, parse_infotext(text))
    values = [update.get("value") if isinstance(update, dict) else None for update in updates]
    assert values == ["a cat", "Euler a", "Karras", 30, 6.5, None, 12, None]
    assert type(values[3]) is int and type(values[6]) is int and type(values[4]) is float
    assert filled == 6
    assert notes == ["Size-1: 4096 is outside this field's range 64..2048; kept the current value"]

    _, notes, filled = paste_updates(fields, parse_infotext("x\nSteps: 5, Sampler: Nonesuch, Seed: 1"))
    assert notes == ["Sampler: 'Nonesuch' is not a sampler here; kept the current value"]
    assert filled == 4  # prompt, steps, seed, and the schedule A1111 assumes when none is written (Automatic)


def test_only_an_infotext_is_taken_apart() -> None:
    assert has_parameter_line("a cat\nSteps: 20, Sampler: Euler, Seed: 1")
    assert not has_parameter_line("a cat: cute, colour: red")  # two pairs: a prompt, not parameters
    assert not has_parameter_line("Steps: 20, Sampler: Euler, Seed: 1\nand a second line")
    assert not has_parameter_line("   ")


def test_override_settings_box_takes_only_what_it_can_apply() -> None:
    from webui.services.requests import RequestError
    from webui.ui.override_settings import override_entries, request_fields

    parsed = parse_infotext("a cat\nSteps: 3, Seed: 1, Size: 64x64, Clip skip: 2, ENSD: 31337, Emphasis: No norm")
    entries = override_entries(parsed)
    assert entries == ["Clip skip: 2", "ENSD: 31337", "Emphasis: No norm"]
    assert request_fields(entries) == {"clip_skip": 2, "ensd": 31337, "emphasis": "No norm"}
    assert override_entries(parse_infotext("a cat\nSteps: 3, Seed: 1, Size: 64x64")) == []  # defaults: no entry
    for bad, reason in (("Clip skip: two", "not a whole number"), ("Emphasis: Loud", "not one of"),
                        ("Hypernet: x", "not an override this app knows")):
        with pytest.raises(RequestError, match=reason):
            request_fields([bad])

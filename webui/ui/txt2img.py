"""The txt2img tab: controls, a live progress bar with previews, interrupt and skip, and the result gallery."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from webui.context import AppContext
from webui.services.output_browser import OutputBrowser
from webui.services.requests import GenerationRequest, RequestError, parse_request
from webui.ui.bridge import UiBridge
from webui.ui.extension_sections import render_sections, with_extension_controls
from webui.ui.script_controls import SCRIPT_KEY, script_controls
from webui.ui.job_stream import (
    job_buttons, result_column, run_job_streaming, snap_size_to_8, wire_interrupt_and_select,
    wire_sampler_schedules,
)
from webui.ui.prompt_tools import seed_row, token_counter, wire_seed_row
from webui.ui.seed_extras import SeedExtras, paste_fields as seed_paste_fields, paste_updates as seed_paste_updates
from webui.ui.seed_extras import request_fields as seed_extra_fields, seed_extras
from webui.ui import hires as hires_ui
from webui.ui.paste_params import PasteField, PasteWiring, sampler_check, wire_paste
from webui.ui.styles_ui import prompt_tools, styled_prompts, wire_styles
from webui.ui.session import owner_of

@dataclass
class Txt2ImgControls:
    """Components other tabs fill in (PNG Info's "send to txt2img")."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler: gr.Dropdown
    schedule: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    batch_count: gr.Slider
    batch_size: gr.Slider
    gallery: gr.Gallery | None = None
    extension_controls: list | None = None  # (extension, control name, component) of the extension sections
    seed_extras: SeedExtras | None = None  # the "Extra" seed options (variation seed, resize seed from, RNG)
    hires: hires_ui.HiresControls | None = None  # the "Hires. fix" accordion


def build_txt2img_tab(context: AppContext, checkpoint: gr.Dropdown, bridge: UiBridge | None = None) -> Txt2ImgControls:
    width0, height0 = context.models.default_size()
    samplers = context.samplers
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt",
                                placeholder="a red circle on a blue background")
            token_counter(prompt, "txt2img_token_counter")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
            token_counter(negative, "txt2img_neg_token_counter")
        with gr.Column(scale=1, min_width=160):
            buttons = job_buttons("txt2img")
            tools = prompt_tools("txt2img", context.styles)
    with gr.Row(elem_classes=["ls-work-row"]):
        with gr.Column(elem_id="txt2img_settings_col", elem_classes=["ls-settings-col"]):
            with gr.Row():
                sampler = gr.Dropdown(samplers.names(), value=context.settings.get("core.default_sampler"),
                                      label="Sampling method", elem_id="txt2img_sampler")
                schedule = gr.Dropdown(samplers.schedule_names(), value="Automatic", label="Schedule type",
                                       elem_id="txt2img_schedule")
            steps = gr.Slider(1, 150, value=context.settings.get("core.default_steps"), step=1, label="Sampling steps",
                              elem_id="txt2img_steps")
            with gr.Row():
                width = gr.Slider(64, 2048, value=context.settings.get("core.default_width") or width0, step=8,
                                  label="Width", elem_id="txt2img_width")
                height = gr.Slider(64, 2048, value=context.settings.get("core.default_height") or height0, step=8,
                                   label="Height", elem_id="txt2img_height")
            with gr.Row():
                batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
            cfg_scale = gr.Slider(1, 30, value=context.settings.get("core.default_cfg_scale"), step=0.5,
                                  label="CFG Scale", elem_id="txt2img_cfg_scale")
            seeds = seed_row("txt2img")
            seed = seeds.seed
            extras = seed_extras("txt2img")
            hires = hires_ui.hires_section(context, "txt2img")
            extension_controls = render_sections(context, "txt2img")
            scripts = script_controls(context, "txt2img")  # A1111's "Script" dropdown, last in the column
        results = result_column("txt2img", bridge)
        gallery, preview, infotext, status = results.gallery, results.preview, results.infotext, results.status

    def on_generate(
        checkpoint: str, prompt: str, negative_prompt: str, sampler_name: str, scheduler: str, steps: float,
        cfg_scale: float, width: float, height: float, seed: float | None, n_iter: float, batch_size: float,
        styles: list[str] | None, seed_extra: bool = False, subseed: float | None = -1, subseed_strength: float = 0.0,
        seed_resize_from_w: float = 0, seed_resize_from_h: float = 0, rng: str | None = None,
        overrides: list[str] | None = None, enable_hr: bool = False, hr_upscaler: str | None = None,
        hr_second_pass_steps: float = 0,
        denoising_strength: float = hires_ui.DEFAULT_DENOISING, hr_scale: float = 2.0, hr_resize_x: float = 0,
        hr_resize_y: float = 0, hr_checkpoint_name: str | None = None, hr_sampler_name: str | None = None,
        hr_scheduler: str | None = None, hr_prompt: str = "", hr_negative_prompt: str = "", *,
        extensions: dict, request: gr.Request,
    ) -> Iterator[Any]:
        script_values = extensions.pop(SCRIPT_KEY, {})
        try:
            prompt, negative_prompt = styled_prompts(context.styles, prompt, negative_prompt, styles)
            gen_request = parse_request(GenerationRequest, dict(
                prompt=prompt or "", negative_prompt=negative_prompt or "", sampler_name=sampler_name,
                scheduler=scheduler, steps=steps, cfg_scale=cfg_scale, width=width, height=height,
                seed=-1 if seed is None else seed, batch_size=batch_size, n_iter=n_iter, model=checkpoint or None,
                extensions=extensions, **seed_extra_fields(seed_extra, subseed, subseed_strength, seed_resize_from_w,
                                                          seed_resize_from_h, rng, overrides),
                **hires_ui.request_fields(enable_hr, hr_upscaler, hr_second_pass_steps, denoising_strength, hr_scale,
                                          hr_resize_x, hr_resize_y, hr_checkpoint_name, hr_sampler_name, hr_scheduler,
                                          hr_prompt, hr_negative_prompt),
            ))
            submit = scripts.submitter(script_values, gen_request, owner_of(request))  # None: no script chosen
        except RequestError as exc:  # the schema names the field; the message goes next to Generate
            raise buttons.notes.refuse(request, exc) from None
        yield from run_job_streaming(context, gen_request, owner_of(request), buttons.notes, request, submit=submit)

    generating = buttons.generate.click(
        with_extension_controls(on_generate, [*extension_controls, *scripts.controls]),
        inputs=[checkpoint, prompt, negative, sampler, schedule, steps, cfg_scale, width, height, seed, batch_count,
                batch_size, tools.styles, *extras.components(), *hires.components(),
                *(component for _, _, component in extension_controls),
                *scripts.components],
        outputs=[gallery, preview, infotext, status],
        concurrency_limit=None,  # the job queue orders the device work; this handler submits and watches
        api_name="txt2img",
        show_progress="hidden",  # one progress bar, in the status line: Gradio's overlay hid the live preview
    )
    buttons.on_generate_failure(generating)

    wire_interrupt_and_select(context, buttons, gallery, infotext, public_api=True)
    wire_seed_row(seeds, infotext)
    wire_sampler_schedules(samplers, sampler, schedule)
    for size in (width, height):
        snap_size_to_8(size)
    wire_styles(context.styles, tools, prompt, negative, buttons.message)
    controls = Txt2ImgControls(prompt, negative, sampler, schedule, steps, cfg_scale, width, height, seed, batch_count,
                               batch_size, gallery, extension_controls, extras, hires)
    hires_ui.wire_size_summary(hires, width, height)
    # ↙ and dropped images fill the same fields as "send to txt2img" (its table), plus the batch size
    paste_fields = [PasteField(key, getattr(controls, attribute), sampler_check(context.samplers, attribute))
                    for key, attribute in _PASTE_FIELDS]
    paste_fields.append(PasteField("Batch size", batch_size))
    paste_fields.extend(seed_paste_fields(extras))
    paste_fields.extend(hires_ui.paste_fields(context, hires))
    wire_paste(OutputBrowser(context.outputs), PasteWiring(tools.paste, prompt, tools.drop, buttons.message),
               paste_fields)
    return controls


_PASTE_FIELDS = (
    ("Prompt", "prompt"), ("Negative prompt", "negative_prompt"), ("Sampler", "sampler"), ("Schedule type", "schedule"),
    ("Steps", "steps"), ("CFG scale", "cfg_scale"), ("Size-1", "width"), ("Size-2", "height"), ("Seed", "seed"),
)


def register_txt2img_target(bridge: UiBridge, controls: Txt2ImgControls) -> None:
    """"Send to txt2img" fills the fields an image's infotext has and leaves the others alone."""

    def accept(image_path: str | None, parsed: dict[str, Any]) -> list[Any]:
        updates = [gr.update(value=parsed[key]) if key in parsed else gr.update() for key, _ in _PASTE_FIELDS]
        updates += seed_paste_updates(parsed) if controls.seed_extras else []
        return updates + (hires_ui.paste_updates(parsed) if controls.hires else [])

    outputs = [getattr(controls, attribute) for _, attribute in _PASTE_FIELDS]
    outputs += controls.seed_extras.components() if controls.seed_extras else []
    outputs += controls.hires.components() if controls.hires else []
    bridge.register_target("txt2img", "Send to txt2img", "txt2img", outputs, accept)


def register_controlnet_target(bridge: UiBridge, controls: Txt2ImgControls) -> None:
    """"Send to ControlNet": the image becomes txt2img's first ControlNet unit's control image (unit enabled), with
    the parameters, when the ControlNet extension's section is there."""
    accept = bridge.targets["txt2img"].accept
    outputs = bridge.targets["txt2img"].outputs
    unit = {name: component for extension, name, component in controls.extension_controls or []
            if extension == "controlnet"}
    if "unit0.image" in unit and "unit0.enabled" in unit:
        def to_controlnet(image_path: str | None, parsed: dict[str, Any]) -> list[Any]:
            return [*accept(image_path, parsed), gr.update(value=image_path), True]

        bridge.register_target("controlnet", "Send to ControlNet", "txt2img",
                               [*outputs, unit["unit0.image"], unit["unit0.enabled"]], to_controlnet)

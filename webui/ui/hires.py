"""txt2img's "Hires. fix" accordion, as A1111 lays it out: upscaler, hires steps, denoising strength, upscale by or
resize to, then the hires checkpoint, sampler, schedule type and prompts ("Use same ..." = the first pass's).

The options count only while the checkbox is ticked (A1111 ignores them otherwise). Pasting or sending an infotext
with A1111's `Hires ...` keys fills them and ticks the box; one without them unticks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.services.hires import (  # hires_size: the summary uses the job's own arithmetic
    LATENT_MODES, SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER, hires_size, upscaler_names,
)
from webui.services.model_manager import ModelError
from webui.ui.paste_params import PasteField

DEFAULT_DENOISING = 0.7  # A1111's UI default (its API's is 0.75)


@dataclass
class HiresControls:
    """The checkbox and the options it switches on."""

    enabled: gr.Checkbox
    upscaler: gr.Dropdown
    steps: gr.Slider
    denoising_strength: gr.Slider
    scale: gr.Slider
    resize_x: gr.Slider
    resize_y: gr.Slider
    checkpoint: gr.Dropdown
    sampler: gr.Dropdown
    scheduler: gr.Dropdown
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    summary: gr.HTML

    def components(self) -> list[Any]:
        """In the order `request_fields` and `paste_updates` use."""
        return [getattr(self, name) for name in _NAMES]


_NAMES = ("enabled", "upscaler", "steps", "denoising_strength", "scale", "resize_x", "resize_y", "checkpoint",
          "sampler", "scheduler", "prompt", "negative_prompt")


def hires_section(context: AppContext, prefix: str = "txt2img") -> HiresControls:
    """Build the accordion; call `wire_size_summary` once the width and height sliders exist."""
    checkpoints = [SAME_CHECKPOINT, *(context.models.display_title(info) for info in context.models.checkpoints())]
    with gr.Accordion("Hires. fix", open=False, elem_id=f"{prefix}_hr"):
        enabled = gr.Checkbox(False, label="Hires. fix", elem_id=f"{prefix}_enable_hr",
                              info="generate small, upscale, then denoise again at the larger size")
        summary = gr.HTML("", elem_id=f"{prefix}_hires_fix_row_final_size")
        with gr.Row():
            upscaler = gr.Dropdown(upscaler_names(context.upscalers), value=LATENT_MODES[0], label="Upscaler",
                                   elem_id=f"{prefix}_hr_upscaler")
            steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps", elem_id=f"{prefix}_hires_steps",
                              info="0: the same as Sampling steps")
            denoising = gr.Slider(0, 1, value=DEFAULT_DENOISING, step=0.01, label="Denoising strength",
                                  elem_id=f"{prefix}_denoising_strength")
        with gr.Row():
            scale = gr.Slider(1, 4, value=2.0, step=0.05, label="Upscale by", elem_id=f"{prefix}_hr_scale")
            resize_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to", elem_id=f"{prefix}_hr_resize_x",
                                 info="0: from the height (or Upscale by)")
            resize_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to", elem_id=f"{prefix}_hr_resize_y",
                                 info="0: from the width (or Upscale by)")
        with gr.Row():
            checkpoint = gr.Dropdown(checkpoints, value=SAME_CHECKPOINT, label="Hires checkpoint",
                                     elem_id=f"{prefix}_hr_checkpoint")
            sampler = gr.Dropdown([SAME_SAMPLER, *context.samplers.names()], value=SAME_SAMPLER,
                                  label="Hires sampling method", elem_id=f"{prefix}_hr_sampler")
            scheduler = gr.Dropdown([SAME_SCHEDULER, *context.samplers.schedule_names()], value=SAME_SCHEDULER,
                                    label="Hires schedule type", elem_id=f"{prefix}_hr_scheduler")
        with gr.Row():
            prompt = gr.Textbox("", label="Hires prompt", lines=2, placeholder="empty: the prompt",
                                elem_id=f"{prefix}_hr_prompt")
            negative = gr.Textbox("", label="Hires negative prompt", lines=2, placeholder="empty: the negative prompt",
                                  elem_id=f"{prefix}_hr_neg_prompt")
    return HiresControls(enabled, upscaler, steps, denoising, scale, resize_x, resize_y, checkpoint, sampler,
                         scheduler, prompt, negative, summary)


def size_summary(enabled: bool, width: float, height: float, scale: float, resize_x: float, resize_y: float) -> str:
    """A1111's line under the checkbox: "from 512x512 to 1024x1024" (empty while hires fix is off)."""
    if not enabled or not width or not height:
        return ""
    size = hires_size(int(width), int(height), float(scale or 1), int(resize_x or 0), int(resize_y or 0))
    final_w, final_h = size.final_size
    return (f"<span class='gr-box gr-text-input'>from <strong>{int(width)}x{int(height)}</strong> to "
            f"<strong>{final_w}x{final_h}</strong></span>")


def wire_size_summary(controls: HiresControls, width: gr.Slider, height: gr.Slider) -> None:
    inputs = [controls.enabled, width, height, controls.scale, controls.resize_x, controls.resize_y]
    for component in inputs:
        component.change(size_summary, inputs=inputs, outputs=[controls.summary], queue=False, api_name=False,
                         show_progress="hidden")


def request_fields(enabled: bool | None, upscaler: str | None, steps: float | None, denoising: float | None,
                   scale: float | None, resize_x: float | None, resize_y: float | None, checkpoint: str | None,
                   sampler: str | None, scheduler: str | None, prompt: str | None, negative: str | None
                   ) -> dict[str, Any]:
    """The request fields the accordion asks for; nothing while the box is unticked."""
    if not enabled:
        return {}
    return {
        "enable_hr": True,
        "hr_upscaler": upscaler or LATENT_MODES[0],
        "hr_second_pass_steps": steps or 0,
        "denoising_strength": DEFAULT_DENOISING if denoising is None else denoising,
        "hr_scale": scale or 2.0,
        "hr_resize_x": resize_x or 0,
        "hr_resize_y": resize_y or 0,
        "hr_checkpoint_name": None if checkpoint in (None, "", SAME_CHECKPOINT) else checkpoint,
        "hr_sampler_name": None if sampler in (None, "", SAME_SAMPLER) else sampler,
        "hr_scheduler": None if scheduler in (None, "", SAME_SCHEDULER) else scheduler,
        "hr_prompt": prompt or "",
        "hr_negative_prompt": negative or "",
    }


def paste_values(parsed: dict[str, Any]) -> dict[str, Any]:
    """What a parsed infotext sets, by `HiresControls` attribute. A1111's rule: hires fix was on when the text has a
    denoising strength and a hires scale, resize or upscaler; then the options it leaves out go back to "same"."""
    on = "Denoising strength" in parsed and any(key in parsed for key in (
        "Hires upscale", "Hires upscaler", "Hires resize-1"))
    if not on:
        return {"enabled": False}
    return {
        "enabled": True,
        "upscaler": parsed.get("Hires upscaler", LATENT_MODES[0]),
        "steps": parsed.get("Hires steps", 0),
        "denoising_strength": parsed["Denoising strength"],
        "scale": parsed.get("Hires upscale", 2.0),
        "resize_x": parsed.get("Hires resize-1", 0),
        "resize_y": parsed.get("Hires resize-2", 0),
        "checkpoint": parsed.get("Hires checkpoint", SAME_CHECKPOINT),
        "sampler": parsed.get("Hires sampler", SAME_SAMPLER),
        "scheduler": parsed.get("Hires schedule type", SAME_SCHEDULER),
        "prompt": parsed.get("Hires prompt", ""),
        "negative_prompt": parsed.get("Hires negative prompt", ""),
    }


def paste_updates(parsed: dict[str, Any]) -> list[Any]:
    """Updates for `HiresControls.components()` ("send to txt2img")."""
    values = paste_values(parsed)
    return [gr.update(value=values[name]) if name in values else gr.update() for name in _NAMES]


def _checkpoint_check(context: AppContext) -> Any:
    """An infotext names the checkpoint as `name [hash]` (or just a name): pick this install's title for it."""
    def check(value: Any) -> str:
        if value == SAME_CHECKPOINT:
            return SAME_CHECKPOINT
        try:
            return context.models.display_title(context.models.resolve(str(value)))
        except ModelError:
            raise ValueError(f"checkpoint {value!r} is not here") from None
    return check


def paste_fields(context: AppContext, controls: HiresControls) -> list[PasteField]:
    """Rows for the tab's ↙ paste table (webui/ui/paste_params.py)."""
    checks = {"checkpoint": _checkpoint_check(context)}
    return [PasteField(lambda parsed, name=name: paste_values(parsed).get(name), getattr(controls, name),
                       checks.get(name)) for name in _NAMES]

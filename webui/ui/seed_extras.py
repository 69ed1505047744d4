"""A1111's "Extra" seed options under the seed box: variation seed and strength, resize seed from, and the job's noise
source (RNG), hidden until the Extra checkbox is ticked; and the "Override settings" box under them
(webui/ui/override_settings.py), which travels with them through the tabs' handlers, paste and "send to".

As in A1111, the options count only while Extra is ticked, so a hidden leftover never changes an image. Pasting or
sending an infotext with `Variation seed`, `Seed resize from` or a non-default `RNG` fills them and ticks Extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.services.core_settings import RNG_SOURCES
from webui.ui import override_settings
from webui.ui.paste_params import PasteField

FROM_SETTING = "Setting"  # the RNG choice that leaves the noise source to the Settings tab
RNG_CHOICES = (FROM_SETTING, *RNG_SOURCES)


@dataclass
class SeedExtras:
    """The Extra checkbox and the options it reveals."""

    enabled: gr.Checkbox
    subseed: gr.Number
    subseed_strength: gr.Slider
    resize_from_w: gr.Slider
    resize_from_h: gr.Slider
    rng: gr.Dropdown
    overrides: gr.Dropdown

    def components(self) -> list[Any]:
        """In the order `request_fields` and `paste_updates` use."""
        return [self.enabled, self.subseed, self.subseed_strength, self.resize_from_w, self.resize_from_h, self.rng,
                self.overrides]


def seed_extras(prefix: str) -> SeedExtras:
    """Build the checkbox and its hidden group; call right after the seed row."""
    enabled = gr.Checkbox(False, label="Extra", elem_id=f"{prefix}_subseed_show")
    with gr.Group(visible=False, elem_id=f"{prefix}_seed_extras") as group:
        with gr.Row():
            subseed = gr.Number(value=-1, precision=0, label="Variation seed (-1 = random)",
                                elem_id=f"{prefix}_subseed")
            strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                 elem_id=f"{prefix}_subseed_strength")
        with gr.Row():
            resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                 elem_id=f"{prefix}_seed_resize_from_w")
            resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                 elem_id=f"{prefix}_seed_resize_from_h")
        rng = gr.Dropdown(list(RNG_CHOICES), value=FROM_SETTING, label="Noise source (RNG)", elem_id=f"{prefix}_rng")
    overrides = override_settings.override_box(prefix)  # outside the group: it counts whether Extra is ticked or not
    enabled.change(lambda on: gr.Group(visible=bool(on)), inputs=[enabled], outputs=[group], queue=False,
                   api_name=False, show_progress="hidden")
    return SeedExtras(enabled, subseed, strength, resize_w, resize_h, rng, overrides)


def request_fields(enabled: bool | None, subseed: float | None, strength: float | None, resize_w: float | None,
                   resize_h: float | None, rng: str | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The request fields the options ask for: the seed options only while Extra is ticked (A1111 ignores them
    then), the override settings always. Raises RequestError for an override entry it cannot use."""
    fields = override_settings.request_fields(overrides)
    if not enabled:
        return fields
    fields |= {
        "subseed": -1 if subseed is None else subseed,
        "subseed_strength": strength or 0.0,
        "seed_resize_from_w": resize_w or 0,
        "seed_resize_from_h": resize_h or 0,
    }
    if rng and rng != FROM_SETTING:
        fields["rng"] = rng
    return fields


_NAMES = ("enabled", "subseed", "subseed_strength", "resize_from_w", "resize_from_h", "rng")


def paste_values(parsed: dict[str, Any]) -> dict[str, Any]:
    """What a parsed infotext sets, by `SeedExtras` attribute: the keys it has fill their fields, and Extra is ticked
    when any of them asks for something (a variation seed, an old size, a noise source other than GPU)."""
    values: dict[str, Any] = {}
    if "Variation seed" in parsed:
        values["subseed"] = parsed["Variation seed"]
        values["subseed_strength"] = parsed.get("Variation seed strength", 0)
    if "Seed resize from-1" in parsed:
        values["resize_from_w"] = parsed["Seed resize from-1"]
        values["resize_from_h"] = parsed.get("Seed resize from-2", 0)
    rng = parsed.get("RNG")
    if rng in RNG_SOURCES:
        values["rng"] = rng
    if "subseed" in values or "resize_from_w" in values or rng in RNG_SOURCES and rng != "GPU":
        values["enabled"] = True
    return values


def paste_updates(parsed: dict[str, Any]) -> list[Any]:
    """Updates for `SeedExtras.components()` ("send to" a tab); the fields the infotext does not set stay."""
    values = paste_values(parsed)
    updates = [gr.update(value=values[name]) if name in values else gr.update() for name in _NAMES]
    return [*updates, override_settings.paste_update(parsed)]


def paste_fields(extras: SeedExtras) -> list[PasteField]:
    """Rows for a tab's ↙ paste table (webui/ui/paste_params.py)."""
    fields = [PasteField(lambda parsed, name=name: paste_values(parsed).get(name), getattr(extras, name))
              for name in _NAMES]
    return [*fields, PasteField(override_settings.paste_update, extras.overrides)]  # the key yields a whole update

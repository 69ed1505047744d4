"""A1111's ↙ button ("read generation parameters from prompt, or from the last generation if the prompt is empty")
and dropping an image on the prompt box: both fill every field of a generating tab from an infotext.

Each tab hands over a field table, `PasteField(key, component)`, where `key` is an infotext key (`Steps`, `Size-1`)
or a function of the parsed infotext; fields added later (hires fix, variation seed, Clip skip) plug in by adding a
row to the tab's table, as PNG Info's "send to" does. A field the infotext does not mention is left as it is.

Plain text is never taken apart: the prompt box is read as an infotext only when its last line holds at least 3
`Key: value` pairs (A1111's rule), so pressing ↙ on an ordinary prompt changes nothing and says why.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from webui.services.infotext import has_parameter_line, parse_infotext
from webui.services.output_browser import OutputBrowser
from webui.services.outputs import read_infotext
from webui.services.uploads import UploadError, UploadLimits, check_header
from webui.ui.session import owner_of

MAX_PASTED_CHARS = 10_000  # A1111 ignores text this long in an image (it is no infotext a UI wrote)


@dataclass(frozen=True)
class PasteField:
    """One field the paste fills: `key` names the infotext key, or computes the value from the parsed dict (None:
    leave the field alone). `check(value)` may turn the value into the field's own (a sampler alias into its name)
    or raise ValueError with the reason it cannot be used."""

    key: str | Callable[[dict[str, Any]], Any]
    component: gr.components.Component
    check: Callable[[Any], Any] | None = None


def _choice_values(component: gr.components.Component) -> list[Any]:
    values = []
    for choice in getattr(component, "choices", None) or []:
        values.append(choice[1] if isinstance(choice, (tuple, list)) and len(choice) == 2 else choice)
    return values


def _label(field: PasteField) -> str:
    return field.key if isinstance(field.key, str) else (getattr(field.component, "label", None) or "a field")


def field_value(field: PasteField, value: Any) -> Any:
    """The value as the field's component takes it; raises ValueError (with the reason) when it does not fit."""
    component = field.component
    if field.check is not None:
        return field.check(value)
    if isinstance(component, gr.Checkbox):
        return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1", "yes")
    if isinstance(component, (gr.Slider, gr.Number)):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{value!r} is not a number")
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        low, high = getattr(component, "minimum", None), getattr(component, "maximum", None)
        if low is not None and number < low or high is not None and number > high:
            raise ValueError(f"{value} is outside this field's range {low}..{high}")
        whole = getattr(component, "precision", None) == 0 or (
            isinstance(component, gr.Slider) and float(component.step or 1).is_integer())
        return int(round(number)) if whole else number
    if isinstance(component, (gr.Dropdown, gr.Radio)) and not getattr(component, "multiselect", False):
        choices = _choice_values(component)
        if choices and value not in choices and not getattr(component, "allow_custom_value", False):
            raise ValueError(f"{value!r} is not one of the choices here")
        return value
    return value if isinstance(value, (list, dict)) else str(value)


def sampler_check(samplers: Any, attribute: str) -> Callable[[Any], Any] | None:
    """For the `sampler` and `schedule` fields: names are checked against the sampler table (an alias or an old
    combined name becomes the sampler's name), not against the dropdown's choices, which follow the chosen sampler.
    `samplers` is the context's sampler registry (typed loosely: the UI layer does not import the engine)."""
    if attribute == "sampler":
        def sampler(name: Any) -> str:
            try:
                return samplers.resolve(str(name))[0].name
            except ValueError:
                raise ValueError(f"{name!r} is not a sampler here") from None
        return sampler
    if attribute == "schedule":
        def schedule(label: Any) -> str:
            if str(label) not in samplers.schedule_names():
                raise ValueError(f"{label!r} is not a schedule type here")
            return str(label)
        return schedule
    return None


def paste_updates(fields: list[PasteField], parsed: dict[str, Any]) -> tuple[list[Any], list[str], int]:
    """(one update per field, notes on values that could not be used, how many fields were filled)."""
    updates: list[Any] = []
    notes: list[str] = []
    filled = 0
    for field in fields:
        value = field.key(parsed) if callable(field.key) else parsed.get(field.key)
        if value is None:
            updates.append(gr.skip())
            continue
        try:
            checked = field_value(field, value)
            # a check may answer with a whole update (a box that also changes its choices and visibility)
            is_update = isinstance(checked, dict) and checked.get("__type__") == "update"
            updates.append(checked if is_update else gr.update(value=checked))
            filled += 0 if is_update and checked.get("value") in (None, [], "") else 1  # a box only cleared
        except ValueError as exc:
            notes.append(f"{_label(field)}: {exc}; kept the current value")
            updates.append(gr.skip())
    return updates, notes, filled


def _message(filled: int, source: str, notes: list[str]) -> str:
    text = f"Filled {filled} field(s) from {source}."
    if notes:
        text += " " + "; ".join(notes) + "."
    return html.escape(text)


@dataclass
class PasteWiring:
    """What a tab's paste needs besides its fields: the ↙ button, the prompt box, the hidden drop target and the line
    that answers."""

    button: gr.Button
    prompt: gr.Textbox
    drop: gr.File
    message: gr.Markdown


def wire_paste(browser: OutputBrowser, wiring: PasteWiring, fields: list[PasteField],
               limits: UploadLimits | None = None) -> None:
    """↙ reads the prompt box (or, when it is empty, the caller's newest image, as A1111 reads `params.txt`); an image
    dropped on the prompt box arrives in the hidden file field (assets/dragdrop.js) and fills the fields from its own
    infotext. Every output is the field table, then the answer line."""
    limits = limits or UploadLimits.from_env()
    outputs = [field.component for field in fields] + [wiring.message]
    unchanged = [gr.skip() for _ in fields]

    def fill(text: str, source: str) -> list[Any]:
        updates, notes, filled = paste_updates(fields, parse_infotext(text))
        return [*updates, _message(filled, source, notes)]

    def on_paste(prompt: str | None, request: gr.Request) -> list[Any]:
        text = prompt or ""
        source = "the prompt box"
        if not text.strip():
            text = browser.latest_infotext(owner_of(request))
            source = "your last generation"
            if not text:
                return [*unchanged, "Nothing to read: the prompt box is empty and you have no saved image with "
                                    "generation parameters yet."]
        if not has_parameter_line(text):
            return [*unchanged, "The prompt box holds no generation parameters (an infotext ends with a line such "
                                "as `Steps: 20, Sampler: Euler a, Seed: 1`); nothing was changed."]
        return fill(text, source)

    def on_drop(path: str | None) -> list[Any]:
        if not path:
            return [*unchanged, gr.skip(), gr.skip()]
        try:
            check_header(path, "image", limits)
            text = read_infotext(Path(path)) or ""
        except UploadError as exc:
            return [*unchanged, html.escape(str(exc)), None]
        except Exception:  # not an image Pillow reads
            return [*unchanged, "The dropped file is not an image this app can read; nothing was changed.", None]
        if len(text) >= MAX_PASTED_CHARS or not has_parameter_line(text):
            return [*unchanged, "The dropped image holds no generation parameters; nothing was changed.", None]
        return [*fill(text, "the dropped image"), None]

    # queued without a limit: quick, never waits behind a generation, and the answer line is updated in order
    wiring.button.click(on_paste, inputs=[wiring.prompt], outputs=outputs, concurrency_limit=None, api_name=False,
                        show_progress="hidden")
    wiring.drop.upload(on_drop, inputs=[wiring.drop], outputs=[*outputs, wiring.drop], concurrency_limit=None,
                       api_name=False, show_progress="hidden")

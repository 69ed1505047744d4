"""A1111's "Override settings" box: the settings a pasted or sent infotext asks for (`Clip skip: 2`, `ENSD: 31337`,
`Emphasis: No norm`) shown as removable entries, and applied to that tab's jobs only.

Why a box and not the Settings tab: a Civitai infotext made with Clip skip 2 must remake its image without changing
the user's own setting for every later job, which is what A1111 does with the same box. It stays hidden until an
infotext brings an override. An infotext lists only values that differ from A1111's defaults, so a key it leaves out
leaves the user's setting in force.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.services.requests import RequestError

# infotext key -> request field, with the value check the request schema would make (its message, sooner)
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")
_KEYS = {"Clip skip": "clip_skip", "ENSD": "ensd", "Emphasis": "emphasis"}
_DEFAULTS = {"Clip skip": 1, "ENSD": 0, "Emphasis": "Original"}


def override_box(prefix: str) -> gr.Dropdown:
    """The box; call where the tab's seed options end."""
    return gr.Dropdown([], value=[], multiselect=True, allow_custom_value=True, label="Override settings",
                       visible=False, elem_id=f"{prefix}_override_settings")


def override_entries(parsed: dict[str, Any]) -> list[str]:
    """The entries an infotext asks for, as `Key: value`, in a fixed order; defaults are left out."""
    return [f"{key}: {parsed[key]}" for key in _KEYS if key in parsed and parsed[key] != _DEFAULTS[key]]


def paste_update(parsed: dict[str, Any]) -> dict[str, Any]:
    """The box's update for an infotext: its entries, shown when there are any (an infotext without overrides
    clears the box, since the infotext then asks for the user's own settings)."""
    entries = override_entries(parsed)
    return gr.update(choices=entries, value=entries, visible=bool(entries))


def request_fields(entries: list[str] | None) -> dict[str, Any]:
    """The request fields of the box's entries; raises RequestError naming an entry it cannot use."""
    fields: dict[str, Any] = {}
    for entry in entries or []:
        key, _, value = str(entry).partition(":")
        key, value = key.strip(), value.strip()
        if key not in _KEYS or not value:
            raise RequestError("override_settings", f"{entry!r} is not an override this app knows; use "
                                                    f"{', '.join(f'{k}: <value>' for k in _KEYS)}, or remove it")
        if key == "Emphasis":
            if value not in EMPHASIS_MODES:
                raise RequestError("override_settings", f"Emphasis {value!r} is not one of {', '.join(EMPHASIS_MODES)}")
            fields["emphasis"] = value
            continue
        try:
            fields[_KEYS[key]] = int(value)
        except ValueError:
            raise RequestError("override_settings", f"{key} {value!r} is not a whole number") from None
    return fields

"""The Settings tab: every registered setting (core and extensions), grouped as A1111's, saved to config.json.

Core groups come first in `core_settings.SECTIONS` order, then each extension's settings under its name. Apply
validates every field, saves only what changed, and says what changed (old -> new) and what waits for a restart.
"""

from __future__ import annotations

import re
from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.services.core_settings import SECTIONS, THEME
from webui.services.settings import SettingSpec
from webui.ui.session import require_admin

# Runs in the browser after the page load and after Apply: theme.js applies light/dark/system.
_APPLY_THEME_JS = "(mode) => { if (window.latentStudioTheme) { window.latentStudioTheme(mode); } return []; }"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _elem_id(spec: SettingSpec) -> str:
    return "setting_" + spec.key.replace(".", "_").replace("-", "_")


def _component(spec: SettingSpec, value: Any) -> gr.components.Component:
    elem_id = _elem_id(spec)
    info = spec.help or None
    if spec.restart_required:
        info = f"{info} (needs a restart)" if info else "Needs a restart."
    if spec.kind == "checkbox":
        return gr.Checkbox(value=bool(value), label=spec.label, info=info, elem_id=elem_id)
    if spec.kind == "slider":
        return gr.Slider(spec.minimum or 0, spec.maximum if spec.maximum is not None else 1, value=value,
                         step=spec.step, label=spec.label, info=info, elem_id=elem_id)
    if spec.kind == "number":
        # No minimum/maximum here: the spec checks the range, so the message names the setting and the bounds.
        return gr.Number(value=value, label=spec.label, info=info, precision=0 if spec.integer else None,
                         elem_id=elem_id)
    if spec.kind == "dropdown":
        return gr.Dropdown(list(spec.choices), value=value, label=spec.label, info=info, elem_id=elem_id)
    return gr.Textbox(value=str(value), label=spec.label, info=info, elem_id=elem_id)


def grouped_specs(specs: list[SettingSpec]) -> list[tuple[str, list[SettingSpec]]]:
    """(heading, specs): the core sections in order, then one group per extension (its name), sorted."""
    order = {name: index for index, name in enumerate(SECTIONS)}
    groups: dict[str, list[SettingSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.group, []).append(spec)
    return sorted(groups.items(), key=lambda item: (order.get(item[0], len(order)), item[0]))


def validation_errors(specs: list[SettingSpec], values: list[Any]) -> list[str]:
    """Every invalid field at once (not only the first), each naming the setting and what it allows."""
    errors = []
    for spec, value in zip(specs, values):
        try:
            spec.coerce(value)
        except ValueError as exc:
            errors.append(f"- **{spec.label}**: {exc}")
    return errors


def build_settings_tab(context: AppContext, demo: gr.Blocks) -> None:
    store = context.settings
    if not store.specs:
        gr.Markdown("No settings registered.")
        return
    gr.Markdown("Settings are saved in `config.json` in the data folder (format: docs/settings.md). Only an admin "
                "may change them.", elem_id="settings_intro")
    specs: list[SettingSpec] = []
    components: list[gr.components.Component] = []
    for heading, members in grouped_specs(list(store.specs.values())):
        with gr.Accordion(heading, open=True, elem_id=f"settings_section_{_slug(heading)}"):
            for spec in members:
                specs.append(spec)
                components.append(_component(spec, store.get(spec.key)))
    save = gr.Button("Apply settings", variant="primary", elem_id="settings_apply")
    message = gr.Markdown(elem_id="settings_message")
    theme = next((c for spec, c in zip(specs, components) if spec.key == THEME), None)

    def on_save(request: gr.Request, *values: Any) -> str:
        require_admin(context.users, request, "change settings")
        errors = validation_errors(specs, list(values))
        if errors:
            return "**Nothing was saved**; fix these first:\n" + "\n".join(errors)
        try:
            report = store.update({spec.key: value for spec, value in zip(specs, values)})
        except ValueError as exc:  # a setting registered meanwhile, or a race with another admin
            return f"**Error:** {exc}"
        return report.summary()

    applied = save.click(on_save, inputs=components, outputs=[message], api_name="settings_apply")

    # Show the stored values on every page load, not the ones from when the UI was built. A dict keyed by component,
    # never a bare list: with one setting Gradio would hand the whole list to that one box (`['Hello ...']`).
    def current() -> dict[gr.components.Component, Any]:
        return {component: store.get(spec.key) for spec, component in zip(specs, components)}

    loaded = demo.load(current, outputs=components, queue=False)
    if theme is not None:
        loaded.then(None, inputs=[theme], js=_APPLY_THEME_JS, queue=False)
        applied.then(None, inputs=[theme], js=_APPLY_THEME_JS, queue=False)

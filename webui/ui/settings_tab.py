"""The Settings tab: every registered setting (core and extensions), saved to config.json."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.services.settings import SettingSpec
from webui.ui.session import require_admin


def _component(spec: SettingSpec, value: Any) -> gr.components.Component:
    elem_id = "setting_" + spec.key.replace(".", "_").replace("-", "_")
    if spec.kind == "checkbox":
        return gr.Checkbox(value=bool(value), label=spec.label, elem_id=elem_id)
    if spec.kind == "slider":
        return gr.Slider(spec.minimum or 0, spec.maximum or 1, value=value, step=spec.step, label=spec.label, elem_id=elem_id)
    if spec.kind == "number":
        return gr.Number(value=value, label=spec.label, elem_id=elem_id)
    if spec.kind == "dropdown":
        return gr.Dropdown(list(spec.choices), value=value, label=spec.label, elem_id=elem_id)
    return gr.Textbox(value=str(value), label=spec.label, elem_id=elem_id)


def build_settings_tab(context: AppContext, demo: gr.Blocks) -> None:
    specs = list(context.settings.specs.values())
    if not specs:
        gr.Markdown("No settings registered.")
        return
    components = []
    for owner in sorted({s.owner for s in specs}):
        with gr.Group():
            gr.Markdown(f"**{owner}**")
            for spec in (s for s in specs if s.owner == owner):
                components.append(_component(spec, context.settings.get(spec.key)))
    save = gr.Button("Apply settings", variant="primary", elem_id="settings_apply")
    message = gr.Markdown(elem_id="settings_message")

    def on_save(request: gr.Request, *values: Any) -> str:
        require_admin(context.users, request, "change settings")
        try:
            context.settings.update({spec.key: value for spec, value in zip(specs, values)})
        except ValueError as exc:
            return f"⚠️ {exc}"
        return "Settings saved."

    save.click(on_save, inputs=components, outputs=[message], api_name="settings_apply")
    # Show the stored values on every page load, not the ones from when the UI was built.
    demo.load(lambda: [context.settings.get(spec.key) for spec in specs], outputs=components, queue=False)

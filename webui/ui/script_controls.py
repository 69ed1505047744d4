"""The "Script" dropdown at the bottom of txt2img and img2img (A1111's selectable scripts) and the chosen script's
controls, built from its argument schema: a checkbox for a truth value, a dropdown for a field with choices, a slider
for a bounded number, a text box otherwise (`json_schema_extra={"ui": False}` keeps a field API-only).

The tab's Generate handler receives the values with the extension controls (under `SCRIPT_KEY`, which no extension
name can be), and `ScriptControls.submitter` turns them into the job to watch: the script's, or None for a plain
generation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, get_args, get_origin

import gradio as gr

from webui.context import AppContext
from webui.services.generation import ModeRunner
from webui.services.jobs import Job
from webui.services.requests import GenerationRequest
from webui.services.scripts import Script, ScriptService

SCRIPT_KEY = "script"  # a reserved extension name (read_manifest refuses it): API parameters read `script_...`
CHOOSER = "name"
NONE = "None"


def _element(text: str) -> str:
    return re.sub(r"\W+", "_", text.lower()).strip("_")


def _component(script: Script, name: str, info: Any, choices: list[str] | None,
               elem_id: str) -> gr.components.Component | None:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    if extra.get("ui") is False:
        return None
    label = info.title or name
    default = info.get_default(call_default_factory=True)
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        choices = [str(value) for value in get_args(annotation)]
    if choices is not None:
        value = default if default in choices else (choices[0] if choices else None)
        return gr.Dropdown(choices, value=value, label=label, elem_id=elem_id, info=info.description)
    if annotation is bool:
        return gr.Checkbox(value=bool(default), label=label, elem_id=elem_id, info=info.description)
    if annotation in (int, float):
        low = high = None
        for item in info.metadata:
            low = getattr(item, "ge", low)
            high = getattr(item, "le", high)
        step = 1 if annotation is int else 0.01
        if low is not None and high is not None:
            return gr.Slider(low, high, value=default, step=step, label=label, elem_id=elem_id, info=info.description)
        return gr.Number(value=default, precision=0 if annotation is int else None, label=label, elem_id=elem_id,
                         info=info.description)
    return gr.Textbox(value="" if default is None else str(default), label=label, lines=int(extra.get("lines", 1)),
                      elem_id=elem_id, info=info.description)


@dataclass
class ScriptControls:
    service: ScriptService
    mode: Literal["txt2img", "img2img"]
    chooser: gr.Dropdown | None = None
    # (SCRIPT_KEY, "<script name>|<field>" or CHOOSER, component): the shape of extension section controls, so the
    # Gradio endpoint names them `script_name`, `script_x_y_z_plot_x_type`, ...
    controls: list[tuple[str, str, gr.components.Component]] = field(default_factory=list)

    @property
    def components(self) -> list[gr.components.Component]:
        return [component for _, _, component in self.controls]

    def submitter(self, values: dict[str, Any], request: GenerationRequest, owner: str,
                  runner: ModeRunner | None = None) -> Callable[[], Job] | None:
        """None without a chosen script; else a function queueing it. The script's arguments are checked here,
        so a bad value raises RequestError before anything is queued."""
        chosen = values.get(CHOOSER) or NONE
        if chosen == NONE:
            return None
        script = self.service.find(chosen, self.mode)
        prefix = f"{script.name}|"
        args = {key[len(prefix):]: value for key, value in values.items() if key.startswith(prefix)}
        prepared = self.service.prepare(script.name, args, request, self.mode)
        return lambda: self.service.submit(owner, prepared, request, runner)


def script_controls(context: AppContext, mode: Literal["txt2img", "img2img"], tab: str | None = None
                    ) -> ScriptControls:
    """Build the dropdown and one hidden group of controls per script (shown when chosen); call it at the bottom
    of the tab's settings column."""
    tab = tab or mode
    service = ScriptService(context.generation, context.extensions.scripts)
    built = ScriptControls(service, mode)
    scripts = service.scripts(mode)
    env = service.env(mode)
    built.chooser = gr.Dropdown([NONE, *(script.title for script in scripts)], value=NONE, label="Script",
                                elem_id=f"{tab}_script_list")
    built.controls.append((SCRIPT_KEY, CHOOSER, built.chooser))
    groups = []
    for script in scripts:
        with gr.Group(visible=False, elem_id=f"{tab}_script_{_element(script.name)}") as group:
            for name, info in script.Args.model_fields.items():
                try:
                    choices = script.choices(name, env)
                except Exception:  # an extension's choices failing must not break the tab
                    choices = None
                component = _component(script, name, info, choices, f"{tab}_script_{_element(script.name)}_{name}")
                if component is not None:
                    built.controls.append((SCRIPT_KEY, f"{script.name}|{name}", component))
        groups.append((script.title, group))

    def show(chosen: str) -> list[Any]:
        return [gr.update(visible=title == chosen) for title, _ in groups]

    if groups:
        built.chooser.change(show, inputs=[built.chooser], outputs=[group for _, group in groups], api_name=False,
                             queue=False)
    return built


def script_submitter(context: AppContext, mode: Literal["txt2img", "img2img"], values: dict[str, Any],
                     request: GenerationRequest, owner: str, runner: ModeRunner | None = None
                     ) -> Callable[[], Job] | None:
    """`ScriptControls.submitter` for a tab that keeps only the controls (the values arrive under SCRIPT_KEY)."""
    controls = ScriptControls(ScriptService(context.generation, context.extensions.scripts), mode)
    return controls.submitter(values, request, owner, runner)

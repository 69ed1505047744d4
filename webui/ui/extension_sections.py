"""Extension controls inside txt2img/img2img: rendered always visible, delivered to hooks by name."""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Iterator

import gradio as gr

from webui.context import AppContext
from webui.ui.extension_ui import extension_ui

SectionControl = tuple[str, str, gr.components.Component]  # (extension, control name, component)


def render_sections(context: AppContext, mode: str, tab: str | None = None) -> list[SectionControl]:
    """Build every active extension's section for `mode` in `tab` (default: the mode's own; the Inpaint tab builds
    the img2img sections); a section that fails to build disables its extension. Element ids in a section start
    with the tab's name (see `extension_ui`)."""
    tab = tab or mode
    controls: list[SectionControl] = []
    for record in context.extensions.active():
        for index, section in enumerate(record.registrations.sections):
            if mode not in section.modes:
                continue
            try:
                with gr.Group(elem_id=f"{tab}_ext_{record.name}" + (f"_{index}" if index else "")) as group:
                    gr.Markdown(f"**{section.title}**")
                    with extension_ui(record, group, tab, mode):
                        built = section.build(mode)
                if not isinstance(built, dict):
                    raise TypeError("a section's build(mode) must return {name: component}")
            except Exception as exc:
                record.fail("building its UI", exc)
                continue
            controls += [(record.name, name, component) for name, component in built.items()]
    return controls


def collect_values(controls: list[SectionControl], values: tuple[Any, ...]) -> dict[str, dict[str, Any]]:
    """Positional Gradio inputs back to {extension: {control: value}}."""
    grouped: dict[str, dict[str, Any]] = {}
    for (extension, name, _), value in zip(controls, values):
        grouped.setdefault(extension, {})[name] = value
    return grouped


def with_extension_controls(handler: Callable[..., Iterator[Any]],
                            controls: list[SectionControl]) -> Callable[..., Iterator[Any]]:
    """Wrap `handler(*inputs, extensions=..., request=...)` as a Gradio handler whose inputs are the
    handler's own parameters followed by the extension controls (exposed to API clients as `<extension>_<control>`)."""
    own = inspect.signature(handler).parameters
    names = [n for n in own if n not in ("extensions", "request")]
    fixed, extra = len(names), len(controls)
    # The handler's own defaults stay defaults, so a control added later is optional for API clients too.
    own_defaults = {n: own[n].default for n in names if own[n].default is not inspect.Parameter.empty}

    def wrapped(*args: Any) -> Iterator[Any]:
        (request,) = args[fixed + extra:]
        extensions = collect_values(controls, args[fixed:fixed + extra])
        yield from handler(*args[:fixed], extensions=extensions, request=request)

    # Extension controls get their component's initial value as the default, so API clients written before an
    # extension was installed keep working (gradio_client treats parameters without a default as required).
    defaults = {f"{ext}_{name}": getattr(component, "value", None) for ext, name, component in controls}
    declare_inputs(wrapped, [*names, *defaults], {**own_defaults, **defaults})
    return wrapped


def declare_inputs(handler: Any, names: list[str], defaults: dict[str, Any] | None = None) -> None:
    """Give `handler(*args)` an explicit signature: `names`, then `request` (see handler_signature)."""
    handler.__signature__ = handler_signature(names, defaults)
    handler.__annotations__ = {"request": gr.Request}  # Gradio reads type hints to find the request parameter


def handler_signature(names: list[str], defaults: dict[str, Any] | None = None) -> inspect.Signature:
    """A signature for a handler taking a variable number of controls, then `request`.

    Gradio finds where to pass the request by reading the handler's signature, so a handler whose input count depends
    on the installed extensions declares its parameters explicitly. No progress tracker: a generating tab draws its own
    progress bar in its status line (webui/ui/job_stream.py).
    """
    defaults = defaults or {}
    params = []
    for name in names:
        kwargs = {"default": defaults[name]} if name in defaults else {}
        params.append(inspect.Parameter(re.sub(r"\W", "_", name), inspect.Parameter.POSITIONAL_OR_KEYWORD, **kwargs))
    params.append(inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request,
                                    default=None))
    return inspect.Signature(params)

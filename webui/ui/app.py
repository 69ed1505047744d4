"""The Gradio app: the checkpoint bar and the tabs. It only talks to services from the AppContext."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.services.model_manager import ModelError
from webui.ui import img2img as img2img_ui
from webui.services.uploads import UploadLimits
from webui.ui.bridge import UiBridge
from webui.ui.extension_ui import extension_ui, finalize_extension_ui
from webui.ui.extensions_tab import build_extensions_tab, status_html
from webui.ui.output_browser import build_output_browser_tab
from webui.ui.prompt_tools import icon, open_outputs_button, wire_open_outputs
from webui.ui.session import require_admin
from webui.ui.settings_tab import build_settings_tab
from webui.ui.txt2img import build_txt2img_tab, register_controlnet_target, register_txt2img_target


def _checkpoint_choices(context: AppContext) -> list[str]:
    return [context.models.display_title(info) for info in context.models.checkpoints()]


def _selected_title(context: AppContext) -> str | None:
    name = context.models.active_name
    info = context.models.resolve(name) if name else context.models.default_checkpoint()
    return context.models.display_title(info) if info else None


def _checkpoint_names(context: AppContext) -> list[str]:
    return [info.name for info in context.models.checkpoints()]


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def refresh_summary(before: list[str], after: list[str], vae_files: list[str]) -> str:
    """What Refresh found, so a click visibly did something: the checkpoints (which are new, which are gone since
    this page last looked) and the VAE files."""
    shown = ", ".join(after[:8]) + (", ..." if len(after) > 8 else "")
    line = f"Refresh found {_plural(len(after), 'checkpoint')}" + (f": {shown}" if after else "")
    new = [name for name in after if name not in before]
    gone = [name for name in before if name not in after]
    if new:
        line += f"; new: {', '.join(new)}"
    if gone:
        line += f"; gone: {', '.join(gone)}"
    if not new and not gone:
        line += "; nothing changed"
    return f"{line}. {_plural(len(vae_files), 'VAE file')}."


def build_extension_tabs(context: AppContext, bridge: UiBridge) -> None:
    """One tab per registered extension tab; a tab that fails to build disables its extension, not the app."""
    for record in context.extensions.active():
        for index, spec in enumerate(record.registrations.tabs):
            with gr.Tab(spec.title, id=f"ext-{record.name}-{index}") as tab:
                try:
                    with extension_ui(record, tab):
                        bridge.current_tab_id = f"ext-{record.name}-{index}"
                        spec.build(bridge)
                except Exception as exc:
                    record.fail("building its UI", exc)
                    gr.Markdown(f"**Warning:** the extension **{record.name}** failed to build this tab: {exc}")


def build_ui(context: AppContext, install_allowed: bool = True, local: bool = False) -> gr.Blocks:
    """`local`: served on this machine only (no --listen/--share), so "open outputs folder" may act on its desktop."""
    with gr.Blocks(title="Latent Studio", analytics_enabled=False) as demo:
        with gr.Row():
            checkpoint = gr.Dropdown(
                _checkpoint_choices(context),
                value=_selected_title(context),
                label="Stable Diffusion checkpoint",
                elem_id="checkpoint",
                scale=4,
            )
            refresh = gr.Button("Refresh", icon=icon("refresh"), elem_id="refresh_checkpoints", scale=0, min_width=100)
            vae = gr.Dropdown(context.models.vae_names(), value=context.models.vae_choice, label="SD VAE",
                              elem_id="sd_vae", scale=2)
            open_outputs = open_outputs_button() if local else None
        model_status = gr.Markdown(elem_id="model_status")

        with gr.Tabs(elem_id="tabs") as tabs:
            bridge = UiBridge(tabs)
            with gr.Tab("txt2img", id="txt2img"):
                txt2img = build_txt2img_tab(context, checkpoint, bridge)
            img2img = img2img_ui.build_img2img_tabs(context, checkpoint, bridge)
            register_txt2img_target(bridge, txt2img)
            img2img_ui.register_send_targets(bridge, img2img)
            register_controlnet_target(bridge, txt2img)
            with gr.Tab("Image Browser", id="image_browser") as browser_tab:
                build_output_browser_tab(context, browser_tab, bridge)
            build_extension_tabs(context, bridge)
            with gr.Tab("Settings", id="settings"):
                build_settings_tab(context, demo)
            with gr.Tab("Extensions", id="extensions"):
                status_table = build_extensions_tab(context, install_allowed)
        limits = UploadLimits.from_env()
        bridge.finish(lambda path: img2img_ui.checked_image_path(path, limits))

        def on_refresh(request: gr.Request) -> dict:
            require_admin(context.users, request, "refresh the model list")
            context.models.refresh()
            return gr.update(choices=_checkpoint_choices(context), value=_selected_title(context))

        # The API endpoint keeps its one output; the page then says what was found (the names it saw last: State).
        seen_checkpoints = gr.State(_checkpoint_names(context))

        def on_refreshed(before: list[str]) -> tuple[str, dict, list[str]]:
            after = _checkpoint_names(context)
            vae_files = [name for name in context.models.vae_names() if name not in ("Automatic", "None")]
            return refresh_summary(before or [], after, vae_files), gr.update(choices=context.models.vae_names()), after

        refresh.click(on_refresh, outputs=[checkpoint], queue=False, api_name="refresh_checkpoints").success(
            on_refreshed, inputs=[seen_checkpoints], outputs=[model_status, vae, seen_checkpoints], queue=False,
            api_name=False)
        if open_outputs is not None:
            wire_open_outputs(context, open_outputs, model_status)

        def on_checkpoint(title: str) -> list[Any]:
            if not title:
                return [gr.update(), gr.update(), gr.update(), ""]
            try:
                with context.jobs.device_lock:  # loading moves weights to the device: not while a job samples
                    model = context.models.get(title)
            except ModelError as exc:
                gr.Warning(str(exc))
                return [gr.update(value=_selected_title(context)), gr.update(), gr.update(), f"**Error:** {exc}"]
            width, height = model.default_resolution
            message = f"Loaded **{model.name}** ({model.family.title}, {model.prediction_type}) on {model.device}"
            return [gr.update(), gr.update(value=width), gr.update(value=height), message]

        checkpoint.input(
            on_checkpoint,
            inputs=[checkpoint],
            outputs=[checkpoint, txt2img.width, txt2img.height, model_status],
            concurrency_id="gpu",
            concurrency_limit=1,
            api_name="select_checkpoint",
        )

        def on_vae(choice: str) -> str:
            try:
                context.models.set_vae(choice)
            except ModelError as exc:
                gr.Warning(str(exc))
                return f"**Error:** {exc}"
            return f"VAE: {choice} (applies to the next generation)"

        vae.input(on_vae, inputs=[vae], outputs=[model_status], concurrency_id="gpu", api_name="select_vae")
        # Last, once every core endpoint and element id exists: extension endpoints get their `<extension>_` names,
        # and an extension that clashes fails; the status table shows that too.
        finalize_extension_ui(context.extensions.records)
        status_table.value = status_html(context)
    return demo

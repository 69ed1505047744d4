"""The Gradio app: the checkpoint bar and the tabs. It only talks to services from the AppContext."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.context import AppContext
from webui.services.model_manager import ModelError
from webui.ui.pnginfo import build_pnginfo_tab
from webui.ui.txt2img import build_txt2img_tab


def _checkpoint_choices(context: AppContext) -> list[str]:
    return [context.models.title(info) for info in context.models.checkpoints()]


def _selected_title(context: AppContext) -> str | None:
    name = context.models.active_name
    info = context.models.resolve(name) if name else context.models.default_checkpoint()
    return context.models.title(info) if info else None


def _send_to_txt2img(parsed: dict[str, Any]) -> list[Any]:
    """Fill txt2img from PNG Info's parsed parameters; fields the image lacks are left alone."""
    def pick(key: str) -> Any:
        return gr.update(value=parsed[key]) if key in parsed else gr.update()

    return [
        pick("Prompt"),
        pick("Negative prompt"),
        pick("Sampler"),
        pick("Schedule type"),
        pick("Steps"),
        pick("CFG scale"),
        pick("Size-1"),
        pick("Size-2"),
        pick("Seed"),
    ]


def build_ui(context: AppContext) -> gr.Blocks:
    with gr.Blocks(title="Latent Studio", analytics_enabled=False) as demo:
        with gr.Row():
            checkpoint = gr.Dropdown(
                _checkpoint_choices(context),
                value=_selected_title(context),
                label="Stable Diffusion checkpoint",
                elem_id="checkpoint",
                scale=4,
            )
            refresh = gr.Button("🔄 Refresh", elem_id="refresh_checkpoints", scale=0, min_width=100)
            vae = gr.Dropdown(context.models.vae_names(), value=context.models.vae_choice, label="SD VAE", elem_id="sd_vae", scale=2)
        model_status = gr.Markdown(elem_id="model_status")

        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                txt2img = build_txt2img_tab(context, checkpoint)
            with gr.Tab("PNG Info", id="pnginfo"):
                _, _, parsed = build_pnginfo_tab()
                send = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")

        def on_refresh() -> dict:
            context.models.refresh()
            return gr.update(choices=_checkpoint_choices(context), value=_selected_title(context))

        refresh.click(on_refresh, outputs=[checkpoint], queue=False, api_name="refresh_checkpoints")

        def on_checkpoint(title: str) -> list[Any]:
            if not title:
                return [gr.update(), gr.update(), gr.update(), ""]
            try:
                model = context.models.get(title)
            except ModelError as exc:
                gr.Warning(str(exc))
                return [gr.update(value=_selected_title(context)), gr.update(), gr.update(), f"⚠️ {exc}"]
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
                return f"⚠️ {exc}"
            return f"VAE: {choice} (applies to the next generation)"

        vae.input(on_vae, inputs=[vae], outputs=[model_status], concurrency_id="gpu", api_name="select_vae")

        send.click(
            lambda parsed_values: [*_send_to_txt2img(parsed_values), gr.Tabs(selected="txt2img")],
            inputs=[parsed],
            outputs=[
                txt2img.prompt, txt2img.negative_prompt, txt2img.sampler, txt2img.schedule, txt2img.steps,
                txt2img.cfg_scale, txt2img.width, txt2img.height, txt2img.seed, tabs,
            ],
            queue=False,
        )
    return demo

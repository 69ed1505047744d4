"""The Models tab and `/ext/models/list`, registered through the public extension API."""

from __future__ import annotations

from typing import Any

from webui.services.extensions import ExtensionAPI
from webui.services.model_manager import ModelError, ModelManager

PREDICTIONS = ["auto", "epsilon", "v_prediction"]


def describe(models: ModelManager) -> list[dict[str, Any]]:
    rows = []
    for info in models.checkpoints():
        try:
            family = models.family_title(info)
        except ModelError as exc:
            family = f"unusable: {exc}"
        width, height = models.default_size(info.name)
        rows.append({
            "name": info.name,
            "hash": models.hashes.short_hash(info.path),
            "family": family,
            "resolution": f"{width}x{height}",
            "prediction": models.prediction_overrides.get(info.name, "auto"),
            "size_mb": round(info.path.stat().st_size / 2**20, 1),
        })
    return rows


def register(api: ExtensionAPI) -> None:
    models = api.models
    if models is None:
        raise RuntimeError("the models extension needs the model manager")

    def table() -> list[list[Any]]:
        return [list(row.values()) for row in describe(models)]

    def build(ui) -> None:
        import gradio as gr  # loaded only when the app builds its UI; the CLI never does

        listing = gr.Dataframe(
            value=table(), headers=["name", "hash", "family", "resolution", "prediction", "MB"], interactive=False,
            elem_id="models_table",
        )
        with gr.Row():
            name = gr.Dropdown([i.name for i in models.checkpoints()], label="Checkpoint", elem_id="models_name")
            prediction = gr.Dropdown(PREDICTIONS, value="auto", label="Prediction type (SD2 files cannot always tell)",
                                     elem_id="models_prediction")
            apply = gr.Button("Apply", elem_id="models_apply")
        status = gr.Markdown()

        def on_apply(checkpoint: str, choice: str) -> tuple[list[list[Any]], str]:
            try:
                models.set_prediction_override(checkpoint, None if choice == "auto" else choice)
            except ModelError as exc:
                return table(), f"**Error:** {exc}"
            return table(), f"{checkpoint}: prediction type {choice} (used from the next generation)"

        apply.click(on_apply, inputs=[name, prediction], outputs=[listing, status],
                    api_name=api.api_name("set_prediction"))  # /models_set_prediction

    api.add_tab("Models", build)
    api.add_route("list", lambda: describe(models))

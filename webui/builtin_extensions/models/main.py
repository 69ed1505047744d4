"""The Models tab and `/ext/models/list`, registered through the public extension API."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from webui.services.extensions import ExtensionAPI
from webui.services.model_manager import ModelError, ModelManager

PREDICTIONS = ["auto", "epsilon", "v_prediction"]
LOADED_HEADERS = ("checkpoint", "where", "device", "dtype", "MB", "of which shared MB", "U-Net")
WORKER_HEADERS = ("worker", "state", "host", "device", "job", "jobs done", "failures", "holds", "last error")


def worker_rows(queue: Any) -> list[list[Any]]:
    """The generation workers (Ray, `--workers`/`--ray-address`); empty when jobs run in this process."""
    pool = getattr(queue, "pool", None)
    if pool is None:
        return []
    return [[w["name"], w["state"], w.get("host", ""), w.get("device", ""), w["job"] or "", w["jobs_done"],
             w["failures"], ", ".join(w["holds"]), w["last_error"] or ""] for w in pool.report()]


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

    jobs = api.services["jobs"]
    queue = api.services.get("queue")
    compiler = api.services.get("compiler")

    def unet_state(name: str) -> str:
        model = models.loaded(name)
        return compiler.describe(model) if compiler is not None and model is not None else "not compiled"

    def table() -> list[list[Any]]:
        return [list(row.values()) for row in describe(models)]

    def loaded_rows() -> list[list[Any]]:
        where = {"device": "active, on the device", "ram": "cached in RAM"}
        return [[entry.name, f"active, offloaded: {entry.offload}" if entry.offload else where[entry.where],
                 entry.device, entry.dtype, round(entry.bytes / 2**20, 1),
                 round(entry.shared_bytes / 2**20, 1), unet_state(entry.name)] for entry in models.residency()]

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

        gr.Markdown("### Loaded now")
        loaded = gr.Dataframe(value=loaded_rows(), headers=list(LOADED_HEADERS), interactive=False,
                              elem_id="models_loaded")
        with gr.Row():
            refresh = gr.Button("Refresh", size="sm", elem_id="models_loaded_refresh")
            unload = gr.Button("Unload the chosen checkpoint", size="sm", elem_id="models_unload")

        def on_unload(checkpoint: str | None) -> tuple[list[list[Any]], str]:
            if not checkpoint:
                return loaded_rows(), "Choose a checkpoint above first."
            try:
                with jobs.device_lock:  # after the running job, never under it
                    was_loaded = models.unload(checkpoint)
            except ModelError as exc:
                return loaded_rows(), f"**Error:** {exc}"
            note = "unloaded; the next job that uses it reads the file again" if was_loaded else "was not loaded"
            return loaded_rows(), f"{checkpoint}: {note}."

        refresh.click(loaded_rows, outputs=[loaded], api_name=api.api_name("loaded"))  # /models_loaded
        unload.click(on_unload, inputs=[name], outputs=[loaded, status], api_name=api.api_name("unload"))

        pool = getattr(queue, "pool", None)
        if pool is not None:  # started with --workers or --ray-address
            gr.Markdown(f"### Generation workers\n{pool.description}. Each has its own device and model cache; a "
                        "worker whose process keeps dying is taken out of rotation.")
            workers = gr.Dataframe(value=worker_rows(queue), headers=list(WORKER_HEADERS), interactive=False,
                                   elem_id="models_workers")
            refresh_workers = gr.Button("Refresh", size="sm", elem_id="models_workers_refresh")
            refresh_workers.click(lambda: worker_rows(queue), outputs=[workers],
                                  api_name=api.api_name("workers"))  # /models_workers

    api.add_tab("Models", build)
    api.add_route("list", lambda: describe(models))
    api.add_route("loaded", lambda: [asdict(entry) for entry in models.residency()])

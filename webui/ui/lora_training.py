"""The LoRA training tab: settings, start/interrupt, a progress bar with ETA, a live loss plot and sample images.

Training runs as a job in the LoraTrainingService; this tab only starts it and polls it (a `gr.Timer`), so closing
the browser does not stop a run and the other tabs stay usable while it trains.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from webui.services.lora_training import (
    LR_SCHEDULERS, OPTIMIZERS, PRECISIONS, UNET_LAYER_CHOICES, LoraTrainingService, LoraTrainingSettings, TrainingRun,
)
from webui.services.model_manager import ModelManager

POLL_SECONDS = 1.0
_DEFAULTS = LoraTrainingSettings(Path("."), Path("."), "")

# Component name -> (settings field, label); the order is the order of the start handler's inputs.
_FIELDS: list[tuple[str, str]] = [
    ("name", "LoRA name (file: models/Lora/<name>.safetensors)"),
    ("data", "Dataset folder (images + .txt captions; 10_name sub-folders repeat 10x)"),
    ("trigger", "Trigger word"),
    ("trigger_embedding", "Learn the trigger word too (pivotal tuning: models/embeddings/<trigger>.safetensors)"),
    ("reg_data", "Regularisation folder (optional: images + captions of what should stay as it is)"),
    ("prior_loss_weight", "Prior loss weight (regularisation images)"),
    ("prior_guidance", "Prior guidance (0 = noise target; a CFG scale = hold the base model's guided prediction)"),
    ("preserve_words", "Preservation words (optional, comma-separated: captions with the trigger swapped for each "
                       "must draw what the base model draws)"),
    ("preservation_weight", "Preservation weight"),
    ("preserve_unconditional", "Preserve the empty prompt (CFG's unconditional branch)"),
    ("resolution", "Resolution (0 = the model's own)"),
    ("buckets", "Aspect-ratio buckets"),
    ("rank", "Rank (network dim)"),
    ("alpha", "Alpha"),
    ("train_unet", "Train the U-Net"),
    ("train_text_encoder", "Train the text encoder"),
    ("unet_layers", "U-Net layers (attention+conv = LoCon)"),
    ("conv_rank", "Conv rank (LoCon conv_dim; 0 = rank)"),
    ("conv_alpha", "Conv alpha (0 = alpha)"),
    ("optimizer", "Optimizer"),
    ("learning_rate", "Learning rate (0 = automatic: 1e-4 for SD-sized models, 1e-3 for small ones, 1 for Prodigy)"),
    ("text_encoder_lr", "Text-encoder learning rate (0 = same)"),
    ("weight_decay", "Weight decay"),
    ("embedding_lr", "Trigger-word learning rate (0 = automatic: 5e-3, 1 for Prodigy)"),
    ("lr_scheduler", "LR schedule"),
    ("warmup_steps", "Warm-up steps"),
    ("epochs", "Epochs"),
    ("max_steps", "Max steps (0 = use epochs)"),
    ("batch_size", "Batch size"),
    ("gradient_accumulation", "Gradient accumulation"),
    ("caption_dropout", "Caption dropout"),
    ("network_dropout", "Network dropout"),
    ("noise_offset", "Noise offset"),
    ("min_snr_gamma", "Min-SNR γ (0 = off)"),
    ("cache_latents", "Cache latents"),
    ("gradient_checkpointing", "Gradient checkpointing"),
    ("mixed_precision", "Mixed precision (CUDA only)"),
    ("seed", "Seed"),
    ("average_runs", "Runs to average (0 = automatic: 2 for small models, 1 for SD-sized; each run takes the next "
                     "seed, and the file is their exact mean)"),
    ("sample_prompts", "Sample prompts (one per line; empty = two dataset captions)"),
    ("sample_every", "Sample every N steps (0 = never)"),
    ("save_every", "Save a resumable state every N steps (0 = only at the end)"),
    ("resume", "Resume the saved run of this name"),
]


def _component(field: str, label: str) -> gr.components.Component:
    default = getattr(_DEFAULTS, field)
    elem_id = f"lora_train_{field}"
    choices = {"optimizer": OPTIMIZERS, "lr_scheduler": LR_SCHEDULERS, "mixed_precision": PRECISIONS,
               "unet_layers": UNET_LAYER_CHOICES}.get(field)
    if choices:
        return gr.Dropdown(list(choices), value=default, label=label, elem_id=elem_id)
    if field == "sample_prompts":
        return gr.Textbox(label=label, lines=2, elem_id=elem_id)
    if isinstance(default, bool):
        return gr.Checkbox(value=default, label=label, elem_id=elem_id)
    if isinstance(default, int):
        return gr.Number(value=default, label=label, precision=0, elem_id=elem_id)
    if isinstance(default, float):
        return gr.Number(value=default, label=label, elem_id=elem_id)
    return gr.Textbox(value="" if isinstance(default, Path) else default, label=label, elem_id=elem_id)


def settings_from_values(values: dict[str, Any]) -> LoraTrainingSettings:
    """Form values -> settings; numbers arrive as floats (or None when a box was cleared)."""
    kwargs: dict[str, Any] = {}
    for field, _ in _FIELDS:
        value = values[field]
        default = getattr(_DEFAULTS, field)
        if field == "sample_prompts":
            value = [line.strip() for line in (value or "").splitlines() if line.strip()]
        elif field == "data":
            value = Path(str(value or "").strip())
        elif field == "reg_data":
            value = Path(str(value).strip()) if str(value or "").strip() else None
        elif isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, (int, float)):
            if value is None:
                raise gr.Error(f"{dict(_FIELDS)[field]}: enter a number")
            value = int(value) if isinstance(default, int) and float(value).is_integer() else (
                float(value) if isinstance(default, float) else value)
            if isinstance(default, int) and not isinstance(value, int):
                raise gr.Error(f"{dict(_FIELDS)[field]}: must be a whole number (got {value})")
        else:
            value = str(value or "").strip()
        kwargs[field] = value
    return LoraTrainingSettings(base=Path("."), **kwargs)


def _status_html(run: TrainingRun | None) -> str:
    if run is None:
        return "<p>No training run yet.</p>"
    done, total = (run.progress.step, run.progress.total_steps) if run.progress else (0, run.total_steps or 1)
    bar = f"<progress value='{done}' max='{max(total, 1)}' style='width:100%'></progress>"
    return (f"<div class='lora-train-status' data-state='{html.escape(run.job.status)}' data-step='{done}'>"
            f"<b>{html.escape(run.settings.name)}</b>: {html.escape(run.status_line())}{bar}</div>")


def _loss_frame(run: TrainingRun | None) -> pd.DataFrame:
    rows = run.losses if run is not None else []
    return pd.DataFrame({"step": [r[0] for r in rows], "loss": [r[2] for r in rows]})


def status_payload(run: TrainingRun | None) -> dict[str, Any]:
    """What the API's status call returns (and what a poller needs)."""
    if run is None:
        return {"state": "none"}
    return {
        "state": run.job.status, "name": run.settings.name, "step": run.progress.step if run.progress else 0,
        "total_steps": run.total_steps, "status": run.status_line(), "error": run.error,
        "losses": [[step, round(loss, 6)] for step, loss, _ in run.losses],
        "samples": [str(path) for path, _ in run.samples], "warnings": list(run.messages),
        "output": str(run.result.output) if run.result and run.result.output else None,
        "embedding": str(run.result.embedding) if run.result and run.result.embedding else None,
    }


def build_lora_training_tab(service: LoraTrainingService, models: ModelManager):
    """Returns the tab builder the extension API calls (`build(ui)`)."""
    from webui.ui.session import owner_of

    def build(ui: Any = None) -> None:
        components: dict[str, gr.components.Component] = {}
        titles = [models.title(info) for info in models.checkpoints()]
        default = models.default_checkpoint()
        with gr.Row():
            base = gr.Dropdown(titles, value=models.title(default) if default else None, label="Base model",
                               elem_id="lora_train_base", scale=2)
            for field in ("name", "trigger"):
                components[field] = _component(field, dict(_FIELDS)[field])
        components["data"] = _component("data", dict(_FIELDS)["data"])
        groups = {
            "Network and data": (("rank", "alpha", "unet_layers", "conv_rank", "conv_alpha"),
                                 ("resolution", "buckets", "train_unet", "train_text_encoder", "trigger_embedding"),
                                 ("reg_data", "prior_loss_weight", "prior_guidance"),
                                 ("preserve_words", "preservation_weight", "preserve_unconditional")),
            "Optimizer and schedule": ("optimizer", "learning_rate", "text_encoder_lr", "embedding_lr", "weight_decay",
                                       "lr_scheduler", "warmup_steps", "epochs", "max_steps", "batch_size",
                                       "gradient_accumulation"),
            "Training tricks": ("caption_dropout", "network_dropout", "noise_offset", "min_snr_gamma", "cache_latents",
                                "gradient_checkpointing", "mixed_precision", "seed", "average_runs"),
            "Samples and saving": ("sample_prompts", "sample_every", "save_every", "resume"),
        }
        for title, names in groups.items():
            rows = names if isinstance(names[0], tuple) else (names,)  # a group is one row, or several
            with gr.Accordion(title, open=title == "Network and data"):
                for row in rows:
                    with gr.Row():
                        for field in row:
                            components[field] = _component(field, dict(_FIELDS)[field])
        with gr.Row():
            start = gr.Button("Start training", variant="primary", elem_id="lora_train_start")
            interrupt = gr.Button("Interrupt", elem_id="lora_train_interrupt")
        status = gr.HTML(_status_html(service.latest()), elem_id="lora_train_status")
        with gr.Row():
            plot = gr.LinePlot(_loss_frame(service.latest()), x="step", y="loss", title="Loss (smoothed)",
                               elem_id="lora_train_loss", height=260)
            samples = gr.Gallery(label="Samples", columns=4, height=260, elem_id="lora_train_samples")
        notes = gr.Textbox(label="Messages and warnings", lines=2, interactive=False, elem_id="lora_train_warnings")
        seen = gr.State(None)
        inputs = [base] + [components[field] for field, _ in _FIELDS]

        def on_start(request: gr.Request, base_title: str | None, *values: Any) -> str:
            # the request first: gradio passes it by position, and the form's values follow as *values
            if not base_title:
                raise gr.Error("choose a base model (put a checkpoint in models/Stable-diffusion)")
            settings = settings_from_values(dict(zip([f for f, _ in _FIELDS], values)))
            try:
                run = service.start(owner_of(request), settings, base_title)
            except (ValueError, RuntimeError) as exc:
                raise gr.Error(str(exc)) from None
            return _status_html(run)

        start.click(on_start, inputs=inputs, outputs=[status], api_name="lora_training_start", queue=False)

        def on_interrupt(request: gr.Request) -> str:
            if service.interrupt(owner_of(request)):
                return _status_html(service.latest(owner_of(request))) + "<p>Interrupting after this step…</p>"
            return _status_html(service.latest(owner_of(request))) + "<p>Nothing of yours is training.</p>"

        interrupt.click(on_interrupt, outputs=[status], api_name="lora_training_interrupt", queue=False)

        def on_tick(last_version: str | None, request: gr.Request):
            run = service.latest(owner_of(request))
            # status changes bump the run's version too, so (job, version) says whether anything moved
            version = "" if run is None else f"{run.job.id}:{run.version}"
            if version == last_version:
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), last_version
            gallery = [(str(path), caption) for path, caption in run.samples] if run else []
            return (_status_html(run), _loss_frame(run), gallery, "\n".join(run.messages) if run else "", version)

        timer = gr.Timer(POLL_SECONDS)
        timer.tick(on_tick, inputs=[seen], outputs=[status, plot, samples, notes, seen], queue=False,
                   api_name=False, show_progress="hidden")

        def on_status(request: gr.Request) -> dict[str, Any]:
            return status_payload(service.latest(owner_of(request)))

        hidden = gr.JSON(visible=False)
        gr.Button(visible=False, elem_id="lora_train_status_api").click(
            on_status, outputs=[hidden], api_name="lora_training_status", queue=False)

    return build

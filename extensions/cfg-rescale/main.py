"""Example extension: rescale the classifier-free-guidance result every step to the conditional output's spread.

Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed" (2023), eq. 15-16: high CFG inflates the
standard deviation of the guided prediction; rescaling it towards the conditional prediction's std reduces burn.
The denoise extension itself is the engine's (held to diffusers' `guidance_rescale`), reached through the public
extension API like every name an extension uses.
"""

from __future__ import annotations

from webui.services.extensions import CfgRescale  # the engine's extension, through the public API


def register(api) -> None:
    def build(mode: str) -> dict:
        import gradio as gr  # imported when the UI is built, so the CLI, which never builds it, starts faster

        with gr.Row():
            enabled = gr.Checkbox(label="Enable CFG rescale", value=False, elem_id=f"{mode}_cfg_rescale_enabled")
            strength = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="Rescale φ", elem_id=f"{mode}_cfg_rescale_phi")
        return {"enabled": enabled, "phi": strength}

    def rescale(request, model, controls: dict):
        """A denoise extension for this job, or None when the user did not enable it."""
        if not controls.get("enabled"):
            return None
        return CfgRescale(float(controls.get("phi", 0.7)))

    def note_in_infotext(params: dict, request, controls: dict) -> None:
        if controls.get("enabled"):
            params["CFG Rescale phi"] = float(controls.get("phi", 0.7))

    api.add_section("CFG rescale", build)
    api.on_denoise(rescale)
    api.on_save(note_in_infotext)

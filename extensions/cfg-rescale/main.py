"""Example extension: rescale the classifier-free-guidance result every step to the conditional output's spread.

Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed" (2023), eq. 15-16: high CFG inflates the
standard deviation of the guided prediction; rescaling it towards the conditional prediction's std reduces burn.
The same formula as diffusers' `guidance_rescale`, written here as a denoise extension: the public extension API is
all it uses.
"""

from __future__ import annotations

import gradio as gr

from webui.services.extensions import DenoiseContext, DenoiseExtension


class CfgRescale(DenoiseExtension):
    """After CFG, every step: mix the guided prediction with its copy rescaled to the conditional prediction's std."""

    def __init__(self, phi: float) -> None:
        self.phi = phi

    def after_cfg(self, ctx: DenoiseContext) -> None:
        if self.phi <= 0 or ctx.uncond_output is None:  # no CFG this step (cfg_scale 1): nothing to rescale
            return
        dims = list(range(1, ctx.cond_output.ndim))
        std_cond = ctx.cond_output.std(dim=dims, keepdim=True)
        std_cfg = ctx.denoised.std(dim=dims, keepdim=True)
        rescaled = ctx.denoised * (std_cond / std_cfg)
        ctx.denoised = self.phi * rescaled + (1 - self.phi) * ctx.denoised


def register(api) -> None:
    def build(mode: str) -> dict:
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

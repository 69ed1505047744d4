"""ControlNet as a denoise extension: each enabled unit adds its residuals to the U-Net call, with
sd-webui-controlnet's meaning of weight, step window and control mode.

Rules (docs/controlnet.md; tested against diffusers' ControlNet pipelines in tests/test_controlnet_parity.py):
- Step window: a unit acts at step i of the N steps run when `start <= i / N <= end` (sd-webui-controlnet's rule;
  diffusers' is `start <= i / N` and `(i + 1) / N <= end`, so the two agree only at end = 1).
- Balanced: every residual times `weight`, on both CFG halves (= diffusers' `controlnet_conditioning_scale`).
- My prompt is more important: residual k of [down residuals..., mid] times `weight * 0.825 ** (12 - k)`, on both
  halves (sd-webui-controlnet's "soft injection"; with fewer than 13 residuals, as in SDXL, the first scales apply).
- ControlNet is more important: the same soft scales, and the unconditional half gets no control, so CFG amplifies
  it (sd-webui-controlnet's "CFG injection").
Several units add up, as diffusers' MultiControlNetModel does.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch
from diffusers import ControlNetModel
from PIL import Image

from .denoise import DenoiseContext, DenoiseExtension, UNetCall
from .masking import ResizeMode, resize_image
from .preprocessors import inpaint_control_hint

SOFT_INJECTION_BASE = 0.825
SOFT_INJECTION_DEPTH = 12  # the deepest residual of an SD1.5 ControlNet (12 down + 1 mid)


class ControlMode(str, Enum):
    """sd-webui-controlnet's control modes, by their UI labels (the API also accepts 0/1/2)."""

    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROLNET = "ControlNet is more important"


@dataclass
class ControlUnit:
    """One enabled unit, ready to sample with: the network, its control image tensor and how strongly to apply it."""

    controlnet: ControlNetModel
    image: torch.Tensor  # [1, C, H, W] in [0, 1], already at the generation size
    weight: float = 1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    mode: ControlMode = ControlMode.BALANCED

    def active_at(self, step: int, total_steps: int) -> bool:
        fraction = step / total_steps
        return self.guidance_start <= fraction <= self.guidance_end

    def scales(self, count: int) -> list[float]:
        """The factor for each of `count` residuals ([down..., mid])."""
        if self.mode == ControlMode.BALANCED:
            return [self.weight] * count
        return [self.weight * SOFT_INJECTION_BASE ** float(SOFT_INJECTION_DEPTH - k) for k in range(count)]


def control_image(image: Image.Image, width: int, height: int, resize_mode: ResizeMode | int) -> torch.Tensor:
    """A control map -> [1, 3, height, width] in [0, 1], fitted with A1111's resize modes (as diffusers' control
    image processor scales it: pixel / 255, no normalisation).

    An RGBA map is an inpaint hint (the `inpaint` preprocessors): pixels whose alpha marks them as masked become -1,
    the value inpaint ControlNets were trained to read as "to be filled" (sd-webui-controlnet does the same).
    """
    if image.mode == "RGBA":
        array = inpaint_control_hint(resize_image(image, ResizeMode(resize_mode), width, height))
    else:
        fitted = resize_image(image.convert("RGB"), ResizeMode(resize_mode), width, height)
        array = np.asarray(fitted, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None]


class ControlNetExtension(DenoiseExtension):
    """Runs each active unit's ControlNet before every U-Net call and adds its scaled residuals."""

    def __init__(self, units: list[ControlUnit]) -> None:
        self.units = list(units)
        self._hints: list[torch.Tensor] = []

    def before_loop(self, ctx: DenoiseContext) -> None:
        """Each control image on the device, in its network's dtype, once per run rather than once per U-Net call."""
        self._hints = [
            unit.image.to(ctx.model.device, next(unit.controlnet.parameters()).dtype) for unit in self.units
        ]

    def before_unet(self, ctx: DenoiseContext, call: UNetCall) -> None:
        for unit, hint in zip(self.units, self._hints):
            if not unit.active_at(ctx.step, ctx.total_steps) or unit.weight == 0:
                continue
            if unit.mode == ControlMode.CONTROLNET and "cond" not in call.halves:
                continue  # an unconditional-only call (prompts of different lengths) gets no control in this mode
            dtype = hint.dtype
            hint = hint.repeat(call.sample.shape[0] // hint.shape[0], 1, 1, 1)
            down, mid = unit.controlnet(
                call.sample.to(dtype),
                call.timestep,
                encoder_hidden_states=call.conditioning.context.to(dtype),
                controlnet_cond=hint,
                conditioning_scale=1.0,
                added_cond_kwargs=call.added_cond_kwargs,
                return_dict=False,
            )
            residuals = [*down, mid]
            scaled = [r.to(call.sample.dtype) * s for r, s in zip(residuals, unit.scales(len(residuals)))]
            if unit.mode == ControlMode.CONTROLNET and "uncond" in call.halves:
                keep = call.half_mask("cond")
                scaled = [r * keep for r in scaled]
            call.add_residuals(scaled[:-1], scaled[-1])

"""Model families as a small, ordered, declarative registry.

Adding a family means adding an entry here, not editing a chain of `if`s. Detection is structural (which components
exist under which prefixes), never by tensor width, so tiny test checkpoints are classified like the real ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Mapping

from .architecture import AttentionRule

Shapes = Mapping[str, tuple[int, ...]]
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLDM_PREFIX = "control_model."  # ControlNet 1.0 files (diffusers' LDM_CONTROLNET_KEY)


class UnsupportedCheckpointError(ValueError):
    """The file is not a checkpoint we can use as a base model; the message says where it belongs instead."""


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a family, and how its output feeds the U-Net."""

    prefix: str
    layout: Literal["hf", "openclip"]
    hidden_act: str
    pad_token_id: int
    hidden_state: Literal["final", "penultimate"]  # final = last layer + final LayerNorm
    # SD2: the penultimate layer + final LayerNorm, computed by not building the last layer
    drop_last_layer: bool = False
    pooled: bool = False  # SDXL TE2 also gives the projected pooled embedding


@dataclass(frozen=True)
class ModelFamily:
    name: str
    title: str
    detect: Callable[[Shapes], bool]
    text_encoders: tuple[TextEncoderSlot, ...]
    attention: AttentionRule
    vae_scale: float
    default_prediction: Literal["epsilon", "v_prediction"]
    native_resolution: int
    modelspec_architecture: str

    @property
    def is_sdxl(self) -> bool:
        return any(slot.pooled for slot in self.text_encoders)


def _has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in shapes)


SD1 = ModelFamily(
    name="sd1",
    title="SD 1.x",
    detect=lambda s: _has_prefix(s, "cond_stage_model.transformer."),
    text_encoders=(
        TextEncoderSlot("cond_stage_model.transformer.", "hf", "quick_gelu", 49407, "final"),
    ),
    attention=AttentionRule(fixed_heads=8),
    vae_scale=0.18215,
    default_prediction="epsilon",
    native_resolution=512,
    modelspec_architecture="stable-diffusion-v1",
)

SD2 = ModelFamily(
    name="sd2",
    title="SD 2.x",
    detect=lambda s: "cond_stage_model.model.token_embedding.weight" in s,
    text_encoders=(
        TextEncoderSlot("cond_stage_model.model.", "openclip", "gelu", 0, "final", drop_last_layer=True),
    ),
    attention=AttentionRule(channels_per_head=64),
    vae_scale=0.18215,
    # The file cannot tell eps from v (see docs); most SD2 community checkpoints are 768-v, and users can override.
    default_prediction="v_prediction",
    native_resolution=768,
    modelspec_architecture="stable-diffusion-v2-768-v",
)

SDXL = ModelFamily(
    name="sdxl",
    title="SDXL",
    detect=lambda s: "conditioner.embedders.1.model.token_embedding.weight" in s,
    text_encoders=(
        TextEncoderSlot("conditioner.embedders.0.transformer.", "hf", "quick_gelu", 49407, "penultimate"),
        TextEncoderSlot("conditioner.embedders.1.model.", "openclip", "gelu", 0, "penultimate", pooled=True),
    ),
    attention=AttentionRule(channels_per_head=64),
    vae_scale=0.13025,
    default_prediction="epsilon",
    native_resolution=1024,
    modelspec_architecture="stable-diffusion-xl-v1-base",
)

FAMILIES: tuple[ModelFamily, ...] = (SDXL, SD2, SD1)


def _looks_like_lora(shapes: Shapes) -> bool:
    markers = ("lora_down", "lora_up", "lora_A", "lora_B", "hada_w1", "lokr_w1")
    return any(k.startswith(("lora_unet_", "lora_te")) or any(m in k for m in markers) for k in shapes)


def _looks_like_controlnet(shapes: Shapes) -> bool:
    return any(
        k.startswith("control_model.") or k.startswith("zero_convs.") or k.startswith("controlnet_") for k in shapes
    )


def detect_family(shapes: Shapes, file_name: str) -> ModelFamily:
    """Classify a checkpoint or explain, in one line, why it is not a base model."""
    if not shapes:
        raise UnsupportedCheckpointError(f"{file_name}: the file holds no tensors")
    if _looks_like_lora(shapes):
        raise UnsupportedCheckpointError(
            f"{file_name}: this is a LoRA, not a checkpoint; move it to models/Lora and use it with <lora:name:1>"
        )
    if _looks_like_controlnet(shapes):
        raise UnsupportedCheckpointError(
            f"{file_name}: this is a ControlNet, not a checkpoint; move it to models/ControlNet"
        )
    if f"{UNET_PREFIX}input_blocks.0.0.weight" not in shapes:
        if "encoder.conv_in.weight" in shapes and "decoder.conv_out.weight" in shapes:
            raise UnsupportedCheckpointError(f"{file_name}: this is a VAE, not a checkpoint; move it to models/VAE")
        if any(k.startswith(("model.diffusion_model.x_embedder", "model.diffusion_model.double_blocks"))
               for k in shapes):
            raise UnsupportedCheckpointError(f"{file_name}: SD3/Flux checkpoints are not supported")
        raise UnsupportedCheckpointError(f"{file_name}: unknown architecture (no Stable Diffusion U-Net inside)")
    if "conditioner.embedders.0.model.token_embedding.weight" in shapes:
        raise UnsupportedCheckpointError(f"{file_name}: SDXL refiner checkpoints are not supported yet")
    for family in FAMILIES:
        if family.detect(shapes):
            return family
    raise UnsupportedCheckpointError(f"{file_name}: unknown architecture (U-Net found, but no known text encoder)")


def detect_variant(shapes: Shapes, file_name: str) -> Literal["normal", "inpaint", "depth"]:
    """Variant by U-Net input channels: 4 normal, 9 inpainting (noisy latent + mask + masked-image latent),
    5 depth (noisy latent + a depth map; SD 2's 512-depth model, whose file also carries a MiDaS copy that is not
    ours to use). A depth model is not an inpainting model: it has no mask input."""
    channels = shapes[f"{UNET_PREFIX}input_blocks.0.0.weight"][1]
    if channels == 4:
        return "normal"
    if channels == 9:
        return "inpaint"
    if channels == 5:
        return "depth"
    kinds = {8: "instruct-pix2pix"}
    raise UnsupportedCheckpointError(
        f"{file_name}: {kinds.get(channels, f'{channels}-channel')} checkpoints are not supported"
    )

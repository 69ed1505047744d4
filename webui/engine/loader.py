"""Build diffusers/transformers modules from a single-file LDM checkpoint, fully offline.

Key renaming is diffusers' own (`convert_ldm_*`, `convert_open_clip_checkpoint`); configs come from
`architecture.py` instead of the Hub. Modules are created with empty parameters and the converted tensors (views of
the memory-mapped file where no conversion is needed) are assigned; each module's weights are then packed into one
buffer (`weight_packing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .architecture import (
    ArchitectureError,
    infer_hf_clip_config,
    infer_open_clip_config,
    infer_unet_config,
    infer_vae_config,
    shapes_of,
    strip_prefix,
)
from .checkpoint_io import RawCheckpoint, read_checkpoint
from .offload import ComponentOffload, SequentialOffload
from .families import UNET_PREFIX, VAE_PREFIX, ModelFamily, TextEncoderSlot, detect_family, detect_variant
from .weight_packing import move_packed

PredictionType = Literal["epsilon", "v_prediction"]
Variant = Literal["normal", "inpaint", "depth"]
# SD 2's only depth model (512-depth-ema) is an epsilon model trained at 512, unlike the family's 768-v default.
DEPTH_PREDICTION: PredictionType = "epsilon"
DEPTH_RESOLUTION = 512


@dataclass
class TextEncoder:
    """A CLIP text model plus the slot rule that says which hidden state the U-Net sees."""

    slot: TextEncoderSlot
    model: CLIPTextModel | CLIPTextModelWithProjection


@dataclass
class LoadedModel:
    """Everything needed to sample from one checkpoint."""

    name: str
    path: Path
    family: ModelFamily
    variant: Variant
    prediction_type: PredictionType
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[TextEncoder]
    default_resolution: tuple[int, int]
    metadata: dict[str, str] = field(default_factory=dict)
    # The training noise table the checkpoint stores (`alphas_cumprod`, as stored: an fp16 file's fp16 values), or
    # None; A1111 builds its k-diffusion sigmas from it (sigma_schedules.py), else from LDM's betas.
    alphas_cumprod: torch.Tensor | None = None
    # Set by the model manager while the model runs offloaded (--medvram/--lowvram): its weights are then mostly in
    # RAM, so where and in what dtype it computes is asked here, not read off a parameter.
    offload: ComponentOffload | SequentialOffload | None = field(default=None, repr=False, compare=False)

    @property
    def vae_scale(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_downscale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def modules(self) -> list[torch.nn.Module]:
        return [self.unet, self.vae, *(te.model for te in self.text_encoders)]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "LoadedModel":
        for module in self.modules():
            # nn.Module.to directly: diffusers' override only adds a spurious "keep in float32: []" warning here.
            torch.nn.Module.to(module, device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        """Where the model computes (and where the engine puts its inputs)."""
        return self.offload.device if self.offload else next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The U-Net's compute dtype: what latents and conditioning are cast to."""
        return self.offload.dtype_of(self.unet) if self.offload else next(self.unet.parameters()).dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        """The VAE's compute dtype (fp32 beside an fp16 U-Net)."""
        if self.offload and self.offload.manages(self.vae):
            return self.offload.dtype_of(self.vae)
        return next(self.vae.parameters()).dtype

    def use_fp32_vae(self) -> None:
        """From now on decode and encode in fp32 (a half-precision VAE overflowed); one copy, the VAE stays packed."""
        if self.offload and self.offload.manages(self.vae):
            self.offload.set_dtype(self.vae, torch.float32)
        else:
            move_packed(self.vae, next(self.vae.parameters()).device, torch.float32)


class ModelLoadError(ValueError):
    """A checkpoint's tensors do not fit the architecture inferred from them."""


class DepthMapRequired(ValueError):
    """A depth model was asked to sample without its depth map (txt2img, or img2img with none)."""

    def __init__(self, model_name: str) -> None:
        super().__init__(
            f"{model_name} is a depth model: it needs a depth map, so it works only in img2img; use img2img with a "
            "depth image (or with the depth_midas preprocessor's weights installed to estimate one)"
        )


def _assign(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], dtype: torch.dtype | None, what: str) -> None:
    """Put the converted tensors into `module` as they are (no copy) or, with `dtype`, converted."""
    expected = set(module.state_dict().keys())
    missing = sorted(expected - state_dict.keys())
    if missing:
        raise ModelLoadError(f"{what}: {len(missing)} weights missing (first: {missing[0]})")
    tensors = {k: state_dict[k].to(dtype) if dtype is not None and state_dict[k].is_floating_point() else state_dict[k]
               for k in expected}
    module.load_state_dict(tensors, strict=True, assign=True)
    module.eval().requires_grad_(False)


def declared_resolution(metadata: dict[str, str]) -> tuple[int, int] | None:
    """(width, height) from `modelspec.resolution` such as `64x64`, if the file declares one."""
    text = metadata.get("modelspec.resolution", "")
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        return None
    return (width, height) if width > 0 and height > 0 else None


def resolve_prediction_type(
    raw: RawCheckpoint, family: ModelFamily, override: PredictionType | None, variant: Variant = "normal"
) -> PredictionType:
    """User override, then marker keys, then modelspec metadata, then the family default (epsilon for depth)."""
    if override:
        return override
    if "v_pred" in raw.state_dict:
        return "v_prediction"
    declared = raw.metadata.get("modelspec.prediction_type", "").lower()
    if declared in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if declared in ("epsilon", "eps"):
        return "epsilon"
    return DEPTH_PREDICTION if variant == "depth" else family.default_prediction


def _build_text_encoder(raw: RawCheckpoint, shapes: dict, slot: TextEncoderSlot,
                        dtype: torch.dtype | None) -> TextEncoder:
    checkpoint = raw.state_dict
    if slot.layout == "hf":
        te_shapes = strip_prefix(shapes, slot.prefix)
        te_shapes = {k.removeprefix("text_model."): v for k, v in te_shapes.items()}
        config = CLIPTextConfig(**infer_hf_clip_config(te_shapes, slot.hidden_act))
        converted = convert_ldm_clip_checkpoint(checkpoint, remove_prefix=slot.prefix)
        converted = {k: v for k, v in converted.items()
                     if k.startswith(("text_model.", "embeddings.", "encoder.", "final"))}
    else:
        te_shapes = strip_prefix(shapes, slot.prefix)
        config = CLIPTextConfig(**infer_open_clip_config(te_shapes, slot.hidden_act))
        converted = None
    if slot.drop_last_layer:
        config.num_hidden_layers -= 1
    model_class = CLIPTextModelWithProjection if slot.pooled else CLIPTextModel
    with init_empty_weights(include_buffers=False):
        model = model_class(config)
    if converted is None:
        converted = convert_open_clip_checkpoint(model, checkpoint, prefix=slot.prefix)
    if model_class is CLIPTextModel:
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    else:
        converted = {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
                     for k, v in converted.items()}
    _assign(model, converted, dtype, f"text encoder {slot.prefix}")
    return TextEncoder(slot=slot, model=model)


def build_vae(vae_tensors: dict[str, torch.Tensor], like: LoadedModel, what: str) -> AutoencoderKL:
    """An AutoencoderKL from a standalone VAE's tensors (`encoder.*`/`decoder.*`, see `read_vae_override`), with the
    scaling factor and sample size of the model it will decode for. A per-job VAE choice is built this way, so the
    model's own VAE is never replaced."""
    state = {VAE_PREFIX + k: v for k, v in vae_tensors.items()}
    try:
        config = infer_vae_config(strip_prefix(shapes_of(state), VAE_PREFIX), like.vae_scale,
                                  like.default_resolution[1])
    except ArchitectureError as exc:
        raise ModelLoadError(f"{what}: {exc}") from exc
    if config.get("latent_channels") != like.latent_channels:
        raise ModelLoadError(f"{what}: a VAE with {config.get('latent_channels')} latent channels cannot decode "
                             f"{like.name!r} ({like.latent_channels} channels); "
                             "choose a VAE made for this model family")
    with init_empty_weights(include_buffers=False):
        vae = AutoencoderKL(**config)
    try:
        _assign(vae, convert_ldm_vae_checkpoint(state, config), torch.float32, "VAE")
    except (RuntimeError, KeyError) as exc:
        raise ModelLoadError(f"{what}: weights do not fit the inferred VAE ({str(exc).splitlines()[0]})") from exc
    return vae


def build_model(
    raw: RawCheckpoint,
    dtype: torch.dtype | None = torch.float32,
    prediction_override: PredictionType | None = None,
    vae_override: dict[str, torch.Tensor] | None = None,
    name: str | None = None,
) -> LoadedModel:
    """Turn a raw checkpoint into ready modules on the CPU (the caller moves them to a device). `name` is how the
    app lists it (default: the file stem). `dtype` None keeps each tensor as stored (a view of the memory-mapped file),
    for a caller that packs and converts the weights itself in one copy (the model manager, `weight_packing`)."""
    display_name = name or raw.path.stem
    name = raw.path.name
    shapes = shapes_of(raw.state_dict)
    family = detect_family(shapes, name)
    variant = detect_variant(shapes, name)  # a depth file's `depth_model.*` (MiDaS) tensors are never read
    native = DEPTH_RESOLUTION if variant == "depth" else family.native_resolution
    resolution = declared_resolution(raw.metadata) or (native, native)
    try:
        unet_config = infer_unet_config(strip_prefix(shapes, UNET_PREFIX), family.attention, resolution[1] // 8)
        vae_state = raw.state_dict if vae_override is None else {VAE_PREFIX + k: v for k, v in vae_override.items()}
        # LDM stores a learned `scale_factor` buffer when trained with scale_by_std; it wins over the family default.
        scale = float(raw.state_dict["scale_factor"]) if "scale_factor" in raw.state_dict else family.vae_scale
        vae_config = infer_vae_config(strip_prefix(shapes_of(vae_state), VAE_PREFIX), scale, resolution[1])
    except ArchitectureError as exc:
        raise ModelLoadError(f"{name}: {exc}") from exc

    with init_empty_weights(include_buffers=False):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**vae_config)
    try:
        _assign(unet, convert_ldm_unet_checkpoint(raw.state_dict, unet_config), dtype, "U-Net")
        _assign(vae, convert_ldm_vae_checkpoint(vae_state, vae_config), dtype, "VAE")
        text_encoders = [_build_text_encoder(raw, shapes, slot, dtype) for slot in family.text_encoders]
    except (ModelLoadError, RuntimeError, KeyError, ArchitectureError) as exc:
        raise ModelLoadError(f"{name}: weights do not fit the inferred architecture "
                             f"({str(exc).splitlines()[0]})") from exc
    return LoadedModel(
        name=display_name,
        path=raw.path,
        family=family,
        variant=variant,
        prediction_type=resolve_prediction_type(raw, family, prediction_override, variant),
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        default_resolution=resolution,
        metadata=dict(raw.metadata),
        alphas_cumprod=_stored_alphas_cumprod(raw.state_dict),
    )


def _stored_alphas_cumprod(state_dict: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """The stored noise table, copied at its own precision; ignored unless it is one value per training step."""
    table = state_dict.get("alphas_cumprod")
    if table is None or not table.is_floating_point() or table.ndim != 1 or len(table) < 2:
        return None
    return table.detach().to("cpu").clone()


def load_checkpoint(
    path: Path, dtype: torch.dtype = torch.float32, prediction_override: PredictionType | None = None
) -> LoadedModel:
    """Read and build in one call (CLI, tests, benchmarks). Each module's weights are packed into one buffer of their
    own, as the model manager does, so the model holds its weights and not a map of the whole file; packing converts
    the dtype in the same copy."""
    model = build_model(read_checkpoint(Path(path)), dtype=None, prediction_override=prediction_override)
    for module in model.modules():
        move_packed(module, "cpu", dtype)
    return model


def read_vae_override(path: Path) -> dict[str, torch.Tensor]:
    """A standalone VAE file (`encoder.*`/`decoder.*`, or a full checkpoint's `first_stage_model.*`)."""
    raw = read_checkpoint(Path(path))
    state = raw.state_dict
    if any(k.startswith(VAE_PREFIX) for k in state):
        state = {k[len(VAE_PREFIX):]: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    if "encoder.conv_in.weight" not in state or "decoder.conv_out.weight" not in state:
        raise ModelLoadError(f"{Path(path).name}: not a VAE in the original layout (encoder.*/decoder.* keys)")
    return state

"""Random-weight models in a family's exact single-file layout.

No weights can be downloaded, so tests and benchmarks build their checkpoints here: diffusers/transformers modules
with seeded random weights, written through `export.to_ldm_state_dict` so they are indistinguishable in layout from a
community checkpoint. `size="tiny"` gives files of a few MB; `size="real"` gives SD1.5/SDXL shapes for GPU timing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from .checkpoint_io import PICKLE_SUFFIXES
from .export import controlnet_to_ldm, save_checkpoint, to_ldm_state_dict
from .families import CLDM_PREFIX, SD1, SD2, SDXL, ModelFamily

FamilyName = Literal["sd1", "sd2", "sdxl"]
ControlNetVariant = Literal["full", "small"]
ControlNetFileLayout = Literal["cldm-1.0", "cldm-1.1", "diffusers"]
VOCAB_SIZE = 49408
DEPTH_MODEL_PREFIX = "depth_model."  # the MiDaS (DPT-Hybrid) copy inside SD 2's 512-depth-ema file


@dataclass
class SyntheticModel:
    """The diffusers modules behind a synthetic checkpoint (the tests' ground truth)."""

    family: ModelFamily
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoders: list[torch.nn.Module]
    text_configs: list[CLIPTextConfig]

    def state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        exports = [(slot.prefix, slot.layout, model)
                   for slot, model in zip(self.family.text_encoders, self.text_encoders)]
        return to_ldm_state_dict(self.unet, self.vae, exports, dtype=dtype)


def _clip(hidden: int, layers: int, act: str, projection: bool, seed: int) -> tuple[torch.nn.Module, CLIPTextConfig]:
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=hidden,
    )
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)
    return model.eval(), config


def _vae(channels: tuple[int, ...], layers: int, seed: int, scale: float) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=channels,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        layers_per_block=layers,
        latent_channels=4,
        scaling_factor=scale,
    ).eval()


def build_synthetic_model(
    family: FamilyName, size: Literal["tiny", "real"] = "tiny", inpaint: bool = False, seed: int = 0,
    depth: bool = False,
) -> SyntheticModel:
    """Seeded random modules for `family`; `inpaint` gives the 9-channel U-Net input, `depth` the 5-channel one
    (latents + depth map, as SD 2's depth model)."""
    if inpaint and depth:
        raise ValueError("a model is either an inpainting or a depth model, not both")
    in_channels = 9 if inpaint else 5 if depth else 4
    real = size == "real"
    if family == "sd1":
        te, te_config = _clip(768 if real else 64, 12 if real else 2, "quick_gelu", False, seed)
        channels = (320, 640, 1280, 1280) if real else (32, 64)
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=64 if real else 8,
            in_channels=in_channels,
            block_out_channels=channels,
            layers_per_block=2 if real else 1,
            down_block_types=[*(["CrossAttnDownBlock2D"] * (len(channels) - 1)), "DownBlock2D"],
            up_block_types=["UpBlock2D", *(["CrossAttnUpBlock2D"] * (len(channels) - 1))],
            cross_attention_dim=te_config.hidden_size,
            attention_head_dim=8,
        )
        vae = _vae((128, 256, 512, 512) if real else (32, 32, 64, 64), 2 if real else 1, seed + 2, SD1.vae_scale)
        return SyntheticModel(SD1, unet.eval(), vae, [te], [te_config])
    if family == "sd2":
        te, te_config = _clip(1024 if real else 64, 24 if real else 3, "gelu", False, seed)
        channels = (320, 640, 1280, 1280) if real else (64, 128)
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=96 if real else 8,
            in_channels=in_channels,
            block_out_channels=channels,
            layers_per_block=2 if real else 1,
            down_block_types=[*(["CrossAttnDownBlock2D"] * (len(channels) - 1)), "DownBlock2D"],
            up_block_types=["UpBlock2D", *(["CrossAttnUpBlock2D"] * (len(channels) - 1))],
            cross_attention_dim=te_config.hidden_size,
            attention_head_dim=[max(1, c // 64) for c in channels],
            use_linear_projection=True,
        )
        vae = _vae((128, 256, 512, 512) if real else (32, 32, 64, 64), 2 if real else 1, seed + 2, SD2.vae_scale)
        return SyntheticModel(SD2, unet.eval(), vae, [te], [te_config])
    if family == "sdxl":
        te1, config1 = _clip(768 if real else 64, 12 if real else 2, "quick_gelu", False, seed)
        te2, config2 = _clip(1280 if real else 128, 32 if real else 2, "gelu", True, seed + 3)
        channels = (320, 640, 1280) if real else (64, 128)
        depths = [1, 2, 10] if real else [1, 2]
        torch.manual_seed(seed + 1)
        unet = UNet2DConditionModel(
            sample_size=128 if real else 8,
            in_channels=in_channels,
            block_out_channels=channels,
            layers_per_block=2 if real else 1,
            down_block_types=["DownBlock2D", *(["CrossAttnDownBlock2D"] * (len(channels) - 1))],
            up_block_types=[*(["CrossAttnUpBlock2D"] * (len(channels) - 1)), "UpBlock2D"],
            cross_attention_dim=config1.hidden_size + config2.hidden_size,
            transformer_layers_per_block=depths,
            attention_head_dim=[max(1, c // 64) for c in channels],
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=config2.projection_dim + 6 * 256,
        )
        vae = _vae((128, 256, 512, 512) if real else (32, 32, 64, 64), 2 if real else 1, seed + 2, SDXL.vae_scale)
        return SyntheticModel(SDXL, unet.eval(), vae, [te1, te2], [config1, config2])
    raise ValueError(f"unknown family {family!r}")


def synthetic_midas_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """A few random tensors under the names SD 2's 512-depth-ema file stores its MiDaS copy with.

    The real file carries a whole DPT-Hybrid (`depth_model.model.pretrained.*` ViT-hybrid encoder and
    `depth_model.model.scratch.*` decoder); a handful of its key names is enough to prove a loader ignores them.
    """
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "model.pretrained.model.cls_token": (1, 1, 16),
        "model.pretrained.model.pos_embed": (1, 5, 16),
        "model.pretrained.model.patch_embed.backbone.stem.conv.weight": (8, 3, 7, 7),
        "model.pretrained.model.blocks.0.norm1.weight": (16,),
        "model.pretrained.model.blocks.0.attn.qkv.weight": (48, 16),
        "model.pretrained.act_postprocess1.0.project.0.weight": (16, 32),
        "model.scratch.layer1_rn.weight": (8, 16, 3, 3),
        "model.scratch.refinenet1.resConfUnit1.conv1.weight": (8, 8, 3, 3),
        "model.scratch.output_conv.0.weight": (4, 8, 3, 3),
        "model.scratch.output_conv.4.bias": (1,),
    }
    return {DEPTH_MODEL_PREFIX + k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}


def write_synthetic_checkpoint(
    path: Path,
    family: FamilyName,
    size: Literal["tiny", "real"] = "tiny",
    inpaint: bool = False,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
    depth: bool = False,
    midas: bool = True,
) -> SyntheticModel:
    """Build and save; returns the modules so a test can compare against them.

    `depth` writes a depth model in the real layout: the 5-channel U-Net plus, unless `midas` is False, MiDaS
    tensors under `depth_model.` as SD 2's 512-depth-ema carries them.
    """
    model = build_synthetic_model(family, size=size, inpaint=inpaint, seed=seed, depth=depth)
    state = model.state_dict(dtype=dtype)
    if depth and midas:
        state.update({k: v.to(dtype) if dtype else v for k, v in synthetic_midas_tensors(seed).items()})
    save_checkpoint(Path(path), state, metadata)
    return model


def _per_level(value: int | tuple[int, ...] | list[int], levels: int) -> list[int]:
    return [value] * levels if isinstance(value, int) else list(value)


def build_synthetic_controlnet(base: SyntheticModel, seed: int, variant: ControlNetVariant = "full") -> ControlNetModel:
    """A seeded random ControlNet whose residuals fit `base.unet` (like `ControlNetModel.from_unet`, new weights).

    The zero convolutions (and the hint encoder's last conv) are zero in a fresh ControlNet, which would make every
    output zero whatever the loader did with them; they get random weights so a test sees every tensor.
    `small` keeps the residual structure (widths, res blocks per level: the U-Net adds the residuals one by one)
    but has one transformer block less per attention level (down to none) and a middle block without attention,
    like the reduced SDXL ControlNets.
    """
    unet = base.unet.config
    levels = len(unet.block_out_channels)
    depths = _per_level(unet.transformer_layers_per_block, levels)
    if variant == "small":
        depths = [max(0, d - 1) for d in depths]
    elif variant != "full":
        raise ValueError(f"unknown ControlNet variant {variant!r}")
    torch.manual_seed(seed)
    controlnet = ControlNetModel(
        in_channels=base.vae.config.latent_channels,  # the noisy latent only, also for inpainting U-Nets
        conditioning_channels=3,
        down_block_types=list(unet.down_block_types),
        block_out_channels=list(unet.block_out_channels),
        layers_per_block=unet.layers_per_block,
        cross_attention_dim=unet.cross_attention_dim,
        attention_head_dim=unet.attention_head_dim,
        use_linear_projection=unet.use_linear_projection,
        transformer_layers_per_block=depths,
        mid_block_type="UNetMidBlock2D" if variant == "small" else "UNetMidBlock2DCrossAttn",
        addition_embed_type=unet.addition_embed_type,
        addition_time_embed_dim=unet.addition_time_embed_dim,
        projection_class_embeddings_input_dim=unet.projection_class_embeddings_input_dim,
        conditioning_embedding_out_channels=(16, 32, 96, 256),
    )
    generator = torch.Generator().manual_seed(seed + 1)
    zero_initialised = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for module in zero_initialised:
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / fan_in**0.5)
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return controlnet.eval()


def write_synthetic_controlnet(
    path: Path,
    base: SyntheticModel,
    layout: ControlNetFileLayout,
    seed: int = 0,
    variant: ControlNetVariant = "full",
    extra_state: dict[str, torch.Tensor] | None = None,
) -> ControlNetModel:
    """Write a ControlNet file the way the community ships them; returns the ground-truth module.

    cldm-1.1 is the bare cldm layout; cldm-1.0 puts it under `control_model.` and `extra_state` (typically a whole
    SD checkpoint) beside it; diffusers is the module's own state dict. `.safetensors` or a pickle suffix such as
    `.pth` (a plain dict of tensors written by `torch.save`).
    """
    controlnet = build_synthetic_controlnet(base, seed, variant)
    if layout == "diffusers":
        state = dict(controlnet.state_dict())
    elif layout == "cldm-1.1":
        state = controlnet_to_ldm(controlnet)
    elif layout == "cldm-1.0":
        state = {CLDM_PREFIX + k: v for k, v in controlnet_to_ldm(controlnet).items()}
    else:
        raise ValueError(f"unknown ControlNet layout {layout!r}")
    state = {**(extra_state or {}), **state}
    state = {k: v.detach().contiguous() for k, v in state.items()}
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, str(path))
    else:
        save_checkpoint(path, state)
    return controlnet

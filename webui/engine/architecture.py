"""Infer network architectures from state-dict key names and tensor shapes.

No table of known model sizes is consulted: a 2 GB SD1.5 file and a 10 MB test file take the same path. The only facts
that shapes cannot reveal (attention heads, norm groups, activation) come from the family rule passed in.
This is written by hand because diffusers only infers configs for the published sizes (it falls back to Hub configs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import torch

Shapes = Mapping[str, tuple[int, ...]]


class ArchitectureError(ValueError):
    """The tensors do not describe a network this loader can build."""


def shapes_of(state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def strip_prefix(shapes: Shapes, prefix: str) -> dict[str, tuple[int, ...]]:
    return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    """Distinct integers captured by `pattern` (one group) over all keys, sorted."""
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in shapes for m in [regex.match(k)] if m}
    return sorted(found)


def _require(shapes: Shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ArchitectureError(f"unknown architecture: {what} is missing (no tensor {key!r})")
    return shapes[key]


@dataclass(frozen=True)
class AttentionRule:
    """How a family sets attention heads, which shapes cannot show."""

    fixed_heads: int | None = None  # SD1: 8 heads everywhere
    channels_per_head: int | None = None  # SD2 / SDXL: 64 channels per head

    def heads_for(self, channels: int) -> int:
        if self.fixed_heads is not None:
            return self.fixed_heads
        assert self.channels_per_head is not None
        return max(1, channels // self.channels_per_head)


SDXL_ADDITION_TIME_EMBED_DIM = 256  # SDXL's size/crop Fourier features; parameter-free, so shapes cannot show it


def _infer_ldm_encoder(shapes: Shapes, rule: AttentionRule) -> tuple[dict[str, Any], list[int], int]:
    """The encoder half of an LDM U-Net: conv_in, levels, middle, context, projection, addition embedding.

    Shared by `infer_unet_config` and `infer_ldm_controlnet_config`, because a ControlNet is a copy of this half.
    Returns the diffusers config fields, the per-level transformer depths (0 = no attention) and the middle depth.
    """
    conv_in = _require(shapes, "input_blocks.0.0.weight", "the U-Net input convolution")
    base_channels, in_channels = conv_in[0], conv_in[1]

    levels: list[dict[str, Any]] = [{"mult": None, "depths": []}]
    for index in _indices(shapes, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{index}.0.op.weight" in shapes:
            levels.append({"mult": None, "depths": []})
            continue
        out_ch = _require(shapes, f"input_blocks.{index}.0.out_layers.3.weight", f"res block input_blocks.{index}")[0]
        depth = len(_indices(shapes, rf"input_blocks\.{index}\.1\.transformer_blocks\.(\d+)\."))
        levels[-1]["mult"] = out_ch // base_channels
        levels[-1]["depths"].append(depth)
    if any(level["mult"] is None for level in levels):
        raise ArchitectureError("unknown architecture: a U-Net level has no res blocks")
    blocks_per_level = {len(level["depths"]) for level in levels}
    if len(blocks_per_level) != 1:
        raise ArchitectureError("unknown architecture: U-Net levels have different numbers of res blocks")
    layers_per_block = blocks_per_level.pop()
    level_depths = []
    for level in levels:
        if len(set(level["depths"])) != 1:
            raise ArchitectureError("unknown architecture: transformer depth varies inside one U-Net level")
        level_depths.append(level["depths"][0])

    middle_depth = len(_indices(shapes, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if middle_depth == 0:
        raise ArchitectureError("unknown architecture: U-Net middle block without attention is not supported")
    if level_depths[-1] and level_depths[-1] != middle_depth:
        raise ArchitectureError("unknown architecture: middle transformer depth differs from the last level's")

    to_k_keys = sorted(k for k in shapes if k.endswith("attn2.to_k.weight"))
    if not to_k_keys:
        raise ArchitectureError("unknown architecture: the U-Net has no cross-attention layers")
    context_dim = shapes[to_k_keys[0]][1]
    proj_in_keys = [k for k in shapes if k.endswith(".proj_in.weight")]
    use_linear_projection = len(shapes[proj_in_keys[0]]) == 2

    channels = [base_channels * level["mult"] for level in levels]
    has_attention = [depth > 0 for depth in level_depths]
    config: dict[str, Any] = {
        "in_channels": in_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention],
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "cross_attention_dim": context_dim,
        # diffusers names heads "attention_head_dim" for SD-style configs (a known misnomer kept for compatibility).
        "attention_head_dim": [rule.heads_for(c) for c in channels],
        "use_linear_projection": use_linear_projection,
        # Levels without attention take the middle depth, because diffusers reads the middle depth from the last entry.
        "transformer_layers_per_block": [d if d else middle_depth for d in level_depths],
    }
    if "label_emb.0.0.weight" in shapes:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_ADDITION_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=shapes["label_emb.0.0.weight"][1],
        )
    return config, level_depths, middle_depth


def infer_unet_config(unet_shapes: Shapes, rule: AttentionRule, sample_size: int) -> dict[str, Any]:
    """Diffusers `UNet2DConditionModel` config from LDM `model.diffusion_model.*` shapes (prefix already stripped)."""
    _require(unet_shapes, "input_blocks.0.0.weight", "the U-Net input convolution")
    out_channels = _require(unet_shapes, "out.2.weight", "the U-Net output convolution")[0]
    encoder, level_depths, middle_depth = _infer_ldm_encoder(unet_shapes, rule)
    levels = len(level_depths)
    layers_per_block = encoder["layers_per_block"]

    output_depths = [
        len(_indices(unet_shapes, rf"output_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
        for i in _indices(unet_shapes, r"output_blocks\.(\d+)\.")
    ]
    if len(output_depths) != levels * (layers_per_block + 1):
        raise ArchitectureError("unknown architecture: output blocks do not mirror the input blocks")

    has_attention = [depth > 0 for depth in level_depths]
    config: dict[str, Any] = {
        "sample_size": sample_size,
        "out_channels": out_channels,
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)],
        **encoder,
    }
    per_up_level = [output_depths[i * (layers_per_block + 1)] for i in range(levels)]
    expected_up = [d for d in reversed(level_depths)]
    if per_up_level != expected_up:
        config["reverse_transformer_layers_per_block"] = [
            [d or middle_depth for d in output_depths[i * (layers_per_block + 1):(i + 1) * (layers_per_block + 1)]]
            for i in range(levels)
        ]
    return config


def _hint_embedding(convs: list[tuple[int, ...]], what: str) -> tuple[int, list[int]]:
    """(hint channels, conditioning_embedding_out_channels) from the hint encoder's convolutions in order.

    The encoder is conv_in, then per stage a same-width conv and a stride-2 widening conv, then conv_out.
    """
    if len(convs) < 2 or len(convs) % 2 or any(len(shape) != 4 for shape in convs):
        raise ArchitectureError(f"unknown architecture: the {what} is not a ControlNet hint encoder")
    hint_channels = convs[0][1]
    widths = [convs[0][0]]
    for same, widen in zip(convs[1:-1:2], convs[2:-1:2]):
        if same[0] != same[1] or same[1] != widths[-1] or widen[1] != widths[-1]:
            raise ArchitectureError(f"unknown architecture: the {what} has inconsistent widths")
        widths.append(widen[0])
    if convs[-1][1] != widths[-1]:
        raise ArchitectureError(f"unknown architecture: the {what} output does not follow its last stage")
    return hint_channels, widths


def ldm_hint_conv_indices(shapes: Shapes) -> list[int]:
    """Indices of the convolutions in an LDM `input_hint_block` (the odd indices are parameter-free SiLUs)."""
    return [i for i in _indices(shapes, r"input_hint_block\.(\d+)\.") if f"input_hint_block.{i}.weight" in shapes]


def infer_ldm_controlnet_config(shapes: Shapes, rule: AttentionRule) -> dict[str, Any]:
    """Diffusers `ControlNetModel` config from cldm shapes (`control_model.` prefix already stripped)."""
    encoder, _, _ = _infer_ldm_encoder(shapes, rule)
    indices = ldm_hint_conv_indices(shapes)
    if not indices:
        raise ArchitectureError("unknown architecture: the ControlNet hint encoder (input_hint_block) is missing")
    hint_convs = [shapes[f"input_hint_block.{i}.weight"] for i in indices]
    hint_channels, hint_widths = _hint_embedding(hint_convs, "input_hint_block")
    return {
        **encoder,
        "conditioning_channels": hint_channels,
        "conditioning_embedding_out_channels": hint_widths,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
    }


def infer_diffusers_controlnet_config(shapes: Shapes, rule: AttentionRule) -> dict[str, Any]:
    """Diffusers `ControlNetModel` config from a diffusers-layout state dict, without a Hub config.

    Handles reduced SDXL variants: levels whose attention has fewer (or zero) transformer blocks, and a middle block
    without attention. `cross_attention_dim` is None when no layer attends to the text (then any width builds it).
    """
    base_channels, in_channels = _require(shapes, "conv_in.weight", "the ControlNet input convolution")[:2]
    level_ids = _indices(shapes, r"down_blocks\.(\d+)\.")
    if not level_ids or level_ids != list(range(len(level_ids))):
        raise ArchitectureError("unknown architecture: the ControlNet down blocks are missing or not numbered 0..n")
    channels: list[int] = []
    level_depths: list[int | None] = []  # None = the level has no attention modules at all
    layer_counts = set()
    for level in level_ids:
        resnets = _indices(shapes, rf"down_blocks\.{level}\.resnets\.(\d+)\.")
        layer_counts.add(len(resnets))
        level_out = _require(shapes, f"down_blocks.{level}.resnets.0.conv2.weight", f"res block of level {level}")
        channels.append(level_out[0])
        attentions = _indices(shapes, rf"down_blocks\.{level}\.attentions\.(\d+)\.")
        if attentions and attentions != resnets:
            raise ArchitectureError(f"unknown architecture: level {level} has attention on only some res blocks")
        depths = {
            len(_indices(shapes, rf"down_blocks\.{level}\.attentions\.{a}\.transformer_blocks\.(\d+)\."))
            for a in attentions
        }
        if len(depths) > 1:
            raise ArchitectureError("unknown architecture: transformer depth varies inside one ControlNet level")
        level_depths.append(depths.pop() if depths else None)
        downsamples = f"down_blocks.{level}.downsamplers.0.conv.weight" in shapes
        if downsamples != (level != level_ids[-1]):
            raise ArchitectureError("unknown architecture: ControlNet downsamplers are not on every level but the last")
    if len(layer_counts) != 1:
        raise ArchitectureError("unknown architecture: ControlNet levels have different numbers of res blocks")

    middle_attention = any(k.startswith("mid_block.attentions.0.") for k in shapes)
    middle_resnets = len(_indices(shapes, r"mid_block\.resnets\.(\d+)\."))
    if middle_resnets != (2 if middle_attention else 1):
        raise ArchitectureError(f"unknown architecture: ControlNet middle block with {middle_resnets} res blocks")
    middle_depth = len(_indices(shapes, r"mid_block\.attentions\.0\.transformer_blocks\.(\d+)\."))
    if middle_attention and level_depths[-1] is not None and level_depths[-1] != middle_depth:
        # diffusers' ControlNetModel builds the middle with the last level's depth, so the two must agree.
        raise ArchitectureError("unknown architecture: middle transformer depth differs from the last level's")

    to_k_keys = sorted(k for k in shapes if k.endswith("attn2.to_k.weight"))
    proj_in_keys = sorted(k for k in shapes if k.endswith(".proj_in.weight"))
    hint_blocks = _indices(shapes, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    hint_convs = [
        _require(shapes, "controlnet_cond_embedding.conv_in.weight", "the ControlNet hint encoder"),
        *(_require(shapes, f"controlnet_cond_embedding.blocks.{b}.weight", "a hint encoder block")
          for b in hint_blocks),
        _require(shapes, "controlnet_cond_embedding.conv_out.weight", "the ControlNet hint encoder output"),
    ]
    hint_channels, hint_widths = _hint_embedding(hint_convs, "controlnet_cond_embedding")
    config: dict[str, Any] = {
        "in_channels": in_channels,
        "conditioning_channels": hint_channels,
        "conditioning_embedding_out_channels": hint_widths,
        "down_block_types": ["DownBlock2D" if d is None else "CrossAttnDownBlock2D" for d in level_depths],
        "block_out_channels": channels,
        "layers_per_block": layer_counts.pop(),
        "cross_attention_dim": shapes[to_k_keys[0]][1] if to_k_keys else None,
        "attention_head_dim": [rule.heads_for(c) for c in channels],
        "use_linear_projection": bool(proj_in_keys) and len(shapes[proj_in_keys[0]]) == 2,
        "transformer_layers_per_block": [middle_depth if d is None else d for d in level_depths],
        "mid_block_type": "UNetMidBlock2DCrossAttn" if middle_attention else "UNetMidBlock2D",
    }
    if base_channels != channels[0]:
        raise ArchitectureError("unknown architecture: the ControlNet input convolution does not match level 0")
    if "add_embedding.linear_1.weight" in shapes:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=SDXL_ADDITION_TIME_EMBED_DIM,
            projection_class_embeddings_input_dim=shapes["add_embedding.linear_1.weight"][1],
        )
    return config


def infer_vae_config(vae_shapes: Shapes, scaling_factor: float, sample_size: int) -> dict[str, Any]:
    """Diffusers `AutoencoderKL` config from LDM `first_stage_model.*` shapes (prefix already stripped)."""
    conv_in = _require(vae_shapes, "encoder.conv_in.weight", "the VAE encoder")
    level_ids = _indices(vae_shapes, r"encoder\.down\.(\d+)\.")
    if not level_ids:
        raise ArchitectureError("unknown architecture: the VAE encoder has no down blocks")
    channels = [_require(vae_shapes, f"encoder.down.{i}.block.0.conv1.weight", "a VAE block")[0] for i in level_ids]
    layers_per_block = len(_indices(vae_shapes, r"encoder\.down\.0\.block\.(\d+)\."))
    latent_channels = _require(vae_shapes, "decoder.conv_in.weight", "the VAE decoder")[1]
    out_channels = _require(vae_shapes, "decoder.conv_out.weight", "the VAE decoder output")[0]
    return {
        "in_channels": conv_in[1],
        "out_channels": out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * len(channels),
        "up_block_types": ["UpDecoderBlock2D"] * len(channels),
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "latent_channels": latent_channels,
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
        "use_quant_conv": "quant_conv.weight" in vae_shapes,
        "use_post_quant_conv": "post_quant_conv.weight" in vae_shapes,
    }


CLIP_CHANNELS_PER_HEAD = 64  # true of CLIP-L (768/12), OpenCLIP-H (1024/16) and bigG (1280/20)


def infer_hf_clip_config(te_shapes: Shapes, hidden_act: str) -> dict[str, Any]:
    """transformers `CLIPTextConfig` kwargs from HF-layout CLIP shapes (prefix up to `text_model.` stripped)."""
    vocab, hidden = _require(te_shapes, "embeddings.token_embedding.weight", "the text encoder's token embedding")
    positions = _require(te_shapes, "embeddings.position_embedding.weight", "the text encoder's positions")[0]
    layers = len(_indices(te_shapes, r"encoder\.layers\.(\d+)\."))
    intermediate = _require(te_shapes, "encoder.layers.0.mlp.fc1.weight", "the text encoder's MLP")[0]
    config = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // CLIP_CHANNELS_PER_HEAD),
        "max_position_embeddings": positions,
        "hidden_act": hidden_act,
    }
    if "text_projection.weight" in te_shapes:
        config["projection_dim"] = te_shapes["text_projection.weight"][0]
    return config


def infer_open_clip_config(te_shapes: Shapes, hidden_act: str) -> dict[str, Any]:
    """transformers `CLIPTextConfig` kwargs from OpenCLIP text-tower shapes (prefix up to `model.` stripped)."""
    vocab, width = _require(te_shapes, "token_embedding.weight", "the OpenCLIP token embedding")
    positions = _require(te_shapes, "positional_embedding", "the OpenCLIP positions")[0]
    layers = len(_indices(te_shapes, r"transformer\.resblocks\.(\d+)\."))
    intermediate = _require(te_shapes, "transformer.resblocks.0.mlp.c_fc.weight", "the OpenCLIP MLP")[0]
    config = {
        "vocab_size": vocab,
        "hidden_size": width,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, width // CLIP_CHANNELS_PER_HEAD),
        "max_position_embeddings": positions,
        "hidden_act": hidden_act,
    }
    if "text_projection" in te_shapes:
        config["projection_dim"] = te_shapes["text_projection"][1]
    return config

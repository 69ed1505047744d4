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


def infer_unet_config(unet_shapes: Shapes, rule: AttentionRule, sample_size: int) -> dict[str, Any]:
    """Diffusers `UNet2DConditionModel` config from LDM `model.diffusion_model.*` shapes (prefix already stripped)."""
    conv_in = _require(unet_shapes, "input_blocks.0.0.weight", "the U-Net input convolution")
    base_channels, in_channels = conv_in[0], conv_in[1]
    out_channels = _require(unet_shapes, "out.2.weight", "the U-Net output convolution")[0]

    levels: list[dict[str, Any]] = [{"mult": None, "depths": []}]
    for index in _indices(unet_shapes, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{index}.0.op.weight" in unet_shapes:
            levels.append({"mult": None, "depths": []})
            continue
        out_ch = _require(unet_shapes, f"input_blocks.{index}.0.out_layers.3.weight", f"res block input_blocks.{index}")[0]
        depth = len(_indices(unet_shapes, rf"input_blocks\.{index}\.1\.transformer_blocks\.(\d+)\."))
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

    middle_depth = len(_indices(unet_shapes, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if middle_depth == 0:
        raise ArchitectureError("unknown architecture: U-Net middle block without attention is not supported")
    if level_depths[-1] and level_depths[-1] != middle_depth:
        raise ArchitectureError("unknown architecture: middle transformer depth differs from the last level's")

    output_depths = [
        len(_indices(unet_shapes, rf"output_blocks\.{i}\.1\.transformer_blocks\.(\d+)\."))
        for i in _indices(unet_shapes, r"output_blocks\.(\d+)\.")
    ]
    if len(output_depths) != len(levels) * (layers_per_block + 1):
        raise ArchitectureError("unknown architecture: output blocks do not mirror the input blocks")

    to_k_keys = sorted(k for k in unet_shapes if k.endswith("attn2.to_k.weight"))
    if not to_k_keys:
        raise ArchitectureError("unknown architecture: the U-Net has no cross-attention layers")
    context_dim = unet_shapes[to_k_keys[0]][1]
    proj_in_keys = [k for k in unet_shapes if k.endswith(".proj_in.weight")]
    use_linear_projection = len(unet_shapes[proj_in_keys[0]]) == 2

    channels = [base_channels * level["mult"] for level in levels]
    has_attention = [depth > 0 for depth in level_depths]
    config: dict[str, Any] = {
        "sample_size": sample_size,
        "in_channels": in_channels,
        "out_channels": out_channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attention)],
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "cross_attention_dim": context_dim,
        # diffusers names heads "attention_head_dim" for SD-style configs (a known misnomer kept for compatibility).
        "attention_head_dim": [rule.heads_for(c) for c in channels],
        "use_linear_projection": use_linear_projection,
        # Levels without attention take the middle depth, because diffusers reads the middle depth from the last entry.
        "transformer_layers_per_block": [d if d else middle_depth for d in level_depths],
    }
    per_up_level = [output_depths[i * (layers_per_block + 1)] for i in range(len(levels))]
    expected_up = [d for d in reversed(level_depths)]
    if per_up_level != expected_up:
        config["reverse_transformer_layers_per_block"] = [
            [d or middle_depth for d in output_depths[i * (layers_per_block + 1):(i + 1) * (layers_per_block + 1)]]
            for i in range(len(levels))
        ]
    if "label_emb.0.0.weight" in unet_shapes:
        config.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=unet_shapes["label_emb.0.0.weight"][1],
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

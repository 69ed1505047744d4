"""Write diffusers/transformers modules as one original-layout (LDM/SGM) single-file checkpoint.

diffusers ships only the LDM -> diffusers direction as a library function (the reverse lives in an unpackaged script
that assumes SD1.5 sizes), so this is written by hand, generalised to any depth and width. The project uses it to ship
its own trained model and to build tiny real-layout test checkpoints; `tests/test_export.py` checks that diffusers'
own converters read the result back exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file

from .families import UNET_PREFIX, VAE_PREFIX

_RESNET_UNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_RESNET_VAE = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_within(key: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    return key


# Parts a diffusers U-Net and a ControlNet's encoder copy share, by owning module; the key's last part is appended.
_ENCODER_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
}
_UNET_OUTPUT_FIXED = {"conv_norm_out": "out.0", "conv_out": "out.2"}


def _encoder_key_to_ldm(key: str, per_level: int) -> str | None:
    """LDM name of a diffusers encoder key (time/addition embedding, conv_in, down and mid blocks); None otherwise.

    One renaming for `unet_to_ldm` and `controlnet_to_ldm`, because a ControlNet's encoder is a copy of the U-Net's.
    """
    parts = key.split(".")
    owner = ".".join(parts[:-1])
    if owner in _ENCODER_FIXED:
        return f"{_ENCODER_FIXED[owner]}.{parts[-1]}"
    if parts[0] == "down_blocks":
        level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"input_blocks.{1 + level * (per_level + 1) + index}.0.{_rename_within(rest, _RESNET_UNET)}"
        if kind == "attentions":
            return f"input_blocks.{1 + level * (per_level + 1) + index}.1.{rest}"
        return f"input_blocks.{(level + 1) * (per_level + 1)}.0.op.{parts[-1]}"  # downsamplers.0.conv.*
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_rename_within(rest, _RESNET_UNET)}"
        return f"middle_block.1.{rest}"
    return None


def _unet_decoder_key_to_ldm(unet: UNet2DConditionModel, key: str, per_level: int) -> str:
    """LDM name of a U-Net key outside the encoder: up blocks and the output head."""
    parts = key.split(".")
    owner = ".".join(parts[:-1])
    if owner in _UNET_OUTPUT_FIXED:
        return f"{_UNET_OUTPUT_FIXED[owner]}.{parts[-1]}"
    if parts[0] == "up_blocks":
        level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        base = level * (per_level + 1)
        if kind == "resnets":
            return f"output_blocks.{base + index}.0.{_rename_within(rest, _RESNET_UNET)}"
        if kind == "attentions":
            return f"output_blocks.{base + index}.1.{rest}"
        # upsamplers.0.conv.*: after the attention when the level has one
        has_attention = hasattr(unet.up_blocks[level], "attentions")
        return f"output_blocks.{base + per_level}.{2 if has_attention else 1}.conv.{parts[-1]}"
    raise ValueError(f"unexpected U-Net key {key!r}")


def unet_module_to_ldm(unet: UNet2DConditionModel, module_path: str) -> str:
    """LDM (SGM) name of a diffusers U-Net module, e.g. `down_blocks.1.attentions.0.proj_in` ->
    `input_blocks.4.1.proj_in`; kohya SDXL LoRAs name their layers this way."""
    per_level = unet.config.layers_per_block
    key = f"{module_path}.weight"
    new = _encoder_key_to_ldm(key, per_level)
    if new is None:
        new = _unet_decoder_key_to_ldm(unet, key, per_level)
    return new.removesuffix(".weight")


def unet_to_ldm(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """diffusers U-Net -> `model.diffusion_model.*` keys."""
    per_level = unet.config.layers_per_block
    out: dict[str, torch.Tensor] = {}
    for key, tensor in unet.state_dict().items():
        new = _encoder_key_to_ldm(key, per_level)
        if new is None:
            new = _unet_decoder_key_to_ldm(unet, key, per_level)
        out[UNET_PREFIX + new] = tensor
    return out


def _controlnet_part_key_to_ldm(key: str, hint_conv_out_index: int) -> str:
    """cldm name of a ControlNet-only key: hint encoder, zero convs, middle output conv."""
    parts = key.split(".")
    if parts[0] == "controlnet_cond_embedding":
        if parts[1] == "conv_in":
            return f"input_hint_block.0.{parts[-1]}"
        if parts[1] == "blocks":
            return f"input_hint_block.{2 * int(parts[2]) + 2}.{parts[-1]}"
        if parts[1] == "conv_out":
            return f"input_hint_block.{hint_conv_out_index}.{parts[-1]}"
    elif parts[0] == "controlnet_down_blocks":
        return f"zero_convs.{int(parts[1])}.0.{parts[-1]}"
    elif parts[0] == "controlnet_mid_block":
        return f"middle_block_out.0.{parts[-1]}"
    raise ValueError(f"unexpected ControlNet key {key!r}")


def controlnet_to_ldm(controlnet: ControlNetModel) -> dict[str, torch.Tensor]:
    """diffusers ControlNetModel -> ControlNet 1.1 (cldm) keys, without a prefix; 1.0 files add `control_model.`.

    Written by hand because diffusers only has the cldm -> diffusers direction (`convert_controlnet_checkpoint`).
    The hint encoder is a Sequential of convs and SiLUs in cldm, so conv k sits at index 2k: conv_in -> 0,
    blocks.j -> 2j + 2, conv_out -> 2 * len(blocks) + 2 (14 for the stock 16-32-96-256 encoder, as diffusers expects).
    """
    per_level = controlnet.config.layers_per_block
    hint_conv_out_index = 2 * len(controlnet.controlnet_cond_embedding.blocks) + 2
    out: dict[str, torch.Tensor] = {}
    for key, tensor in controlnet.state_dict().items():
        new = _encoder_key_to_ldm(key, per_level)
        out[new if new is not None else _controlnet_part_key_to_ldm(key, hint_conv_out_index)] = tensor
    return out


def vae_to_ldm(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL -> `first_stage_model.*` keys (mid-attention linears become 1x1 convs)."""
    levels = len(vae.config.block_out_channels)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in vae.state_dict().items():
        parts = key.split(".")
        side = parts[0]
        if side in ("quant_conv", "post_quant_conv"):
            out[VAE_PREFIX + key] = tensor
            continue
        section = parts[1]
        if section in ("conv_in", "conv_out"):
            new = key
        elif section == "conv_norm_out":
            new = f"{side}.norm_out.{parts[-1]}"
        elif section in ("down_blocks", "up_blocks"):
            level, kind, index, rest = int(parts[2]), parts[3], parts[4], ".".join(parts[5:])
            ldm_level = level if section == "down_blocks" else levels - 1 - level
            ldm_section = "down" if section == "down_blocks" else "up"
            if kind == "resnets":
                new = f"{side}.{ldm_section}.{ldm_level}.block.{index}.{_rename_within(rest, _RESNET_VAE)}"
            else:
                new = (f"{side}.{ldm_section}.{ldm_level}."
                       f"{'downsample' if section == 'down_blocks' else 'upsample'}.{rest}")
        elif section == "mid_block":
            kind, index, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                new = f"{side}.mid.block_{index + 1}.{_rename_within(rest, _RESNET_VAE)}"
            else:
                new = f"{side}.mid.attn_1.{_rename_within(rest, _VAE_ATTENTION)}"
                if tensor.ndim == 2:
                    tensor = tensor[:, :, None, None]
        else:
            raise ValueError(f"unexpected VAE key {key!r}")
        out[VAE_PREFIX + new] = tensor
    return out


def _text_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """HF CLIP state dict with the `text_model.` prefix, whatever the transformers version does."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key.startswith("text_projection"):
            state[key] = tensor
        else:
            state["text_model." + key.removeprefix("text_model.")] = tensor
    return state


def hf_clip_to_ldm(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text model -> `<prefix>text_model.*` (SD1 TE, SDXL TE1)."""
    state = _text_state(model)
    out = {prefix + k: v for k, v in state.items() if not k.startswith("text_projection")}
    positions = state["text_model.embeddings.position_embedding.weight"].shape[0]
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def hf_clip_to_open_clip(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text model -> OpenCLIP text-tower keys under `prefix` (SD2 TE, SDXL TE2)."""
    state = _text_state(model)
    width = state["text_model.embeddings.token_embedding.weight"].shape[1]
    out = {
        "token_embedding.weight": state["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": state["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": state["text_model.final_layer_norm.weight"],
        "ln_final.bias": state["text_model.final_layer_norm.bias"],
        "text_projection": state["text_projection.weight"].T.contiguous()
        if "text_projection.weight" in state
        else torch.eye(width),
        "logit_scale": torch.tensor(4.6052),
    }
    layer = 0
    while f"text_model.encoder.layers.{layer}.layer_norm1.weight" in state:
        src = f"text_model.encoder.layers.{layer}."
        dst = f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{src}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")], dim=0
            )
            out[f"{dst}attn.out_proj.{kind}"] = state[f"{src}self_attn.out_proj.{kind}"]
            out[f"{dst}ln_1.{kind}"] = state[f"{src}layer_norm1.{kind}"]
            out[f"{dst}ln_2.{kind}"] = state[f"{src}layer_norm2.{kind}"]
            out[f"{dst}mlp.c_fc.{kind}"] = state[f"{src}mlp.fc1.{kind}"]
            out[f"{dst}mlp.c_proj.{kind}"] = state[f"{src}mlp.fc2.{kind}"]
        layer += 1
    return {prefix + k: v for k, v in out.items()}


TextEncoderExport = tuple[str, Literal["hf", "openclip"], torch.nn.Module]


def to_ldm_state_dict(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    text_encoders: Iterable[TextEncoderExport],
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """One flat LDM-layout state dict; `text_encoders` lists (prefix, layout, model) in the family's order."""
    state = {**unet_to_ldm(unet), **vae_to_ldm(vae)}
    for prefix, layout, model in text_encoders:
        state.update(hf_clip_to_ldm(model, prefix) if layout == "hf" else hf_clip_to_open_clip(model, prefix))
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_checkpoint(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write a `.safetensors` file atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    save_file(state, str(temp), metadata=metadata or {})
    temp.replace(path)
    return path

"""Load community ControlNet files (cldm 1.0 / 1.1 and diffusers single files) fully offline.

The architecture is inferred from tensor shapes (`architecture.py`), never from a Hub config, and the family from
structure (addition embedding, projection kind), never from widths, so a 10 MB test file takes the same path as a
1.4 GB release. Key renaming for the cldm layouts is diffusers' own `convert_controlnet_checkpoint`, plus the two
parts it does not map: SDXL's `label_emb`, and hint encoders other than the stock 16-32-96-256 one.
Files that are something else (a checkpoint, LoRA, VAE, Control-LoRA, T2I-Adapter) are refused with a message that
says where they belong.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from .architecture import (
    ArchitectureError,
    infer_diffusers_controlnet_config,
    infer_ldm_controlnet_config,
    ldm_hint_conv_indices,
    shapes_of,
)
from .checkpoint_io import CheckpointReadError, read_checkpoint
from .families import (
    CLDM_PREFIX,
    FAMILIES,
    SD1,
    SD2,
    SDXL,
    UNET_PREFIX,
    VAE_PREFIX,
    ModelFamily,
    _looks_like_lora,
)

if TYPE_CHECKING:
    from .loader import LoadedModel

ControlNetLayout = Literal["cldm-1.0", "cldm-1.1", "diffusers"]
Shapes = Mapping[str, tuple[int, ...]]

_CLDM_PARTS = ("input_hint_block.", "zero_convs.", "middle_block_out.")
_DIFFUSERS_PARTS = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "controlnet_mid_block.")
_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# diffusers' converter leaves SDXL's addition embedding out; same names as its unused "addition_embed_type" table.
_LABEL_EMB = {"label_emb.0.0.": "add_embedding.linear_1.", "label_emb.0.2.": "add_embedding.linear_2."}


class ControlNetLoadError(ValueError):
    """A file could not be used as a ControlNet; the one-line message names the file and says what to do."""


class ControlNetMismatchError(ControlNetLoadError):
    """The ControlNet was made for a different base model than the one loaded."""


@dataclass
class LoadedControlNet:
    """A ready ControlNetModel plus what the UI and compatibility checks need to know about its file."""

    name: str
    path: Path
    family: str
    layout: ControlNetLayout
    model: ControlNetModel
    hint_channels: int
    # None when no layer attends to the text (reduced variants), so any prompt width fits.
    cross_attention_dim: int | None = None

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "LoadedControlNet":
        # nn.Module.to directly, as in loader.LoadedModel: diffusers' override only adds a spurious warning here.
        torch.nn.Module.to(self.model, device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def controlnet_family_title(family: str) -> str:
    """Display name of a family ("sdxl" -> "SDXL"), from the family registry so messages match the model list."""
    for candidate in FAMILIES:
        if candidate.name == family:
            return candidate.title
    return family


def _with_article(title: str) -> str:
    # Family titles are read as letters ("an SD 1.x", "an SDXL"); words would take "a".
    return f"an {title}" if title[:1] in "AEFHILMNORSX" else f"a {title}"


def detect_controlnet_layout(shapes: Shapes, file_name: str) -> ControlNetLayout:
    """Which ControlNet layout the keys are in, or a ControlNetLoadError that says what the file is instead.

    Works on names and shapes only, so a folder scan can call it with `read_key_shapes`.
    """
    if not shapes:
        raise ControlNetLoadError(f"{file_name}: the file holds no tensors; it is not a ControlNet")
    keys = list(shapes)
    if "lora_controlnet" in shapes:
        raise ControlNetLoadError(
            f"{file_name}: this is a Control-LoRA; Control-LoRA files are not supported yet "
            "— use a full ControlNet model"
        )
    if any(k.startswith(("adapter.", "body.")) for k in keys):
        raise ControlNetLoadError(
            f"{file_name}: this is a T2I-Adapter, not a ControlNet; T2I-Adapters are not supported yet"
        )
    if "difference" in shapes:
        raise ControlNetLoadError(
            f"{file_name}: this is a Diff ControlNet (stored as a difference to a base model); it is not supported yet "
            "— use a full ControlNet model"
        )
    if any(k.startswith("control_add_embedding.") for k in keys):
        raise ControlNetLoadError(
            f"{file_name}: ControlNet Union files are not supported yet — use a single-type ControlNet"
        )
    if _looks_like_lora(shapes):
        raise ControlNetLoadError(
            f"{file_name}: this is a LoRA, not a ControlNet; move it to models/Lora and use it with <lora:name:1>"
        )
    if any(k.startswith(CLDM_PREFIX + part) for k in keys for part in _CLDM_PARTS):
        return "cldm-1.0"
    if any(k.startswith(_CLDM_PARTS) for k in keys):
        return "cldm-1.1"
    if any(k.startswith(_DIFFUSERS_PARTS) for k in keys):
        return "diffusers"
    if any(k.startswith(UNET_PREFIX) for k in keys):
        raise ControlNetLoadError(
            f"{file_name}: this is a Stable Diffusion checkpoint, not a ControlNet; move it to models/Stable-diffusion"
        )
    if all(k.startswith(_VAE_PARTS) for k in keys) or all(k.startswith(VAE_PREFIX) for k in keys):
        raise ControlNetLoadError(f"{file_name}: this is a VAE, not a ControlNet; move it to models/VAE")
    raise ControlNetLoadError(
        f"{file_name}: not a ControlNet (no hint encoder: neither input_hint_block nor controlnet_cond_embedding keys)"
    )


def _controlnet_family(shapes: Shapes, layout: ControlNetLayout, file_name: str) -> ModelFamily:
    """SDXL by its addition embedding; otherwise SD2 by a linear (2-D) proj_in, SD1 by a 1x1-conv (4-D) one."""
    addition = "add_embedding.linear_1.weight" if layout == "diffusers" else "label_emb.0.0.weight"
    if addition in shapes:
        return SDXL
    projection_ranks = {len(shape) for key, shape in shapes.items() if key.endswith(".proj_in.weight")}
    if projection_ranks == {4}:
        return SD1
    if projection_ranks == {2}:
        return SD2
    raise ControlNetLoadError(
        f"{file_name}: cannot tell which base model this ControlNet is for (no attention projection or SDXL embedding)"
    )


def _convert_hint_block(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """cldm `input_hint_block` -> `controlnet_cond_embedding`, by conv order rather than diffusers' fixed index 14."""
    indices = ldm_hint_conv_indices(shapes_of(state))
    names = ["conv_in", *(f"blocks.{j}" for j in range(len(indices) - 2)), "conv_out"]
    converted = {}
    for index, name in zip(indices, names):
        for param in ("weight", "bias"):
            key = f"input_hint_block.{index}.{param}"
            if key in state:
                converted[f"controlnet_cond_embedding.{name}.{param}"] = state[key]
    return converted


def _convert_cldm(state: dict[str, torch.Tensor], config: dict[str, Any], file_name: str) -> dict[str, torch.Tensor]:
    """cldm keys (prefix stripped) -> diffusers keys; every source tensor must be used exactly once."""
    hint = {k: v for k, v in state.items() if k.startswith("input_hint_block.")}
    body = {k: v for k, v in state.items() if k not in hint}
    try:
        converted = convert_controlnet_checkpoint(body, config)
    except (KeyError, IndexError, ValueError) as exc:
        raise ControlNetLoadError(f"{file_name}: the ControlNet weights could not be converted ({exc})") from exc
    # The converter files absent blocks as None, and maps the hint encoder only in its stock form.
    converted = {
        k: v for k, v in converted.items() if v is not None and not k.startswith("controlnet_cond_embedding.")
    }
    converted.update(_convert_hint_block(hint))
    for key, tensor in body.items():
        for old, new in _LABEL_EMB.items():
            if key.startswith(old):
                converted[new + key[len(old):]] = tensor
    # The converter silently drops keys it does not know; renaming moves tensors without copying, so any source
    # tensor not among the results is a weight this architecture has no place for.
    used = {id(tensor) for tensor in converted.values()}
    unused = sorted(k for k, v in state.items() if id(v) not in used)
    if unused:
        raise ControlNetLoadError(
            f"{file_name}: {len(unused)} weights do not belong to a ControlNet (first: {unused[0]}); "
            "this kind of ControlNet is not supported"
        )
    return converted


def _assign_exact(module: ControlNetModel, state: dict[str, torch.Tensor], dtype: torch.dtype, file_name: str) -> None:
    """Like loader._assign, but extra weights and shape mismatches are errors too: they mean a wrong architecture."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    if missing:
        raise ControlNetLoadError(
            f"{file_name}: {len(missing)} ControlNet weights are missing (first: {missing[0]}); the file is incomplete"
        )
    extra = sorted(state.keys() - expected.keys())
    if extra:
        raise ControlNetLoadError(
            f"{file_name}: {len(extra)} weights do not fit the inferred ControlNet (first: {extra[0]}); "
            "this kind of ControlNet is not supported"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ControlNetLoadError(
                f"{file_name}: weight {key} has shape {tuple(tensor.shape)}, the inferred architecture expects "
                f"{tuple(expected[key].shape)}; the file is damaged or an unsupported ControlNet"
            )
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(tensors, strict=True, assign=True)
    module.eval().requires_grad_(False)


def load_controlnet(path: Path, dtype: torch.dtype = torch.float32) -> LoadedControlNet:
    """Read a ControlNet file and build it on the CPU (the caller moves it to the sampling device)."""
    path = Path(path)
    name = path.name
    try:
        raw = read_checkpoint(path)
    except CheckpointReadError as exc:
        raise ControlNetLoadError(str(exc)) from exc
    layout = detect_controlnet_layout(shapes_of(raw.state_dict), name)
    if layout == "cldm-1.0":
        # 1.0 files often carry a whole SD model beside the ControlNet; only `control_model.` is ours.
        state = {k[len(CLDM_PREFIX):]: v for k, v in raw.state_dict.items() if k.startswith(CLDM_PREFIX)}
    else:
        state = dict(raw.state_dict)
    shapes = shapes_of(state)
    family = _controlnet_family(shapes, layout, name)
    try:
        if layout == "diffusers":
            config = infer_diffusers_controlnet_config(shapes, family.attention)
        else:
            config = infer_ldm_controlnet_config(shapes, family.attention)
    except ArchitectureError as exc:
        raise ControlNetLoadError(f"{name}: {exc}") from exc

    cross_attention_dim = config["cross_attention_dim"]
    # Without cross-attention layers the width is unused, but diffusers requires a number to build the blocks.
    build_config = {**config, "cross_attention_dim": cross_attention_dim or config["block_out_channels"][-1]}
    with init_empty_weights(include_buffers=False):
        model = ControlNetModel(**build_config)
    converted = state if layout == "diffusers" else _convert_cldm(state, config, name)
    _assign_exact(model, converted, dtype, name)
    return LoadedControlNet(
        name=path.stem,
        path=path,
        family=family.name,
        layout=layout,
        model=model,
        hint_channels=int(config["conditioning_channels"]),
        cross_attention_dim=cross_attention_dim,
    )


def _widths(channels: Any) -> str:
    return ", ".join(str(c) for c in channels)


def check_compatible(controlnet: LoadedControlNet, model: "LoadedModel") -> None:
    """Refuse a ControlNet whose residuals or conditioning would not fit the loaded model's U-Net.

    Compares against the model's actual U-Net config (not a family's published sizes), because the residuals are
    added tensor by tensor and a width or count mismatch would fail mid-generation or misalign silently.
    """
    cn_name, model_name = controlnet.path.name, model.path.name
    model_title = model.family.title
    if controlnet.family != model.family.name:
        raise ControlNetMismatchError(
            f"{cn_name} is {_with_article(controlnet_family_title(controlnet.family))} ControlNet; the loaded model "
            f"{model_name} is {model_title} — choose a ControlNet made for {model_title}"
        )
    ours, theirs = controlnet.model.config, model.unet.config
    problems: list[str] = []
    if list(ours.block_out_channels) != list(theirs.block_out_channels):
        problems.append(
            f"its block widths are {_widths(ours.block_out_channels)}, the model's {_widths(theirs.block_out_channels)}"
        )
    if ours.layers_per_block != theirs.layers_per_block:
        problems.append(f"it has {ours.layers_per_block} res blocks per level, the model {theirs.layers_per_block}")
    if controlnet.cross_attention_dim is not None and controlnet.cross_attention_dim != theirs.cross_attention_dim:
        problems.append(
            f"its text width is {controlnet.cross_attention_dim}, the model's {theirs.cross_attention_dim}"
        )
    our_addition = (ours.addition_embed_type, ours.projection_class_embeddings_input_dim)
    their_addition = (theirs.addition_embed_type, theirs.projection_class_embeddings_input_dim)
    if our_addition != their_addition:
        problems.append(
            f"its addition embedding takes {our_addition[1] or 'nothing'}, the model's {their_addition[1] or 'nothing'}"
        )
    if ours.in_channels != model.latent_channels:
        problems.append(f"it takes {ours.in_channels}-channel latents, the model's VAE makes {model.latent_channels}")
    if problems:
        raise ControlNetMismatchError(
            f"{cn_name} does not fit the loaded model {model_name} ({'; '.join(problems)}) "
            f"— choose a ControlNet made for this {model_title} model"
        )

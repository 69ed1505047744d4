"""LoRA-family files as weight patches for a loaded model: kohya LoRA/LoCon, LyCORIS LoHa/LoKr, diffusers/PEFT.

Why by hand (see docs/lora.md): diffusers' `load_lora_weights` injects PEFT layers into the modules, converts only
LoRA/LoCon, and its per-style key converters each assume one source style. A job here needs weight deltas it can merge
and take back exactly (engine/patching.py), for LoHa and LoKr as well. So the layer names are matched against a table
built from the loaded model itself (kohya's diffusers-style and SGM-style U-Net names, HF text-encoder names, PEFT
paths), and each type's delta is computed from its definition:

- LoRA/LoCon: up @ down (through `lora_mid` for Tucker convs), times alpha / rank;
- LoHa: (w1_a @ w1_b) * (w2_a @ w2_b) (Hadamard product; Tucker cores `hada_t1/t2` for convs), times alpha / rank;
- LoKr: kron(w1, w2), each either full or a_b-factored (Tucker core `lokr_t2`), times alpha / rank of the factored
  one (1 when both are full).

A missing or zero alpha means alpha = rank (scale 1), as kohya and diffusers read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from .checkpoint_io import CheckpointReadError, read_checkpoint
from .export import unet_module_to_ldm
from .loader import LoadedModel
from .patching import WeightPatch

LoraKind = Literal["lora", "loha", "lokr"]
Component = Literal["unet", "te"]
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")

# Tensor names per type, after the layer name (kohya: `<layer>.<suffix>`).
_LORA_PARTS = {"lora_down.weight", "lora_up.weight", "lora_mid.weight"}
_LOHA_PARTS = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}
_LOKR_PARTS = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
_IGNORED_PARTS = {"alpha"}
# Known types we do not apply yet: their own message instead of "unknown keys".
_UNSUPPORTED_PARTS = {"dora_scale": "DoRA", "on_input": "IA3", "diff": "a full-weight diff",
                      "diff_b": "a full-weight diff", "w_norm": "a norm-layer patch", "oft_blocks": "OFT",
                      "oft_diag": "OFT", "a1.weight": "GLoRA"}

# diffusers/PEFT spellings of the two LoRA matrices (model-formats §7.2), longest first.
_PEFT_DOWN = (".lora_A.default.weight", ".lora_A.weight", ".lora_linear_layer.down.weight", ".lora.down.weight",
              "_lora.down.weight")
_PEFT_UP = (".lora_B.default.weight", ".lora_B.weight", ".lora_linear_layer.up.weight", ".lora.up.weight",
            "_lora.up.weight")


class LoraError(ValueError):
    """A LoRA file that cannot be used with this model; the message names the file and says why."""


@dataclass(frozen=True)
class LoraLayer:
    """One patched layer of a LoRA file: its type, its tensors by part name, and alpha."""

    kind: LoraKind
    tensors: Mapping[str, torch.Tensor]
    alpha: float | None

    def rank(self) -> int | None:
        """The rank that alpha is divided by (None for a LoKr of two full matrices)."""
        t = self.tensors
        if self.kind == "lora":
            return int(t["lora_down.weight"].shape[0])
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[0])
        for name in ("lokr_w1_b", "lokr_w2_b"):
            if name in t:
                return int(t[name].shape[0])
        return None

    def scale(self) -> float:
        rank = self.rank()
        if rank is None or not self.alpha:
            return 1.0
        return float(self.alpha) / rank

    def delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor:
        """The weight delta at strength 1 (alpha/rank applied), float32, reshaped to `shape` when it fits."""
        t = {k: v.to(device=device, dtype=torch.float32) for k, v in self.tensors.items()}
        if self.kind == "lora":
            down, up = t["lora_down.weight"], t["lora_up.weight"]
            if "lora_mid.weight" in t:  # Tucker: down [r, in, 1, 1], mid [r, r, k, k], up [out, r, 1, 1]
                delta = torch.einsum("ijkl,jr,pi->prkl", t["lora_mid.weight"], down.flatten(1), up.flatten(1))
            else:
                delta = up.flatten(1) @ down.flatten(1)
                if down.dim() == 4:
                    delta = delta.reshape(up.shape[0], *down.shape[1:])
        elif self.kind == "loha":
            delta = _loha_factor(t, "1") * _loha_factor(t, "2")
        else:
            w1 = t["lokr_w1"] if "lokr_w1" in t else t["lokr_w1_a"] @ t["lokr_w1_b"]
            if "lokr_w2" in t:
                w2 = t["lokr_w2"]
            elif "lokr_t2" in t:
                w2 = torch.einsum("ijkl,ip,jr->prkl", t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
            else:
                w2 = t["lokr_w2_a"] @ t["lokr_w2_b"]
                if len(shape) == 4:  # a conv's w2 is stored flattened over (in, k, k)
                    w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
            if w2.dim() == 4:
                w1 = w1[:, :, None, None]
            delta = torch.kron(w1, w2)
        delta = delta * self.scale()
        return delta.reshape(shape) if delta.numel() == torch.Size(shape).numel() else delta


def _loha_factor(t: Mapping[str, torch.Tensor], i: str) -> torch.Tensor:
    if f"hada_t{i}" in t:  # Tucker: t [r, r, k, k], a [r, out], b [r, in]
        return torch.einsum("ijkl,jr,ip->prkl", t[f"hada_t{i}"], t[f"hada_w{i}_b"], t[f"hada_w{i}_a"])
    a, b = t[f"hada_w{i}_a"], t[f"hada_w{i}_b"]
    return a @ b.flatten(1) if b.dim() > 2 else a @ b


@dataclass(frozen=True)
class LoraFile:
    """A parsed LoRA file: its layers by the file's own layer name, and the file's metadata."""

    name: str
    path: Path
    layers: Mapping[str, LoraLayer]
    metadata: Mapping[str, str] = field(default_factory=dict)
    style: Literal["kohya", "peft"] = "kohya"

    @property
    def kinds(self) -> set[str]:
        return {layer.kind for layer in self.layers.values()}

    @property
    def is_sdxl(self) -> bool:
        """Declared or evident: SDXL metadata, or the two-text-encoder prefixes."""
        version = self.metadata.get("ss_base_model_version", "") + self.metadata.get("modelspec.architecture", "")
        return "xl" in version.lower() or any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2."))
                                               for k in self.layers)


def read_lora(path: Path) -> LoraFile:
    """Parse a LoRA file (`.safetensors`, or a pickle format through `weights_only=True` only)."""
    path = Path(path)
    try:
        raw = read_checkpoint(path)
    except CheckpointReadError as exc:
        raise LoraError(f"LoRA {path.stem!r}: {exc}") from exc
    return parse_lora(raw.state_dict, raw.metadata, path)


def parse_lora(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: Path) -> LoraFile:
    """Group a LoRA state dict into layers; unknown or unsupported tensor names are an error naming the file."""
    name = Path(path).stem
    if not state:
        raise LoraError(f"LoRA {name!r}: the file holds no tensors")
    kohya = all(key.startswith(KOHYA_PREFIXES) for key in state)
    layers = _kohya_layers(state, name) if kohya else _peft_layers(state, metadata, name)
    if not layers:
        raise LoraError(f"LoRA {name!r}: no LoRA layers found; is this a LoRA file?")
    return LoraFile(name=name, path=Path(path), layers=layers, metadata=dict(metadata),
                    style="kohya" if kohya else "peft")


def _layer_kind(parts: set[str], name: str, layer: str) -> LoraKind:
    for part, what in _UNSUPPORTED_PARTS.items():
        if part in parts:
            raise LoraError(f"LoRA {name!r}: {what} layers ({layer}) are not supported yet")
    if parts & _LORA_PARTS:
        if not {"lora_down.weight", "lora_up.weight"} <= parts:
            raise LoraError(f"LoRA {name!r}: layer {layer} has only one of lora_down/lora_up")
        return "lora"
    if parts & _LOHA_PARTS:
        if not {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"} <= parts:
            raise LoraError(f"LoRA {name!r}: LoHa layer {layer} is missing some of hada_w1_a/b, hada_w2_a/b")
        return "loha"
    if parts & _LOKR_PARTS:
        has_w1 = "lokr_w1" in parts or {"lokr_w1_a", "lokr_w1_b"} <= parts
        has_w2 = "lokr_w2" in parts or {"lokr_w2_a", "lokr_w2_b"} <= parts
        if not (has_w1 and has_w2):
            raise LoraError(f"LoRA {name!r}: LoKr layer {layer} is missing lokr_w1 or lokr_w2 (or their a/b parts)")
        return "lokr"
    raise LoraError(f"LoRA {name!r}: layer {layer} has no LoRA, LoHa or LoKr tensors ({', '.join(sorted(parts))})")


def _kohya_layers(state: Mapping[str, torch.Tensor], name: str) -> dict[str, LoraLayer]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        layer, _, part = key.partition(".")
        grouped.setdefault(layer, {})[part] = tensor
    layers = {}
    for layer, tensors in grouped.items():
        parts = set(tensors) - _IGNORED_PARTS
        if not parts:
            continue  # an alpha without tensors: nothing to apply
        alpha = float(tensors["alpha"]) if "alpha" in tensors else None
        layers[layer] = LoraLayer(_layer_kind(parts, name, layer), {k: v for k, v in tensors.items() if k != "alpha"},
                                  alpha)
    return layers


def _peft_scales(metadata: Mapping[str, str]) -> dict[str, float]:
    """diffusers' `lora_adapter_metadata` (`<component>.lora_alpha`, `<component>.r`) -> alpha per component."""
    text = metadata.get("lora_adapter_metadata")
    if not text:
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return {}
    alphas = {}
    for key, value in data.items():
        component, _, field_name = key.rpartition(".")
        if field_name == "lora_alpha" and isinstance(value, (int, float)):
            alphas[component] = float(value)
    return alphas


def _peft_layers(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str], name: str) -> dict[str, LoraLayer]:
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    for key, tensor in state.items():
        for spellings, part in ((_PEFT_DOWN, "lora_down.weight"), (_PEFT_UP, "lora_up.weight")):
            match = next((s for s in spellings if key.endswith(s)), None)
            if match:
                layer = key[: -len(match)].replace(".processor.", ".").replace(".to_out_lora", ".to_out.0")
                grouped.setdefault(layer, {})[part] = tensor
                break
        else:
            if key.endswith(".alpha"):
                alphas[key.removesuffix(".alpha")] = float(tensor)
            else:
                raise LoraError(f"LoRA {name!r}: {key!r} is not a LoRA tensor name this app knows (kohya "
                                "lora_unet_/lora_te_ names, or diffusers/PEFT lora_A/lora_B)")
    component_alpha = _peft_scales(metadata)
    layers = {}
    for layer, tensors in grouped.items():
        if set(tensors) != {"lora_down.weight", "lora_up.weight"}:
            raise LoraError(f"LoRA {name!r}: layer {layer} has only one of lora_A/lora_B")
        path = layer if "." in layer and layer.split(".", 1)[0] in _PEFT_COMPONENTS else f"unet.{layer}"
        alpha = alphas.get(layer, component_alpha.get(path.split(".", 1)[0]))
        layers[path] = LoraLayer("lora", tensors, alpha)
    return layers


_PEFT_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


# --------------------------------------------------------------------------------------------- matching the model


@dataclass(frozen=True)
class LoraTarget:
    """A layer of the loaded model that a LoRA layer name refers to."""

    component: Component
    module: torch.nn.Module
    path: str  # the model's own module path, for messages


def target_table(model: LoadedModel) -> dict[str, LoraTarget]:
    """Every name a LoRA file may use for a patchable layer of `model` -> that layer.

    U-Net: kohya's diffusers-style name, kohya's SGM-style name (SDXL files), and the PEFT path `unet.<path>`.
    Text encoders: kohya `lora_te_` (one encoder) or `lora_te1_`/`lora_te2_` (SDXL), and PEFT `text_encoder(_2).`,
    all over the HF CLIP module path (`text_model.encoder.layers.N...`).
    """
    table: dict[str, LoraTarget] = {}
    for path, module in model.unet.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            target = LoraTarget("unet", module, path)
            table["lora_unet_" + path.replace(".", "_")] = target
            table["lora_unet_" + unet_module_to_ldm(model.unet, path).replace(".", "_")] = target
            table["unet." + path] = target
    single = len(model.text_encoders) == 1
    for index, encoder in enumerate(model.text_encoders):
        kohya = "lora_te" if single else f"lora_te{index + 1}"
        peft = "text_encoder" if index == 0 else f"text_encoder_{index + 1}"
        for path, module in encoder.model.named_modules():
            if isinstance(module, torch.nn.Linear):
                # transformers' CLIPTextModel names its layers without the `text_model.` that every LoRA file uses
                hf_path = path if path.startswith(("text_model.", "text_projection")) else f"text_model.{path}"
                target = LoraTarget("te", module, f"{peft}.{hf_path}")
                table[f"{kohya}_" + hf_path.replace(".", "_")] = target
                table[f"{peft}.{hf_path}"] = target
    return table


def check_compatible(lora: LoraFile, model: LoadedModel, table: Mapping[str, LoraTarget] | None = None) -> None:
    """Refuse a LoRA made for another family, or with layers the model does not have, before anything is patched."""
    model_is_sdxl = model.family.is_sdxl
    if lora.is_sdxl != model_is_sdxl:
        made_for = "SDXL" if lora.is_sdxl else "SD 1.x/2.x"
        raise LoraError(f"LoRA {lora.name!r} was made for {made_for} models, but {model.name!r} is "
                        f"{model.family.title}; pick a LoRA for this model or switch the checkpoint")
    table = table if table is not None else target_table(model)
    unknown = [layer for layer in lora.layers if layer not in table]
    if unknown:
        raise LoraError(f"LoRA {lora.name!r}: {len(unknown)} of its {len(lora.layers)} layers do not exist in "
                        f"{model.name!r} (e.g. {unknown[0]}); it was made for another model architecture")
    mismatched = _first_shape_mismatch(lora, table)
    if mismatched:
        layer_name, got, want = mismatched
        raise LoraError(f"LoRA {lora.name!r}: layer {layer_name} makes a {got} change for a {want} weight in "
                        f"{model.name!r}; it was made for another model size")


def _first_shape_mismatch(lora: LoraFile, table: Mapping[str, LoraTarget]) -> tuple[str, tuple, tuple] | None:
    """Check the shapes cheaply from the factors (no delta is built)."""
    for layer_name, layer in lora.layers.items():
        weight = table[layer_name].module.weight
        out_features, in_features = weight.shape[0], weight[0].numel()
        t = layer.tensors
        if layer.kind == "lora":
            got = (t["lora_up.weight"].shape[0], t["lora_down.weight"][0].numel()
                   if "lora_mid.weight" not in t
                   else t["lora_down.weight"].shape[1] * t["lora_mid.weight"][0, 0].numel())
        elif layer.kind == "loha":
            a, b = t["hada_w1_a"], t["hada_w1_b"]
            got = ((a.shape[1], b.shape[1] * t["hada_t1"][0, 0].numel()) if "hada_t1" in t
                   else (a.shape[0], b[0].numel()))
        else:
            continue  # LoKr's factor shapes only show the product; the delta's size is checked when it is applied
        if tuple(got) != (out_features, in_features):
            return layer_name, tuple(got), (out_features, in_features)
    return None


def lora_patches(lora: LoraFile, model: LoadedModel, te_strength: float, unet_strength: float,
                 table: Mapping[str, LoraTarget] | None = None) -> list[WeightPatch]:
    """The patches that apply `lora` to `model` at the given strengths (0 leaves that part out)."""
    table = table if table is not None else target_table(model)
    check_compatible(lora, model, table)
    patches = []
    for layer_name, layer in lora.layers.items():
        target = table[layer_name]
        strength = te_strength if target.component == "te" else unet_strength
        if strength == 0:
            continue
        shape = target.module.weight.shape
        patches.append(WeightPatch(
            module=target.module,
            delta=lambda device, layer=layer, shape=shape: layer.delta(shape, device),
            strength=float(strength),
            source=f"LoRA {lora.name!r} layer {layer_name}",
        ))
    return patches

"""A trainable LoRA on a loaded model (peft adapters), saved as a kohya-format `.safetensors`.

peft injects the adapters and holds the trainable A/B matrices; peft's own layer math (`B·A·x · alpha/r`) is kohya's
(`up(down(x)) · alpha/rank`), so the tensors are saved unchanged under kohya's names.

The kohya names come from the engine's LoRA target table (`engine.lora.target_table`) rather than diffusers'
`convert_state_dict_to_kohya`: that function writes diffusers U-Net paths for every family, but A1111 and kohya
expect SGM paths (`input_blocks_4_1_...`) in SDXL files, and the target table already knows both spellings for the
exact model being trained, so a file we write always loads back into the same model in our own loader.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save as serialize

from webui.engine.export import unet_module_to_ldm
from webui.engine.loader import LoadedModel

ADAPTER = "default"
# kohya's default LoRA targets: the Linear and 1x1-conv layers of the U-Net's transformer blocks, and the text
# encoder's attention and MLP layers.
UNET_TARGET_PARENTS = ("attentions.",)
TEXT_TARGET_PARENTS = ("self_attn.", "mlp.")
# Which U-Net layers: kohya's default, or only the cross-attention keys and values (Custom Diffusion, Kumari et al.
# 2023: a new concept through what the text does to the image, with the least drift elsewhere).
# "attention+conv" adds kohya's LoCon layers (`conv_dim`): the 3x3 convolutions of the ResNet blocks and the down/up
# samplers. They reach the U-Net levels that have no attention at all (the shipped model's full-resolution level).
UNET_LAYER_CHOICES = ("attention", "cross-attention-kv", "attention+conv")
CROSS_ATTENTION_KV = ("attn2.to_k", "attn2.to_v")
CONV_TARGET_PARENTS = ("resnets.", "downsamplers.", "upsamplers.")


class LoraShapeError(ValueError):
    """A rank/alpha/module choice that cannot train; the message says which value to change."""


@dataclass(frozen=True)
class LoraShape:
    rank: int = 16
    alpha: float = 16.0
    train_unet: bool = True
    train_text_encoder: bool = True
    unet_layers: str = "attention"
    conv_rank: int = 0  # kohya's conv_dim: the rank of the LoCon 3x3-conv layers (0 = `rank`)
    conv_alpha: float = 0.0  # kohya's conv_alpha (0 = `alpha`)
    # kohya's network_dropout, peft's lora_dropout: a random share of each LoRA layer's input is dropped in training
    dropout: float = 0.0

    @property
    def conv_rank_used(self) -> int:
        return self.conv_rank or self.rank

    @property
    def conv_alpha_used(self) -> float:
        return self.conv_alpha or self.alpha

    def check(self) -> None:
        if self.unet_layers not in UNET_LAYER_CHOICES:
            raise LoraShapeError(f"unet_layers must be one of {', '.join(UNET_LAYER_CHOICES)} "
                                 f"(got {self.unet_layers!r})")
        if self.rank < 1:
            raise LoraShapeError(f"rank must be at least 1 (got {self.rank})")
        if not self.alpha > 0:  # also catches NaN
            raise LoraShapeError(f"alpha must be a positive number (got {self.alpha})")
        if self.conv_rank < 0 or not self.conv_alpha >= 0:
            raise LoraShapeError(f"the conv rank and alpha must be 0 (= rank, alpha) or positive (got "
                                 f"{self.conv_rank}, {self.conv_alpha})")
        if not (self.train_unet or self.train_text_encoder):
            raise LoraShapeError("train the U-Net, the text encoder, or both: neither is selected")
        if not 0 <= self.dropout < 1:  # also catches NaN
            raise LoraShapeError(f"network dropout must be in [0, 1) (got {self.dropout})")


@dataclass
class _Part:
    key: str  # the training-state key: "unet", "te0", "te1"
    module: torch.nn.Module
    kohya_prefix: str
    targets: list[str]
    convs: frozenset[str] = frozenset()  # the LoCon targets (3x3 convolutions): conv rank and alpha


def _is_attention_target(path: str, module: torch.nn.Module) -> bool:
    return (any(parent in path for parent in UNET_TARGET_PARENTS)
            and (isinstance(module, torch.nn.Linear)
                 or (isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1))))


def _is_conv_target(path: str, module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.Conv2d) and any(parent in path for parent in CONV_TARGET_PARENTS)


def _unet_targets(model: LoadedModel, layers: str = "attention") -> list[str]:
    targets = []
    for path, module in model.unet.named_modules():
        if layers == "cross-attention-kv":
            chosen = _is_attention_target(path, module) and path.endswith(CROSS_ATTENTION_KV)
        else:
            conv = layers == "attention+conv" and _is_conv_target(path, module)
            chosen = _is_attention_target(path, module) or conv
        if chosen:
            targets.append(path)
    return targets


def _text_targets(module: torch.nn.Module) -> list[str]:
    return [path for path, layer in module.named_modules()
            if isinstance(layer, torch.nn.Linear) and any(parent in path for parent in TEXT_TARGET_PARENTS)]


class LoraNetwork:
    """The adapters injected into one training copy of a model (never into a cached base model)."""

    def __init__(self, model: LoadedModel, shape: LoraShape) -> None:
        shape.check()
        self.model = model
        self.shape = shape
        self.parts: list[_Part] = []
        model.unet.requires_grad_(False)
        for encoder in model.text_encoders:
            encoder.model.requires_grad_(False)
        model.vae.requires_grad_(False)
        if shape.train_unet:
            self.parts.append(_Part("unet", model.unet, "lora_unet", _unet_targets(model, shape.unet_layers)))
        if shape.train_text_encoder:
            single = len(model.text_encoders) == 1
            for index, encoder in enumerate(model.text_encoders):
                prefix = "lora_te" if single else f"lora_te{index + 1}"
                self.parts.append(_Part(f"te{index}", encoder.model, prefix, _text_targets(encoder.model)))
        for part in self.parts:
            if not part.targets:
                raise LoraShapeError(f"the model's {part.key} has no layers a LoRA can train")
            part.convs = convs = self._convs(part)
            config = LoraConfig(r=shape.rank, lora_alpha=shape.alpha, target_modules=part.targets,
                                init_lora_weights=True, lora_dropout=shape.dropout,
                                rank_pattern={f"^{path}$": shape.conv_rank_used for path in convs},
                                alpha_pattern={f"^{path}$": shape.conv_alpha_used for path in convs})
            inject_adapter_in_model(config, part.module, adapter_name=ADAPTER)
        for parameter in self.trainable_parameters():
            parameter.requires_grad_(True)

    @staticmethod
    def _convs(part: _Part) -> frozenset[str]:
        """The part's LoCon targets (3x3 convolutions), which take the conv rank and alpha (before injection)."""
        modules = dict(part.module.named_modules())
        return frozenset(path for path in part.targets
                         if isinstance(modules[path], torch.nn.Conv2d) and modules[path].kernel_size != (1, 1))

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """The base model for a moment: every adapter off (peft's switch, which also freezes and then re-enables
        their gradients)."""
        layers = [module for part in self.parts for module in part.module.modules()
                  if isinstance(module, BaseTunerLayer)]
        for layer in layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in layers:
                layer.enable_adapters(True)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for part in self.parts for name, p in part.module.named_parameters() if ".lora_" in name]

    def parameter_groups(self, lr: float, text_encoder_lr: float | None) -> list[dict]:
        groups = []
        for part in self.parts:
            params = [p for name, p in part.module.named_parameters() if ".lora_" in name]
            groups.append({"params": params, "lr": text_encoder_lr if part.key != "unet" and text_encoder_lr else lr})
        return groups

    # -- training state (resume) ------------------------------------------------------------------------------------
    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        return {part.key: {k: v.detach().cpu().clone() for k, v in
                           get_peft_model_state_dict(part.module, adapter_name=ADAPTER).items()}
                for part in self.parts}

    def load_state(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        missing = {part.key for part in self.parts} - set(state)
        if missing:
            raise LoraShapeError(f"the saved state has no {', '.join(sorted(missing))} adapters: it was trained with "
                                 "other module settings")
        for part in self.parts:
            result = set_peft_model_state_dict(part.module, state[part.key], adapter_name=ADAPTER)
            unexpected = getattr(result, "unexpected_keys", None) or []
            if unexpected:
                raise LoraShapeError(f"the saved state does not fit this LoRA ({unexpected[0]} ...)")

    # -- kohya file -------------------------------------------------------------------------------------------------
    def _kohya_name(self, part: _Part, path: str) -> str:
        if part.key == "unet":
            if self.model.family.is_sdxl:
                path = unet_module_to_ldm(self.model.unet, path)
            return f"{part.kohya_prefix}_{path.replace('.', '_')}"
        hf_path = path if path.startswith(("text_model.", "text_projection")) else f"text_model.{path}"
        return f"{part.kohya_prefix}_{hf_path.replace('.', '_')}"

    def kohya_state_dict(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for part in self.parts:
            convs = part.convs
            for key, value in get_peft_model_state_dict(part.module, adapter_name=ADAPTER).items():
                path, _, kind = key.rpartition(".lora_")  # "<path>.lora_A.weight" -> ("<path>", "A.weight")
                name = self._kohya_name(part, path)
                which = "lora_down" if kind.startswith("A") else "lora_up"
                tensors[f"{name}.{which}.weight"] = value.detach().to("cpu", dtype).contiguous()
                alpha = self.shape.conv_alpha_used if path in convs else self.shape.alpha
                tensors[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
        return tensors


def addnet_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensor bytes after the safetensors header: kohya's `sshs_model_hash`, which A1111 reads instead
    of hashing the file. Metadata is not part of it, so it can be computed before the metadata is final."""
    data = serialize(tensors)
    header = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header:]).hexdigest()


def kohya_metadata(model: LoadedModel, shape: LoraShape, facts: dict[str, object]) -> dict[str, str]:
    """The `ss_*` keys kohya writes plus SAI `modelspec.*`; every value a string, JSON where kohya uses JSON."""
    family = model.family
    version = {"sdxl": "sdxl_base_v1-0", "sd2": "sd_v2"}.get(family.name, "sd_v1")
    architecture = {"sdxl": "stable-diffusion-xl-v1-base", "sd2": "stable-diffusion-v2"}.get(family.name,
                                                                                              "stable-diffusion-v1")
    if family.name == "sd2" and model.prediction_type == "v_prediction":
        architecture += "-768-v"
    network_train = ("unet_only" if not shape.train_text_encoder
                     else "text_encoder_only" if not shape.train_unet else "both")
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(shape.rank),
        "ss_network_alpha": f"{shape.alpha:g}",
        "ss_network_args": json.dumps({"conv_dim": str(shape.conv_rank_used),
                                       "conv_alpha": f"{shape.conv_alpha_used:g}"}
                                      if shape.unet_layers == "attention+conv" else {}),
        "ss_network_train_unet_only": str(not shape.train_text_encoder),
        "ss_network_train_text_encoder_only": str(not shape.train_unet),
        "ss_base_model_version": version,
        "ss_v2": str(family.name == "sd2"),
        "ss_sd_model_name": model.name,
        "latent_studio.network_train": network_train,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{architecture}/lora",
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
        "modelspec.prediction_type": "v" if model.prediction_type == "v_prediction" else "epsilon",
    }
    for key, value in facts.items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    return metadata


def save_safetensors_atomically(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """A temp file renamed over the final name, so a crash leaves no half-written file behind."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial")
    try:
        save_file(tensors, str(temp), metadata=metadata)
        temp.replace(path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def save_lora(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Atomic write, with the addnet hash A1111 shows."""
    return save_safetensors_atomically(path, tensors, {**metadata, "sshs_model_hash": addnet_hash(tensors)})

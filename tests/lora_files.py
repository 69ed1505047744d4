"""LoRA files for tests, written from the ground-truth modules of a tiny checkpoint in the formats found in the wild.

kohya names are built here from the diffusers module paths (`lora_unet_<path with _>`, `lora_te_text_model_...`);
SDXL files use the SGM block names kohya writes for SDXL (`input_blocks_4_1_...`), which diffusers' own loader maps
back, so a wrong name on either side fails the parity tests. The PEFT file is written by diffusers' own
`save_lora_weights` from a peft adapter.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import save_file

from webui.engine.export import unet_module_to_ldm
from webui.engine.synthetic import SyntheticModel

ATTENTION_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                    "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TE_LAYERS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def unet_layers(model: SyntheticModel, conv: bool) -> Iterator[tuple[str, torch.nn.Module]]:
    """(diffusers path, module) of what kohya's trainer targets: transformer linears, proj_in/out;
    LoCon: resnet convs."""
    for path, module in model.unet.named_modules():
        if path.endswith(ATTENTION_LAYERS) or path.endswith((".proj_in", ".proj_out")):
            yield path, module
        elif conv and ".resnets." in path and path.endswith((".conv1", ".conv2")):
            yield path, module


def te_layers(model: SyntheticModel) -> Iterator[tuple[str, str, torch.nn.Module]]:
    """(kohya prefix, HF path with text_model., module) for each text encoder."""
    single = len(model.text_encoders) == 1
    for index, encoder in enumerate(model.text_encoders):
        prefix = "lora_te" if single else f"lora_te{index + 1}"
        for path, module in encoder.named_modules():
            if path.endswith(TE_LAYERS):
                yield prefix, path if path.startswith("text_model.") else f"text_model.{path}", module


def _shape(module: torch.nn.Module) -> tuple[int, int, tuple[int, ...]]:
    weight = module.weight
    return weight.shape[0], weight.shape[1], tuple(weight.shape[2:])


def _layer_tensors(kind: str, module: torch.nn.Module, rank: int, gen: torch.Generator,
                   sigma: float) -> dict[str, torch.Tensor]:
    out_f, in_f, kernel = _shape(module)

    def randn(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * sigma).contiguous()

    if kind == "lora":
        if kernel:  # a conv (LoCon for k x k, or a 1x1 proj): down k x k conv, up 1x1 conv
            return {"lora_down.weight": randn(rank, in_f, *kernel), "lora_up.weight": randn(out_f, rank, 1, 1)}
        return {"lora_down.weight": randn(rank, in_f), "lora_up.weight": randn(out_f, rank)}
    if kind == "loha":
        flat_in = in_f * (kernel[0] * kernel[1] if kernel else 1)
        return {"hada_w1_a": randn(out_f, rank), "hada_w1_b": randn(rank, flat_in),
                "hada_w2_a": randn(out_f, rank), "hada_w2_b": randn(rank, flat_in)}
    # LoKr: w1 full (a small factor of both dims), w2 factored a @ b
    f_out = 2 if out_f % 2 == 0 else 1
    f_in = 2 if in_f % 2 == 0 else 1
    flat_in2 = (in_f // f_in) * (kernel[0] * kernel[1] if kernel else 1)
    return {"lokr_w1": randn(f_out, f_in) * 4, "lokr_w2_a": randn(out_f // f_out, rank),
            "lokr_w2_b": randn(rank, flat_in2)}


def write_kohya_lora(path: Path, model: SyntheticModel, kind: Literal["lora", "loha", "lokr"] = "lora",
                     rank: int = 4, alpha: float | None = 2.0, seed: int = 0, conv: bool = False, te: bool = True,
                     unet: bool = True, sigma: float = 0.3, metadata: dict[str, str] | None = None) -> Path:
    """A kohya-format file (LoRA/LoCon, LoHa or LoKr) with random weights for `model`'s layers."""
    gen = torch.Generator("cpu").manual_seed(seed)
    sgm = model.family.name == "sdxl"
    state: dict[str, torch.Tensor] = {}

    def add(name: str, module: torch.nn.Module) -> None:
        for part, tensor in _layer_tensors(kind, module, rank, gen, sigma).items():
            state[f"{name}.{part}"] = tensor
        if alpha is not None:
            state[f"{name}.alpha"] = torch.tensor(float(alpha))

    if unet:
        for diffusers_path, module in unet_layers(model, conv):
            layer_path = unet_module_to_ldm(model.unet, diffusers_path) if sgm else diffusers_path
            add("lora_unet_" + layer_path.replace(".", "_"), module)
    if te:
        for prefix, hf_path, module in te_layers(model):
            add(f"{prefix}_" + hf_path.replace(".", "_"), module)
    meta = {"ss_network_module": {"lora": "networks.lora"}.get(kind, "lycoris.kohya"),
            "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
            "ss_base_model_version": "sdxl_base_v1-0" if sgm else "sd_v1", **(metadata or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return path


def write_peft_lora(path: Path, model: SyntheticModel, rank: int = 4, alpha: int = 8, seed: int = 0) -> Path:
    """diffusers' own LoRA file: a peft adapter on copies of the U-Net and first text encoder, saved by
    `save_lora_weights` (keys `unet.<path>.lora_A.weight`, alpha in `lora_adapter_metadata`)."""
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = copy.deepcopy(model.unet)
    encoder = copy.deepcopy(model.text_encoders[0])
    torch.manual_seed(seed)
    unet_config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                             target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    te_config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                           target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    unet.add_adapter(unet_config)
    from peft import inject_adapter_in_model

    encoder = inject_adapter_in_model(te_config, encoder)
    with torch.no_grad():  # gaussian init leaves lora_B at zero; give it values so the file changes the image
        for name, param in [*unet.named_parameters(), *encoder.named_parameters()]:
            if "lora_B" in name:
                param.normal_(0.0, 0.3)
    unet_layers_state = get_peft_model_state_dict(unet)
    te_state = get_peft_model_state_dict(encoder)
    if not any(k.startswith("text_model.") for k in te_state):  # the file uses HF paths with `text_model.`
        te_state = {f"text_model.{k}": v for k, v in te_state.items()}
    cls = (diffusers.StableDiffusionXLPipeline if model.family.name == "sdxl" else diffusers.StableDiffusionPipeline)
    metadata = {"unet_lora_adapter_metadata": unet_config.to_dict(),
                "text_encoder_lora_adapter_metadata": te_config.to_dict()}
    cls.save_lora_weights(str(path.parent), unet_lora_layers=unet_layers_state, text_encoder_lora_layers=te_state,
                          weight_name=path.name, **metadata)
    return path

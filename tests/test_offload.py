"""--medvram and --lowvram on real files, on the CPU.

A CPU has no second memory to offload to, so these run in bf16: the device copy of a weight is bf16 and its RAM home
fp32 (as in `test_model_manager`'s sibling tests), so every move really converts, a component that ran from RAM
instead of from its device copy would compute in the wrong dtype (an error, or other pixels), and where each weight is
at a given moment can be read off its dtype. Each image must equal, bit for bit, the image of the same model placed
whole on the device.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from tests.lora_files import write_kohya_lora
from webui.engine.generation import SamplingParams, txt2img
from webui.engine.img2img import Img2ImgOptions, img2img
from webui.engine.loader import LoadedModel
from webui.engine.lora import lora_patches, read_lora
from webui.engine.offload import device_bytes
from webui.engine.patching import patched
from webui.engine.samplers import SamplerRegistry
from webui.services.hashing import HashCache
from webui.services.model_manager import ModelManager

HOME, DEVICE = torch.float32, torch.bfloat16
PARAMS = SamplingParams(prompt="a red circle", negative_prompt="blue", sampler="Euler", steps=3, cfg_scale=5.0,
                        width=64, height=64, seeds=[11, 12])


def _bf16_exact_copy(source: Path, target: Path) -> None:
    """The checkpoint with every float rounded to a bf16 value: then a weight's way to the device (patched in fp32
    in RAM and rounded on the move, or rounded first and patched there) cannot change its bf16 value, and a round
    trip through the device leaves the fp32 copy bit-identical, so images and hashes compare exactly."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file({key: t.to(torch.bfloat16).to(t.dtype) if t.is_floating_point() else t for key, t in state.items()},
              str(target), metadata=metadata)


@pytest.fixture()
def folder(tmp_path: Path, tiny_sd1, tiny_sdxl) -> Path:
    models = tmp_path / "Stable-diffusion"
    models.mkdir()
    _bf16_exact_copy(tiny_sd1.path, models / "sd1.safetensors")
    _bf16_exact_copy(tiny_sdxl.path, models / "sdxl.safetensors")
    return models


def _manager(folder: Path, tmp_path: Path, offload: str = "auto", **budgets) -> ModelManager:
    tmp_path.mkdir(parents=True, exist_ok=True)
    return ModelManager(folder, tmp_path / "VAE", HashCache(tmp_path / "hashes.json"), torch.device("cpu"), DEVICE,
                        ram_cache_size=2, offload_mode=offload, **budgets)


def _picture() -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)),
                                     np.full((64, 64), 90, np.uint8)], axis=-1))


def _images(model: LoadedModel) -> list[np.ndarray]:
    """txt2img, img2img and inpaint (the VAE's encoder and decoder both run) through the engine."""
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    samplers = SamplerRegistry()
    images = [*txt2img(model, PARAMS, samplers),
              *img2img(model, PARAMS, samplers, _picture(), Img2ImgOptions(denoising_strength=0.6)),
              *img2img(model, PARAMS, samplers, _picture(), Img2ImgOptions(denoising_strength=0.8, mask=mask))]
    return [np.asarray(image) for image in images]


def _dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def _state_hash(model: LoadedModel) -> str:
    digest = hashlib.sha256()
    for module in model.modules():
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_medvram_brings_one_component_at_a_time_and_draws_the_same_images(folder: Path, tmp_path: Path,
                                                                          name: str) -> None:
    whole = _images(_manager(folder, tmp_path / "whole").get(name))
    manager = _manager(folder, tmp_path / "med", offload="medvram")
    model = manager.get(name)
    assert model.offload is not None and model.offload.mode == "medvram"
    assert all(_dtypes(module) == {HOME} for module in model.modules())  # everything starts in RAM
    seen: list[tuple[set, set, set]] = []

    def during_unet(module, args, output) -> None:
        seen.append((_dtypes(model.unet), _dtypes(model.vae), _dtypes(model.text_encoders[0].model)))

    handle = model.unet.register_forward_hook(during_unet)
    try:
        offloaded = _images(model)
    finally:
        handle.remove()
    assert seen and all(entry == ({DEVICE}, {HOME}, {HOME}) for entry in seen)  # only the U-Net on the device
    assert _dtypes(model.vae) == {DEVICE} and _dtypes(model.unet) == {HOME}  # the VAE ran last
    assert len(offloaded) == 6 and all(np.array_equal(a, b) for a, b in zip(offloaded, whole))
    entry = manager.residency()[0]
    assert entry.offload.startswith("medvram (--medvram") and entry.where == "device"
    # the budget counts the largest component, not the whole model
    largest = max(device_bytes(module, DEVICE) for module in model.modules())
    assert manager._device_bytes() == largest < sum(device_bytes(module, DEVICE) for module in model.modules())


def test_lowvram_brings_one_layer_at_a_time_and_draws_the_same_images(folder: Path, tmp_path: Path) -> None:
    whole = _images(_manager(folder, tmp_path / "whole").get("sd1"))
    manager = _manager(folder, tmp_path / "low", offload="lowvram")
    model = manager.get("sd1")
    conv_in, conv_out = model.unet.conv_in, model.unet.conv_out
    seen: list[tuple[torch.dtype, set]] = []

    def during_conv_in(module, args, output) -> None:  # runs after conv_in's call, so its weight is home again
        seen.append((output.dtype, _dtypes(conv_out) | _dtypes(conv_in)))

    handle = conv_in.register_forward_hook(during_conv_in)
    try:
        offloaded = _images(model)
    finally:
        handle.remove()
    assert seen and all(entry == (DEVICE, {HOME}) for entry in seen)  # computed in bf16 from a copy, kept in fp32
    assert all(_dtypes(module) == {HOME} for module in model.modules())  # nothing is left on the device
    assert all(np.array_equal(a, b) for a, b in zip(offloaded, whole))
    # the budget counts the largest layer (the token embedding here), not the model
    layer = max(sum(p.numel() * 2 for p in m.parameters(recurse=False)) for c in model.modules() for m in c.modules())
    assert layer <= manager._device_bytes() < layer + 4096


@pytest.mark.parametrize("offload", ["medvram", "lowvram"])
def test_a_lora_applies_to_offloaded_weights_and_restores_them_exactly(folder: Path, tmp_path: Path, tiny_sd1,
                                                                       offload: str) -> None:
    lora = read_lora(write_kohya_lora(tmp_path / "style.safetensors", tiny_sd1.model, conv=True))
    plain = _manager(folder, tmp_path / "whole").get("sd1")
    with patched(lora_patches(lora, plain, 0.8, 1.2)):
        expected = _images(plain)
    model = _manager(folder, tmp_path / offload, offload=offload).get("sd1")
    before = _state_hash(model)
    without = _images(model)  # a job without it first: the weights have been to the device and back (inference mode)
    with patched(lora_patches(lora, model, 0.8, 1.2)):
        patched_images = _images(model)
    assert all(np.array_equal(a, b) for a, b in zip(patched_images, expected))
    assert not np.array_equal(patched_images[0], without[0])  # the LoRA did change the image
    assert all(np.array_equal(a, b) for a, b in zip(_images(model), without))
    assert _state_hash(model) == before


def test_a_model_over_the_budget_is_offloaded_automatically_and_says_so(folder: Path, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """The lightest mode that fits: medvram when the largest component fits the budget, else lowvram; a budget
    that fits places the model whole again; the log and the residency table say which and why."""
    probe = _manager(folder, tmp_path / "probe").get("sd1")
    sizes = [sum(p.numel() * 2 for p in module.parameters()) + sum(b.numel() * b.element_size()
                                                                   for b in module.buffers())
             for module in probe.modules()]
    manager = _manager(folder, tmp_path / "auto")
    with caplog.at_level(logging.WARNING, logger="webui.models"):
        manager.set_budgets(vram_budget=max(sizes) + 1, ram_budget=None)
        model = manager.get("sd1")
    assert model.offload is not None and model.offload.mode == "medvram"
    assert "does not fit" in caplog.text and "--medvram" in caplog.text
    assert manager.residency()[0].offload.startswith("medvram (auto: ")
    manager.set_budgets(vram_budget=max(sizes) - 1, ram_budget=None)
    assert manager.get("sd1").offload.mode == "lowvram" and manager.residency()[0].offload.startswith("lowvram")
    manager.set_budgets(vram_budget=sum(sizes) * 2, ram_budget=None)
    assert manager.get("sd1").offload is None and manager.residency()[0].offload == ""
    assert _dtypes(model.unet) == {DEVICE} and not hasattr(model.unet, "_hf_hook")
    assert all(not hasattr(module, "_hf_hook") for m in model.modules() for module in m.modules())


def test_switching_between_offloaded_and_whole_models_leaves_no_hooks_behind(folder: Path, tmp_path: Path) -> None:
    manager = _manager(folder, tmp_path / "switch", offload="medvram")
    first = _images(manager.get("sd1"))
    manager.set_offload_mode("auto")  # no budget on the CPU: the next use places it whole
    sd1 = manager.get("sd1")
    assert sd1.offload is None and _dtypes(sd1.unet) == {DEVICE}
    assert all(not hasattr(module, "_hf_hook") for m in sd1.modules() for module in m.modules())
    assert all(np.array_equal(a, b) for a, b in zip(_images(sd1), first))
    manager.set_offload_mode("lowvram")
    sdxl = manager.get("sdxl")
    assert sdxl.offload.mode == "lowvram" and manager.active_name == "sdxl"
    assert [entry.where for entry in manager.residency()] == ["device", "ram"]
    assert _dtypes(sd1.unet) == {HOME} and all(not hasattr(module, "_hf_hook") for module in sd1.unet.modules())
    assert manager.unload("sdxl") and all(not hasattr(module, "_hf_hook") for module in sdxl.unet.modules())
    with pytest.raises(ValueError, match="offload must be one of auto, medvram, lowvram"):
        manager.set_offload_mode("highvram")


def test_the_vae_falls_back_to_fp32_while_offloaded(folder: Path, tmp_path: Path) -> None:
    """What `decode_latents` does when a half-precision VAE overflows: from then on the offloaded VAE is brought to
    the device in fp32 (now, and after the other components have been there), and decodes like an fp32 VAE."""
    from webui.engine.denoise import decode_latents
    from webui.engine.loader import load_checkpoint

    model = _manager(folder, tmp_path / "nan", offload="medvram").get("sd1")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    half = decode_latents(model, latents)
    assert model.vae_dtype == DEVICE and _dtypes(model.vae) == {DEVICE}
    model.use_fp32_vae()
    assert model.vae_dtype == torch.float32 and _dtypes(model.vae) == {torch.float32}  # the resident copy too
    _images(model)  # the text encoders and the U-Net take the device in turn; the VAE comes back in fp32
    assert _dtypes(model.vae) == {torch.float32}
    full = decode_latents(model, latents)
    assert torch.equal(full, decode_latents(load_checkpoint(folder / "sd1.safetensors"), latents))
    assert not torch.equal(full, half)

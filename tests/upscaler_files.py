"""Tiny random-weight upscaler files in the real on-disk layouts, and the networks that made them (the test oracle).

Each network is built directly from spandrel's architecture class with small sizes (so it runs in milliseconds) and
saved in the key layout the real downloads use:
- ESRGAN "old" layout (`model.0.weight`, `model.1.sub.0.RDB1.conv1.0.weight`, ...), e.g. 4x-UltraSharp.pth;
- RealESRGAN "new" layout (`conv_first`, `body.0.rdb1.conv1`, `conv_body`, `conv_up1`, `conv_hr`, `conv_last`) inside
  `{"params_ema": ...}`, e.g. RealESRGAN_x4plus.pth; the table below is the BasicSR RRDBNet naming, written by hand;
- RealESRGAN compact (SRVGGNetCompact, `body.N`), e.g. realesr-general-x4v3.pth, inside `{"params": ...}`;
- SwinIR with the nearest+conv upsampler (`conv_up1`, `conv_up2`, `conv_hr`) as A1111's "SwinIR 4x" (SwinIR-L);
- DAT (pixelshuffle), as A1111's DAT x2/x3/x4.
The last layer is rescaled so that the output of a random image lies around 0.5 (random weights would otherwise clip
most pixels to 0 or 1, and an 8-bit comparison would prove little).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DAT import DAT
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.SwinIR import SwinIR


@dataclass
class TinyUpscaler:
    """A network, its scale, and the on-disk state dict in the real layout (possibly wrapped)."""

    network: torch.nn.Module
    scale: int
    saved: dict


def _calibrate(network: torch.nn.Module, last: torch.nn.Conv2d, seed: int) -> None:
    """Rescale the last conv so the output of a random image has mean 0.5 and spread 0.15 (an affine change)."""
    generator = torch.Generator().manual_seed(seed)
    probe = torch.rand((1, 3, 24, 24), generator=generator)
    with torch.no_grad():
        output = network(probe)
        factor = 0.15 / output.std().item()
        last.weight.mul_(factor)
        last.bias.mul_(factor)
        last.bias.add_(0.5 - network(probe).mean().item())


def _random(network: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            # fan-in scaled weights keep deep random stacks from exploding; biases and tables stay small, non-zero
            fan_in = parameter[0].numel() if parameter.dim() >= 2 and parameter.numel() else 0
            scale = (1.0 / fan_in) ** 0.5 if fan_in else 0.02
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return network.eval()


def esrgan_old(seed: int = 1) -> TinyUpscaler:
    network = _random(ESRGAN(num_filters=8, num_blocks=1, scale=4), seed)
    _calibrate(network, network.model[-1], seed)
    return TinyUpscaler(network, 4, dict(network.state_dict()))


def _to_basicsr_names(old: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ESRGAN old-layout names to BasicSR RRDBNet names (RealESRGAN_x4plus.pth), by hand."""
    sequence = sorted({int(key.split(".")[1]) for key in old})
    last, hr = sequence[-1], sequence[-2]
    blocks = max(int(m.group(1)) for key in old if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", key)))
    new = {}
    for key, value in old.items():
        kind = key.rsplit(".", 1)[1]
        if key.startswith("model.0."):
            new[f"conv_first.{kind}"] = value
        elif m := re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.", key):
            new[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{kind}"] = value
        elif key.startswith(f"model.1.sub.{blocks + 1}."):
            new[f"conv_body.{kind}"] = value
        elif int(key.split(".")[1]) == last:
            new[f"conv_last.{kind}"] = value
        elif int(key.split(".")[1]) == hr:
            new[f"conv_hr.{kind}"] = value
        else:
            index = int(key.split(".")[1])
            assert index % 3 == 0, key
            new[f"conv_up{index // 3}.{kind}"] = value
    return new


def realesrgan_new(seed: int = 2) -> TinyUpscaler:
    network = _random(ESRGAN(num_filters=8, num_blocks=2, scale=2), seed)
    _calibrate(network, network.model[-1], seed)
    return TinyUpscaler(network, 2, {"params_ema": _to_basicsr_names(dict(network.state_dict()))})


def realesrgan_compact(seed: int = 3) -> TinyUpscaler:
    network = _random(Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4), seed)
    _calibrate(network, network.body[-1], seed)
    return TinyUpscaler(network, 4, {"params": dict(network.state_dict())})


def swinir(seed: int = 4) -> TinyUpscaler:
    network = _random(SwinIR(img_size=16, patch_size=1, in_chans=3, embed_dim=12, depths=[2], num_heads=[2],
                             window_size=4, mlp_ratio=2.0, upscale=4, img_range=1.0, upsampler="nearest+conv",
                             resi_connection="3conv"), seed)
    _calibrate(network, network.conv_last, seed)
    return TinyUpscaler(network, 4, {"params_ema": dict(network.state_dict())})


def dat(seed: int = 5) -> TinyUpscaler:
    network = _random(DAT(img_size=16, in_chans=3, embed_dim=16, split_size=[2, 4], depth=[2], num_heads=[2],
                          expansion_factor=2.0, upscale=2, upsampler="pixelshuffle"), seed)
    _calibrate(network, network.conv_last, seed)
    return TinyUpscaler(network, 2, {"params": dict(network.state_dict())})


BUILDERS: dict[str, tuple[str, Callable[[], TinyUpscaler]]] = {
    # file stem -> (A1111 folder, builder)
    "4x-TinyESRGAN": ("ESRGAN", esrgan_old),
    "RealESRGAN_x2plus": ("RealESRGAN", realesrgan_new),
    "realesr-general-x4v3": ("RealESRGAN", realesrgan_compact),
    "SwinIR_4x": ("SwinIR", swinir),
    "DAT_x2": ("DAT", dat),
}


def _flat(saved: dict) -> dict[str, torch.Tensor]:
    inner = next(iter(saved.values())) if len(saved) == 1 and isinstance(next(iter(saved.values())), dict) else saved
    return {key: value.contiguous() for key, value in inner.items()}


def write_upscaler(models_dir: Path, folder: str, stem: str, tiny: TinyUpscaler, suffix: str) -> Path:
    """Save as `.pth` (torch.save of the real wrapper dict) or `.safetensors` (the flat table) in `models/<folder>`."""
    path = models_dir / folder / f"{stem}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".safetensors":
        save_file(_flat(tiny.saved), str(path))
    else:
        torch.save(tiny.saved, path)
    return path

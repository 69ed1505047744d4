"""bench/lora_soup.py (docs/lora-training.md, the "soup" run): the merged file's delta is exactly the mean of its
parts' deltas, by kohya's definition (alpha / rank) x up @ down, for linear and 3x3 conv (LoCon) modules."""

from __future__ import annotations

import pytest
import torch

from tests.bench_scripts import load_bench_script


def _delta(state: dict[str, torch.Tensor], module: str) -> torch.Tensor:
    down = state[f"{module}.lora_down.weight"].float()
    up = state[f"{module}.lora_up.weight"].float()
    rank = down.shape[0]
    alpha = float(state.get(f"{module}.alpha", rank))
    return (alpha / rank) * (up.flatten(1) @ down.flatten(1))


def _random_lora(rank: int, alpha: float, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "lora_unet_attn.lora_down.weight": torch.randn(rank, 32, generator=g),
        "lora_unet_attn.lora_up.weight": torch.randn(16, rank, generator=g),
        "lora_unet_attn.alpha": torch.tensor(alpha),
        "lora_unet_conv.lora_down.weight": torch.randn(rank, 8, 3, 3, generator=g),
        "lora_unet_conv.lora_up.weight": torch.randn(12, rank, 1, 1, generator=g),
        "lora_unet_conv.alpha": torch.tensor(alpha / 2),
    }


def test_the_soup_is_the_exact_mean_of_its_parts() -> None:
    soup = load_bench_script("lora_soup")
    parts = [_random_lora(4, 4.0, 0), _random_lora(8, 2.0, 1), _random_lora(2, 1.0, 2)]
    merged = soup.average_loras(parts)
    for module in ("lora_unet_attn", "lora_unet_conv"):
        expected = sum(_delta(part, module) for part in parts) / len(parts)
        assert merged[f"{module}.lora_down.weight"].shape[0] == 14
        assert torch.allclose(_delta(merged, module), expected, atol=1e-5)


def test_files_with_other_modules_or_keys_are_refused() -> None:
    soup = load_bench_script("lora_soup")
    other = _random_lora(4, 4.0, 0)
    del other["lora_unet_conv.lora_down.weight"], other["lora_unet_conv.lora_up.weight"]
    with pytest.raises(ValueError, match="not in every file"):
        soup.average_loras([_random_lora(4, 4.0, 1), other])
    loha = {**_random_lora(4, 4.0, 0), "lora_unet_attn.hada_w1_a": torch.zeros(1)}
    with pytest.raises(ValueError, match="only plain LoRA"):
        soup.average_loras([loha, _random_lora(4, 4.0, 1)])

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


def test_soup_files_write_the_mean_file_and_the_mean_learned_word(tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    soup = load_bench_script("lora_soup")
    parts = [_random_lora(4, 4.0, 3), _random_lora(4, 2.0, 4)]
    loras, words = [], []
    for index, part in enumerate(parts):
        loras.append(tmp_path / f"member{index}.safetensors")
        save_file(part, str(loras[-1]), metadata={"ss_output_name": f"member{index}"})
        words.append(tmp_path / f"member{index}.embedding.safetensors")
        save_file({"emb_params": torch.full((2, 8), float(index + 1))}, str(words[-1]))
    out = tmp_path / "soup.safetensors"
    embedding = soup.soup_files(loras, out, words)
    merged = load_file(str(out))
    expected = (_delta(parts[0], "lora_unet_conv") + _delta(parts[1], "lora_unet_conv")) / 2
    assert torch.allclose(_delta(merged, "lora_unet_conv"), expected, atol=1e-5)
    with safe_open(str(out), "pt") as handle:
        assert handle.metadata() == {"ss_output_name": "member0", "latent_studio.average_of_runs": "2"}
    assert embedding == tmp_path / "soup.embedding.safetensors"
    assert torch.equal(load_file(str(embedding))["emb_params"], torch.full((2, 8), 1.5))
    # a member without a learned word: the LoRAs are still averaged, and no word is made up
    assert soup.soup_files(loras, tmp_path / "plain.safetensors", [words[0], None]) is None
    assert (tmp_path / "plain.safetensors").exists() and not (tmp_path / "plain.embedding.safetensors").exists()

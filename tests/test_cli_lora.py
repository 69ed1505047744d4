"""LoRA tags, embeddings and `--vae` from the command line: the same service as the UI, real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.cli import run_cli
from tests.lora_files import write_kohya_lora
from webui.cli import main
from webui.engine.export import vae_to_ldm
from webui.engine.synthetic import build_synthetic_model
from webui.services.infotext import parse_infotext
from webui.services.outputs import read_infotext


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_sd1) -> Path:
    root = tmp_path_factory.mktemp("cli-lora-models")
    write_kohya_lora(root / "Lora" / "cli_style.safetensors", tiny_sd1.model, seed=31)
    torch.save({"string_to_param": {"*": torch.randn(2, 64)}}, str(root / "cli_emb.pt"))
    (root / "embeddings").mkdir()
    (root / "cli_emb.pt").rename(root / "embeddings" / "cli_emb.pt")
    (root / "VAE").mkdir()
    vae = build_synthetic_model("sd1", seed=55).vae
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(vae).items()},
              str(root / "VAE" / "alt.safetensors"))
    return root


def _common(tiny_sd1, models_dir: Path, out: Path, prompt: str) -> list[str]:
    return ["--model", str(tiny_sd1.path), "--models-dir", str(models_dir), "--prompt", prompt, "--sampler", "Euler",
            "--steps", "3", "--seed", "9", "--width", "64", "--height", "64", "--device", "cpu", "--out", str(out)]


def test_generate_with_a_lora_tag_an_embedding_and_a_vae(tiny_sd1, models_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    result = run_cli("generate", *_common(tiny_sd1, models_dir, tmp_path / "with",
                                          "a red circle <lora:cli_style:0.9> cli_emb"), "--vae", "alt.safetensors")
    assert result.returncode == 0, result.stderr
    assert main(["generate", *_common(tiny_sd1, models_dir, tmp_path / "plain", "a red circle")]) == 0
    with_path, plain_path = Path(result.stdout.split()[0]), Path(capsys.readouterr().out.split()[0])
    info = parse_infotext(read_infotext(with_path))
    assert info["Prompt"] == "a red circle <lora:cli_style:0.9> cli_emb"
    assert info["Lora hashes"].startswith("cli_style: ") and info["TI hashes"].startswith("cli_emb: ")
    assert info["VAE"] == "alt.safetensors" and len(info["VAE hash"]) == 10
    plain = parse_infotext(read_infotext(plain_path))
    assert "Lora hashes" not in plain and "VAE" not in plain
    diff = np.abs(np.asarray(Image.open(with_path), dtype=int) - np.asarray(Image.open(plain_path), dtype=int))
    assert diff.max() > 10


@pytest.mark.parametrize(("extra", "message"), [
    (["--prompt", "x <lora:nope:1>"], "prompt: LoRA 'nope' not found"),
    (["--vae", "missing.safetensors"], "VAE 'missing.safetensors' not found"),
])
def test_bad_lora_or_vae_is_a_one_line_error(tiny_sd1, models_dir: Path, tmp_path: Path, extra: list[str],
                                              message: str, capsys: pytest.CaptureFixture) -> None:
    args = _common(tiny_sd1, models_dir, tmp_path / "out", "a red circle")
    code = main(["generate", *args, *extra])
    captured = capsys.readouterr()
    assert code == 2, captured.out
    assert message in captured.err.splitlines()[0], captured.err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())

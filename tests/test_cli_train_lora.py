"""`python -m webui train-lora` as a user runs it: a real subprocess; Ctrl-C saves a resumable state."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.cli import ROOT, run_cli
from webui.engine.lora import read_lora
from webui.shapes import concept_scenes, write_captioned_folder

DEFAULT_MODEL = ROOT / "models/Stable-diffusion/latent-studio-shapes.safetensors"


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return ["train-lora", "--base", str(DEFAULT_MODEL), "--data", str(tmp_path / "data"), "--name", "cli_lora",
            "--output-dir", str(tmp_path / "Lora"), "--run-dir", str(tmp_path / "run"), "--batch-size", "2",
            "--rank", "4", "--threads", "1", *extra]


def test_train_lora_writes_a_kohya_file_with_the_options_given(tmp_path: Path) -> None:
    write_captioned_folder(tmp_path / "data", concept_scenes(4))
    done = run_cli(*_args(tmp_path, "--max-steps", "4", "--trigger", "rct", "--optimizer", "Prodigy",
                          "--lr-scheduler", "cosine", "--no-train-text-encoder", "--save-every", "2",
                          "--weight-decay", "0.05", "--sample-every", "2", "--sample-prompt", "rct, a red rectangle",
                          "--sample-steps", "2", "--average-runs", "1"))
    assert done.returncode == 0, done.stderr
    output = tmp_path / "Lora" / "cli_lora.safetensors"
    assert f"wrote {output}" in done.stdout
    assert "learning rate 1 (automatic for this model)" in done.stdout
    lora = read_lora(output)
    assert lora.layers and all(name.startswith("lora_unet_") for name in lora.layers)  # no text encoder
    with safe_open(str(output), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_optimizer"] == "prodigyopt.prodigy.Prodigy(weight_decay=0.05)"
    assert metadata["ss_lr_scheduler"] == "cosine"
    assert metadata["modelspec.trigger_phrase"] == "rct" and metadata["ss_network_train_unet_only"] == "True"
    assert json.loads(metadata["ss_tag_frequency"])["data"]["rct"] == 4
    assert sorted(p.name for p in (tmp_path / "run" / "samples").iterdir()) == ["step000002-00.png",
                                                                               "step000004-00.png"]


@pytest.mark.parametrize(("extra", "message"), [
    (("--rank", "0"), "rank must be at least 1"),
    (("--learning-rate", "nan"), "learning rate must be a number"),
    ((), "has no usable images"),
])
def test_bad_options_exit_with_a_message(extra: tuple[str, ...], message: str, tmp_path: Path) -> None:
    """In-process (`webui.cli.main`, the entry point `python -m webui` calls): no interpreter start per case."""
    from webui.cli import main

    (tmp_path / "data").mkdir()
    with pytest.raises(SystemExit) as stopped:
        main(_args(tmp_path, *extra))
    assert message in str(stopped.value.code)
    assert not (tmp_path / "Lora").exists()


def test_ctrl_c_saves_a_state_that_resume_finishes(tmp_path: Path) -> None:
    write_captioned_folder(tmp_path / "data", concept_scenes(4))
    process = subprocess.Popen([sys.executable, "-m", "webui", *_args(tmp_path, "--max-steps", "500",
                                                                     "--save-every", "0")],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the shipped model trains two runs by default (--average-runs 0: automatic), each in its own folder
    log = tmp_path / "run" / "run1" / "log.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "continue with the same command plus --resume" in stdout
    assert not (tmp_path / "Lora" / "cli_lora.safetensors").exists()
    import torch

    stopped = torch.load(tmp_path / "run" / "run1" / "checkpoint-latest.pt", weights_only=True)["step"]
    assert 3 <= stopped < 500
    done = run_cli(*_args(tmp_path, "--max-steps", str(stopped + 2), "--resume"))
    assert done.returncode == 0, done.stderr
    steps = [json.loads(line).get("step") for line in log.read_text().splitlines()]
    assert steps[-3:-1] == [stopped + 1, stopped + 2]
    assert "averaged 2 runs into" in done.stdout and (tmp_path / "Lora" / "cli_lora.safetensors").exists()

"""Training across processes: `accelerate launch --num_processes 2` against one process with the same global batch.

Each trainer is run twice as a user runs it, in real subprocesses: alone with batch 2B, and as two data-parallel
processes (gloo on the CPU; NCCL on GPUs) with batch B each. Every step's logged loss and the weights written at the
end must agree within float tolerance: the processes draw the same noise for the global batch and each keeps its
share, and DDP's gradient average makes their update the one-process update.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.cli import ROOT
from webui.shapes import concept_scenes, write_captioned_folder

DEFAULT_MODEL = ROOT / "models/Stable-diffusion/latent-studio-shapes.safetensors"


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _run(processes: int, *args: str, timeout: float = 600) -> None:
    """One process: the CLI's entry point in this process (torch is already imported here; every command is run
    with `--threads 1`, as each launched process is). Several: `accelerate launch`, as a user runs it."""
    if processes == 1:
        from webui.cli import main

        assert main(list(args)) in (0, None)
        return
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                str(29500 + os.getpid() % 1000)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([*launcher, "-m", "webui", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _losses(log: Path) -> list[float]:
    return [entry["loss"] for entry in map(json.loads, log.read_text().splitlines()) if "loss" in entry]


def _assert_same_tensors(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor], largest: float,
                         mean: float = 1e-5) -> None:
    """Equal up to float rounding. AdamW divides each gradient by its own running size, so a parameter whose
    gradient is nearly zero (terms that cancel) turns rounding noise into a step of up to `lr`: a few weights may
    differ by a fraction of the learning rate while the mean difference stays at the rounding level. That floor
    was measured on train-ldm below: one process with 1 thread against 2 threads differs by at most 8.5e-4 and by
    1.8e-6 on average; two processes against one, by 8.8e-4 and 1.9e-6."""
    assert one.keys() == two.keys()
    diffs = torch.cat([(one[k].float() - two[k].float()).abs().flatten() for k in one])
    assert float(diffs.max()) <= largest, float(diffs.max())
    assert float(diffs.mean()) <= mean, float(diffs.mean())


def test_train_lora_on_two_processes_equals_one_process_with_the_global_batch(tmp_path: Path) -> None:
    write_captioned_folder(tmp_path / "data", concept_scenes(8))
    runs = {}
    for processes, batch in ((1, 4), (2, 2)):
        out = tmp_path / f"p{processes}"
        _run(processes, "train-lora", "--base", str(DEFAULT_MODEL), "--data", str(tmp_path / "data"),
             "--name", "multi", "--output-dir", str(out / "Lora"), "--run-dir", str(out / "run"),
             "--batch-size", str(batch), "--rank", "4", "--max-steps", "5", "--threads", "1", "--save-every", "0",
             "--sample-every", "0", "--trigger", "rectangle", "--average-runs", "1")
        runs[processes] = (_losses(out / "run" / "log.jsonl"), load_file(out / "Lora" / "multi.safetensors"))
    (losses_one, lora_one), (losses_two, lora_two) = runs[1], runs[2]
    assert len(losses_one) == len(losses_two) == 5
    assert losses_one == pytest.approx(losses_two, rel=1e-4)
    _assert_same_tensors(lora_one, lora_two, largest=1e-4)  # fp16 files: a few ulps at 0.06
    assert any(t.abs().max() > 0 for k, t in lora_one.items() if "lora_up" in k)  # it trained


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ae")
    _run(1, "train-ae", "--out", str(out), "--steps", "3", "--batch-size", "4", "--scenes", "4", "--size", "16",
         "--channels", "32,32", "--warmup", "1", "--eval-images", "4", "--log-every", "1", "--checkpoint-every", "3",
         "--sample-every", "3", "--threads", "1")
    return out


def _checkpoint(run_dir: Path, key: str) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoint-latest.pt", weights_only=False)[key]


def test_train_ldm_on_two_processes_equals_one_process_with_the_global_batch(tiny_ae: Path, tmp_path: Path) -> None:
    runs = {}
    for processes, batch in ((1, 8), (2, 4)):
        out = tmp_path / f"p{processes}"
        _run(processes, "train-ldm", "--ae", str(tiny_ae), "--out", str(out), "--batch-size", str(batch),
             "--scenes", "8", "--size", "16", "--unet-channels", "32,32", "--unet-attention", "0,1",
             "--text-hidden", "64", "--text-layers", "1", "--text-intermediate", "64", "--lr", "2e-3",
             "--warmup", "1", "--log-every", "1", "--checkpoint-every", "5", "--sample-every", "100", "--threads", "1",
             "--steps", "5", "--signal-free-top", "0.2")
        runs[processes] = (_losses(out / "log.jsonl"), _checkpoint(out, "unet"), _checkpoint(out, "text_encoder"))
    assert len(runs[1][0]) == len(runs[2][0]) == 5
    assert runs[1][0] == pytest.approx(runs[2][0], rel=1e-4, abs=2e-5)  # the log rounds to 5 decimals
    for one, two in zip(runs[1][1:], runs[2][1:]):
        _assert_same_tensors(one, two, largest=1e-3)  # half the learning rate (2e-3)


def test_train_controlnet_on_two_processes_equals_one_process_with_the_global_batch(tmp_path: Path) -> None:
    runs = {}
    for processes, batch in ((1, 4), (2, 2)):
        out = tmp_path / f"p{processes}"
        _run(processes, "train-controlnet", "--out", str(out), "--batch-size", str(batch), "--scenes", "8",
             "--sample-count", "1", "--sample-steps", "2", "--checkpoint-every", "4", "--sample-every", "100",
             "--log-every", "1", "--threads", "1", "--warmup", "1", "--steps", "4")
        runs[processes] = (_losses(out / "log.jsonl"), _checkpoint(out, "controlnet"))
    assert len(runs[1][0]) == len(runs[2][0]) == 4
    assert runs[1][0] == pytest.approx(runs[2][0], rel=1e-4, abs=2e-5)
    _assert_same_tensors(runs[1][1], runs[2][1], largest=1e-4)  # half the learning rate (2e-4)

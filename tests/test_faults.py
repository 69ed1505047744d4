"""Faults a long-running shared server meets, each provoked for real where the machine allows it:

- a half-precision VAE that overflows (weights scaled so fp16 activations pass 65504) is retried in fp32;
- out of memory (a CPU cannot run out on cue, so the real `torch.OutOfMemoryError` is raised from inside the real
  call, once) while decoding: retried tile by tile; while sampling: a clear message, and the next job works;
- a full disk (a real file-size limit, `RLIMIT_FSIZE`, in a child process): the image is still returned, the message
  names the path, and no temporary file is left;
- `kill -9` in the middle of a batch: every image under a final name is complete, and the temporary files a killed
  save leaves are removed at the next start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.conftest import tiny_service_context
from tests.server_process import ROOT
from webui.engine.denoise import decode_latents
from webui.engine.loader import load_checkpoint
from webui.services.generation import GenerationOutOfMemory
from webui.services.outputs import TEMP_PREFIX, TEMP_SUFFIX, OutputStore
from webui.services.requests import GenerationRequest


def _latents(model, side: int = 8) -> torch.Tensor:
    return torch.randn(1, model.vae.config.latent_channels, side, side, generator=torch.Generator().manual_seed(0))


def test_case_29_a_half_precision_vae_that_overflows_is_retried_in_fp32(tiny_sd1) -> None:
    model = load_checkpoint(tiny_sd1.path)
    latents = _latents(model)
    reference = decode_latents(model, latents)
    with torch.no_grad():  # scale the first decoder conv so its fp16 output overflows; GroupNorm undoes it in fp32
        model.vae.decoder.conv_in.weight.mul_(3e4)
        model.vae.decoder.conv_in.bias.mul_(3e4)
    scaled = decode_latents(model, latents)  # fp32 handles the large activations
    model.vae.to(torch.float16)
    with torch.inference_mode():
        raw = model.vae.decode(latents.half() / model.vae_scale, return_dict=False)[0]
    assert not torch.isfinite(raw).all()  # the fault is real: fp16 overflows
    images = decode_latents(model, latents)
    assert model.vae.dtype == torch.float32  # moved to fp32 for good
    assert torch.isfinite(images).all()
    assert torch.allclose(images, scaled, atol=2 / 255)  # only the fp16 rounding of the weights differs
    assert reference.shape == images.shape


def test_case_05_a_decode_that_runs_out_of_memory_is_retried_in_tiles(tiny_sd1) -> None:
    model = load_checkpoint(tiny_sd1.path)
    latents = _latents(model)
    expected = decode_latents(model, latents)
    real_decode, calls = model.vae.decode, {"decode": 0, "tiled": 0}
    real_tiled = model.vae.tiled_decode

    def decode_once_out_of_memory(*args, **kwargs):
        calls["decode"] += 1
        if calls["decode"] == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return real_decode(*args, **kwargs)

    def tiled(*args, **kwargs):
        calls["tiled"] += 1
        return real_tiled(*args, **kwargs)

    model.vae.decode, model.vae.tiled_decode = decode_once_out_of_memory, tiled
    images = decode_latents(model, latents)
    assert calls["tiled"] == 1
    assert torch.allclose(images, expected, atol=1e-5)  # one tile covers these latents: the same image


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory, tiny_sd1):
    return tiny_service_context(tmp_path_factory.mktemp("faults"), tiny_sd1)


def test_case_05_out_of_memory_while_sampling_fails_clearly_and_the_next_job_works(context) -> None:
    unet = context.models.get("tiny").unet
    fired = []

    def out_of_memory_once(module, args, kwargs):
        if not fired:
            fired.append(True)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = unet.register_forward_pre_hook(out_of_memory_once, with_kwargs=True)
    request = GenerationRequest(prompt="a red circle", sampler_name="Euler", steps=3, width=64, height=64, seed=3,
                                model="tiny")
    try:
        failed = context.generation.submit("alice", request)
        context.queue.wait(failed, 120)
        after = context.generation.submit("alice", request)
        context.queue.wait(after, 120)
    finally:
        handle.remove()
    assert failed.status == "failed" and isinstance(failed.exception, GenerationOutOfMemory)
    assert "out of memory on cpu at 64x64, batch size 1" in failed.error and "Lower the size" in failed.error
    assert after.status == "done" and len(after.result.images) == 1


DISK_FULL_CHILD = """
import json, resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG instead of killing us
from webui.context import AppPaths, build_context
from webui.services.requests import GenerationRequest
root = Path(sys.argv[1])
context = build_context(AppPaths(root / "models", root / "outputs", root / "data"), device="cpu",
                        load_extensions=False)
context.models.get("tiny")
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))  # a file may hold 200 bytes: no PNG fits
job = context.generation.submit("alice", GenerationRequest(prompt="a red circle", sampler_name="Euler", steps=2,
                                                           width=64, height=64, seed=5, model="tiny"))
context.queue.wait(job)
result = job.result
print(json.dumps({"status": job.status, "images": len(result.images), "paths": result.paths,
                  "warnings": result.warnings}))
"""


def test_case_28_a_full_disk_still_returns_the_image_and_leaves_no_temporary_file(tmp_path: Path, tiny_sd1) -> None:
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    (checkpoints / "tiny.safetensors").symlink_to(tiny_sd1.path)
    child = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(tmp_path)], cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "done" and outcome["images"] == 1 and outcome["paths"] == []
    (warning,) = outcome["warnings"]
    folder = tmp_path / "outputs" / "txt2img"
    assert str(folder) in warning and "free space" in warning
    assert [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()] == []  # nothing half-written is left


def test_case_27_kill_9_mid_batch_leaves_only_complete_images_and_the_next_start_cleans_up(
        tmp_path: Path, tiny_sd1) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "webui", "generate", "--model", str(tiny_sd1.path), "--prompt", "a red circle",
               "--width", "64", "--height", "64", "--steps", "6", "--sampler", "Euler", "--seed", "10",
               "--batch-count", "40", "--out", str(out), "--device", "cpu"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list(out.rglob("*.png"))) < 3 and process.poll() is None:
            time.sleep(0.05)
        assert process.poll() is None, process.stdout.read()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
    finished = sorted(out.rglob("*.png"))
    assert 3 <= len(finished) < 40
    for path in finished:
        with Image.open(path) as image:
            image.load()  # a truncated file fails here
            assert image.size == (64, 64) and "Seed: " in image.info["parameters"]
    # the temporary file a save killed between write and rename would leave, then the next start
    stale = finished[0].parent / f"{TEMP_PREFIX}0123456789abcdef{TEMP_SUFFIX}"
    stale.write_bytes(b"\x89PNG half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    removed = OutputStore(out, flat=True).remove_stale_temporaries()
    assert removed == [stale] and not stale.exists()
    assert sorted(out.rglob("*.png")) == finished

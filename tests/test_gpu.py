"""The app's GPU path against diffusers on the same device and dtype (`pytest -m gpu`; skipped without CUDA).

Full-size random-weight SD 1.5 and SDXL checkpoints in the real single-file layout, loaded through the model manager
(packing, dtype, device placement as the app does it), compared with diffusers' own pipelines built from the same
files and moved to the same device and dtype: txt2img, img2img and inpainting, fp16 and bf16. Then a checkpoint swap
under a VRAM budget too small for two models. The reference side never calls project engine code.

    .venv/bin/python -m pytest -m gpu tests/test_gpu.py          # on a CUDA machine (bench/gpu_check.py runs it)
    LATENT_STUDIO_GPU_DEVICE=cpu LATENT_STUDIO_GPU_SIZE=tiny .venv/bin/python -m pytest -m gpu tests/test_gpu.py
                                                                  # rehearsal on a CPU: tiny files, bf16

The bar: in fp32, 2/255 for 99.9% of the pixels (the CPU suite's bar) and 4/255 at most. Half precision is not
bit-reproducible across two implementations, which round intermediate values at different points: every mode keeps
the fp32 bar for 99.9% of the pixels, and 12/255 at most. (img2img and inpainting once needed 16/255 and 40/255: their
reference pipelines came from diffusers' `from_pipe`, which casts the shared modules to fp32 unless told the dtype,
so they compared the project in half precision with diffusers in fp32. Given the dtype, the tiny CPU rehearsal in
bf16 agrees within 1/255 in every mode.) A wrong mask, strength or noise moves whole regions by far more.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reference import batch_seeds, load_reference_pipeline, reference_noise, reference_scheduler
from tests.test_parity_img2img import (
    CFG,
    NEGATIVE,
    PROMPT,
    Pair,
    _params,
    _reference,
    diffusers_strength,
    grid_box_mask,
    picture,
)
from webui.engine.checkpoint_io import read_key_shapes
from webui.engine.generation import txt2img
from webui.engine.img2img import ORIGINAL, Img2ImgOptions, img2img
from webui.engine.samplers import SamplerRegistry
from webui.engine.synthetic import write_synthetic_checkpoint
from webui.services.hashing import HashCache
from webui.services.model_manager import ModelManager

DEVICE = torch.device(os.environ.get("LATENT_STUDIO_GPU_DEVICE", "cuda"))
SIZE = os.environ.get("LATENT_STUDIO_GPU_SIZE", "real")
_ALL_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_DTYPE_NAMES = os.environ.get("LATENT_STUDIO_GPU_DTYPES", "fp32,fp16,bf16" if DEVICE.type == "cuda" else "fp32,bf16")
DTYPES = {name: _ALL_DTYPES[name] for name in _DTYPE_NAMES.split(",")}
SIDE = {"sd1": 512, "sdxl": 1024} if SIZE == "real" else {"sd1": 64, "sdxl": 64}
# (99.9% of the pixels, the largest difference), of 255; see the module docstring
BARS = {("fp32", "txt2img"): (2, 4), ("fp32", "img2img"): (2, 4), ("half", "txt2img"): (2, 12),
        ("half", "img2img"): (2, 12)}
REGISTRY = SamplerRegistry()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: run `pytest -m gpu` on a GPU machine (bench/gpu_check.py)"),
]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, object]]:
    """One random-weight file per family (fp16 on disk, as shared checkpoints are), written once per session."""
    folder = Path(os.environ.get("LATENT_STUDIO_GPU_FILES") or tmp_path_factory.mktemp("gpu-files"))
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for family in ("sd1", "sdxl"):
        path = folder / f"random-{family}-{SIZE}.safetensors"
        written[family] = (path, write_synthetic_checkpoint(path, family, size=SIZE, seed=3, dtype=torch.float16))
    return written


class Pairs:
    """Ours (through a model manager on the device) and diffusers' pipeline, per family and dtype; one at a time on
    the device, so that SDXL in two copies never has to fit beside another pair."""

    def __init__(self, files: dict, folder: Path) -> None:
        self.files, self.folder, self.key, self.pair = files, folder, None, None

    def get(self, family: str, dtype_name: str) -> Pair:
        if self.key != (family, dtype_name):
            self.pair = None
            if DEVICE.type == "cuda":
                torch.cuda.empty_cache()
            path, model = self.files[family]
            manager = ModelManager(path.parent, self.folder / "VAE", HashCache(self.folder / "hashes.json"), DEVICE,
                                   DTYPES[dtype_name], ram_cache_size=0)
            ours = manager.get(path.stem)
            pipe = load_reference_pipeline(path, model, self.folder / f"config-{family}")
            pipe.to(DEVICE, DTYPES[dtype_name])
            self.pair, self.key = Pair(ours, pipe, family == "sdxl"), (family, dtype_name)
        return self.pair


@pytest.fixture(scope="module")
def pairs(files, tmp_path_factory: pytest.TempPathFactory) -> Pairs:
    return Pairs(files, tmp_path_factory.mktemp("gpu-reference"))


def _differences(ours: list[Image.Image], reference: list[Image.Image]) -> tuple[float, int]:
    diffs = np.concatenate([np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).ravel()
                            for a, b in zip(ours, reference)])
    return float(np.percentile(diffs, 99.9)), int(diffs.max())


def _check(name: str, dtype_name: str, mode: str, ours: list[Image.Image], reference: list[Image.Image]) -> None:
    assert len(ours) == len(reference) and all(a.size == b.size for a, b in zip(ours, reference))
    assert all(np.asarray(image).std() > 5 for image in ours), "a constant image makes the comparison meaningless"
    bulk, largest = _differences(ours, reference)
    print(f"\n{name}: 99.9% of pixels within {bulk:.1f}/255, largest difference {largest}/255")
    bulk_bar, largest_bar = BARS[("fp32" if dtype_name == "fp32" else "half", mode)]
    assert bulk <= bulk_bar and largest <= largest_bar


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_txt2img_on_the_device_matches_diffusers(pairs: Pairs, family: str, dtype_name: str) -> None:
    pair = pairs.get(family, dtype_name)
    side, seeds = SIDE[family], batch_seeds(11, 1)
    params = _params("DDIM", "Automatic", seeds, side, side)
    ours = txt2img(pair.ours, params, REGISTRY)
    pair.pipe.scheduler = reference_scheduler("DDIM", "Automatic", "epsilon", seeds[0])
    reference = pair.pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=params.steps,
                          guidance_scale=CFG, width=side, height=side,
                          latents=reference_noise(seeds, side, side).to(DTYPES[dtype_name]),
                          generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds]).images
    _check(f"txt2img {family} {dtype_name} {side}x{side}", dtype_name, "txt2img", ours, reference)


@pytest.mark.parametrize("masked", [False, True], ids=["img2img", "inpaint"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_img2img_and_inpaint_on_the_device_match_diffusers(pairs: Pairs, family: str, dtype_name: str,
                                                           masked: bool) -> None:
    pair = pairs.get(family, dtype_name)
    side, seeds, strength = SIDE[family], batch_seeds(21, 1), 0.5
    image = picture(side, side)
    mask = grid_box_mask(side, side) if masked else None
    options = Img2ImgOptions(denoising_strength=strength, mask=mask, mask_blur=0, inpainting_fill=ORIGINAL)
    ours = img2img(pair.ours, _params("Euler (diffusers)", "Automatic", seeds, side, side), REGISTRY, image, options)
    _, reference = _reference(pair, "Euler (diffusers)", "Automatic", seeds, side, side, image, mask,
                              diffusers_strength(5, strength))
    if mask is not None:  # blur 0: the project pastes the original back outside the mask; do the same to diffusers'
        inside = np.asarray(mask)[..., None] > 127
        original = np.asarray(image.convert("RGB"))
        reference = [Image.fromarray(np.where(inside, np.asarray(r), original).astype(np.uint8)) for r in reference]
    _check(f"{'inpaint' if masked else 'img2img'} {family} {dtype_name} {side}x{side}", dtype_name, "img2img", ours,
           reference)


def _weights_bytes(path: Path, dtype: torch.dtype) -> int:
    """What a checkpoint's tensors take in `dtype` (from the file's header)."""
    return (sum(int(np.prod(shape)) for shape in read_key_shapes(path).values())
            * torch.empty((), dtype=dtype).element_size())


def test_a_checkpoint_swap_under_a_small_vram_budget_brings_back_the_same_model(files, tmp_path: Path) -> None:
    """A budget with room for SDXL but not for SDXL and SD 1.5 together: switching to SDXL parks SD 1.5 in RAM, and
    switching back draws the same image bit for bit; the device holds one model's weights at a time."""
    sd1, sdxl = files["sd1"][0], files["sdxl"][0]
    dtype = next(iter(DTYPES.values()))
    budget = int(_weights_bytes(sdxl, torch.float32 if dtype == torch.float16 else dtype) * 1.05)  # fp16: VAE fp32
    manager = ModelManager(sd1.parent, tmp_path / "VAE", HashCache(tmp_path / "hashes.json"), DEVICE, dtype,
                           ram_cache_size=2, vram_budget=budget)
    params = _params("DDIM", "Automatic", batch_seeds(5, 1), SIDE["sd1"], SIDE["sd1"])
    first = np.asarray(txt2img(manager.get(sd1.stem), params, REGISTRY)[0])
    manager.get(sdxl.stem)
    assert [(entry.name, entry.where) for entry in manager.residency()] == [(sdxl.stem, "device"), (sd1.stem, "ram")]
    assert manager.residency()[1].device == "cpu" and not any(entry.offload for entry in manager.residency())
    again = manager.get(sd1.stem)
    assert [(entry.name, entry.where) for entry in manager.residency()] == [(sd1.stem, "device"), (sdxl.stem, "ram")]
    assert np.array_equal(np.asarray(txt2img(again, params, REGISTRY)[0]), first)


@pytest.mark.parametrize("offload", ["medvram", "lowvram"])
def test_offloaded_sdxl_draws_what_it_draws_placed_whole(files, tmp_path: Path, offload: str) -> None:
    """--medvram and --lowvram on the real device: RAM holds the weights in the device dtype, so every image equals
    the whole model's bit for bit, with a peak below the whole model's weights (medvram: the U-Net and activations;
    lowvram: a layer and activations); a budget below the model's size chooses the mode by itself."""
    sdxl = files["sdxl"][0]
    dtype = next(iter(DTYPES.values()))
    params = _params("DDIM", "Automatic", batch_seeds(5, 1), SIDE["sdxl"], SIDE["sdxl"])
    whole = ModelManager(sdxl.parent, tmp_path / "VAE", HashCache(tmp_path / "h1.json"), DEVICE, dtype)
    expected = np.asarray(txt2img(whole.get(sdxl.stem), params, REGISTRY)[0])
    whole.unload(sdxl.stem)
    forced = ModelManager(sdxl.parent, tmp_path / "VAE", HashCache(tmp_path / "h2.json"), DEVICE, dtype,
                          offload_mode=offload)
    if DEVICE.type == "cuda":  # other tests' pipelines may still hold memory: measure above what is there now
        torch.cuda.synchronize(DEVICE)
        baseline = torch.cuda.memory_allocated(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
    model = forced.get(sdxl.stem)
    assert model.offload.mode == offload
    assert np.array_equal(np.asarray(txt2img(model, params, REGISTRY)[0]), expected)
    if DEVICE.type == "cuda":  # the whole model alone would exceed these, before any activation
        peak = torch.cuda.max_memory_allocated(DEVICE) - baseline
        assert peak < _weights_bytes(sdxl, dtype) * (1.0 if offload == "medvram" else 0.5), peak
        assert torch.cuda.memory_allocated(DEVICE) - baseline < _weights_bytes(sdxl, dtype) * 0.2
    forced.unload(sdxl.stem)
    budget = int(_weights_bytes(sdxl, dtype) * (0.9 if offload == "medvram" else 0.01))  # U-Net: ~75%
    auto = ModelManager(sdxl.parent, tmp_path / "VAE", HashCache(tmp_path / "h3.json"), DEVICE, dtype,
                        vram_budget=budget)
    assert auto.get(sdxl.stem).offload.mode == offload and auto.residency()[0].offload.startswith(f"{offload} (auto")

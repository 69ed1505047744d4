"""LoRA files applied per job: parity with diffusers' `load_lora_weights`, deltas from their definitions, exact restore.

The oracle for kohya LoRA/LoCon and PEFT files is diffusers' own loader (PEFT layers beside the weights) on the same
checkpoint file; LoHa and LoKr, which diffusers cannot load, are checked against their weight-delta formulas written
out here. The base weights are hashed before and after: a job must leave them bit-identical.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.lora_files import write_kohya_lora, write_peft_lora
from tests.reference import batch_seeds, load_reference_pipeline, reference_generators, reference_noise, \
    reference_scheduler
from webui.engine.generation import SamplingParams, txt2img
from webui.engine.loader import LoadedModel, load_checkpoint
from webui.engine.lora import LoraError, read_lora, lora_patches, target_table
from webui.engine.patching import PatchError, WeightPatch, patched
from webui.engine.samplers import SamplerRegistry

if TYPE_CHECKING:
    from tests.conftest import TinyCheckpoint

pytestmark = pytest.mark.usefixtures("single_torch_thread")

MAX_PIXEL_DIFF = 2
PROMPT = "a red circle on a blue background"
NEGATIVE = "blurry"
REGISTRY = SamplerRegistry()


class Pair:
    """Our model and diffusers' pipeline for one tiny checkpoint, private to this module (LoRAs are loaded into the
    pipeline, so it must not be the session's shared one)."""

    def __init__(self, tiny: TinyCheckpoint, folder: Path) -> None:
        self.tiny = tiny
        self.ours = load_checkpoint(tiny.path)
        self.pipe = load_reference_pipeline(tiny.path, tiny.model, folder)


@pytest.fixture(scope="module")
def sd1(tiny_sd1: TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return Pair(tiny_sd1, tmp_path_factory.mktemp("lora-ref-sd1"))


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl: TinyCheckpoint, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    return Pair(tiny_sdxl, tmp_path_factory.mktemp("lora-ref-sdxl"))


def state_hash(model: LoadedModel) -> str:
    digest = hashlib.sha256()
    for module in model.modules():
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def ours_images(model: LoadedModel, seed: int = 5, width: int = 64, height: int = 64) -> list[np.ndarray]:
    params = SamplingParams(prompt=PROMPT, negative_prompt=NEGATIVE, sampler="Euler (diffusers)", schedule="Automatic",
                            steps=4, cfg_scale=6.0, width=width, height=height, seeds=batch_seeds(seed, 2))
    return [np.asarray(image, dtype=int) for image in txt2img(model, params, REGISTRY)]


def reference_images(pipe, seed: int = 5, width: int = 64, height: int = 64, **kwargs) -> list[np.ndarray]:
    seeds = batch_seeds(seed, 2)
    pipe.scheduler = reference_scheduler("Euler (diffusers)", "Automatic", "epsilon", seeds[0])
    images = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=4, guidance_scale=6.0, width=width,
                  height=height, latents=reference_noise(seeds, height, width), num_images_per_prompt=2,
                  generator=reference_generators(seeds), **kwargs).images
    return [np.asarray(image, dtype=int) for image in images]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    return max(int(np.abs(x - y).max()) for x, y in zip(a, b))


def with_loras(pair: Pair, loras: list[tuple[Path, float, float]]) -> list[np.ndarray]:
    """Our images with the LoRAs patched in, and a check that the base weights come back bit-identical."""
    before = state_hash(pair.ours)
    patches = [p for path, te, unet in loras for p in lora_patches(read_lora(path), pair.ours, te, unet)]
    with patched(patches) as changed:
        assert changed > 0
        images = ours_images(pair.ours)
    assert state_hash(pair.ours) == before
    return images


def diffusers_with_loras(pair: Pair, loras: list[tuple[Path, float]]) -> list[np.ndarray]:
    """diffusers' images with the files loaded by its own `load_lora_weights` at the given weights, then unloaded
    (the pipeline is this module's, reused by the next test)."""
    names = [f"l{index}" for index in range(len(loras))]
    for name, (path, _) in zip(names, loras):
        pair.pipe.load_lora_weights(str(path), adapter_name=name)
    try:
        pair.pipe.set_adapters(names, adapter_weights=[weight for _, weight in loras])
        return reference_images(pair.pipe)
    finally:
        pair.pipe.unload_lora_weights()


# ------------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize(("family", "conv"), [("sd1", False), ("sd1", True), ("sdxl", False)])
def test_kohya_lora_matches_diffusers_load_lora_weights(family: str, conv: bool, request: pytest.FixtureRequest,
                                                        tmp_path: Path) -> None:
    pair: Pair = request.getfixturevalue(family)
    path = write_kohya_lora(tmp_path / f"k-{family}.safetensors", pair.tiny.model, conv=conv, alpha=2.0, seed=1)
    plain = ours_images(pair.ours)
    ours = with_loras(pair, [(path, 0.8, 0.8)])
    ref = diffusers_with_loras(pair, [(path, 0.8)])
    diff = max_diff(ours, ref)
    effect = max_diff(ours, plain)
    print(f"\nkohya {family} conv={conv}: max diff {diff}/255, LoRA effect {effect}/255")
    assert diff <= MAX_PIXEL_DIFF
    assert effect >= 20, "the LoRA should visibly change the image, or the comparison proves nothing"


def test_stacked_loras_with_a_negative_weight_match_diffusers(sd1: Pair, tmp_path: Path) -> None:
    first = write_kohya_lora(tmp_path / "a.safetensors", sd1.tiny.model, seed=2)
    second = write_kohya_lora(tmp_path / "b.safetensors", sd1.tiny.model, seed=3, alpha=None, te=False)
    ours = with_loras(sd1, [(first, 0.7, 0.7), (second, -0.5, -0.5)])
    ref = diffusers_with_loras(sd1, [(first, 0.7), (second, -0.5)])
    assert max_diff(ours, ref) <= MAX_PIXEL_DIFF


def test_text_encoder_and_unet_strengths_apart(sd1: Pair, tmp_path: Path) -> None:
    """`<lora:x:te=0:unet=1>` equals a U-Net-only file at 1, and te=1:unet=0 a text-encoder-only file."""
    both = write_kohya_lora(tmp_path / "both.safetensors", sd1.tiny.model, seed=4)
    unet_only = write_kohya_lora(tmp_path / "unet.safetensors", sd1.tiny.model, seed=4, te=False)
    # the same seed draws the same U-Net tensors first, so the two files share their U-Net part exactly
    assert max_diff(with_loras(sd1, [(both, 0.0, 1.0)]), with_loras(sd1, [(unet_only, 1.0, 1.0)])) == 0
    te_part = with_loras(sd1, [(both, 1.0, 0.0)])
    assert max_diff(te_part, ours_images(sd1.ours)) > 0  # the text-encoder part alone changes the image too


def test_peft_file_from_diffusers_matches_load_lora_weights(sd1: Pair, tmp_path: Path) -> None:
    path = write_peft_lora(tmp_path / "peft_lora.safetensors", sd1.tiny.model, rank=4, alpha=8)
    lora = read_lora(path)
    assert lora.style == "peft" and any(k.startswith("text_encoder.") for k in lora.layers)
    assert {layer.scale() for layer in lora.layers.values()} == {2.0}  # lora_alpha 8 / r 4, from the metadata
    ours = with_loras(sd1, [(path, 0.6, 0.6)])
    ref = diffusers_with_loras(sd1, [(path, 0.6)])
    assert max_diff(ours, ref) <= MAX_PIXEL_DIFF
    assert max_diff(ours, ours_images(sd1.ours)) >= 10


# ------------------------------------------------------------------------------------------- LoHa and LoKr deltas


def _delta_of(model: LoadedModel, path: Path, layer_name: str) -> torch.Tensor:
    """What our patch adds to one weight at strength 1 (measured on the weight itself)."""
    table = target_table(model)
    module = table[layer_name].module
    before = module.weight.detach().clone()
    patches = [p for p in lora_patches(read_lora(path), model, 1.0, 1.0) if p.module is module]
    with patched(patches):
        after = module.weight.detach().clone()
    return after - before


@pytest.mark.parametrize("conv", [False, True])
def test_loha_delta_is_the_hadamard_product(sd1: Pair, tmp_path: Path, conv: bool) -> None:
    path = write_kohya_lora(tmp_path / "loha.safetensors", sd1.tiny.model, kind="loha", rank=3, alpha=1.5,
                            conv=conv, seed=6)
    tensors = load_file(str(path))
    name = ("lora_unet_down_blocks_0_resnets_0_conv1" if conv
            else "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k")
    w1 = tensors[f"{name}.hada_w1_a"] @ tensors[f"{name}.hada_w1_b"]
    w2 = tensors[f"{name}.hada_w2_a"] @ tensors[f"{name}.hada_w2_b"]
    expected = (w1 * w2) * (1.5 / 3)
    got = _delta_of(sd1.ours, path, name)
    torch.testing.assert_close(got.reshape(expected.shape), expected, atol=1e-6, rtol=1e-5)
    assert got.abs().max() > 1e-3


@pytest.mark.parametrize("conv", [False, True])
def test_lokr_delta_is_the_kronecker_product(sd1: Pair, tmp_path: Path, conv: bool) -> None:
    path = write_kohya_lora(tmp_path / "lokr.safetensors", sd1.tiny.model, kind="lokr", rank=2, alpha=1.0,
                            conv=conv, seed=7)
    tensors = load_file(str(path))
    name = ("lora_unet_down_blocks_0_resnets_0_conv2" if conv
            else "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_2")
    w1 = tensors[f"{name}.lokr_w1"]
    w2 = tensors[f"{name}.lokr_w2_a"] @ tensors[f"{name}.lokr_w2_b"]
    module = target_table(sd1.ours)[name].module
    if conv:
        w2 = w2.reshape(w2.shape[0], -1, *module.weight.shape[2:])
        w1 = w1[:, :, None, None]
    expected = torch.kron(w1, w2) * (1.0 / 2)
    got = _delta_of(sd1.ours, path, name)
    assert got.shape == module.weight.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_loha_and_lokr_change_the_image_and_restore(sd1: Pair, tmp_path: Path) -> None:
    plain = ours_images(sd1.ours)
    for kind in ("loha", "lokr"):
        path = write_kohya_lora(tmp_path / f"{kind}.safetensors", sd1.tiny.model, kind=kind, conv=True, seed=8)
        assert max_diff(with_loras(sd1, [(path, 1.0, 1.0)]), plain) >= 10
    assert max_diff(ours_images(sd1.ours), plain) == 0


# --------------------------------------------------------------------------------------------- bad files, restore


def test_case_13_a_failing_patch_leaves_no_partial_change(sd1: Pair, tmp_path: Path) -> None:
    path = write_kohya_lora(tmp_path / "ok.safetensors", sd1.tiny.model, seed=9)
    good = lora_patches(read_lora(path), sd1.ours, 1.0, 1.0)
    bad = WeightPatch(module=good[-1].module, delta=lambda device: torch.ones(3, device=device), strength=1.0,
                      source="broken layer")
    before = state_hash(sd1.ours)
    with pytest.raises(PatchError, match="broken layer"):
        with patched([*good, bad]):
            pass
    assert state_hash(sd1.ours) == before

    with pytest.raises(RuntimeError, match="inside the job"):  # an error in the job itself also restores
        with patched(good):
            assert state_hash(sd1.ours) != before
            raise RuntimeError("inside the job")
    assert state_hash(sd1.ours) == before


def test_case_13_wrong_family_and_unknown_layers_are_refused_by_name(sd1: Pair, sdxl: Pair, tmp_path: Path,
                                                             tiny_sd2: TinyCheckpoint) -> None:
    xl = write_kohya_lora(tmp_path / "xl_style.safetensors", sdxl.tiny.model)
    with pytest.raises(LoraError, match=r"'xl_style' was made for SDXL models, but 'tiny-sd1'"):
        lora_patches(read_lora(xl), sd1.ours, 1.0, 1.0)
    one = write_kohya_lora(tmp_path / "sd1_style.safetensors", sd1.tiny.model)
    with pytest.raises(LoraError, match=r"'sd1_style' was made for SD 1.x/2.x models"):
        lora_patches(read_lora(one), sdxl.ours, 1.0, 1.0)
    two = write_kohya_lora(tmp_path / "sd2_style.safetensors", tiny_sd2.model)
    with pytest.raises(LoraError, match=r"'sd2_style'.*(do not exist|another model size)"):
        lora_patches(read_lora(two), sd1.ours, 1.0, 1.0)

    save_file({"lora_unet_nowhere_layer.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_nowhere_layer.lora_up.weight": torch.zeros(4, 2)}, str(tmp_path / "stray.safetensors"))
    with pytest.raises(LoraError, match=r"'stray': 1 of its 1 layers do not exist in 'tiny-sd1'"):
        lora_patches(read_lora(tmp_path / "stray.safetensors"), sd1.ours, 1.0, 1.0)
    save_file({"lora_unet_x.dora_scale": torch.zeros(4), "lora_unet_x.lora_down.weight": torch.zeros(2, 4),
               "lora_unet_x.lora_up.weight": torch.zeros(4, 2)}, str(tmp_path / "dora.safetensors"))
    with pytest.raises(LoraError, match="DoRA layers .* are not supported yet"):
        read_lora(tmp_path / "dora.safetensors")
    save_file({"something.weight": torch.zeros(2)}, str(tmp_path / "notlora.safetensors"))
    with pytest.raises(LoraError, match="'notlora': 'something.weight' is not a LoRA tensor name"):
        read_lora(tmp_path / "notlora.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(LoraError, match="'corrupt'"):
        read_lora(tmp_path / "corrupt.safetensors")

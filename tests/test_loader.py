"""Checkpoint reading and architecture inference on real-layout files (no mocks)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from webui.engine.checkpoint_io import CheckpointReadError, read_checkpoint
from webui.engine.families import UnsupportedCheckpointError
from webui.engine.loader import load_checkpoint


def _same_modules(tiny, loaded) -> None:
    for ref, got in [(tiny.model.unet, loaded.unet), (tiny.model.vae, loaded.vae)]:
        ref_state, got_state = ref.state_dict(), got.state_dict()
        assert ref_state.keys() == got_state.keys()
        assert all(torch.equal(ref_state[k], got_state[k]) for k in ref_state)
    for ref, got in zip(tiny.model.text_encoders, loaded.text_encoders):
        ref_state = ref.state_dict()
        for key, value in got.model.state_dict().items():
            assert torch.equal(ref_state[key], value), key


@pytest.mark.parametrize("fixture,family", [("tiny_sd1", "sd1"), ("tiny_sd2", "sd2"), ("tiny_sdxl", "sdxl")])
def test_families_load_exactly_through_inferred_architecture(fixture: str, family: str, request) -> None:
    tiny = request.getfixturevalue(fixture)
    loaded = load_checkpoint(tiny.path)
    assert loaded.family.name == family
    assert loaded.variant == "normal"
    _same_modules(tiny, loaded)


def test_sd2_defaults_to_v_prediction_and_can_be_overridden(tiny_sd2) -> None:
    assert load_checkpoint(tiny_sd2.path).prediction_type == "v_prediction"
    assert load_checkpoint(tiny_sd2.path, prediction_override="epsilon").prediction_type == "epsilon"


def test_inpainting_checkpoint_is_recognised(tiny_sd1_inpaint) -> None:
    loaded = load_checkpoint(tiny_sd1_inpaint.path)
    assert loaded.variant == "inpaint"
    assert loaded.unet.config.in_channels == 9


def test_ckpt_with_state_dict_wrapper_and_ema_keys(tiny_sd1, tmp_path: Path) -> None:
    state = read_checkpoint(tiny_sd1.path).state_dict
    wrapped = {"state_dict": {**{k: v.clone() for k, v in state.items()}, "model_ema.decay": torch.tensor(0.999),
                              "model_ema.diffusion_modelinput_blocks00weight": torch.zeros(1)},
               "global_step": 10}
    path = tmp_path / "wrapped.ckpt"
    torch.save(wrapped, path)
    loaded = load_checkpoint(path)
    _same_modules(tiny_sd1, loaded)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {_Exploit.canary}",))


def test_case_09_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    canary = tmp_path / "pwned"
    _Exploit.canary = canary
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": _Exploit()}}, path)
    with pytest.raises(CheckpointReadError, match="evil.ckpt"):
        read_checkpoint(path)
    assert not canary.exists()


def test_case_06_truncated_safetensors_names_the_file(tiny_sd1, tmp_path: Path) -> None:
    data = tiny_sd1.path.read_bytes()
    path = tmp_path / "half.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointReadError, match="half.safetensors: corrupt or incomplete"):
        load_checkpoint(path)


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointReadError, match="junk.safetensors"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "keys,message",
    [
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": [4, 32]}, "this is a LoRA"),
        ({"control_model.zero_convs.0.0.weight": [32, 32, 1, 1]}, "this is a ControlNet"),
        ({"encoder.conv_in.weight": [32, 3, 3, 3], "decoder.conv_out.weight": [3, 32, 3, 3]}, "this is a VAE"),
        ({"some.other.weight": [3]}, "unknown architecture"),
    ],
)
def test_wrong_kind_of_file_gets_one_line_message(keys, message, tmp_path: Path) -> None:
    path = tmp_path / "wrong.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    with pytest.raises(UnsupportedCheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "wrong.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_modelspec_resolution_sets_default_size(tmp_path: Path) -> None:
    from webui.engine.synthetic import write_synthetic_checkpoint

    path = tmp_path / "declared.safetensors"
    write_synthetic_checkpoint(path, "sd1", metadata={"modelspec.resolution": "64x96"})
    assert load_checkpoint(path).default_resolution == (64, 96)


@pytest.mark.parametrize(("declared", "expected"), [("epsilon", "epsilon"), ("eps", "epsilon"), ("v", "v_prediction"),
                                                    ("", "v_prediction")])
def test_sd2_prediction_type_from_modelspec_metadata(tmp_path: Path, declared: str, expected: str) -> None:
    from webui.engine.synthetic import write_synthetic_checkpoint

    path = tmp_path / "declared-sd2.safetensors"
    write_synthetic_checkpoint(path, "sd2", metadata={"modelspec.prediction_type": declared} if declared else None)
    assert load_checkpoint(path).prediction_type == expected

"""The model manager on real files: switching, RAM cache, hashes, refresh, and failures that keep the old model."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from webui.services.hashing import HashCache
from webui.services.model_manager import ModelError, ModelManager


@pytest.fixture()
def manager(tmp_path: Path, tiny_sd1, tiny_sd2) -> ModelManager:
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    shutil.copy(tiny_sd1.path, folder / "one.safetensors")
    (folder / "sub").mkdir()
    shutil.copy(tiny_sd2.path, folder / "sub" / "two.safetensors")
    return ModelManager(folder, tmp_path / "VAE", HashCache(tmp_path / "hashes.json"), torch.device("cpu"),
                        torch.float32, ram_cache_size=1)


def test_lists_checkpoints_recursively_with_a1111_titles(manager: ModelManager) -> None:
    names = [info.name for info in manager.checkpoints()]
    assert names == ["one", "sub/two"]
    info = manager.resolve("one")
    digest = hashlib.sha256(info.path.read_bytes()).hexdigest()
    assert manager.title(info) == f"one [{digest[:10]}]"
    assert manager.resolve(f"one [{digest[:10]}]") == info


def test_switching_keeps_recent_model_in_ram_and_reuses_it(manager: ModelManager) -> None:
    first = manager.get("one")
    assert manager.active_name == "one"
    second = manager.get("sub/two")
    assert manager.active_name == "sub/two" and second is not first
    assert manager.cached_names() == ["one"]
    assert manager.get("one") is first  # served from the RAM cache, not reloaded
    assert manager.cached_names() == ["sub/two"]


def test_failed_load_keeps_previous_model_usable(manager: ModelManager, tmp_path: Path) -> None:
    good = manager.get("one")
    broken = manager.checkpoint_dir / "broken.safetensors"
    broken.write_bytes(manager.resolve("one").path.read_bytes()[:5000])
    lora = manager.checkpoint_dir / "my_lora.safetensors"
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}, str(lora))
    manager.refresh()
    with pytest.raises(ModelError, match="broken.safetensors: corrupt or incomplete"):
        manager.get("broken")
    with pytest.raises(ModelError, match="my_lora.safetensors: this is a LoRA"):
        manager.get("my_lora")
    assert manager.active_name == "one" and manager.get() is good


def test_refresh_finds_new_files_and_unknown_names_are_explained(manager: ModelManager, tiny_sd1) -> None:
    with pytest.raises(ModelError, match="not found"):
        manager.resolve("three")
    shutil.copy(tiny_sd1.path, manager.checkpoint_dir / "three.safetensors")
    manager.refresh()
    assert manager.resolve("three").name == "three"


def test_prediction_override_reloads_with_new_type(manager: ModelManager) -> None:
    assert manager.get("sub/two").prediction_type == "v_prediction"
    manager.set_prediction_override("sub/two", "epsilon")
    assert manager.get("sub/two").prediction_type == "epsilon"


def test_default_size_comes_from_the_header(manager: ModelManager) -> None:
    assert manager.default_size("one") == (512, 512)
    assert manager.default_size("sub/two") == (768, 768)


def test_vae_override_replaces_the_checkpoint_vae(manager: ModelManager, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from webui.engine.synthetic import build_synthetic_model
    from webui.engine.export import vae_to_ldm

    other = build_synthetic_model("sd1", seed=99).vae
    manager.vae_dir.mkdir(parents=True, exist_ok=True)
    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(other).items()}
    save_file(state, str(manager.vae_dir / "other.vae.safetensors"))
    assert manager.vae_names() == ["Automatic", "None", "other.vae.safetensors"]
    original = manager.get("one").vae.state_dict()
    manager.set_vae("other.vae.safetensors")
    replaced = manager.get("one").vae.state_dict()
    reference = other.state_dict()
    assert all(torch.equal(replaced[k], reference[k]) for k in reference)
    assert not all(torch.equal(replaced[k], original[k]) for k in reference)
    with pytest.raises(ModelError, match="not found"):
        manager.set_vae("missing.safetensors")


def test_listing_does_not_hash_files_until_they_are_used(manager: ModelManager) -> None:
    info = manager.resolve("sub/two")
    assert manager.display_title(info) == "sub/two"  # nothing read yet
    manager.get("sub/two")
    manager.model_hash(manager.active)
    assert manager.display_title(info) == manager.title(info)

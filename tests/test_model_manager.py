"""The model manager on real files: switching, RAM cache, hashes, refresh, and failures that keep the old model."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import pytest
import torch

from webui.engine.loader import LoadedModel
from webui.engine.synthetic import write_synthetic_checkpoint
from webui.services import model_manager as model_manager_module
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


def test_default_size_of_another_model_while_one_is_active(manager: ModelManager) -> None:
    """The active model answers only for itself: asking for the other one reads that file's header."""
    manager.get("one")
    assert manager.default_size() == (512, 512)
    assert manager.default_size("sub/two") == (768, 768)


def test_a_job_checks_out_its_vae_and_the_cached_model_keeps_its_own(manager: ModelManager, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from webui.engine.export import vae_to_ldm
    from webui.engine.synthetic import build_synthetic_model
    from webui.services.model_manager import ModelRecipe

    other = build_synthetic_model("sd1", seed=99).vae
    manager.vae_dir.mkdir(parents=True, exist_ok=True)
    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(other).items()}
    save_file(state, str(manager.vae_dir / "other.vae.safetensors"))
    assert manager.vae_names() == ["Automatic", "None", "other.vae.safetensors"]
    base = manager.get("one")
    original = {k: v.clone() for k, v in base.vae.state_dict().items()}
    with manager.checkout(ModelRecipe("one", "other.vae.safetensors")) as model:
        replaced = model.vae.state_dict()
        assert model.unet is base.unet and model.vae is not base.vae
    reference = other.state_dict()
    assert all(torch.equal(replaced[k], reference[k]) for k in reference)
    assert not all(torch.equal(replaced[k], original[k]) for k in reference)
    assert all(torch.equal(manager.get("one").vae.state_dict()[k], original[k]) for k in original)
    with manager.checkout(ModelRecipe("one", "Automatic")) as model:
        assert model.vae is base.vae
    manager.set_vae("other.vae.safetensors")  # only the default for requests without a VAE
    assert manager.vae_choice == "other.vae.safetensors" and manager.get("one").vae is base.vae
    with pytest.raises(ModelError, match="not found"):
        manager.set_vae("missing.safetensors")
    with pytest.raises(ModelError, match="not found"):
        with manager.checkout(ModelRecipe("one", "missing.safetensors")):
            pass
    # A VAE file of another latent layout is refused by name.
    bad = {k: v for k, v in state.items() if not k.startswith("decoder.")}
    save_file(bad, str(manager.vae_dir / "half.safetensors"))
    with pytest.raises(ModelError, match="half.safetensors"):
        with manager.checkout(ModelRecipe("one", "half.safetensors")):
            pass


def test_listing_does_not_hash_files_until_they_are_used(manager: ModelManager) -> None:
    info = manager.resolve("sub/two")
    assert manager.display_title(info) == "sub/two"  # nothing read yet
    manager.get("sub/two")
    manager.model_hash(manager.active)
    assert manager.display_title(info) == manager.title(info)


NAMES = ["m1", "m2", "m3", "m4", "m5"]


@pytest.fixture()
def five(tmp_path: Path, tiny_sd1):
    """Five real checkpoint files (copies of one tiny SD1 file) and a factory for managers over them."""
    folder = tmp_path / "five"
    folder.mkdir()
    for name in NAMES:
        shutil.copy(tiny_sd1.path, folder / f"{name}.safetensors")

    def make(ram_cache_size: int) -> ModelManager:
        return ModelManager(folder, tmp_path / "VAE", HashCache(tmp_path / "hashes.json"), torch.device("cpu"),
                            torch.float32, ram_cache_size=ram_cache_size)

    return make


@pytest.fixture()
def file_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the checkpoint files actually read (the real reader still runs; this only records its calls)."""
    reads: list[str] = []
    real = model_manager_module.read_checkpoint

    def recording(path, *args, **kwargs):
        reads.append(Path(path).stem)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(model_manager_module, "read_checkpoint", recording)
    return reads


def test_ram_cache_of_three_keeps_the_three_most_recently_used(five, file_reads: list[str]) -> None:
    manager = five(3)
    models = {name: manager.get(name) for name in ["m1", "m2", "m3", "m4"]}
    assert manager.active_name == "m4" and manager.cached_names() == ["m1", "m2", "m3"]  # oldest first
    assert manager.get("m2") is models["m2"]  # from RAM: m2 becomes active, m4 most recent in the cache
    assert manager.cached_names() == ["m1", "m3", "m4"]
    models["m5"] = manager.get("m5")  # m2 goes to the cache, the least recently used (m1) is evicted
    assert manager.active_name == "m5" and manager.cached_names() == ["m3", "m4", "m2"]
    assert file_reads == ["m1", "m2", "m3", "m4", "m5"]  # nothing read twice so far
    assert manager.get("m3") is models["m3"] and manager.cached_names() == ["m4", "m2", "m5"]
    reloaded = manager.get("m1")  # evicted: read from the file again
    assert reloaded is not models["m1"] and file_reads[-1] == "m1" and len(file_reads) == 6
    assert manager.cached_names() == ["m2", "m5", "m3"]
    assert all(model.device.type == "cpu" for model in manager._ram_cache.values())


def test_ram_cache_of_zero_keeps_nothing_and_a_switch_back_reloads(five, file_reads: list[str]) -> None:
    manager = five(0)
    first = manager.get("m1")
    manager.get("m2")
    assert manager.cached_names() == [] and manager.active_name == "m2"
    again = manager.get("m1")
    assert again is not first and file_reads == ["m1", "m2", "m1"]
    assert manager.get("m1") is again and len(file_reads) == 3  # the active model itself is not reloaded
    assert manager.cached_names() == []


@pytest.fixture()
def out_of_memory_once(monkeypatch: pytest.MonkeyPatch):
    """Fault injection: once armed, the next move of a model (the manager placing it on its device) gets its UNet
    across and then raises torch.OutOfMemoryError, as a full GPU would part-way; moves after that work. There is no
    honest way to fill a device in a CPU-only test."""
    real = model_manager_module.move_packed
    armed = {"left": 0}

    def move(module, device, dtype, pin=False):
        real(module, device, dtype, pin)
        if armed["left"]:
            armed["left"] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB (injected)")

    monkeypatch.setattr(model_manager_module, "move_packed", move)
    return armed


def test_out_of_memory_while_placing_a_cached_model_keeps_both(five, file_reads, out_of_memory_once) -> None:
    manager = five(2)
    first = manager.get("m1")
    second = manager.get("m2")
    assert manager.cached_names() == ["m1"]
    out_of_memory_once["left"] = 1
    with pytest.raises(ModelError) as caught:
        manager.get("m1")
    assert str(caught.value) == ("not enough memory on cpu to load 'm1'; 'm2' is still loaded. Free RAM (a smaller "
                                 "--ram-cache keeps fewer models in memory), then try again.")
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)
    # The previous model is still the active one, and usable.
    assert manager.active_name == "m2" and manager.get() is second
    with torch.inference_mode():
        latents = torch.zeros(1, 4, 8, 8)
        assert torch.isfinite(second.vae.decode(latents).sample).all()
    # The model that failed to move is not lost: still cached in RAM, on the CPU...
    assert manager.cached_names() == ["m1"] and manager._ram_cache["m1"] is first
    assert first.device.type == "cpu"
    # ...and a retry takes it from there: with its file gone, only RAM can supply it.
    manager.resolve("m1").path.unlink()
    assert manager.get("m1") is first and manager.active_name == "m1"
    assert file_reads == ["m1", "m2"]


def test_out_of_memory_while_placing_a_fresh_model_keeps_it_in_ram(five, file_reads, out_of_memory_once) -> None:
    manager = five(1)
    first = manager.get("m1")
    out_of_memory_once["left"] = 1
    with pytest.raises(ModelError, match="not enough memory on cpu to load 'm2'; 'm1' is still loaded"):
        manager.get("m2")
    assert manager.active_name == "m1" and manager.get() is first
    assert manager.cached_names() == ["m2"]
    retried = manager.get("m2")
    assert manager.active_name == "m2" and manager.cached_names() == ["m1"]
    assert file_reads == ["m1", "m2"] and retried.name == "m2"


def _run_threads(count: int, work) -> list[BaseException]:
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            start.wait()
            work(index)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung (deadlock?)"
    return errors


def test_concurrent_get_of_one_model_loads_it_once(five, file_reads: list[str]) -> None:
    manager = five(1)
    results: dict[int, LoadedModel] = {}

    def work(index: int) -> None:
        results[index] = manager.get("m3")

    assert _run_threads(6, work) == []
    assert file_reads == ["m3"]
    assert len({id(model) for model in results.values()}) == 1 and results[0].name == "m3"
    assert manager.active_name == "m3" and manager.cached_names() == []


def test_concurrent_get_of_different_models_gives_each_its_own(five) -> None:
    manager = five(2)
    got: list[tuple[str, str]] = []

    def work(index: int) -> None:
        for round_ in range(2):
            name = NAMES[(index + round_) % 4]
            model = manager.get(name)
            got.append((name, model.name))

    assert _run_threads(4, work) == []
    assert len(got) == 8 and all(asked == received for asked, received in got)
    cached = manager.cached_names()
    assert len(cached) == 2 and len(set(cached)) == 2 and manager.active_name not in cached
    everything = [manager.active, *manager._ram_cache.values()]
    assert len({id(model) for model in everything}) == 3
    assert [model.name for model in everything] == [manager.active_name, *cached]


def test_residency_says_what_is_where_with_its_bytes_and_unload_frees_it(manager: ModelManager) -> None:
    """The Models tab and `/sdapi/v1/memory` report this table; the byte count is the file's tensors (fp32 here),
    computed independently from the safetensors header."""
    from webui.engine.checkpoint_io import read_safetensors_header

    assert manager.residency() == []
    manager.get("one")
    manager.get("sub/two")
    table = manager.residency()
    assert [(entry.name, entry.where, entry.device, entry.dtype) for entry in table] == [
        ("sub/two", "device", "cpu", "float32"), ("one", "ram", "cpu", "float32")]
    header, _ = read_safetensors_header(manager.resolve("one").path)
    prefixes = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")
    model_keys = {key: spec for key, spec in header.items() if key.startswith(prefixes)}
    file_elements = sum(int(torch.Size(spec["shape"]).numel()) for spec in model_keys.values())
    # The loaded modules hold the file's weights (fp32, 4 bytes each) plus a few buffers the file does not store
    # (CLIP's position ids), and nothing twice.
    assert file_elements * 4 <= table[1].bytes <= file_elements * 4 * 1.01
    assert manager.unload("one") is True and manager.unload("one") is False
    assert [entry.name for entry in manager.residency()] == ["sub/two"]
    assert manager.unload("sub/two") is True and manager.active_name is None and manager.residency() == []
    assert manager.get("one").unet is not None  # loads again from the file
    with pytest.raises(ModelError):
        manager.unload("no-such-model")


def test_budgets_keep_the_most_recently_used_on_each_level(tmp_path: Path) -> None:
    """Four tiny checkpoints with different weights throughout (so that they share nothing), each B bytes: a VRAM
    budget of 2.5 B keeps the two most recently used on the device (switching between them moves nothing), a RAM
    budget of 1.5 B keeps one more in RAM, and the least recently used is dropped; lowering the budgets live evicts
    at once, the active model last of all."""
    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    for seed, name in enumerate("abcd"):
        write_synthetic_checkpoint(folder / f"{name}.safetensors", "sd1", seed=20 + seed)
    manager = ModelManager(folder, tmp_path / "VAE", HashCache(tmp_path / "hashes.json"), torch.device("cpu"),
                           torch.float32, ram_cache_size=5)
    a = manager.get("a")
    size = manager.residency()[0].bytes
    manager.set_budgets(vram_budget=int(2.5 * size), ram_budget=int(1.5 * size))

    def where() -> list[tuple[str, str]]:
        return [(entry.name, entry.where) for entry in manager.residency()]

    b = manager.get("b")
    assert where() == [("b", "device"), ("a", "device")]
    assert manager.get("a") is a and where() == [("a", "device"), ("b", "device")]  # a pointer swap
    manager.get("c")
    assert where() == [("c", "device"), ("a", "device"), ("b", "ram")]
    manager.get("d")
    assert where() == [("d", "device"), ("c", "device"), ("a", "ram")]  # b, least recently used, is dropped
    assert manager.get("a") is a and where() == [("a", "device"), ("d", "device"), ("c", "ram")]
    assert manager.get("b") is not b  # dropped earlier: read from the file again
    manager.set_budgets(vram_budget=None, ram_budget=0)  # one model on the device, none in RAM
    assert where() == [("b", "device")]
    manager.set_budgets(vram_budget=0, ram_budget=None)  # a budget too small for any model keeps the active one
    assert where() == [("b", "device")] and manager.active_name == "b"


@pytest.fixture()
def siblings(tmp_path: Path, tiny_sd1) -> Path:
    """SD1 files in the real layout: `base`; `merge`, the same VAE and text encoder with another U-Net (what a U-Net
    fine-tune or merge looks like); `own-vae`, base with another VAE; `one-step-vae`, base with one VAE weight moved
    by one float step."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    state = load_file(str(tiny_sd1.path))
    save_file(state, str(folder / "base.safetensors"))
    noise = torch.Generator().manual_seed(7)
    merge = {key: value + 0.01 * torch.randn(value.shape, generator=noise)
             if key.startswith("model.diffusion_model.") and value.is_floating_point() else value
             for key, value in state.items()}
    save_file(merge, str(folder / "merge.safetensors"))
    key = "first_stage_model.decoder.conv_out.bias"
    own = {**state, key: state[key] + 0.5}
    save_file(own, str(folder / "own-vae.safetensors"))
    one_step = {**state, key: state[key].clone()}
    one_step[key][0] = torch.nextafter(one_step[key][0], torch.tensor(float("inf")))
    save_file(one_step, str(folder / "one-step-vae.safetensors"))
    return folder


def _image(model: LoadedModel) -> torch.Tensor:
    """A short txt2img through the engine: the latents and the decoded 8-bit pixels, both compared exactly."""
    from webui.engine.generation import SamplingParams, generate_latents, latents_to_images
    from webui.engine.samplers import SamplerRegistry

    params = SamplingParams(prompt="a red circle", sampler="Euler", steps=3, cfg_scale=5.0, width=64, height=64,
                            seeds=[11])
    with torch.inference_mode():
        latents = generate_latents(model, params, SamplerRegistry())
        pixels = torch.tensor(list(latents_to_images(model, latents)[0].getdata()))
    return torch.cat([latents.flatten().float(), pixels.flatten().float()])


def _manager(folder: Path, tmp_path: Path, dtype: torch.dtype = torch.float32) -> ModelManager:
    return ModelManager(folder, tmp_path / "VAE", HashCache(tmp_path / "hashes.json"), torch.device("cpu"), dtype,
                        ram_cache_size=3)


def test_a_vae_or_text_encoder_identical_to_a_loaded_one_is_kept_once(siblings: Path, tmp_path: Path) -> None:
    from webui.engine.loader import load_checkpoint
    from webui.services.model_manager import module_bytes

    manager = _manager(siblings, tmp_path)
    base, merge, own = (manager.get(name) for name in ("base", "merge", "own-vae"))
    encoder = base.text_encoders[0].model
    assert merge.vae is base.vae and merge.text_encoders[0].model is encoder and merge.unet is not base.unet
    assert own.vae is not base.vae and own.text_encoders[0].model is encoder
    assert manager.get("one-step-vae").vae is not base.vae  # one float step apart: not shared
    manager.unload("one-step-vae")
    table = {entry.name: entry for entry in manager.residency()}
    assert table["merge"].shared_bytes == module_bytes([base.vae, encoder]) > 0
    assert table["own-vae"].shared_bytes == module_bytes([encoder])
    assert table["base"].shared_bytes == module_bytes([base.vae, encoder])
    assert len({table[name].bytes for name in table}) == 1  # each still reports its whole size
    # Each checkpoint draws exactly what it draws loaded on its own, and dropping the first one breaks nothing.
    alone = {name: _image(load_checkpoint(siblings / f"{name}.safetensors")) for name in ("base", "merge", "own-vae")}
    assert not torch.equal(alone["base"], alone["own-vae"])
    for name, model in (("base", base), ("merge", merge), ("own-vae", own)):
        assert torch.equal(_image(manager.get(name)), alone[name]), name
    assert manager.unload("base") and torch.equal(_image(manager.get("merge")), alone["merge"])


def test_a_shared_component_stays_on_the_device_while_a_model_there_uses_it(siblings: Path, tmp_path: Path) -> None:
    """bf16 on the CPU: the device copy is bf16 and the RAM cache fp32, so moves really convert. Parking `merge`
    must not move the VAE and text encoder that the active `base` is using, and every image equals that of a manager
    that only ever loaded one model."""
    manager = _manager(siblings, tmp_path, torch.bfloat16)
    base = manager.get("base")
    merge = manager.get("merge")  # base is parked: its U-Net goes to fp32, the shared parts stay bf16 for merge
    assert base.unet.dtype == torch.float32 and merge.unet.dtype == torch.bfloat16
    assert merge.vae is base.vae and base.vae.dtype == torch.bfloat16
    assert manager.get("base") is base and base.unet.dtype == torch.bfloat16 and base.vae.dtype == torch.bfloat16
    for name in ("base", "merge", "base"):
        single = _manager(siblings, tmp_path / name, torch.bfloat16)
        assert torch.equal(_image(manager.get(name)), _image(single.get(name))), name

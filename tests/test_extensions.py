"""The extension system on real extension folders and a real tiny checkpoint (no mocks)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.extension_folders import (
    EDIT_REQUEST_THEN_RAISE, HELLO_TAB, NEGATE_HOOK, NEGATE_IN_PLACE_THEN_RAISE, NEGATE_THEN_RAISE,
    PAINT_IMAGE_THEN_RAISE, RAISES_IN_HOOK, RAISES_IN_REGISTER, RAISES_ON_IMPORT, RETURNS_A_DICT_NOT_A_REQUEST,
    RETURNS_NO_IMAGES, TAG_THEN_RAISE, TAGGER, sampler_extension, write_extension,
)
from webui.context import AppPaths, build_context
from webui.engine.samplers import SamplerRegistry
from webui.services.extensions import ExtensionError
from webui.services.infotext import parse_infotext
from webui.services.requests import GenerationRequest
from webui.services.settings import SettingsStore


def _context(tmp_path: Path, tiny_sd1, extension_root: Path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    target = models / "Stable-diffusion" / "tiny.safetensors"
    if not target.exists():
        target.symlink_to(tiny_sd1.path)
    paths = AppPaths(models, tmp_path / "outputs", tmp_path / "data", (extension_root,))
    return build_context(paths, device="cpu")


def _generate(context, cfg: float = 7.0, **extensions) -> np.ndarray:
    request = GenerationRequest(prompt="a red circle", negative_prompt="blue", steps=3, width=64, height=64, seed=5,
                                sampler_name="Euler", cfg_scale=cfg, extensions=extensions)
    result = context.generation.run(context.jobs.create("test", "txt2img"), request)
    return np.asarray(result.images[0], dtype=int), result


def test_good_and_broken_extensions_are_contained(tmp_path: Path, tiny_sd1) -> None:
    root = tmp_path / "ext"
    write_extension(root, "flip", NEGATE_HOOK)
    write_extension(root, "hello", HELLO_TAB)
    write_extension(root, "bad-import", RAISES_ON_IMPORT)
    write_extension(root, "bad-register", RAISES_IN_REGISTER)
    write_extension(root, "bad-hook", RAISES_IN_HOOK)
    write_extension(root, "too-new", HELLO_TAB, requires_app=">=99")
    context = _context(tmp_path, tiny_sd1, root)
    status = {r.name: r for r in context.extensions.records}
    assert status["flip"].status == status["hello"].status == "active"
    assert status["pnginfo"].status == status["models"].status == "active"  # built-ins use the same API
    assert "ImportError: this extension needs a package" in status["bad-import"].error
    assert "registration exploded" in status["bad-register"].error
    assert "bad-register.left_behind" not in context.settings.specs  # nothing half-registered stays
    assert status["too-new"].error.startswith("checking the app version: ")
    assert "needs app version >=99" in status["too-new"].error
    assert "Traceback" in status["bad-import"].traceback

    # A failing per-step hook disables its extension; generation and the other extensions carry on.
    flipped, result = _generate(context, flip={"enabled": True})
    assert status["bad-hook"].status == "failed" and "per-step hook exploded" in status["bad-hook"].error
    assert "Flipped: yes" in result.infotexts[0]
    plain, result = _generate(context, flip={"enabled": False})
    assert "Flipped" not in result.infotexts[0]
    assert np.abs(flipped - plain).max() > 20  # the hook visibly changed the image


def test_enable_disable_is_persisted_for_the_next_start(tmp_path: Path, tiny_sd1) -> None:
    root = tmp_path / "ext"
    write_extension(root, "hello", HELLO_TAB)
    context = _context(tmp_path, tiny_sd1, root)
    context.extensions.set_enabled("hello", False)
    assert next(r for r in context.extensions.records if r.name == "hello").status == "active"  # until restart
    restarted = _context(tmp_path, tiny_sd1, root)
    assert next(r for r in restarted.extensions.records if r.name == "hello").status == "disabled"


def test_extension_settings_persist(tmp_path: Path, tiny_sd1) -> None:
    root = tmp_path / "ext"
    write_extension(root, "flip", NEGATE_HOOK)
    context = _context(tmp_path, tiny_sd1, root)
    assert context.settings.get("flip.strength") == 1.0
    context.settings.update({"flip.strength": "0.5"})
    with pytest.raises(ValueError, match="flip.strength"):
        context.settings.update({"flip.strength": "lots"})
    fresh = SettingsStore(tmp_path / "data" / "config.json")
    assert fresh.get("flip.strength") == 0.5


def test_install_never_runs_code_and_refuses_traversal(tmp_path: Path, tiny_sd1) -> None:
    context = _context(tmp_path, tiny_sd1, tmp_path / "ext")
    source = write_extension(tmp_path / "src", "installed", RAISES_ON_IMPORT)
    bundle = tmp_path / "installed.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        for file in source.iterdir():
            archive.write(file, f"installed/{file.name}")
    name = context.extensions.install_archive(bundle, tmp_path / "ext")
    assert name == "installed" and (tmp_path / "ext" / "installed" / "main.py").is_file()
    restarted = _context(tmp_path, tiny_sd1, tmp_path / "ext")
    assert next(r for r in restarted.extensions.records if r.name == "installed").status == "disabled"
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../escape/extension.toml", 'name = "escape"')
    with pytest.raises(ExtensionError, match="points outside"):
        context.extensions.install_archive(evil, tmp_path / "ext")


def test_example_cfg_rescale_changes_output(tmp_path: Path, tiny_sd1) -> None:
    examples = Path(__file__).resolve().parent.parent / "extensions"
    context = _context(tmp_path, tiny_sd1, examples)
    assert {r.name: r.status for r in context.extensions.records}["cfg-rescale"] == "active"
    rescaled, result = _generate(context, cfg=25, **{"cfg-rescale": {"enabled": True, "phi": 1.0}})
    assert "CFG Rescale phi: 1," in result.infotexts[0]
    plain, _ = _generate(context, cfg=25, **{"cfg-rescale": {"enabled": False}})
    assert np.abs(rescaled - plain).max() > 10


def _records(context) -> dict:
    return {r.name: r for r in context.extensions.records}


def test_failing_request_image_and_save_hooks_are_contained(tmp_path: Path, tiny_sd1) -> None:
    # Each broken hook edits what it was given (in place) before raising; none of that may reach the job.
    root = tmp_path / "ext"
    write_extension(root, "bad-before", EDIT_REQUEST_THEN_RAISE)
    write_extension(root, "bad-decode", PAINT_IMAGE_THEN_RAISE)
    write_extension(root, "bad-save", TAG_THEN_RAISE)
    write_extension(root, "bad-request-type", RETURNS_A_DICT_NOT_A_REQUEST)
    write_extension(root, "bad-images-type", RETURNS_NO_IMAGES)
    write_extension(root, "tagger", TAGGER)
    context = _context(tmp_path, tiny_sd1, root)
    status = _records(context)
    assert all(record.status == "active" for name, record in status.items() if name.startswith("bad-"))

    image, result = _generate(context)
    assert len(result.images) == 1 and len(result.infotexts) == 1
    for name, message in (("bad-before", "in a before-generate hook: RuntimeError: before-generate hook exploded"),
                          ("bad-decode", "in an after-decode hook: RuntimeError: after-decode hook exploded"),
                          ("bad-save", "in an on-save hook: RuntimeError: on-save hook exploded"),
                          ("bad-request-type", "in a before-generate hook: ExtensionError: the hook must return None "
                                               "or a GenerationRequest, not a dict"),
                          ("bad-images-type", "in an after-decode hook: ExtensionError: the hook must return None or "
                                              "a list of 1 PIL images, not a list of 0 (empty)")):
        assert status[name].status == "failed" and status[name].error == message, name
        assert ("Traceback" in status[name].traceback) == ("RuntimeError" in message)  # raised: where, for the author
    assert status["tagger"].status == "active"
    info = parse_infotext(result.infotexts[0])
    assert info["Prompt"] == "a red circle" and info["Steps"] == 3  # the in-place edits before the raise are gone
    assert info["Negative prompt"] == "blue, tagged" and info["Tagged"] == "yes"  # the good extension still applies
    assert "Broken" not in info
    assert image[0, 0].tolist() == [255, 0, 255]  # the good after-decode hook's mark
    assert image.mean() > 5  # not the black paste of the failed hook

    # The same job again, now without the (disabled) broken extensions: exactly the same image and infotext.
    again, repeat = _generate(context)
    assert np.array_equal(again, image) and repeat.infotexts == result.infotexts


@pytest.mark.parametrize("body", [NEGATE_THEN_RAISE, NEGATE_IN_PLACE_THEN_RAISE], ids=["assign", "in-place"])
def test_a_failing_step_hook_change_is_rolled_back(tmp_path: Path, tiny_sd1, body: str) -> None:
    root = tmp_path / "ext"
    write_extension(root, "negate", body)
    context = _context(tmp_path, tiny_sd1, root)
    record = _records(context)["negate"]
    changed, _ = _generate(context, negate={"fail": False})  # control: the edit itself visibly changes the image
    assert record.status == "active"
    rolled_back, _ = _generate(context, negate={"fail": True})  # the same edit, then a raise at the first step
    assert record.status == "failed" and "in a per-step hook: RuntimeError: negated the prediction" in record.error
    plain, _ = _generate(context)  # the extension is disabled now: this is the image without it
    assert np.array_equal(rolled_back, plain)
    assert np.abs(changed - plain).max() > 20


@pytest.mark.parametrize("entry", ["../outside.py", "ABSOLUTE"])
def test_entry_outside_the_folder_is_refused(tmp_path: Path, tiny_sd1, entry: str) -> None:
    if entry == "ABSOLUTE":
        entry = str(tmp_path / "elsewhere" / "outside.py")
        (tmp_path / "elsewhere").mkdir()
    marker = tmp_path / "ran"
    write_extension(tmp_path / "ext", "escape", f"open({str(marker)!r}, 'w').close()\ndef register(api): pass\n",
                    entry=entry)
    assert (tmp_path / "ext" / "escape" / entry).is_file()  # the file is there; only the rule stops it
    record = _records(_context(tmp_path, tiny_sd1, tmp_path / "ext"))["escape"]
    assert record.status == "failed"
    assert record.error == (f"reading the manifest: ExtensionError: escape: entry {entry!r} must be a file inside the "
                            "extension folder")
    assert not marker.exists()  # its code never ran


def test_entry_symlinked_outside_the_folder_is_refused(tmp_path: Path, tiny_sd1) -> None:
    marker = tmp_path / "ran"
    outside = tmp_path / "outside.py"
    outside.write_text(f"open({str(marker)!r}, 'w').close()\ndef register(api): pass\n")
    folder = write_extension(tmp_path / "ext", "linked", "", entry="main.py")
    (folder / "main.py").unlink()
    (folder / "main.py").symlink_to(outside)
    record = _records(_context(tmp_path, tiny_sd1, tmp_path / "ext"))["linked"]
    assert record.status == "failed" and "leads outside the extension folder" in record.error
    assert not marker.exists()


def test_duplicate_names_keep_the_first_and_name_the_clash(tmp_path: Path, tiny_sd1) -> None:
    root = tmp_path / "ext"
    write_extension(root, "first", HELLO_TAB, manifest_name="same")
    write_extension(root, "second", RAISES_ON_IMPORT, manifest_name="same")
    write_extension(root, "models", HELLO_TAB)  # clashes with the built-in of that name
    context = _context(tmp_path, tiny_sd1, root)
    by_folder = {r.folder.name: r for r in context.extensions.records}
    assert by_folder["first"].status == "active"
    assert by_folder["second"].status == "failed"
    assert by_folder["second"].error == (
        f"loading: ExtensionError: duplicate extension name 'same': the extension in {root / 'first'} already has it; "
        f"rename one of them (the `name` in extension.toml) or remove {root / 'second'}"
    )
    builtin = next(r for r in context.extensions.records if r.name == "models" and r.builtin)
    assert builtin.status == "active"
    assert by_folder["models"].status == "failed" and "duplicate extension name 'models'" in by_folder["models"].error
    assert [r.name for r in context.extensions.active()].count("same") == 1


def test_a_half_failed_sampler_registration_leaves_no_sampler(tmp_path: Path, tiny_sd1) -> None:
    root = tmp_path / "ext"
    write_extension(root, "half", sampler_extension("Half Sampler A", "Euler"))
    write_extension(root, "whole", sampler_extension("Whole Sampler"))
    context = _context(tmp_path, tiny_sd1, root)
    status = _records(context)
    assert status["half"].status == "failed"
    assert status["half"].error == "registering: SamplerError: a sampler named 'Euler' is already registered"
    assert "Half Sampler A" not in context.samplers.names()
    assert context.samplers.names() == [*SamplerRegistry().names(), "Whole Sampler"]
    builtin_euler = SamplerRegistry().resolve("Euler")[0]
    assert context.samplers.resolve("Euler")[0] == builtin_euler == context.samplers.resolve("k_euler")[0]
    assert status["whole"].status == "active" and context.samplers.resolve("whole sampler")[0].name == "Whole Sampler"
    assert status["half"].registrations.samplers == []


def test_denoise_extensions_are_contained_and_bad_input_stops_only_the_job(tmp_path: Path, tiny_sd1) -> None:
    """A denoise extension that raises after editing the U-Net call or the CFG result leaves no trace; a factory
    that raises or returns junk disables its extension; a RequestError from a factory is the user's error: the job
    does not start and the extension stays on."""
    from tests.extension_folders import (
        DENOISE_FACTORY_RAISES, DENOISE_FACTORY_REFUSES_INPUT, DENOISE_FACTORY_WRONG_TYPE, DENOISED_THEN_RAISE,
        RESIDUALS_THEN_RAISE,
    )
    from webui.services.requests import RequestError

    root = tmp_path / "ext"
    write_extension(root, "bad-residuals", RESIDUALS_THEN_RAISE)
    write_extension(root, "bad-cfg", DENOISED_THEN_RAISE)
    write_extension(root, "bad-factory", DENOISE_FACTORY_RAISES)
    write_extension(root, "bad-factory-type", DENOISE_FACTORY_WRONG_TYPE)
    write_extension(root, "strict", DENOISE_FACTORY_REFUSES_INPUT)
    context = _context(tmp_path, tiny_sd1, root)
    baseline, _ = _generate(context)  # the factories that always fail are now disabled
    status = _records(context)
    assert "in a denoise factory: KeyError" in status["bad-factory"].error
    assert "must return None, a DenoiseExtension or a list" in status["bad-factory-type"].error
    with pytest.raises(RequestError, match="strength: must be at most 1"):
        _generate(context, strict={"strength": 2})
    assert status["strict"].status == "active"

    image, result = _generate(context, **{"bad-residuals": {"enabled": True}, "bad-cfg": {"enabled": True}})
    assert np.array_equal(image, baseline) and len(result.images) == 1
    assert ("before a U-Net call" in status["bad-residuals"].error
            and "denoise extension exploded" in status["bad-residuals"].error)
    assert "after CFG" in status["bad-cfg"].error
    assert status["controlnet"].status == status["pnginfo"].status == "active"


def test_settings_by_key_endpoint_names_and_token_counts(tmp_path: Path) -> None:
    from webui.services.extensions import ExtensionAPI, ExtensionRecord, Manifest
    from webui.services.settings import SettingSpec

    record = ExtensionRecord(folder=tmp_path / "my-ext", builtin=False, manifest=Manifest("my-ext", "1"))
    settings = SettingsStore(tmp_path / "config.json")
    api = ExtensionAPI(record, settings, "0.1", None)
    key = api.add_setting("strength", 1, "Strength", kind="number", minimum=0, maximum=2)
    assert key == "my-ext.strength" and api.setting("strength") == 1  # unset: the default
    assert api.set_setting("strength", "0.5") == 0.5 and api.setting("my-ext.strength") == 0.5
    assert SettingsStore(tmp_path / "config.json").get("my-ext.strength") == 0.5  # saved at once
    with pytest.raises(ValueError, match=r"setting 'my-ext.strength': 3 is invalid \(above 2\)"):
        api.set_setting("strength", 3)
    with pytest.raises(KeyError, match=r"no setting 'my-ext.nope'; register it first"):
        api.setting("nope")
    settings.register(SettingSpec("other.units", 3, "Units", kind="number", owner="other"))
    assert api.setting("other.units") == 3  # anyone's setting by its full key
    with pytest.raises(ExtensionError, match="may change only its own settings, not 'other.units'"):
        api.set_setting("other.units", 4)
    with pytest.raises(ExtensionError, match="setting name 'a.b' must be"):
        api.add_setting("a.b", 1, "dotted")
    assert api.api_name("count") == "my_ext_count" and api.api_name("my_ext_count") == "my_ext_count"
    with pytest.raises(ExtensionError, match="endpoint name '/count' must be"):
        api.api_name("/count")
    assert api.count_tokens("cat " * 100) == (100, 150)


def test_names_differing_only_in_dash_and_underscore_clash(tmp_path: Path, tiny_sd1) -> None:
    root = tmp_path / "ext"
    write_extension(root, "a-b", HELLO_TAB)
    write_extension(root, "a_b", HELLO_TAB)
    records = _records(_context(tmp_path, tiny_sd1, root))
    assert records["a-b"].status == "active"
    assert records["a_b"].status == "failed"
    assert records["a_b"].error.startswith("loading: ExtensionError: duplicate extension name 'a_b': the extension in "
                                           f"{root / 'a-b'} already has it (as 'a-b': names differing only in '-'/'_' "
                                           "clash)")


def test_example_cfg_rescale_is_the_engine_formula() -> None:
    """The example writes CFG rescale with the public API only; it must stay the engine's formula (which
    test_denoise_extensions.py holds to diffusers' guidance_rescale)."""
    import importlib.util
    from types import SimpleNamespace

    import torch

    from webui.engine.denoise_extensions import CfgRescale

    path = Path(__file__).resolve().parent.parent / "extensions" / "cfg-rescale" / "main.py"
    spec = importlib.util.spec_from_file_location("cfg_rescale_example_under_test", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    generator = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    results = []
    for rescale in (example.CfgRescale(0.7), CfgRescale(0.7)):
        ctx = SimpleNamespace(cond_output=cond, uncond_output=uncond, denoised=uncond + 7 * (cond - uncond))
        rescale.after_cfg(ctx)
        results.append(ctx.denoised)
    assert torch.equal(results[0], results[1])


def test_models_tab_reads_families_through_the_model_manager(tmp_path: Path, tiny_sd1) -> None:
    """The built-in Models extension no longer reads checkpoint headers itself (services do)."""
    context = _context(tmp_path, tiny_sd1, tmp_path / "ext")
    (tmp_path / "models" / "Stable-diffusion" / "junk.safetensors").write_bytes(b"not a checkpoint")
    context.models.refresh()
    rows = {row["name"]: row for row in _records(context)["models"].registrations.routes[0].handler()}
    assert rows["tiny"]["family"] == "SD 1.x"
    assert rows["junk"]["family"].startswith("unusable: ")

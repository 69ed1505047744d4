"""The extension system on real extension folders and a real tiny checkpoint (no mocks)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.extension_folders import (
    HELLO_TAB, NEGATE_HOOK, RAISES_IN_HOOK, RAISES_IN_REGISTER, RAISES_ON_IMPORT, write_extension,
)
from webui.context import AppPaths, build_context
from webui.services.extensions import ExtensionError
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

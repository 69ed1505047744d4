"""Settings: typed coercion with messages naming the setting, and atomic persistence that keeps unknown keys; Apply
reports; and every core setting acting where it should (files saved, a real generation, caches, the built UI)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from PIL import Image

from webui.services import core_settings as core
from webui.services.outputs import (
    OutputStore,
    SaveOptions,
    check_filename_pattern,
    check_folder,
    expand_pattern,
    read_infotext,
)
from webui.services.settings import SettingSpec, SettingsStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("value,expected", [("yes", True), (" On ", True), ("1", True), ("true", True),
                                            ("True", True), ("false", False),
                                            ("", False), (1, True), (0, False), (True, True)])
def test_checkbox_accepts_ui_and_json_forms(value, expected: bool) -> None:
    assert SettingSpec("a.flag", False, "Flag", "checkbox").coerce(value) is expected


def test_numbers_keep_the_default_type_and_respect_bounds() -> None:
    whole = SettingSpec("a.steps", 20, "Steps", "slider", minimum=1, maximum=150)
    assert whole.coerce("30") == 30 and type(whole.coerce("30")) is int
    assert whole.coerce(1) == 1 and whole.coerce(150) == 150  # the bounds themselves are allowed
    assert whole.coerce("7.5") == 7.5  # not a whole number: kept as given, never truncated
    fraction = SettingSpec("a.strength", 0.5, "Strength", "number")
    assert type(fraction.coerce("2")) is float
    with pytest.raises(ValueError) as low:
        whole.coerce(0)
    assert str(low.value) == "setting 'a.steps': 0 is invalid (below 1); allowed: a number from 1 to 150"
    with pytest.raises(ValueError) as high:
        whole.coerce("151")
    assert str(high.value) == "setting 'a.steps': '151' is invalid (above 150); allowed: a number from 1 to 150"
    with pytest.raises(ValueError, match=r"^setting 'a.steps': 'lots' is invalid \(could not convert"):
        whole.coerce("lots")
    with pytest.raises(ValueError, match="setting 'a.steps': None is invalid"):
        whole.coerce(None)


def test_dropdown_and_text() -> None:
    choice = SettingSpec("a.mode", "fast", "Mode", "dropdown", choices=("fast", "slow"))
    assert choice.coerce("slow") == "slow"
    with pytest.raises(ValueError) as bad:
        choice.coerce("medium")
    assert str(bad.value) == ("setting 'a.mode': 'medium' is invalid (not one of ['fast', 'slow']); "
                              "allowed: one of 'fast', 'slow'")
    assert SettingSpec("a.name", "", "Name").coerce(42) == "42"


def _store(path: Path) -> SettingsStore:
    store = SettingsStore(path)
    store.register(SettingSpec("core.steps", 20, "Steps", "number", minimum=1))
    store.register(SettingSpec("core.name", "x", "Name"))
    return store


def test_update_is_all_or_nothing_and_persists_atomically(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "folder" / "config.json"  # created on first save
    store = _store(path)
    assert store.get("core.steps") == 20  # the default until changed
    store.update({"core.steps": "30", "core.name": "mine"})
    assert json.loads(path.read_text(encoding="utf-8")) == {"core.name": "mine", "core.steps": 30}
    assert path.read_text(encoding="utf-8").startswith('{\n  "core.name"')  # indented, sorted: diff-friendly
    with pytest.raises(ValueError, match="core.steps"):
        store.update({"core.name": "changed", "core.steps": 0})
    assert store.get("core.name") == "mine"  # nothing of a rejected update is applied
    with pytest.raises(ValueError, match="unknown setting 'core.nope'"):
        store.update({"core.nope": 1})
    assert sorted(os.listdir(path.parent)) == ["config.json"]  # no temp file left behind
    reopened = _store(path)
    assert (reopened.get("core.steps"), reopened.get("core.name")) == (30, "mine")


def test_unknown_stored_keys_survive_and_bad_files_mean_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"gone-extension.level": 3, "core.steps": 9}), encoding="utf-8")
    store = _store(path)
    assert store.get("core.steps") == 9 and store.get("gone-extension.level") == 3
    store.update({"core.name": "y"})
    assert json.loads(path.read_text(encoding="utf-8"))["gone-extension.level"] == 3  # kept for when it returns
    with pytest.raises(KeyError, match="unknown setting 'core.other'"):
        store.get("core.other")
    with pytest.raises(ValueError, match="already registered"):
        store.register(SettingSpec("core.steps", 1, "again"))
    for broken in ("{not json", "[1, 2]"):
        path.write_text(broken, encoding="utf-8")
        assert _store(path).get("core.steps") == 20


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    store = _store(path)
    store.update({"core.steps": 5})
    store.register(SettingSpec("core.blob", None, "Blob"))
    store._values["core.blob"] = object()  # not JSON-serialisable: json.dump fails part-way through the temp file
    with pytest.raises(TypeError):
        store.update({"core.steps": 6})
    assert json.loads(path.read_text(encoding="utf-8")) == {"core.steps": 5}
    assert sorted(os.listdir(tmp_path)) == ["config.json"]


# ----- types, messages, Apply reports ------------------------------------------------------------------------------


def test_text_refuses_a_list_so_a_ui_slip_cannot_save_its_repr() -> None:
    """The old Settings tab handed `['Hello from an extension']` to the one text box and Apply saved that text."""
    greeting = SettingSpec("example-tab.greeting", "Hello from an extension", "Greeting", owner="example-tab")
    with pytest.raises(ValueError, match=r"^setting 'example-tab.greeting': \['Hello from an extension'\] is invalid "
                                         r"\(not text but list\); allowed: text$"):
        greeting.coerce(["Hello from an extension"])
    assert greeting.coerce("Hi") == "Hi"


@pytest.mark.parametrize("value,reason", [(True, "not a number"), (float("nan"), "not a finite number"),
                                          ("inf", "not a finite number"), (2.5, "not a whole number"),
                                          ([3], "not a number")])
def test_numbers_refuse_booleans_nan_and_fractions_of_whole_settings(value: Any, reason: str) -> None:
    quality = SettingSpec("core.q", 80, "Quality", "slider", minimum=1, maximum=100, integer=True)
    with pytest.raises(ValueError) as refused:
        quality.coerce(value)
    assert f"({reason}); allowed: a whole number from 1 to 100" in str(refused.value)
    assert quality.coerce(90.0) == 90 and type(quality.coerce(90.0)) is int


def test_update_reports_old_and_new_values_and_the_restart_ones(tmp_path: Path) -> None:
    store = SettingsStore(tmp_path / "config.json")
    store.register(SettingSpec("core.steps", 20, "Default steps", "number", restart_required=True))
    store.register(SettingSpec("core.theme", "system", "Theme", "dropdown", choices=("system", "dark")))
    report = store.update({"core.steps": "25", "core.theme": "dark"})
    assert [(c.key, c.old, c.new, c.restart_required) for c in report.changes] == [
        ("core.steps", 20, 25, True), ("core.theme", "system", "dark", False)]
    summary = report.summary()
    assert summary.startswith("Settings saved. 2 changed:")
    assert "**Default steps** (`core.steps`): `20` → `25` (needs a restart)" in summary
    assert "**Theme** (`core.theme`): `'system'` → `'dark'`" in summary
    assert "**Restart the server** for these to take effect: Default steps." in summary
    only_live = store.update({"core.theme": "system"})
    assert "No restart needed." in only_live.summary() and "→ `'system'`" in only_live.summary()


def test_apply_without_changes_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    store = _store(path)
    report = store.update({"core.steps": 20, "core.name": "x"})  # the defaults, as an untouched form sends them
    assert report.changes == () and not path.exists()  # no file made for nothing
    assert report.summary().startswith("Nothing changed")
    store.update({"core.steps": 30})
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    os.utime(path, ns=(1, 1))
    assert store.update({"core.steps": "30", "core.name": "x"}).changes == ()
    assert (path.read_bytes(), path.stat().st_mtime_ns) == (before[0], 1)  # not rewritten


def test_a_bad_value_in_the_file_reads_as_the_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"core.steps": "many", "core.name": ["a list"]}), encoding="utf-8")
    store = _store(path)
    assert store.get("core.steps") == 20 and store.get("core.name") == "x"
    assert "setting 'core.steps': 'many' is invalid" in caplog.text


def test_watch_gets_the_value_now_and_after_each_change(tmp_path: Path) -> None:
    store = _store(tmp_path / "config.json")
    seen: list[int] = []
    store.watch("core.steps", seen.append)
    store.update({"core.steps": 4})
    store.update({"core.steps": 4})  # no change, no call
    store.update({"core.name": "other"})
    assert seen == [20, 4]


def test_extensions_register_typed_settings_under_their_name_with_the_same_api(tmp_path: Path) -> None:
    from webui.services.extensions import ExtensionAPI, ExtensionRecord, Manifest

    record = ExtensionRecord(folder=tmp_path / "my-ext", builtin=False, manifest=Manifest("my-ext", "1"))
    store = SettingsStore(tmp_path / "config.json")
    api = ExtensionAPI(record, store, "0.1", None)
    key = api.add_setting("units", 3, "Units", kind="number", minimum=1, maximum=8, restart_required=True,
                          integer=True)
    spec = store.specs[key]
    assert (spec.group, spec.restart_required, spec.integer) == ("my-ext", True, True)
    with pytest.raises(ValueError, match=r"\(not a whole number\); allowed: a whole number from 1 to 8$"):
        api.set_setting("units", 2.5)
    report = store.update({key: 4})
    assert report.restart_needed and "**Restart the server** for these to take effect: Units." in report.summary()


# ----- saving: folders, file-name pattern, format, quality, PNG info, grids ------------------------------------------

FIELDS = {"seed": 42, "prompt": "a red circle, (on:1.2) a blue background with <lora:x:1> and more words here",
          "negative_prompt": "blurry", "steps": 20, "cfg": 7.5, "width": 64, "height": 64, "sampler": "Euler a",
          "scheduler": "Automatic", "model_name": "tiny", "model_hash": "0123456789", "user": "local",
          "now": datetime.datetime(2024, 5, 6, 7, 8, 9)}


def test_file_name_tokens_as_a1111() -> None:
    assert expand_pattern("[seed]-[prompt_words]", FIELDS) == "42-a red circle on 1 2 a blue"  # 8 words
    assert expand_pattern("[date] [datetime] [model_name] [model_hash] [sampler_scheduler]", FIELDS) == (
        "2024-05-06 20240506070809 tiny 0123456789 Euler a")
    assert expand_pattern("[sampler_scheduler]", {**FIELDS, "scheduler": "Karras"}) == "Euler a Karras"
    assert expand_pattern("[prompt]", {**FIELDS, "prompt": "a cat / dog?"}) == "a_cat___dog_"
    assert expand_pattern("[prompt_spaces]", {**FIELDS, "prompt": "a cat"}) == "a cat"
    assert expand_pattern("[steps]-[cfg]-[width]x[height]-[user][none]", FIELDS) == "20-7.5-64x64-local"
    assert len(expand_pattern("[prompt]", {**FIELDS, "prompt": "x" * 500})) == 128


def test_patterns_and_folders_are_checked_with_what_is_allowed() -> None:
    assert check_filename_pattern("[seed]-[prompt_words]") is None
    message = check_filename_pattern("[seed]-[bogus]")
    assert message and message.startswith("unknown token(s) [bogus]; known: [seed] [seed_first]")
    assert "[prompt_words]" in message and "[model_name]" in message and "[date]" in message
    assert "no '/'" in (check_filename_pattern("[date]/[seed]") or "")
    assert check_folder("renders/txt2img") is None and check_folder("txt2img-images") is None
    for bad in ("/tmp/elsewhere", "../up", "a/../b", ".hidden", "C:\\x", ""):
        assert check_folder(bad), bad
    spec = next(s for s in core.core_specs(["Euler"]) if s.key == core.OUTDIR_TXT2IMG)
    with pytest.raises(ValueError, match=r"setting 'core.outdir_txt2img_samples': '/tmp/x' is invalid \(an absolute "
                                         r"path.*\); allowed: a folder inside the outputs folder"):
        spec.coerce("/tmp/x")


def noise_image(seed: int = 1, size: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_save_image_follows_folder_pattern_format_quality_and_png_info(tmp_path: Path) -> None:
    options = SaveOptions(folders={"txt2img": "renders/t2i"}, filename_pattern="[seed]-[prompt_words]")
    store = OutputStore(tmp_path, today=lambda: datetime.date(2024, 5, 6), options=lambda: options)
    infotext = "a cat\nSteps: 3, Sampler: Euler, Seed: 42"
    png = store.save_image(noise_image(), infotext, "txt2img", 42, fields={"prompt": "a cat"})
    assert png == tmp_path / "renders" / "t2i" / "2024-05-06" / "00000-42-a cat.png"
    assert read_infotext(png) == infotext
    sizes = {}
    for fmt, quality in (("jpg", 95), ("jpg", 20), ("webp", 90)):
        options = SaveOptions(format=fmt, quality=quality)
        path = store.save_image(noise_image(), infotext, "img2img", 7)
        assert path.suffix == f".{fmt}" and path.parent.parent.name == "img2img"
        with Image.open(path) as image:
            assert image.format == {"jpg": "JPEG", "webp": "WEBP"}[fmt]
        assert read_infotext(path) == infotext  # EXIF UserComment, as A1111 writes it
        sizes[(fmt, quality)] = path.stat().st_size
    assert sizes[("jpg", 95)] > 1.5 * sizes[("jpg", 20)]
    options = SaveOptions(pnginfo=False)
    assert read_infotext(store.save_image(noise_image(), infotext, "txt2img", 1)) is None
    options = SaveOptions(pnginfo=False, format="jpg")
    assert read_infotext(store.save_image(noise_image(), infotext, "txt2img", 1)) is None
    options = SaveOptions(filename_pattern="[none]")
    assert store.save_image(noise_image(), infotext, "txt2img", 1).name == "00002.png"  # no "-": nothing to add


def test_grids_only_when_on_and_for_more_than_one_image(tmp_path: Path) -> None:
    options = SaveOptions()
    store = OutputStore(tmp_path, today=lambda: datetime.date(2024, 5, 6), options=lambda: options)
    images = [Image.new("RGB", (16, 8), (i * 60, 0, 0)) for i in range(4)]
    assert store.save_grid(images, "x", "txt2img", fields={"seed_first": 3}) is None  # off by default
    options = SaveOptions(save_grid=True, grid_folders={"txt2img": "grids"})
    assert store.save_grid(images[:1], "x", "txt2img", fields={"seed_first": 3}) is None
    square = store.save_grid(images, "params", "txt2img", fields={"seed_first": 3, "seed": 3})
    assert square == tmp_path / "grids" / "2024-05-06" / "00000-grid-3.png"
    with Image.open(square) as grid:
        assert grid.size == (32, 16) and grid.getpixel((16, 0)) == (60, 0, 0) and grid.getpixel((0, 8)) == (120, 0, 0)
    assert read_infotext(square) == "params"
    options = SaveOptions(save_grid=True)
    row = store.save_grid(images[:3], "x", "txt2img", fields={"seed": 5})
    assert row is not None and row.parent.parent.name == "txt2img-grids"
    with Image.open(row) as grid:
        assert grid.size == (48, 8)  # three: one row, as A1111


# ----- the core settings in the app: registered, documented, and acting -------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, tiny_sd1):
    from tests.conftest import tiny_service_context

    root = tmp_path_factory.mktemp("settings-app")
    context = tiny_service_context(root, tiny_sd1)
    (root / "models" / "Stable-diffusion" / "tiny2.safetensors").symlink_to(tiny_sd1.path)
    context.models.refresh()
    return context


@contextlib.contextmanager
def changed(app, values: dict[str, Any]) -> Iterator[None]:
    """Apply settings for one test, then put the defaults back (the module's app is shared)."""
    app.settings.update(values)
    try:
        yield
    finally:
        app.settings.update({key: app.settings.specs[key].default for key in values})


def generate(app, save: bool = False, **fields: Any):
    from webui.services.requests import GenerationRequest

    request = GenerationRequest(**{"prompt": "a red circle", "negative_prompt": "blue", "steps": 3, "width": 64,
                                   "height": 64, "seed": 5, "sampler_name": "Euler", "cfg_scale": 6.0, **fields})
    job = app.jobs.create("local", "txt2img")
    return job, app.generation.run(job, request, save=save)


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=int)


def test_core_settings_are_registered_in_sections_and_documented(app) -> None:
    specs = [s for s in app.settings.specs.values() if s.owner == "core"]
    assert [s.section for s in specs if s.section] == [s.section for s in specs]
    assert {s.section for s in specs} == set(core.SECTIONS)
    assert {s.kind for s in specs} == {"checkbox", "number", "slider", "dropdown", "text"}
    assert {s.key for s in specs if s.restart_required} == {core.DEFAULT_SAMPLER, core.DEFAULT_STEPS,
                                                            core.DEFAULT_CFG, core.DEFAULT_WIDTH, core.DEFAULT_HEIGHT}
    doc = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert core.settings_table_markdown(specs) in doc
    assert "[docs/settings.md](docs/settings.md)" in (ROOT / "README.md").read_text(encoding="utf-8")
    from webui.services.outputs import FILENAME_TOKENS

    assert all(f"`[{token}]`" in doc for token in FILENAME_TOKENS)


def test_saving_settings_reach_a_real_generation(app) -> None:
    with changed(app, {core.OUTDIR_TXT2IMG: "renders/t2i", core.FILENAME_PATTERN: "[seed]-[prompt_words]-[model_name]",
                       core.SAMPLES_FORMAT: "webp", core.GRID_SAVE: True, core.OUTDIR_TXT2IMG_GRIDS: "sheets"}):
        _, result = generate(app, save=True, batch_size=2, prompt="a red circle <lora:none:1>")
    names = [Path(p).name for p in result.paths]
    assert names == ["00000-5-a red circle lora none 1-tiny.webp", "00001-6-a red circle lora none 1-tiny.webp"]
    assert all(Path(p).parent.parent == app.paths.outputs_dir / "renders" / "t2i" for p in result.paths)
    assert read_infotext(result.paths[1]) == result.infotexts[1]
    assert [Path(p).name for p in result.grid_paths] == ["00000-grid-5-a red circle lora none 1-tiny.webp"]
    assert Path(result.grid_paths[0]).parent.parent == app.paths.outputs_dir / "sheets"
    with Image.open(result.grid_paths[0]) as grid:
        assert grid.size == (128, 64)
    _, plain = generate(app, save=True)  # back to the defaults: <outputs>/txt2img/<date>/NNNNN-<seed>.png
    assert Path(plain.paths[0]).name == "00000-5.png" and Path(plain.paths[0]).parent.parent.name == "txt2img"
    assert plain.grid_paths == []


def test_ensd_eta_and_sigma_churn_change_the_noise_and_enter_the_infotext(app) -> None:
    _, ancestral = generate(app, sampler_name="Euler a")
    _, euler = generate(app)
    _, ddim = generate(app, sampler_name="DDIM")
    for result in (ancestral, euler, ddim):
        assert not any(key in result.infotexts[0] for key in ("ENSD", "Eta", "Sigma churn"))  # defaults: not written
    with changed(app, {core.ENSD: 31337}):
        _, ancestral_ensd = generate(app, sampler_name="Euler a")
        _, euler_ensd = generate(app)
    assert np.abs(pixels(ancestral_ensd) - pixels(ancestral)).max() > 0  # other step noise
    assert "ENSD: 31337" in ancestral_ensd.infotexts[0]
    assert ancestral_ensd.infotexts[0].index("Model: ") < ancestral_ensd.infotexts[0].index("ENSD")
    assert np.array_equal(pixels(euler_ensd), pixels(euler)) and "ENSD" not in euler_ensd.infotexts[0]  # no noise
    with changed(app, {core.ETA: 0.7, core.S_CHURN: 2}):
        _, ddim_eta = generate(app, sampler_name="DDIM")
        _, euler_churn = generate(app)
        _, lms = generate(app, sampler_name="LMS")
    assert np.abs(pixels(ddim_eta) - pixels(ddim)).max() > 0 and "Eta: 0.7" in ddim_eta.infotexts[0]
    assert "Sigma churn" not in ddim_eta.infotexts[0]
    assert np.abs(pixels(euler_churn) - pixels(euler)).max() > 0
    assert "Sigma churn: 2, Version" in euler_churn.infotexts[0]  # integral floats as A1111 writes them
    assert "Eta" not in euler_churn.infotexts[0] and not any(k in lms.infotexts[0] for k in ("Eta", "Sigma churn"))


def test_live_preview_settings(app) -> None:
    job, _ = generate(app, steps=4)
    assert job.preview_version == 1  # every 3 steps by default: step 3 (the last step is the image itself)
    assert job.preview_latents.shape[1] == 4  # the cheap map renders latents when someone looks
    with changed(app, {core.LIVE_PREVIEWS: False}):
        job, _ = generate(app, steps=4)
    assert job.preview_version == 0 and job.preview_image() is None
    with changed(app, {core.PREVIEW_EVERY: 1, core.PREVIEW_METHOD: "Full"}):
        job, _ = generate(app, steps=4)
    assert job.preview_version == 3
    assert tuple(job.preview_latents.shape[1:]) == (3, 64, 64)  # decoded by the VAE: pixels
    preview = job.preview_image()
    assert preview is not None and preview.size == (256, 256)


def test_cache_sizes_act_at_once(app) -> None:
    app.models.get("tiny")
    app.models.get("tiny2")
    assert app.models.cached_names() == ["tiny"]  # the default: one recent checkpoint stays in RAM
    with changed(app, {core.CHECKPOINT_CACHE: 0, core.CONTROLNET_CACHE: 5}):
        assert app.models.ram_cache_size == 0 and app.models.cached_names() == []
        assert app.controlnet.cache_size == 5
    assert app.models.ram_cache_size == 1 and app.controlnet.cache_size == 2


def test_ui_defaults_reach_the_built_ui_and_the_tab_shows_every_setting(app) -> None:
    from webui.ui.app import build_ui

    app.settings.register(SettingSpec("example.greeting", "Hello from an extension", "Greeting", owner="example"))
    defaults = {core.DEFAULT_SAMPLER: "Euler a", core.DEFAULT_STEPS: 33, core.DEFAULT_CFG: 5.5,
                core.DEFAULT_WIDTH: 128, core.DEFAULT_HEIGHT: 96}
    with changed(app, defaults):
        demo = build_ui(app)
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert (by_id["txt2img_sampler"].value, by_id["txt2img_steps"].value, by_id["txt2img_cfg_scale"].value) == (
        "Euler a", 33, 5.5)
    assert (by_id["txt2img_width"].value, by_id["txt2img_height"].value) == (128, 96)
    for prefix in ("img2img", "inpaint"):
        assert (by_id[f"{prefix}_sampler"].value, by_id[f"{prefix}_steps"].value) == ("Euler a", 33), prefix
        assert by_id[f"{prefix}_width"].value == 0  # img2img keeps "0 = the input's size"
    assert by_id["setting_example_greeting"].value == "Hello from an extension"
    headings = [b.label for b in demo.blocks.values() if (getattr(b, "elem_id", None) or "").startswith(
        "settings_section_")]
    assert headings == [*core.SECTIONS, "example"]
    # The page-load refresh gives each box its own value, also when a group has a single box (the list bug).
    load = next(fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "current")
    fresh = load.fn()
    assert fresh[by_id["setting_example_greeting"]] == "Hello from an extension"
    assert fresh[by_id["setting_core_jpeg_quality"]] == 80

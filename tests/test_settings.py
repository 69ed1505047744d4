"""Settings: typed coercion with messages naming the setting, and atomic persistence that keeps unknown keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from webui.services.settings import SettingSpec, SettingsStore


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
    assert str(low.value) == "setting 'a.steps': 0 is invalid (below 1)"
    with pytest.raises(ValueError) as high:
        whole.coerce("151")
    assert str(high.value) == "setting 'a.steps': '151' is invalid (above 150)"
    with pytest.raises(ValueError, match=r"^setting 'a.steps': 'lots' is invalid \(could not convert"):
        whole.coerce("lots")
    with pytest.raises(ValueError, match="setting 'a.steps': None is invalid"):
        whole.coerce(None)


def test_dropdown_and_text() -> None:
    choice = SettingSpec("a.mode", "fast", "Mode", "dropdown", choices=("fast", "slow"))
    assert choice.coerce("slow") == "slow"
    with pytest.raises(ValueError) as bad:
        choice.coerce("medium")
    assert str(bad.value) == "setting 'a.mode': 'medium' is invalid (not one of ['fast', 'slow'])"
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

"""Settings: a registry of typed options (core and extensions) and their persisted values.

One table drives the Settings tab, `GET/POST /sdapi/v1/options` and persistence; values are written atomically to
`config.json` in the data folder (format: docs/settings.md). Core options are registered by
`webui.services.core_settings` through the same `SettingSpec` API that extensions use (`api.add_setting`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

log = logging.getLogger(__name__)
SettingKind = Literal["checkbox", "number", "slider", "text", "dropdown"]


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


@dataclass(frozen=True)
class SettingSpec:
    """One option: its key (namespaced `<owner>.<name>`), default, label and widget.

    `section` groups options in the Settings tab (default: the owner's name, so each extension has its own group);
    `restart_required` says the value is read only at start-up, so Apply can tell the admin to restart; `check`
    is an extra rule returning an error text (or None) after the type conversion; `integer` refuses fractions."""

    key: str
    default: Any
    label: str
    kind: SettingKind = "text"
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    owner: str = "core"
    section: str = ""
    restart_required: bool = False
    integer: bool = False
    help: str = ""
    check: Callable[[Any], str | None] | None = field(default=None, compare=False)

    @property
    def group(self) -> str:
        return self.section or self.owner

    def allowed(self) -> str:
        """What the setting accepts, in words (the tail of every validation message)."""
        if self.kind == "checkbox":
            return "on or off (true/false)"
        if self.kind in ("number", "slider"):
            what = "a whole number" if self.integer else "a number"
            if self.minimum is not None and self.maximum is not None:
                what = f"{what} from {_plain(self.minimum)} to {_plain(self.maximum)}"
            elif self.minimum is not None:
                what = f"{what} of at least {_plain(self.minimum)}"
            elif self.maximum is not None:
                what = f"{what} of at most {_plain(self.maximum)}"
            return f"{what}, {self.help}" if self.help else what
        if self.kind == "dropdown":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        return self.help or "text"

    def coerce(self, value: Any) -> Any:
        """Convert a submitted value to the setting's type, or raise ValueError naming the setting and what it
        allows."""
        try:
            return self._coerce(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"setting {self.key!r}: {value!r} is invalid ({exc}); allowed: {self.allowed()}") from None

    def _coerce(self, value: Any) -> Any:
        if self.kind == "checkbox":
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            if isinstance(value, (list, tuple, dict)) or value is None:
                raise ValueError("not on or off")
            return bool(value)
        if self.kind in ("number", "slider"):
            if isinstance(value, bool) or isinstance(value, (list, tuple, dict)):
                raise ValueError("not a number")
            number = float(value)
            if not math.isfinite(number):
                raise ValueError("not a finite number")
            if self.integer and not number.is_integer():
                raise ValueError("not a whole number")
            if self.minimum is not None and number < self.minimum:
                raise ValueError(f"below {_plain(self.minimum)}")
            if self.maximum is not None and number > self.maximum:
                raise ValueError(f"above {_plain(self.maximum)}")
            whole = self.integer or (isinstance(self.default, int) and not isinstance(self.default, bool))
            number = int(number) if whole and number.is_integer() else number
        elif self.kind == "dropdown":
            if value not in self.choices:
                raise ValueError(f"not one of {list(self.choices)}")
            number = value
        else:
            # A list here is a UI bug (a one-output handler given a list), never text: refuse it, do not save its repr.
            if value is None or isinstance(value, (list, tuple, dict, set, bool)):
                raise ValueError(f"not text but {type(value).__name__}")
            number = str(value)
        if self.check is not None:
            problem = self.check(number)
            if problem:
                raise ValueError(problem)
        return number


@dataclass(frozen=True)
class SettingChange:
    """One changed value, as Apply reports it."""

    key: str
    label: str
    old: Any
    new: Any
    restart_required: bool


@dataclass(frozen=True)
class ApplyReport:
    """What an Apply did: the changes (old -> new), and which of them wait for a restart."""

    changes: tuple[SettingChange, ...] = ()

    @property
    def restart_needed(self) -> tuple[SettingChange, ...]:
        return tuple(c for c in self.changes if c.restart_required)

    def summary(self) -> str:
        """Markdown for the Settings tab: `Settings saved.` first (clients match it), then one line per change."""
        if not self.changes:
            return "Nothing changed: every value is as saved, so config.json was not written."
        lines = [f"Settings saved. {len(self.changes)} changed:"]
        for change in self.changes:
            mark = " (needs a restart)" if change.restart_required else ""
            lines.append(f"- **{change.label}** (`{change.key}`): `{change.old!r}` → `{change.new!r}`{mark}")
        if self.restart_needed:
            names = ", ".join(c.label for c in self.restart_needed)
            lines.append(f"\n**Restart the server** for these to take effect: {names}.")
        else:
            lines.append("\nNo restart needed.")
        return "\n".join(lines)


Listener = Callable[[Any], None]


@dataclass
class SettingsStore:
    """Registered specs plus persisted values; unknown stored keys are kept (an extension may be disabled today)."""

    path: Path
    specs: dict[str, SettingSpec] = field(default_factory=dict)
    _values: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _listeners: dict[str, list[Listener]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._values = self._read()

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("settings file %s is unreadable (%s); starting from defaults", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def register(self, spec: SettingSpec) -> None:
        if spec.key in self.specs:
            raise ValueError(f"setting {spec.key!r} is already registered")
        self.specs[spec.key] = spec

    def get(self, key: str) -> Any:
        """The saved value, else the default. A saved value the spec refuses (a hand-edited file) reads as the default,
        with a warning, so one bad line never breaks generation."""
        with self._lock:
            present, stored = key in self._values, self._values.get(key)
        spec = self.specs.get(key)
        if spec is None:
            if present:
                return stored
            raise KeyError(f"unknown setting {key!r}")
        if not present:
            return spec.default
        try:
            return spec.coerce(stored)
        except ValueError as exc:
            log.warning("%s in %s; using the default %r", exc, self.path, spec.default)
            return spec.default

    def watch(self, key: str, listener: Listener) -> None:
        """Call `listener(value)` now and after every change of `key`: how a live setting (a cache size) reaches the
        service that uses it without the service knowing about settings."""
        self._listeners.setdefault(key, []).append(listener)
        listener(self.get(key))

    def stored(self) -> dict[str, Any]:
        """The saved values (what config.json holds): what a generation worker in another process adopts."""
        with self._lock:
            return dict(self._values)

    def adopt(self, values: dict[str, Any]) -> None:
        """Take another store's saved values in memory only (a generation worker mirroring its front end): nothing
        is written, and the listeners of the keys that changed run as after `update`."""
        with self._lock:
            old, self._values = self._values, dict(values)
        for key in set(old) | set(values):
            if old.get(key) != values.get(key):
                for listener in self._listeners.get(key, []):
                    try:
                        listener(self.get(key))
                    except Exception:
                        log.exception("applying the new value of %s failed", key)

    def update(self, changes: dict[str, Any]) -> ApplyReport:
        """Validate every change first, then persist all of them at once; values equal to the current ones are not
        changes, and when nothing changes the file is not written at all."""
        coerced = {}
        for key, value in changes.items():
            if key not in self.specs:
                raise ValueError(f"unknown setting {key!r}")
            coerced[key] = self.specs[key].coerce(value)
        report: list[SettingChange] = []
        for key, value in coerced.items():
            old = self.get(key)
            if old != value:
                spec = self.specs[key]
                report.append(SettingChange(key, spec.label, old, value, spec.restart_required))
        if not report:
            return ApplyReport()
        with self._lock:  # written first: a failed write leaves memory and file as they were
            values = {**self._values, **{change.key: change.new for change in report}}
            self._write(values)
            self._values = values
        for change in report:
            for listener in self._listeners.get(change.key, []):
                try:
                    listener(change.new)
                except Exception:  # a listener must not undo a saved change; it is logged
                    log.exception("applying the new value of %s failed", change.key)
        return ApplyReport(tuple(report))

    def _write(self, values: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=self.path.parent, prefix=".config-", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                json.dump(values, stream, indent=2, sort_keys=True)
            os.replace(temp, self.path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

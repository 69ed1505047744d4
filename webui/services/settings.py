"""Settings: a registry of typed options (core and extensions) and their persisted values.

One table drives the Settings tab and persistence; values are written atomically to `config.json` in the data folder.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)
SettingKind = Literal["checkbox", "number", "slider", "text", "dropdown"]


@dataclass(frozen=True)
class SettingSpec:
    """One option: its key (namespaced `<owner>.<name>`), default, label and widget."""

    key: str
    default: Any
    label: str
    kind: SettingKind = "text"
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    owner: str = "core"

    def coerce(self, value: Any) -> Any:
        """Convert a submitted value to the setting's type, or raise ValueError naming the setting."""
        try:
            if self.kind == "checkbox":
                if isinstance(value, str):
                    return value.strip().lower() in ("1", "true", "yes", "on")
                return bool(value)
            if self.kind in ("number", "slider"):
                number = float(value)
                if self.minimum is not None and number < self.minimum:
                    raise ValueError(f"below {self.minimum}")
                if self.maximum is not None and number > self.maximum:
                    raise ValueError(f"above {self.maximum}")
                return int(number) if isinstance(self.default, int) and number == int(number) else number
            if self.kind == "dropdown":
                if value not in self.choices:
                    raise ValueError(f"not one of {list(self.choices)}")
                return value
            return str(value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"setting {self.key!r}: {value!r} is invalid ({exc})") from None


@dataclass
class SettingsStore:
    """Registered specs plus persisted values; unknown stored keys are kept (an extension may be disabled today)."""

    path: Path
    specs: dict[str, SettingSpec] = field(default_factory=dict)
    _values: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
        with self._lock:
            if key in self._values:
                return self._values[key]
        if key not in self.specs:
            raise KeyError(f"unknown setting {key!r}")
        return self.specs[key].default

    def update(self, changes: dict[str, Any]) -> None:
        """Validate every change first, then persist all of them at once."""
        coerced = {}
        for key, value in changes.items():
            if key not in self.specs:
                raise ValueError(f"unknown setting {key!r}")
            coerced[key] = self.specs[key].coerce(value)
        with self._lock:
            self._values.update(coerced)
            self._write(dict(self._values))

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

"""Start-up checks of the software around the app (security cases 10 and 24).

- torch < 2.6 is refused: its `torch.load(weights_only=True)` can be bypassed (CVE-2025-32434), so no `.ckpt` would
  be safe to open (the check itself lives with the loader, `webui.engine.checkpoint_io`).
- Package releases and extensions known to be malicious block the start, with what to remove. The list holds only
  incidents in this ecosystem with published versions; it is a tripwire, not a scanner (pin dependencies).
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from webui.engine.checkpoint_io import UnsafeTorchError, require_safe_torch

__all__ = ["UnsafeTorchError", "require_safe_torch", "KnownMalicious", "Finding", "KNOWN_MALICIOUS_PACKAGES",
           "KNOWN_MALICIOUS_EXTENSIONS", "find_known_malicious", "installed_distributions"]


@dataclass(frozen=True)
class KnownMalicious:
    """A package whose listed releases (or any release, when `versions` is empty) carried malware."""

    name: str
    versions: tuple[str, ...]
    what: str


@dataclass(frozen=True)
class Finding:
    """One installed malicious item and how to remove it."""

    item: str
    what: str
    remedy: str

    def describe(self) -> str:
        return f"{self.item}: {self.what}. Remove it: {self.remedy}"


KNOWN_MALICIOUS_PACKAGES: tuple[KnownMalicious, ...] = (
    KnownMalicious("ultralytics", ("8.3.41", "8.3.42", "8.3.45", "8.3.46"),
                   "a compromised release that installs a crypto miner (XMRig), December 2024"),
)
# Extension folder names (compared case-insensitively).
KNOWN_MALICIOUS_EXTENSIONS: tuple[KnownMalicious, ...] = (
    KnownMalicious("ComfyUI_LLMVISION", (), "a custom node that installs a credential stealer (2024)"),
)


def _normalise(name: str) -> str:
    """PEP 503 name normalisation: `Ultra_Lytics` and `ultra-lytics` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> list[tuple[str, str]]:
    """(name, version) of every distribution Python can import from."""
    found = []
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata is not None else None
        if name:
            found.append((str(name), str(dist.version)))
    return found


def find_known_malicious(distributions: Iterable[tuple[str, str]], extension_dirs: Sequence[Path] = ()
                         ) -> list[Finding]:
    """The known-malicious packages among `distributions` and extensions among the folders in `extension_dirs`."""
    findings = []
    bad = {_normalise(entry.name): entry for entry in KNOWN_MALICIOUS_PACKAGES}
    for name, version in distributions:
        entry = bad.get(_normalise(name))
        if entry is not None and (not entry.versions or version in entry.versions):
            findings.append(Finding(f"package {name} {version}", entry.what,
                                    f"pip uninstall -y {name}, then install a clean release if you need it"))
    extensions = {entry.name.casefold(): entry for entry in KNOWN_MALICIOUS_EXTENSIONS}
    for folder in extension_dirs:
        if not Path(folder).is_dir():
            continue
        for child in sorted(Path(folder).iterdir()):
            entry = extensions.get(child.name.casefold())
            if entry is not None:
                findings.append(Finding(f"extension {child}", entry.what, f"delete the folder {child}"))
    return findings

"""LoRAs in `models/Lora/`: listing with metadata for the picker, `<lora:...>` tags to per-job patches, infotext.

Names follow A1111: a LoRA is called by its path relative to the folder without the suffix, by its file stem, or by
its `ss_output_name` alias. Parsed files are kept in a small cache keyed by path and modification time, so a LoRA
added or retrained while the app runs is picked up without a restart.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.engine.checkpoint_io import CheckpointReadError, read_metadata
from webui.engine.loader import LoadedModel
from webui.engine.lora import LORA_SUFFIXES, LoraError, LoraFile, lora_patches, read_lora
from webui.engine.patching import WeightPatch
from webui.services.extra_networks import ExtraNetworkActivation, ExtraNetworkTag
from webui.services.hashing import HashCache
from webui.services.requests import RequestError

PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".preview.webp", ".webp")
MAX_TRIGGER_WORDS = 8


@dataclass(frozen=True)
class LoraInfo:
    """One LoRA file on disk and what its header says (read without loading tensors)."""

    name: str  # path relative to the LoRA folder, without the suffix
    path: Path
    metadata: dict[str, str]

    @property
    def alias(self) -> str | None:
        alias = self.metadata.get("ss_output_name", "").strip()
        return alias or None

    @property
    def base_model(self) -> str:
        version = self.metadata.get("ss_base_model_version") or self.metadata.get("modelspec.architecture", "")
        return version or "unknown"

    def trigger_words(self, limit: int = MAX_TRIGGER_WORDS) -> list[str]:
        """The most frequent training tags (kohya's `ss_tag_frequency`, `{folder: {tag: count}}`), or the model
        card's trigger phrase."""
        counts: dict[str, int] = {}
        try:
            frequency = json.loads(self.metadata.get("ss_tag_frequency", "{}") or "{}")
        except json.JSONDecodeError:
            frequency = {}
        if isinstance(frequency, dict):
            for tags in frequency.values():
                if isinstance(tags, dict):
                    for tag, count in tags.items():
                        if isinstance(count, (int, float)):
                            counts[str(tag).strip()] = counts.get(str(tag).strip(), 0) + int(count)
        words = [tag for tag, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])) if tag]
        phrase = self.metadata.get("modelspec.trigger_phrase", "").strip()
        if phrase and phrase not in words:
            words.insert(0, phrase)
        return words[:limit]

    @property
    def preview(self) -> Path | None:
        """A preview image beside the file (`name.preview.png`, `name.png`, ...), as A1111 finds it."""
        for suffix in PREVIEW_SUFFIXES:
            candidate = self.path.with_name(self.path.stem + suffix)
            if candidate.is_file():
                return candidate
        return None


@dataclass(frozen=True)
class LoraUse:
    """One LoRA at its strengths in one job: a PatchSource for the model manager's checkout."""

    lora: LoraFile
    te_strength: float
    unet_strength: float

    def patches(self, model: LoadedModel) -> list[WeightPatch]:
        try:
            return lora_patches(self.lora, model, self.te_strength, self.unet_strength)
        except LoraError as exc:  # the job stops here, so say how to go on
            raise RequestError("prompt", f"{exc}; to generate without it, remove its <lora:...> tag") from exc


class LoraLibrary:
    """The LoRA folder: what is there, and parsed files on demand."""

    def __init__(self, folder: Path, hashes: HashCache, cache_size: int = 8) -> None:
        self.folder = Path(folder)
        self.hashes = hashes
        self.cache_size = cache_size
        self._lock = threading.Lock()
        self._infos: dict[str, LoraInfo] = {}
        self._files: OrderedDict[tuple[Path, int, int], LoraFile] = OrderedDict()
        self.refresh()

    def refresh(self) -> list[LoraInfo]:
        """Rescan the folder (recursive). Unreadable headers are listed with empty metadata, and fail when used."""
        found: dict[str, LoraInfo] = {}
        if self.folder.is_dir():
            for path in sorted(self.folder.rglob("*")):
                if path.is_file() and path.suffix.lower() in LORA_SUFFIXES:
                    try:
                        metadata = read_metadata(path) if path.suffix.lower() == ".safetensors" else {}
                    except (CheckpointReadError, OSError):
                        metadata = {}
                    name = path.relative_to(self.folder).with_suffix("").as_posix()
                    found[name] = LoraInfo(name=name, path=path, metadata=metadata)
        with self._lock:
            self._infos = found
        return list(found.values())

    def loras(self) -> list[LoraInfo]:
        with self._lock:
            return list(self._infos.values())

    def resolve(self, name: str) -> LoraInfo:
        """A LoRA by relative name, file stem or `ss_output_name` alias; rescans once before giving up."""
        for attempt in range(2):
            with self._lock:
                infos = list(self._infos.values())
            for matches in ((i for i in infos if i.name == name), (i for i in infos if i.path.stem == name),
                            (i for i in infos if i.alias == name)):
                found = next(matches, None)
                if found is not None:
                    return found
            if attempt == 0:
                self.refresh()
        known = ", ".join(sorted(i.name for i in self.loras())[:12]) or "none"
        raise RequestError("prompt", f"LoRA {name!r} not found in {self.folder} (available: {known}); put the file "
                                     "there, or fix the name in the <lora:...> tag")

    def load(self, info: LoraInfo) -> LoraFile:
        try:
            stat = info.path.stat()
        except OSError as exc:
            raise RequestError("prompt", f"LoRA {info.name!r}: the file cannot be read ({exc})") from exc
        key = (info.path, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        try:
            lora = read_lora(info.path)
        except LoraError as exc:
            raise RequestError("prompt", str(exc)) from exc
        with self._lock:
            self._files[key] = lora
            while len(self._files) > self.cache_size:
                self._files.popitem(last=False)
        return lora

    def addnet_hash(self, info: LoraInfo) -> str:
        """A1111's `Lora hashes` value: 12 hex of kohya's addnet hash (or the file's `sshs_model_hash`); other formats
        than safetensors have no header to skip, so their whole-file sha256 is used."""
        if info.path.suffix.lower() != ".safetensors":
            return self.hashes.sha256(info.path)[:12]
        return self.hashes.lora_addnet_hash(info.path, use_metadata=True)

    def activate(self, tags: list[ExtraNetworkTag], request: Any) -> ExtraNetworkActivation:
        """`<lora:name:w>`, `<lora:name:te:unet>` or `<lora:name:te=a:unet=b>` tags -> patches and `Lora hashes`.

        A1111's rules: the first number is the text-encoder strength and the U-Net's too unless a second is given;
        a missing number is 1. Negative strengths are allowed. `dyn` (dynamic rank) is not supported and is reported.
        """
        activation = ExtraNetworkActivation()
        hashes: list[str] = []
        for tag in tags:
            if not tag.name:
                raise RequestError("prompt", f"{tag.text}: name the LoRA, e.g. <lora:my_lora:0.8>")
            info = self.resolve(tag.name)
            te = tag.number(1, "te", 1.0)
            unet = tag.number(2, "unet", te)
            if tag.number(3, "dyn", 0.0):
                activation.warnings.append(f"{tag.text}: dynamic rank (dyn) is not supported; the full rank is used")
            activation.patches.append(LoraUse(self.load(info), te, unet))
            label = (info.alias or info.path.stem).replace(":", "").replace(",", "")
            hashes.append(f"{label}: {self.addnet_hash(info)}")
        if hashes:
            activation.infotext["Lora hashes"] = ", ".join(hashes)
        return activation

    def card(self, info: LoraInfo) -> dict[str, Any]:
        """What the picker shows for one LoRA."""
        return {
            "name": info.name,
            "alias": info.alias,
            "tag": f"<lora:{info.alias or info.path.stem}:1>",
            "base_model": info.base_model,
            "rank": info.metadata.get("ss_network_dim"),
            "trigger_words": info.trigger_words(),
            "preview": str(info.preview) if info.preview else None,
        }

"""Model hashes exactly as A1111 defines them (`shared/reference/a1111-compat.md` §2), with a persistent cache.

The hashes appear in infotexts (`Model hash`, `Lora hashes`, ...) and in the API, and are how pasted infotexts find
the right model, so they must match A1111 bit for bit. Hashing a multi-GB checkpoint takes seconds, hence the cache
keyed by (resolved path, size, mtime_ns): a replaced or edited file is hashed again, an unchanged one never.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; saving still merges, a rare concurrent write may lose an entry
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

BLOCK_SIZE = 1024 * 1024
SHORT_HASH_LENGTH = 10
ADDNET_HASH_LENGTH = 12
LEGACY_OFFSET = 0x100000
LEGACY_LENGTH = 0x10000
LEGACY_HASH_LENGTH = 8
_MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit
_CACHE_VERSION = 1


def _update_from(handle: BinaryIO, digest: hashlib._Hash) -> None:
    for block in iter(lambda: handle.read(BLOCK_SIZE), b""):
        digest.update(block)


def sha256_file(path: Path) -> str:
    """Full lowercase hex sha256 of the whole file, read in 1 MiB blocks (constant memory for any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        _update_from(handle, digest)
    return digest.hexdigest()


def _safetensors_header_length(handle: BinaryIO, path: Path, size: int) -> int:
    raw = handle.read(8)
    if len(raw) != 8:
        raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
    length = int.from_bytes(raw, "little")
    if length > _MAX_SAFETENSORS_HEADER or 8 + length > size:
        raise ValueError(f"{path} is not a valid safetensors file (header length {length} does not fit the file)")
    return length


def addnet_sha256_file(path: Path) -> str:
    """Full hex of kohya's "addnet" hash: sha256 of the bytes after the 8-byte length and the JSON header.

    It ignores the metadata, so retagging a LoRA does not change its hash.
    """
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        length = _safetensors_header_length(handle, path, size)
        handle.seek(8 + length)
        _update_from(handle, digest)
    return digest.hexdigest()


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` table of a safetensors header ({} when absent or not a string table)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        length = _safetensors_header_length(handle, path, size)
        header = json.loads(handle.read(length).decode("utf-8"))
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        return {}
    return {str(k): v for k, v in metadata.items() if isinstance(v, str)}


def legacy_model_hash(path: Path) -> str:
    """A1111's pre-2023 checkpoint hash: sha256 of the 64 KiB at offset 1 MiB, first 8 hex.

    Only used to resolve old infotexts; it collides easily. Like A1111, a file shorter than 1 MiB hashes whatever
    (possibly nothing) is there instead of failing.
    """
    with open(path, "rb") as handle:
        handle.seek(LEGACY_OFFSET)
        data = handle.read(LEGACY_LENGTH)
    return hashlib.sha256(data).hexdigest()[:LEGACY_HASH_LENGTH]


class HashCache:
    """Thread-safe, persistent cache of file hashes, stored as JSON in `cache_file`.

    Entries are keyed by resolved path and invalidated by a size or mtime_ns change. A missing or corrupt cache
    file only means hashes are computed again; it is never an error. Several processes may share one cache file
    (the app and a CLI run, say): every save re-reads the file and merges under an exclusive lock on
    `.<name>.lock` beside it, so nobody's entries are dropped.
    """

    def __init__(self, cache_file: Path) -> None:
        self.cache_file = Path(cache_file)
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, object]] | None = None
        self._inflight: dict[tuple[str, str], threading.Lock] = {}

    # -- public API ----------------------------------------------------------------------------------------------
    def sha256(self, path: Path) -> str:
        """Full lowercase hex sha256 of the whole file (A1111's checkpoint/VAE/embedding hash), cached."""
        return self._cached(path, "sha256", sha256_file)

    def short_hash(self, path: Path) -> str:
        """First 10 hex of `sha256`: what A1111 shows as `Model hash` and in `name [hash]` titles."""
        return self.sha256(path)[:SHORT_HASH_LENGTH]

    def cached_short_hash(self, path: Path) -> str | None:
        """The short hash if it is already known for this exact file (size and mtime), without reading the file."""
        resolved = Path(path).resolve()
        try:
            stat = resolved.stat()
        except OSError:
            return None
        with self._lock:
            value = self._lookup(str(resolved), "sha256", stat)
        return value[:SHORT_HASH_LENGTH] if value else None

    def lora_addnet_hash(self, path: Path, *, use_metadata: bool = False) -> str:
        """First 12 hex of the addnet hash of a `.safetensors` LoRA, as in `Lora hashes:`; cached.

        With `use_metadata`, a `sshs_model_hash` recorded by the trainer wins, as A1111's LoRA loader does.
        """
        if use_metadata:
            recorded = safetensors_metadata(path).get("sshs_model_hash", "").strip().lower()
            if recorded:
                return recorded[:ADDNET_HASH_LENGTH]
        return self._cached(path, "addnet", addnet_sha256_file)[:ADDNET_HASH_LENGTH]

    def legacy_model_hash(self, path: Path) -> str:
        """A1111's old 8-hex checkpoint hash; reads only 64 KiB, so it is not cached."""
        return legacy_model_hash(path)

    # -- cache internals -----------------------------------------------------------------------------------------
    def _cached(self, path: Path, kind: str, compute: Callable[[Path], str]) -> str:
        resolved = Path(path).resolve()
        key = str(resolved)
        # One computation per (file, kind) at a time; other files are hashed in parallel.
        with self._lock:
            gate = self._inflight.setdefault((key, kind), threading.Lock())
        with gate:
            before = resolved.stat()
            with self._lock:
                hit = self._lookup(key, kind, before)
            if hit is not None:
                return hit
            value = compute(resolved)
            after = resolved.stat()
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                logger.info("%s changed while it was hashed; not caching the result", resolved)
                return value
            with self._lock:
                self._store(key, kind, after, value)
            return value

    def _lookup(self, key: str, kind: str, stat: os.stat_result) -> str | None:
        entry = self._load().get(key)
        if not entry or entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            return None
        value = entry.get(kind)
        return value if isinstance(value, str) else None

    def _store(self, key: str, kind: str, stat: os.stat_result, value: str) -> None:
        entries = self._load()
        entry = entries.get(key)
        if not entry or entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            entries[key] = entry
        entry[kind] = value
        with self._file_lock():
            self._entries = _merge(self._read_file(), entries, key)
            self._save(self._entries)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Exclusive across processes while the file is re-read, merged and replaced. Never fatal: without a lock
        (no fcntl, unwritable folder) the save goes ahead and may, rarely, lose another process's newest entry."""
        handle = None
        if fcntl is not None:
            try:
                self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                handle = open(self.cache_file.with_name(f".{self.cache_file.name}.lock"), "a+b")
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            except OSError as exc:
                logger.warning("could not lock hash cache %s (%s); saving without the lock", self.cache_file, exc)
                if handle is not None:
                    handle.close()
                    handle = None
        try:
            yield
        finally:
            if handle is not None:
                handle.close()  # closing releases the flock

    def _load(self) -> dict[str, dict[str, object]]:
        if self._entries is None:
            self._entries = self._read_file()
        return self._entries

    def _read_file(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.cache_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable hash cache %s (%s); hashes will be recomputed", self.cache_file, exc)
            return {}
        entries = data.get("entries") if isinstance(data, dict) and data.get("version") == _CACHE_VERSION else None
        if not isinstance(entries, dict):
            logger.warning("ignoring hash cache %s with an unknown layout; hashes will be recomputed", self.cache_file)
            return {}
        return {k: dict(v) for k, v in entries.items() if isinstance(k, str) and isinstance(v, dict)}

    def _save(self, entries: dict[str, dict[str, object]]) -> None:
        """Write the cache atomically (temp file + fsync + rename): a crash leaves the old or the new cache."""
        payload = json.dumps({"version": _CACHE_VERSION, "entries": entries}, indent=1, sort_keys=True)
        folder = self.cache_file.parent
        temp = folder / f".{self.cache_file.name}.{secrets.token_hex(6)}.tmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with open(temp, "x", encoding="utf-8") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, self.cache_file)
        except OSError as exc:
            # Losing the cache costs time, not correctness: keep working from memory.
            logger.warning("could not write hash cache %s: %s", self.cache_file, exc)
            try:
                temp.unlink()
            except OSError:
                pass


def _same_file_state(a: dict[str, object], b: dict[str, object]) -> bool:
    return (a.get("size"), a.get("mtime_ns")) == (b.get("size"), b.get("mtime_ns"))


def _merge(
    on_disk: dict[str, dict[str, object]], ours: dict[str, dict[str, object]], changed: str
) -> dict[str, dict[str, object]]:
    """Everything another process saved plus everything we know. For the same file in the same state the kinds of
    hash are united; in different states our entry wins for the file just hashed (its state was checked a moment
    ago), the one on disk for the others (another process wrote it more recently than we read it)."""
    merged = {key: dict(entry) for key, entry in on_disk.items()}
    for key, entry in ours.items():
        theirs = merged.get(key)
        if theirs is None or (key == changed and not _same_file_state(theirs, entry)):
            merged[key] = dict(entry)
        elif _same_file_state(theirs, entry):
            merged[key] = {**theirs, **entry}
    return merged

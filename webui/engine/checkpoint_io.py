"""Reading checkpoint files safely.

`.safetensors` is memory-mapped (no copy, no code execution); pickle-based formats go only through
`torch.load(weights_only=True)`, which refuses arbitrary globals. There is deliberately no "unsafe" fallback.
"""

from __future__ import annotations

import json
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file as load_safetensors_file

SAFETENSORS_SUFFIXES = {".safetensors"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES
_MAX_SAFETENSORS_HEADER = 100_000_000


class CheckpointReadError(ValueError):
    """A checkpoint could not be read; the message names the file and says what to do."""


@dataclass
class RawCheckpoint:
    """A flat state dict as stored on disk, plus the file's free-form metadata."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)


def read_safetensors_header(path: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Parse only the JSON header: tensor names/shapes and metadata, without touching tensor bytes."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointReadError(f"{path.name}: corrupt or incomplete file (too short to be safetensors)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > _MAX_SAFETENSORS_HEADER or header_len + 8 > size:
            raise CheckpointReadError(f"{path.name}: corrupt or incomplete file (invalid safetensors header length)")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointReadError(f"{path.name}: corrupt file (safetensors header is not valid JSON)") from exc
    if not isinstance(header, dict):
        raise CheckpointReadError(f"{path.name}: corrupt file (safetensors header is not an object)")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - header_len
    for name, info in header.items():
        end = (info.get("data_offsets") or [0, 0])[1] if isinstance(info, dict) else None
        if end is None or end > data_size:
            raise CheckpointReadError(f"{path.name}: corrupt or incomplete file (tensor {name!r} lies past the end)")
    return header, {str(k): str(v) for k, v in metadata.items()}


def _read_safetensors(path: Path) -> RawCheckpoint:
    _, metadata = read_safetensors_header(path)
    try:
        # load_file memory-maps the file; tensors are views onto the page cache until they are moved.
        state_dict = load_safetensors_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for every malformed case
        raise CheckpointReadError(f"{path.name}: corrupt or incomplete file ({exc})") from exc
    return RawCheckpoint(path=path, state_dict=state_dict, metadata=metadata)


def _read_pickle(path: Path) -> RawCheckpoint:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            bad = [n for n in archive.namelist() if ".." in n or n.startswith("/")]
            if bad:
                raise CheckpointReadError(f"{path.name}: refused, archive has a suspicious member {bad[0]!r}")
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:
        raise CheckpointReadError(
            f"{path.name}: could not be loaded safely ({str(exc).splitlines()[0]}). "
            "Only plain tensor checkpoints are accepted; convert it to .safetensors."
        ) from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise CheckpointReadError(f"{path.name}: does not contain a state dict")
    state_dict = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    return RawCheckpoint(path=path, state_dict=state_dict)


def read_checkpoint(path: Path) -> RawCheckpoint:
    """Load a checkpoint's tensors onto the CPU without running any code from the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise CheckpointReadError(f"{path.name}: unsupported file type {suffix!r}; use .safetensors or .ckpt")


def read_key_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes only; cheap for safetensors, used to classify files in folder scans."""
    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        header, _ = read_safetensors_header(path)
        return {k: tuple(v["shape"]) for k, v in header.items()}
    return {k: tuple(v.shape) for k, v in read_checkpoint(path).state_dict.items()}


def read_metadata(path: Path) -> dict[str, str]:
    """safetensors `__metadata__` (empty for other formats)."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})

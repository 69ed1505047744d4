"""Reading checkpoint files safely.

`.safetensors` is memory-mapped (no copy, no code execution); its header is checked in full (lengths, offsets, sizes)
before any tensor exists. Pickle-based formats go only through `torch.load(weights_only=True)`, which refuses
arbitrary globals, and only on torch >= 2.6 (older versions' `weights_only` can be bypassed, CVE-2025-32434); their zip
archives may hold only the members `torch.save` writes. There is deliberately no "unsafe" fallback.
"""

from __future__ import annotations

import json
import math
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from packaging.version import InvalidVersion, Version
from safetensors.torch import load_file as load_safetensors_file

SAFETENSORS_SUFFIXES = {".safetensors"}
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES | PICKLE_SUFFIXES
_MAX_SAFETENSORS_HEADER = 100_000_000
# Bits per element of every safetensors dtype (safetensors 0.6+ also has sub-byte float types).
_SAFETENSORS_DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
# What `torch.save` writes into its zip archive, all under one top folder (A1111's safe.py allows the same set).
_TORCH_ZIP_MEMBER = re.compile(
    r"^([^/]+)/(data\.pkl|data/\d+|version|\.format_version|\.storage_alignment|byteorder|\.data/serialization_id"
    r"|\.data/version)$")
MIN_SAFE_TORCH = Version("2.6")
_FORBIDDEN_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointReadError(ValueError):
    """A checkpoint could not be read; the message names the file and says what to do."""


class UnsafeTorchError(RuntimeError):
    """The installed torch cannot load pickle checkpoints safely."""


def require_safe_torch(version: str | None = None) -> None:
    """Refuse torch < 2.6 (and its pre-releases): there `torch.load(weights_only=True)` can still be made to run code
    (CVE-2025-32434), so no pickle checkpoint would be safe to open. `version` defaults to the installed torch."""
    text = version if version is not None else torch.__version__
    try:
        parsed = Version(text)
    except InvalidVersion:
        raise UnsafeTorchError(f"torch version {text!r} is not a version number; install torch >= 2.6") from None
    if parsed < MIN_SAFE_TORCH:
        raise UnsafeTorchError(
            f"torch {text} is too old: before 2.6, torch.load(weights_only=True) can be tricked into running code "
            f"from a crafted .ckpt (CVE-2025-32434). Install torch >= 2.6 (requirements.txt pins a safe version).")


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
    if not isinstance(metadata, dict):
        raise CheckpointReadError(f"{path.name}: corrupt file (safetensors metadata is not an object)")
    _check_tensor_table(path.name, header, size - 8 - header_len)
    return header, {str(k): str(v) for k, v in metadata.items()}


def _check_tensor_table(name: str, header: dict, data_size: int) -> None:
    """Every tensor's dtype, shape and byte range must agree, and the ranges must tile the data exactly (no overlap,
    gap, reversed or out-of-range offsets), as safetensors itself demands when it opens the file. Checked here, on the
    header alone, so that folder scans and architecture inference never trust shapes the bytes do not back."""
    ranges = []
    for key, info in header.items():
        where = f"{name}: corrupt file (tensor {key!r}"
        if not isinstance(info, dict):
            raise CheckpointReadError(f"{where} has no dtype/shape/offsets)")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _SAFETENSORS_DTYPE_BITS:
            raise CheckpointReadError(f"{where} has an unknown dtype {str(dtype)[:20]!r})")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise CheckpointReadError(f"{where} has an invalid shape)")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
            raise CheckpointReadError(f"{where} has invalid data offsets)")
        if offsets[1] > data_size:
            raise CheckpointReadError(f"{name}: corrupt or incomplete file (tensor {key!r} lies past the end)")
        bits = math.prod(shape) * _SAFETENSORS_DTYPE_BITS[dtype]
        if bits != (offsets[1] - offsets[0]) * 8:
            raise CheckpointReadError(f"{where}: shape {shape} of {dtype} does not match its "
                                      f"{offsets[1] - offsets[0]} bytes)")
        ranges.append((offsets[0], offsets[1], key))
    end = 0
    for start, stop, key in sorted(ranges):
        if start != end:
            problem = "overlaps another tensor" if start < end else "leaves a gap before it"
            raise CheckpointReadError(f"{name}: corrupt file (tensor {key!r} {problem})")
        end = stop
    if end != data_size:
        raise CheckpointReadError(f"{name}: corrupt file ({data_size - end} bytes after the last tensor)")


def _read_safetensors(path: Path) -> RawCheckpoint:
    _, metadata = read_safetensors_header(path)
    try:
        # load_file memory-maps the file; tensors are views onto the page cache until they are moved.
        state_dict = load_safetensors_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for every malformed case
        raise CheckpointReadError(f"{path.name}: corrupt or incomplete file ({exc})") from exc
    return RawCheckpoint(path=path, state_dict=state_dict, metadata=metadata)


def _check_zip_members(path: Path) -> None:
    """A torch zip checkpoint holds only what `torch.save` writes, under one top folder, with one data.pkl."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    prefixes = set()
    for member in names:
        match = _TORCH_ZIP_MEMBER.match(member)
        if match is None:
            raise CheckpointReadError(f"{path.name}: refused, the archive holds a file a checkpoint never has: "
                                      f"{member[:80]!r}")
        prefixes.add(match.group(1))
    pickles = [member for member in names if member.endswith("/data.pkl")]
    if len(prefixes) != 1 or len(pickles) != 1 or len(set(names)) != len(names):
        raise CheckpointReadError(f"{path.name}: refused, the archive must hold exactly one data.pkl in one folder "
                                  f"(found {len(pickles)} in {len(prefixes)} folder(s))")


def _unpickling_message(exc: Exception) -> str:
    """Why torch refused the file, without torch's advice to retry with weights_only=False."""
    text = str(exc)
    forbidden = _FORBIDDEN_GLOBAL.search(text)
    if forbidden:
        return (f"refused: its pickle asks for the forbidden global {forbidden.group(1)} (code, not weights; "
                "nothing was run)")
    reason = next((line.strip() for line in text.splitlines()
                   if line.strip() and "weights_only" not in line and "Weights only load failed" not in line
                   and "trust" not in line), type(exc).__name__)
    return f"could not be loaded safely ({reason[:200]})"


def load_pickle_safely(path: Path) -> object:
    """A pickle-format file's contents as stored (nested dicts kept), through `torch.load(weights_only=True)` only,
    after the torch-version and zip-member checks; a refusal names the file and the forbidden global."""
    path = Path(path)
    try:
        require_safe_torch()
    except UnsafeTorchError as exc:
        raise CheckpointReadError(f"{path.name}: not opened: {exc}") from exc
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_zip_members(path)
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=is_zip)
    except Exception as exc:
        raise CheckpointReadError(
            f"{path.name}: {_unpickling_message(exc)}. "
            "Only plain tensor checkpoints are accepted; convert it to .safetensors."
        ) from exc


def _read_pickle(path: Path) -> RawCheckpoint:
    loaded = load_pickle_safely(path)
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
    """safetensors `__metadata__` (empty for other formats); a corrupt file raises CheckpointReadError naming it."""
    path = Path(path)
    if path.suffix.lower() not in SAFETENSORS_SUFFIXES:
        return {}
    return read_safetensors_header(path)[1]


def assign_state(module: torch.nn.Module, state: dict[str, torch.Tensor],
                 problem: Callable[[str], Exception]) -> None:
    """Put `state`'s tensors (as fp32) into `module` in place and freeze it for inference; raise `problem(reason)`
    when a weight the module needs is missing or has another shape, so the caller's message names the file."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    if missing:
        raise problem(f"is incomplete ({len(missing)} weights missing, first {missing[0]!r})")
    wrong = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if wrong:
        raise problem(f"has a tensor of the wrong shape ({wrong[0]!r})")
    module.load_state_dict({k: state[k].float() for k in expected}, strict=True, assign=True)
    module.eval().requires_grad_(False)

"""Checkpoint files read exactly, and each module's weights packed into one buffer that moves in one copy."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from webui.engine.checkpoint_io import CheckpointReadError, read_checkpoint
from webui.engine.loader import load_checkpoint
from webui.engine.patching import WeightPatch, patched
from webui.engine.weight_packing import is_packed, move_packed, tensor_slots

# Tensors whose offsets in the file do not suit their element size: a 3-element fp16 tensor (6 bytes) comes first.
UNALIGNED = {
    "half": torch.tensor([1.5, -2.0, 3.25], dtype=torch.float16),
    "float": torch.arange(5, dtype=torch.float32) / 3,
    "long": torch.tensor([2**40, -7], dtype=torch.int64),
    "brain": torch.tensor([[0.5, 1.0], [-4.0, 8.0]], dtype=torch.bfloat16),
    "flags": torch.tensor([True, False, True]),
    "bytes": torch.tensor([1, 2, 3, 250], dtype=torch.uint8),
}
_NAMES = {torch.float16: "F16", torch.float32: "F32", torch.int64: "I64", torch.bfloat16: "BF16", torch.bool: "BOOL",
          torch.uint8: "U8"}


def _write_in_order(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A valid safetensors file with the tensors in the given order and no padding between them, which the format
    allows (the official writer sorts them by alignment, so it never makes one)."""
    header, blobs, offset = {"__metadata__": {"kind": "test"}}, [], 0
    for name, tensor in tensors.items():
        blob = tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": _NAMES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_a_file_with_unaligned_tensors_reads_exactly(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    _write_in_order(path, UNALIGNED)
    raw = read_checkpoint(path)
    reference = load_file(str(path))
    assert raw.metadata == {"kind": "test"} and raw.state_dict.keys() == UNALIGNED.keys()
    for name, tensor in UNALIGNED.items():
        assert raw.state_dict[name].dtype == tensor.dtype and torch.equal(raw.state_dict[name], tensor), name
        assert torch.equal(reference[name], tensor), name


def test_a_file_cut_short_is_refused_before_any_tensor_is_made(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    _write_in_order(path, UNALIGNED)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CheckpointReadError, match="cut.safetensors: corrupt or incomplete file"):
        read_checkpoint(path)


def _storages(module: torch.nn.Module) -> set[int]:
    return {slot.get().untyped_storage().data_ptr() for slot in tensor_slots(module) if slot.get().is_floating_point()}


def test_a_loaded_model_keeps_one_buffer_per_module_and_not_the_file(tiny_sd1) -> None:
    """The weights are views of the memory-mapped file until packing; afterwards each module owns exactly its
    weights, not a map of the whole file."""
    model = load_checkpoint(tiny_sd1.path)
    file_bytes = tiny_sd1.path.stat().st_size
    for module in model.modules():
        assert is_packed(module) and len(_storages(module)) == 1
        floats = [slot.get() for slot in tensor_slots(module) if slot.get().is_floating_point()]
        storage_bytes = floats[0].untyped_storage().nbytes()
        assert storage_bytes == sum(t.numel() * t.element_size() for t in floats) < file_bytes
    expected = tiny_sd1.model.unet.state_dict()
    assert all(torch.equal(model.unet.state_dict()[key], value) for key, value in expected.items())


def test_moving_a_packed_module_is_one_copy_that_keeps_every_parameter_object(tiny_sd1) -> None:
    unet = load_checkpoint(tiny_sd1.path).unet
    parameters = dict(unet.named_parameters())
    original = {key: value.clone() for key, value in unet.state_dict().items()}
    before = _storages(unet)
    move_packed(unet, "cpu", torch.float32)  # already where and how asked: nothing copied
    assert _storages(unet) == before
    move_packed(unet, "cpu", torch.bfloat16)
    assert is_packed(unet) and _storages(unet) != before and unet.dtype == torch.bfloat16
    assert all(unet.state_dict()[key].equal(value.to(torch.bfloat16)) for key, value in original.items())
    move_packed(unet, "cpu", torch.float32)
    assert all(parameter is dict(unet.named_parameters())[key] for key, parameter in parameters.items())
    # a bf16 round trip of fp32 weights is exactly their bf16 rounding, and a weight patch is undone exactly
    rounded = {key: value.to(torch.bfloat16).float() for key, value in original.items()}
    assert all(unet.state_dict()[key].equal(value) for key, value in rounded.items())
    layer = unet.conv_in
    delta = torch.full_like(layer.weight, 0.25)
    with patched([WeightPatch(layer, lambda device: delta, 1.0, "test")]):
        assert torch.equal(layer.weight, rounded["conv_in.weight"] + 0.25)
    assert torch.equal(layer.weight, rounded["conv_in.weight"]) and is_packed(unet)

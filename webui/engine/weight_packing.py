"""Each module's weights in one contiguous buffer, so that moving a model is one copy per module, not one per tensor.

`nn.Module.to` moves a model tensor by tensor: an SD 1.5 U-Net is about 700 separate host-to-device copies, each from
pageable memory. A packed module has all its floating-point parameters and buffers as consecutive slices of one flat
buffer; moving it is a single `copy_` of that buffer (from pinned host memory, one DMA transfer), after which every
parameter is re-pointed at its slice of the new buffer. The same copy converts the dtype.

Nothing records the layout: a module whose floating-point tensors are consecutive slices of one storage, in the order
`tensor_slots` lists them, is packed. torch has no such operation (`torch.nn.utils.parameters_to_vector` copies but
does not re-point), hence this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorSlot:
    """Where one parameter or buffer lives: its owning (sub)module and attribute name."""

    owner: torch.nn.Module
    name: str
    is_parameter: bool

    def get(self) -> torch.Tensor:
        return (self.owner._parameters if self.is_parameter else self.owner._buffers)[self.name]

    def point_at(self, tensor: torch.Tensor) -> None:
        if self.is_parameter:
            self.owner._parameters[self.name].data = tensor  # the Parameter object (and all references) stays
        else:
            self.owner._buffers[self.name] = tensor


def tensor_slots(module: torch.nn.Module) -> list[TensorSlot]:
    """Every parameter and buffer of `module`, each tensor once (tied weights share one slot), in a fixed order."""
    seen: set[int] = set()
    slots = []
    for owner in module.modules():
        for is_parameter, table in ((True, owner._parameters), (False, owner._buffers)):
            for name, tensor in table.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    slots.append(TensorSlot(owner, name, is_parameter))
    return slots


def packed_buffer(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The flat buffer that `tensors` are exactly the consecutive slices of, or None if they are not packed."""
    if not tensors:
        return None
    first = tensors[0]
    storage = first.untyped_storage()
    offset = 0
    for tensor in tensors:
        if (tensor.dtype != first.dtype or tensor.untyped_storage().data_ptr() != storage.data_ptr()
                or tensor.storage_offset() != offset or not tensor.is_contiguous()):
            return None
        offset += tensor.numel()
    if offset * first.element_size() != storage.nbytes():
        return None  # views of something bigger (a whole checkpoint file): not ours to keep alive
    return torch.empty(0, dtype=first.dtype, device=first.device).set_(storage, 0, (offset,))


def is_packed(module: torch.nn.Module) -> bool:
    floats = [slot.get() for slot in tensor_slots(module) if slot.get().is_floating_point()]
    return not floats or packed_buffer(floats) is not None


def _gather(tensors: list[torch.Tensor], device: torch.device, dtype: torch.dtype, pin: bool) -> torch.Tensor:
    """Copy tensors (any devices and dtypes) into one new flat buffer, tensor by tensor: the first packing."""
    flat = torch.empty(sum(t.numel() for t in tensors), dtype=dtype, device=device, pin_memory=pin)
    offset = 0
    for tensor in tensors:
        flat[offset:offset + tensor.numel()].view(tensor.shape).copy_(tensor)
        offset += tensor.numel()
    return flat


def move_packed(module: torch.nn.Module, device: torch.device | str, dtype: torch.dtype, pin: bool = False) -> None:
    """Put `module`'s floating-point weights, converted to `dtype`, into one buffer on `device` (pinned host memory
    with `pin`), re-pointing every parameter and buffer at its slice; other tensors (CLIP's position ids) just move.

    Already packed where and how asked: nothing is copied. Packed elsewhere: one copy. Not packed yet (views of a
    file just read, say): one gather into a new buffer, first on the host when the target is an accelerator, so that
    the transfer is still one copy."""
    device = torch.device(device)
    pin = pin and device.type == "cpu" and torch.cuda.is_available()
    slots = tensor_slots(module)
    float_slots = [slot for slot in slots if slot.get().is_floating_point()]
    current = [slot.get() for slot in float_slots]
    source = packed_buffer(current)
    if source is not None and source.device == device and source.dtype == dtype and source.is_pinned() == pin:
        target = source
    elif source is None and device.type != "cpu" and current:
        staged = _gather(current, torch.device("cpu"), dtype, pin=torch.cuda.is_available())
        target = staged.to(device, non_blocking=staged.is_pinned())
    elif source is None:
        target = _gather(current, device, dtype, pin)
    else:
        target = torch.empty(source.numel(), dtype=dtype, device=device, pin_memory=pin)
        # host to device from pinned memory may be asynchronous (the stream orders it before any kernel that reads
        # the weights); device to host must be complete before the host reads it, so it waits.
        target.copy_(source, non_blocking=source.is_pinned() and device.type != "cpu")
    if target is not source:
        offset = 0
        for slot, tensor in zip(float_slots, current):
            slot.point_at(target[offset:offset + tensor.numel()].view(tensor.shape))
            offset += tensor.numel()
    for slot in slots:
        tensor = slot.get()
        if not tensor.is_floating_point() and tensor.device != device:
            slot.point_at(tensor.to(device))

"""Whether a module's weights are still, bit for bit, the ones seen before, checked cheaply enough to ask every call.

A graph compiled with its weights frozen in (`webui/services/unet_compiler.py`) holds a copy of them, so it may only
run while the module's weights are exactly those. Each tensor's version counter moves on every in-place write (a
job's LoRA patch, its exact restore), and its address on a dtype or device move, so the common case costs one pass
over the counters;
only when a counter moved are the weights' bits summed again. Restores are bit-exact (`webui/engine/patching.py`),
so restored weights give back the same fingerprint.
"""

from __future__ import annotations

import itertools
import threading

import torch

_INTEGER_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits_checksum(tensor: torch.Tensor) -> tuple:
    """The sum of the tensor's elements read as integers of their own width, with its dtype, shape and device."""
    flat = tensor.detach().contiguous().reshape(-1)
    view = _INTEGER_VIEWS.get(flat.element_size())
    total = int(flat.view(view).sum(dtype=torch.int64)) if view is not None else float(flat.double().sum())
    return total, flat.dtype, tuple(tensor.shape), flat.device.type


class WeightsFingerprint:
    """The fingerprint of one module's parameters and buffers, recomputed only after one of them was written."""

    def __init__(self, module: torch.nn.Module) -> None:
        self._tensors = list(itertools.chain(module.parameters(), module.buffers()))
        self._lock = threading.Lock()
        self._versions: tuple | None = None
        self._fingerprint: tuple | None = None

    def versions(self) -> tuple[tuple[int, int, torch.dtype], ...]:
        """Every tensor's version counter, address and dtype: equal tuples mean nothing was written in between
        (replacing a parameter's `.data`, as `Module.to` does, keeps its counter but not its address or dtype)."""
        return tuple((tensor._version, tensor.data_ptr(), tensor.dtype) for tensor in self._tensors)

    def current(self) -> tuple:
        """The fingerprint of the weights as they are now."""
        versions = self.versions()
        with self._lock:
            if versions == self._versions and self._fingerprint is not None:
                return self._fingerprint
        fingerprint = tuple(_bits_checksum(tensor) for tensor in self._tensors)
        with self._lock:
            self._versions, self._fingerprint = versions, fingerprint
        return fingerprint

"""Temporary weight patches with exact restore: how a job gets its LoRAs without changing the cached base model.

The shape is ComfyUI's ModelPatcher (patches listed per weight, applied with backups, unpatched afterwards) and
InvokeAI's LayerPatcher context manager. Weights are patched in place while the job holds the device, because a merged
weight costs nothing per step; the original tensors are copied first and copied back on exit, so the base weights are
bit-identical afterwards whatever happened inside (an exception, an interrupt). Writing this by hand: diffusers'
`fuse_lora`/`unfuse_lora` restore by subtracting the delta again, which is not bit-exact, and PEFT wraps modules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch


class PatchError(ValueError):
    """A patch could not be applied; nothing stays changed. The message names the patch's source."""


@dataclass(frozen=True)
class WeightPatch:
    """Add `strength * delta()` to `module.weight`. `delta` is computed when the patch is applied, on the weight's
    device in float32, and must have the weight's number of elements (it is reshaped to the weight's shape)."""

    module: torch.nn.Module
    delta: Callable[[torch.device], torch.Tensor]
    strength: float
    source: str  # e.g. "lora 'name': lora_unet_down_blocks_0_..._to_q", for messages


def _merged(weight: torch.Tensor, patches: Sequence[WeightPatch]) -> torch.Tensor:
    total = weight.detach().to(torch.float32).clone()
    for patch in patches:
        delta = patch.delta(weight.device).to(device=weight.device, dtype=torch.float32)
        if delta.numel() != weight.numel():
            raise PatchError(f"{patch.source}: a delta of shape {tuple(delta.shape)} does not fit the weight "
                             f"{tuple(weight.shape)}; the file was made for another model")
        total += patch.strength * delta.reshape(weight.shape)
    if not torch.isfinite(total).all():
        raise PatchError(f"{patches[0].source}: the patched weight has NaN or infinite values (a corrupt file, or a "
                         "strength far too large)")
    return total.to(weight.dtype)


@contextmanager
def patched(patches: Sequence[WeightPatch]) -> Iterator[int]:
    """Apply every patch, yield how many weights changed, restore them exactly on exit.

    All deltas of one weight are summed in float32 before the single write, so stacking order does not matter. If any
    patch fails, the weights already written are restored before the error propagates: no partial patch stays.
    """
    by_module: dict[int, tuple[torch.nn.Module, list[WeightPatch]]] = {}
    for patch in patches:
        if not isinstance(getattr(patch.module, "weight", None), torch.Tensor):
            raise PatchError(f"{patch.source}: the target layer has no weight")
        by_module.setdefault(id(patch.module), (patch.module, []))[1].append(patch)
    # Restored through the module, not the tensor object: a model moved between devices while patched (hires fix's
    # checkpoint switch parks it in RAM and brings it back) holds new weight tensors by then.
    backups: list[tuple[torch.nn.Module, torch.Tensor]] = []
    try:
        with torch.no_grad():
            for module, module_patches in by_module.values():
                weight = module.weight
                merged = _merged(weight, module_patches)
                backups.append((module, weight.detach().clone()))
                weight.copy_(merged)
        yield len(by_module)
    finally:
        with torch.no_grad():
            for module, original in reversed(backups):
                module.weight.copy_(original)

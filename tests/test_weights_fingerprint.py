"""`WeightsFingerprint`: what decides whether a frozen compiled graph may run, on a tiny real-layout U-Net."""

from __future__ import annotations

import torch

from webui.engine.loader import load_checkpoint
from webui.engine.patching import WeightPatch, patched
from webui.engine.weights_fingerprint import WeightsFingerprint


def test_a_patch_changes_the_fingerprint_and_its_exact_restore_gives_it_back(tiny_sd1) -> None:
    unet = load_checkpoint(tiny_sd1.path).unet
    fingerprint = WeightsFingerprint(unet)
    base = fingerprint.current()
    assert fingerprint.current() is base  # nothing written: the counters alone answer
    layer = unet.down_blocks[0].resnets[0].conv1
    delta = torch.randn(layer.weight.shape, generator=torch.Generator().manual_seed(0)) * 1e-3
    with patched([WeightPatch(layer, lambda device: delta, 0.5, "test")]):
        assert fingerprint.current() != base
    assert fingerprint.current() == base


def test_the_smallest_change_of_one_weight_is_seen(tiny_sd1) -> None:
    unet = load_checkpoint(tiny_sd1.path).unet
    fingerprint = WeightsFingerprint(unet)
    base = fingerprint.current()
    weight = unet.conv_out.weight
    with torch.no_grad():
        original = weight[0, 0, 0, 0].clone()
        weight[0, 0, 0, 0] = torch.nextafter(original, original + 1)  # one float step
        assert fingerprint.current() != base
        weight[0, 0, 0, 0] = original
    assert fingerprint.current() == base
    with torch.no_grad():
        unet.to(torch.bfloat16)  # another dtype is other weights
    assert fingerprint.current() != base

"""Per-image noise as A1111 draws it: the initial noise, then the per-step noise of ancestral/SDE samplers.

Image i of a batch owns one generator seeded with its own seed. `first()` draws its initial latent noise from it;
`next()` keeps drawing from the same generator (A1111's `ImageRNG`), so step noise continues after the initial noise
instead of restarting, and an image never depends on its batch neighbours. With an ENSD (eta noise seed delta) the
step generators are reseeded with seed + ENSD after the first draw.

Sources (A1111's `randn_source` setting, infotext key `RNG`):
- "GPU": the device's own generator, A1111's default. On an NVIDIA card that is cuRAND's Philox; on a CPU-only machine
  (or Apple's MPS, as in A1111) it is the CPU one.
- "CPU": torch's CPU generator (Mersenne Twister), the same on every machine.
- "NV": NVIDIA's Philox4x32-10 generator with cuRAND's Box-Muller transform, computed on the CPU as A1111's emulation
  computes it, so a seed made with `RNG: GPU` on an NVIDIA card (what most shared infotexts are) reproduces anywhere.

Variation seeds: image i also draws noise from its subseed and interpolates towards it by `subseed_strength` (A1111's
slerp). "Resize seed from" draws the seed's noise at an old size and places it, centred, into noise of the new size,
so a composition found at one size survives a change of size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

RNG_SOURCES = ("GPU", "CPU", "NV")

# Philox4x32-10 constants (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): the two round
# multipliers and the two Weyl key increments.
_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = np.uint64(0x9E3779B9)
_PHILOX_W1 = np.uint64(0xBB67AE85)
_LOW32 = np.uint64(0xFFFFFFFF)
_PHILOX_ROUNDS = 10
# cuRAND's Box-Muller constants 2^-32 and 2^-32 * 2 pi, as float32 values (curand_normal's CURAND_2POW32_INV*).
_TWO_POW32_INV = float(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """The Philox4x32-10 block function: [4, N] uint32 counters and one 2-word key -> [4, N] uint32 outputs.

    Written by hand because no library on PyPI draws cuRAND-compatible normals (numpy's Philox is the 4x64 variant,
    and torch exposes its Philox only through the CUDA generator). 32x32->64-bit products in uint64 give each round's
    high and low halves."""
    x0, x1, x2, x3 = (counter[i].astype(np.uint64) for i in range(4))
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for round_index in range(_PHILOX_ROUNDS):
        if round_index:
            k0, k1 = (k0 + _PHILOX_W0) & _LOW32, (k1 + _PHILOX_W1) & _LOW32
        product0, product1 = x0 * _PHILOX_M0, x2 * _PHILOX_M1
        x0, x1, x2, x3 = ((product1 >> np.uint64(32)) ^ x1 ^ k0, product1 & _LOW32,
                          (product0 >> np.uint64(32)) ^ x3 ^ k1, product0 & _LOW32)
    return np.stack([x0, x1, x2, x3]).astype(np.uint32)


def box_muller_first(bits_u: np.ndarray, bits_v: np.ndarray) -> np.ndarray:
    """cuRAND's Box-Muller from two uint32 words, keeping the sine half (what torch's CUDA randn keeps per element).

    Evaluated in float64 on the float32 constants, then rounded to float32, as A1111's NV emulation does, so its
    numbers (and thus its infotexts' images) are reproduced bit for bit."""
    u = bits_u.astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = bits_v.astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class NoiseStream(Protocol):
    """One image's generator: successive `draw` calls continue its sequence."""

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor: ...


class TorchStream:
    """A torch generator on the CPU or on the device (CUDA's own Philox for the GPU source)."""

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        self.generator = torch.Generator(device).manual_seed(int(seed))

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self.device, dtype=torch.float32)


class PhiloxStream:
    """A1111's "NV" generator: element j of the k-th draw is Box-Muller of Philox(counter=(k, 0, j, 0), key=seed).

    The key is the 64-bit seed split into two words (low first); each draw advances the first counter word by one.
    That is torch's CUDA normal kernel when every element gets its own GPU thread (one image's latent no larger than
    the card's resident threads): thread j seeds cuRAND with subsequence j and keeps the first normal of its four."""

    def __init__(self, seed: int) -> None:
        self.key = (int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF)
        self.offset = 0

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        count = int(np.prod(shape))
        counter = np.zeros((4, count), dtype=np.uint32)
        counter[0] = self.offset
        counter[2] = np.arange(count, dtype=np.uint32)
        self.offset += 1
        words = philox4x32_10(counter, self.key)
        return torch.from_numpy(box_muller_first(words[0], words[1]).reshape(shape))


def generator_device(source: str, device: torch.device) -> torch.device:
    """Where a torch source draws: the GPU source on the device itself, except CPU and MPS (A1111 draws MPS noise on
    the CPU); the CPU source always on the CPU."""
    if source == "GPU" and device.type not in ("cpu", "mps"):
        return device
    return torch.device("cpu")


def noise_stream(source: str, seed: int, device: torch.device) -> NoiseStream:
    """A fresh generator of `source` for `seed`."""
    if source == "NV":
        return PhiloxStream(seed)
    return TorchStream(seed, generator_device(source, device))


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's variation-seed interpolation of one image's (C, H, W) noise from `low` (seed) to `high` (subseed).

    A1111 normalises along dim 1 (the rows), so the angle is taken per (channel, column) rather than over the whole
    tensor; reproduced as is because it decides the image. Nearly parallel noises (mean cosine > 0.9995) take A1111's
    linear branch, which weights `low` by the strength."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cosine = (low_unit * high_unit).sum(1)
    if cosine.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    omega = torch.acos(cosine)
    sine = torch.sin(omega)
    low_weight = (torch.sin((1.0 - strength) * omega) / sine).unsqueeze(1)
    high_weight = (torch.sin(strength * omega) / sine).unsqueeze(1)
    return low_weight * low + high_weight * high


def place_centred(small: torch.Tensor, large: torch.Tensor) -> torch.Tensor:
    """Put (C, h, w) noise into (C, H, W) noise, centres aligned (A1111's "resize seed from"): cropped where the old
    size is larger, surrounded by `large`'s own values where it is smaller. Offsets round down, as in A1111."""
    result = large.clone()
    _, height, width = large.shape
    _, small_height, small_width = small.shape
    dx, dy = (width - small_width) // 2, (height - small_height) // 2
    span_w = small_width if dx >= 0 else small_width + 2 * dx
    span_h = small_height if dy >= 0 else small_height + 2 * dy
    to_x, to_y, from_x, from_y = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
    result[:, to_y:to_y + span_h, to_x:to_x + span_w] = small[:, from_y:from_y + span_h, from_x:from_x + span_w]
    return result


@dataclass
class ImageRNG:
    """The noise of one batch; `shape` is one image's latent shape (C, H, W)."""

    shape: tuple[int, int, int]
    seeds: list[int]
    source: str = "CPU"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    subseeds: list[int] | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] = (0, 0)  # (width, height) in pixels; (0, 0) = off
    ensd: int = 0
    latent_factor: int = 8  # pixels per latent cell: turns `seed_resize_from` into a latent size

    def __post_init__(self) -> None:
        if self.source not in RNG_SOURCES:
            raise ValueError(f"unknown RNG source {self.source!r}; choose one of: {', '.join(RNG_SOURCES)}")
        self.device = torch.device(self.device)
        self.shape = tuple(int(side) for side in self.shape)  # type: ignore[assignment]
        self._streams = [self._stream(seed) for seed in self.seeds]
        self._first: torch.Tensor | None = None

    def _stream(self, seed: int) -> NoiseStream:
        return noise_stream(self.source, seed, self.device)

    def _resize_shape(self) -> tuple[int, int, int] | None:
        """The latent shape of the size the seed's noise is drawn at, when "resize seed from" is on."""
        width, height = self.seed_resize_from
        if width <= 0 or height <= 0:
            return None
        return (self.shape[0], height // self.latent_factor, width // self.latent_factor)

    def first(self) -> torch.Tensor:
        """[B, C, H, W] float32 initial noise: each image's seed, with its variation seed and old size when set.

        Drawn once; a second call returns the same noise (the mode and the sampler may both ask for it)."""
        if self._first is not None:
            return self._first.clone()
        old_shape = self._resize_shape()
        noise_shape = old_shape or self.shape
        variations = self.subseeds is not None and self.subseed_strength != 0
        images = []
        for index, (seed, stream) in enumerate(zip(self.seeds, self._streams)):
            # Resized, the seed's noise comes from a fresh generator; the image's own stream draws the new-size noise.
            noise = (self._stream(seed) if old_shape else stream).draw(noise_shape).to(self.device)
            if variations:
                assert self.subseeds is not None
                subseed = self.subseeds[index] if index < len(self.subseeds) else 0
                noise = slerp(self.subseed_strength, noise, self._stream(subseed).draw(noise_shape).to(self.device))
            if old_shape:
                noise = place_centred(noise, stream.draw(self.shape).to(self.device))
            images.append(noise)
        if self.ensd:
            self._streams = [self._stream(seed + self.ensd) for seed in self.seeds]
        self._first = torch.stack(images)
        return self._first.clone()

    def next(self) -> torch.Tensor:
        """[B, C, H, W] step noise, continuing each image's generator (the first call is `first()`, as in A1111)."""
        if self._first is None:
            return self.first()
        return torch.stack([stream.draw(self.shape).to(self.device) for stream in self._streams])

"""Per-image noise as A1111 draws it: the initial noise, then the per-step noise of ancestral/SDE samplers.

Image i of a batch owns one generator seeded with its own seed. `first()` draws its initial latent noise from it;
`next()` keeps drawing from the same generator (A1111's `ImageRNG`), so step noise continues after the initial noise
instead of restarting, and an image never depends on its batch neighbours. With an ENSD (eta noise seed delta) the
step generators are reseeded with seed + ENSD after the first draw.

Sources: "CPU" (torch's CPU generator, the same on every machine), "GPU" (the device's own generator; on a CPU-only
machine it is the CPU one, as in A1111) and "NV" (NVIDIA's Philox generator emulated on the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

RNG_SOURCES = ("GPU", "CPU", "NV")


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

    def __post_init__(self) -> None:
        if self.source not in RNG_SOURCES:
            raise ValueError(f"unknown RNG source {self.source!r}; choose one of: {', '.join(RNG_SOURCES)}")
        self._generators = [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds]
        self._first_done = False

    def first(self) -> torch.Tensor:
        """[B, C, H, W] initial noise (CPU source; variation seeds, resize-from, GPU and NV still to come)."""
        noise = torch.stack([torch.randn(self.shape, generator=generator) for generator in self._generators])
        if self.ensd:
            self._generators = [torch.Generator("cpu").manual_seed(seed + self.ensd) for seed in self.seeds]
        self._first_done = True
        return noise.to(self.device)

    def next(self) -> torch.Tensor:
        """[B, C, H, W] step noise, continuing each image's generator (the first call is `first()`, as in A1111)."""
        if not self._first_done:
            return self.first()
        return torch.stack([torch.randn(self.shape, generator=generator) for generator in self._generators]).to(
            self.device
        )

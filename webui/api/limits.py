"""What one API call may ask for: its own module, so that `launch.py` reads the defaults for its flags (and refuses
an unsafe start) without importing the API and the engine behind it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ApiLimits:
    """What one API call may ask for, on top of the request schema's own ranges (a server owner may lower them)."""

    max_steps: int = 150
    max_side: int = 2048
    max_images: int = 64  # batch_size x n_iter

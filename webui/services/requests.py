"""The one request type shared by the UI, the HTTP API and the CLI, and its validation.

Every bad value gets a one-line message naming the field, so each interface can show it as is.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

MAX_PROMPT_CHARS = 20_000
MAX_SEED = 2**32 - 1
MAX_SIDE = 4096


class RequestError(ValueError):
    """A request field is invalid; `field_name` says which one."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field_name = field_name


@dataclass
class GenerationRequest:
    """txt2img parameters with A1111's names (API field names) and UI defaults."""

    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int | None = None  # None: the model's declared resolution
    height: int | None = None
    seed: int = -1
    batch_size: int = 1
    n_iter: int = 1
    model: str | None = None  # None: the currently selected checkpoint
    vae: str | None = None  # A1111's sd_vae override: "Automatic", "None" or a file in models/VAE; None: app default
    extensions: dict[str, dict[str, Any]] = field(default_factory=dict)  # extension controls, by name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GenerationRequest":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RequestError(unknown[0], "unknown field")
        return cls(**data)


def as_int(value: Any, name: str) -> int:
    """A whole number, from JSON/UI values that may arrive as floats or strings."""
    if isinstance(value, bool):
        raise RequestError(name, f"{value!r} is not a whole number")
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise RequestError(name, f"{value!r} is not a whole number")
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise RequestError(name, f"{value!r} is not a whole number") from None


def as_float(value: Any, name: str) -> float:
    """A finite number; Python's json accepts NaN and Infinity, so they are refused here."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RequestError(name, f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise RequestError(name, f"{value!r} is not a finite number")
    return number


def int_in_range(value: Any, name: str, low: int, high: int) -> int:
    number = as_int(value, name)
    if not low <= number <= high:
        raise RequestError(name, f"{number} is out of range ({low} to {high})")
    return number


def _side(value: Any, name: str) -> int:
    side = int_in_range(value, name, 64, MAX_SIDE)
    if side % 8:
        lower, upper = side - side % 8, side - side % 8 + 8
        raise RequestError(name, f"{side} is not a multiple of 8 (use {lower} or {upper})")
    return side


def validate_request(request: GenerationRequest, default_size: tuple[int, int]) -> GenerationRequest:
    """Normalised copy with types fixed and defaults resolved; raises RequestError on the first bad field."""
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name)
        if not isinstance(text, str):
            raise RequestError(name, "must be text")
        if len(text) > MAX_PROMPT_CHARS:
            raise RequestError(name, f"is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
    steps = int_in_range(request.steps, "steps", 1, 1000)
    cfg = as_float(request.cfg_scale, "cfg_scale")
    if not 0 <= cfg <= 100:
        raise RequestError("cfg_scale", f"{cfg} is out of range (0 to 100)")
    width = _side(request.width if request.width is not None else default_size[0], "width")
    height = _side(request.height if request.height is not None else default_size[1], "height")
    seed = as_int(request.seed, "seed")
    if seed < -1 or seed > MAX_SEED:
        raise RequestError("seed", f"{seed} is out of range (-1 for random, or 0 to {MAX_SEED})")
    batch_size = int_in_range(request.batch_size, "batch_size", 1, 64)
    n_iter = int_in_range(request.n_iter, "n_iter", 1, 1000)
    if seed == -1:
        seed = secrets.randbelow(MAX_SEED + 1 - batch_size * n_iter)
    return replace(
        request, steps=steps, cfg_scale=cfg, width=width, height=height, seed=seed, batch_size=batch_size, n_iter=n_iter
    )


def seeds_for_iteration(request: GenerationRequest, iteration: int) -> list[int]:
    """Image i of the whole job uses seed + i (A1111), across batch count and batch size."""
    start = request.seed + iteration * request.batch_size
    return [(start + i) % (MAX_SEED + 1) for i in range(request.batch_size)]

"""The one request schema shared by the UI, the HTTP API and the CLI, and the one way its errors are reported.

Requests are pydantic dataclasses: their field constraints are the validation (and the JSON schema the HTTP API
publishes), so no interface checks a number by hand. Building one (directly, through `dataclasses.replace` or
`parse_request`) raises `RequestError` with a one-line message naming the field, which each interface shows as is.
Only what depends on the model (its default size, its size multiple) and the random seed are settled later, by
`resolve_for_model`, once the job knows its model.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal, TypeVar, dataclass_transform

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:
    from webui.engine.loader import LoadedModel

MAX_PROMPT_CHARS = 20_000
MAX_SEED = 2**32 - 1
MAX_SIDE = 4096
REQUEST_CONFIG = ConfigDict(extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)

RequestT = TypeVar("RequestT")


class RequestError(ValueError):
    """A request field is invalid; `field_name` says which one."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field_name = field_name
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        """Picklable with both arguments, so a worker process's refusal reaches the front end as a RequestError."""
        return type(self), (self.field_name, self.message)


def _not_bool(value: Any) -> Any:
    """pydantic's lax mode reads True as 1; a checkbox value in a number field is a client's mistake."""
    if isinstance(value, bool):
        raise PydanticCustomError("bool_is_not_number", "a truth value is not a number")
    return value


NOT_BOOL = BeforeValidator(_not_bool)
# Whole numbers: JSON and UI sliders send 20.0, which is accepted; 20.5, NaN, Inf and True are refused.
Whole = Annotated[int, NOT_BOOL]
# An optional whole number (a size left to the model). The bool check wraps the union so that the field's own
# constraints still reach the JSON schema as minimum/maximum/multipleOf.
WholeOrNone = Annotated[int | None, NOT_BOOL]
# Finite numbers: Python's json module accepts NaN and Infinity, so they are refused here.
Finite = Annotated[float, Field(allow_inf_nan=False), NOT_BOOL]


def _bounds(schema: type | None, name: str) -> tuple[Any, Any, str | None]:
    """A field's declared lower and upper bound and description, for messages that state the whole range."""
    info = getattr(schema, "__pydantic_fields__", {}).get(name)
    low = high = None
    for item in info.metadata if info is not None else ():
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high, info.description if info is not None else None


def _nearest_multiples(value: Any, multiple: int, low: Any = None, high: Any = None) -> str:
    """"(use 696 or 704)": the valid neighbours of a value that is not a multiple."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return ""
    below = number - number % multiple
    choices = [side for side in (below, below + multiple)
               if (low is None or side >= low) and (high is None or side <= high)]
    return f" (use {' or '.join(map(str, choices))})" if choices else ""


def _message(error: dict[str, Any], schema: type | None, name: str) -> str:
    """One line for one pydantic error detail, in the project's wording."""
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    low, high, description = _bounds(schema, name)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return "unknown field"
    if kind == "finite_number":
        return f"{value!r} is not a finite number"
    if kind in ("int_from_float", "int_parsing", "int_type"):
        return f"{value!r} is not a whole number"
    if kind == "bool_is_not_number":
        return f"{value!r} is not a number"
    if kind in ("float_parsing", "float_type"):
        return f"{value!r} is not a number"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        low = ctx.get("ge", ctx.get("gt")) if low is None else low
        high = ctx.get("le", ctx.get("lt")) if high is None else high
        if low is not None and high is not None:
            return f"{value!r} is out of range ({low} to {high})"
        return f"{value!r} is out of range ({'at least ' + str(low) if low is not None else 'at most ' + str(high)})"
    if kind == "multiple_of":
        multiple = ctx["multiple_of"]
        return f"{value!r} is not a multiple of {multiple}{_nearest_multiples(value, multiple, low, high)}"
    if kind == "literal_error":
        return f"{value!r} is not one of {ctx['expected']}" + (f" ({description})" if description else "")
    if kind == "string_too_long":
        return f"is {len(value)} characters long; the limit is {ctx['max_length']}"
    if kind == "string_type":
        return "must be text"
    if kind in ("bool_parsing", "bool_type"):
        return f"{value!r} is not true or false"
    if kind in ("dict_type", "dataclass_type", "dataclass_args_type"):
        return f"must be an object of fields, not {type(value).__name__}"
    if kind == "is_instance_of":
        return f"expected {ctx.get('class', 'another type')}, not {type(value).__name__}"
    text = error["msg"]
    return text[:1].lower() + text[1:]


def request_error(error: ValidationError, schema: type | None = None, field_name: str = "request") -> RequestError:
    """The first problem of a pydantic ValidationError as a RequestError naming the field (the one conversion).

    `schema` (the request class) lets a range message state both bounds; `field_name` names a value that was checked
    on its own (`parse_field`) or a request that is not an object at all."""
    first = error.errors(include_url=False)[0]
    loc = [str(part) for part in first["loc"]]
    name = loc[0] if loc else field_name
    nested = "".join(f"{part}: " for part in loc[1:])
    return RequestError(name, nested + _message(first, schema, name))


@dataclass_transform(field_specifiers=(Field,))
def request_schema(cls: type[RequestT]) -> type[RequestT]:
    """Make `cls` a request: a pydantic dataclass with the request config (unknown fields, NaN and Inf refused) whose
    constructor, and so `dataclasses.replace`, raises RequestError instead of pydantic's ValidationError."""
    schema = pydantic_dataclass(cls, config=REQUEST_CONFIG)
    validate: Callable[..., None] = schema.__init__

    @functools.wraps(validate)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validate(self, *args, **kwargs)
        except ValidationError as exc:
            raise request_error(exc, type(self)) from None

    schema.__init__ = __init__  # type: ignore[method-assign]
    return schema


def parse_request(schema: type[RequestT], data: Any) -> RequestT:
    """A request of type `schema` from a mapping of A1111 field names (API JSON, UI widget values, CLI options)."""
    try:
        return TypeAdapter(schema).validate_python(data)
    except ValidationError as exc:
        raise request_error(exc, schema) from None


def parse_field(kind: Any, value: Any, field_name: str) -> Any:
    """One value checked against a schema type (`Whole`, `Finite`) outside a request, e.g. a ControlNet unit's."""
    try:
        return TypeAdapter(kind).validate_python(value)
    except ValidationError as exc:
        raise request_error(exc, field_name=field_name) from None


@request_schema
class GenerationRequest:
    """txt2img parameters with A1111's names (API field names) and UI defaults."""

    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: Whole = Field(20, ge=1, le=1000)
    cfg_scale: Finite = Field(7.0, ge=0, le=100)
    width: WholeOrNone = Field(None, ge=64, le=MAX_SIDE, multiple_of=8, description="None: the model's own size")
    height: WholeOrNone = Field(None, ge=64, le=MAX_SIDE, multiple_of=8, description="None: the model's own size")
    seed: Whole = Field(-1, ge=-1, le=MAX_SEED, description="-1: random; image i of the job uses seed + i")
    batch_size: Whole = Field(1, ge=1, le=64)
    n_iter: Whole = Field(1, ge=1, le=1000, description="batch count")
    model: str | None = Field(None, description="None: the currently selected checkpoint")
    vae: str | None = Field(None, description="A1111's sd_vae override: 'Automatic', 'None' or a file in models/VAE; "
                                              "None: the app's default")
    extensions: dict[str, dict[str, Any]] = Field(default_factory=dict, description="extension controls, by name")
    # A1111's extra seed options (the "Extra" checkbox beside the seed) and per-job noise settings.
    subseed: Whole = Field(-1, ge=-1, le=MAX_SEED, description="variation seed; -1: random; image i uses subseed + i")
    subseed_strength: Finite = Field(0.0, ge=0, le=1, description="0: no variation; 1: the variation seed's noise")
    seed_resize_from_w: Whole = Field(0, ge=0, le=MAX_SIDE, description="resize seed from width; 0: off")
    seed_resize_from_h: Whole = Field(0, ge=0, le=MAX_SIDE, description="resize seed from height; 0: off")
    rng: Literal["GPU", "CPU", "NV"] | None = Field(None, description="noise source (infotext RNG); None: the setting")
    ensd: WholeOrNone = Field(None, ge=0, le=2**31 - 1, description="eta noise seed delta (infotext ENSD); None: the "
                                                                    "setting")
    # Prompt encoding per job (a pasted infotext's `Clip skip` / `Emphasis`, the API's override_settings).
    clip_skip: WholeOrNone = Field(None, ge=1, le=12, description="CLIP skip (infotext Clip skip); None: the setting")
    emphasis: Literal["Original", "No norm", "Ignore", "None"] | None = Field(
        None, description="emphasis mode (infotext Emphasis); None: the setting")
    # Hires fix (txt2img; A1111 UI defaults): upscale the first pass, then img2img it at the larger size.
    enable_hr: bool = Field(False, description="hires fix: a second pass at a larger size")
    denoising_strength: Finite = Field(0.7, ge=0, le=1, description="hires fix: how much the second pass changes")
    hr_scale: Finite = Field(2.0, ge=1, le=8, description="hires fix: upscale by (ignored when a resize side is set)")
    hr_upscaler: str | None = Field("Latent", max_length=200, description="hires fix: a latent mode or an image "
                                                                         "upscaler; None: 'Latent'")
    hr_second_pass_steps: Whole = Field(0, ge=0, le=1000, description="hires steps; 0: the same as steps")
    hr_resize_x: Whole = Field(0, ge=0, le=MAX_SIDE, description="hires fix: resize width to; 0: from the height")
    hr_resize_y: Whole = Field(0, ge=0, le=MAX_SIDE, description="hires fix: resize height to; 0: from the width")
    hr_checkpoint_name: str | None = Field(None, max_length=500, description="hires checkpoint; None: the same")
    hr_sampler_name: str | None = Field(None, max_length=200, description="hires sampler; None: the same")
    hr_scheduler: str | None = Field(None, max_length=200, description="hires schedule type; None: the same")
    hr_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="hires prompt; empty: the prompt")
    hr_negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="empty: the negative prompt")


def size_multiple(model: LoadedModel) -> int:
    """Sides must divide by the VAE factor times the U-Net's downsampling (e.g. 8 x 2**3 = 64 for SD, 16 for tiny)."""
    return model.vae_downscale * 2 ** (len(model.unet.config.block_out_channels) - 1)


def resolve_for_model(request: GenerationRequest, model: LoadedModel) -> GenerationRequest:
    """The model-dependent half of validation: default size from the model, sides refused (with the two nearest
    valid sizes) unless a multiple of the model's own factor, seed -1 drawn at random."""
    multiple = size_multiple(model)
    width, height = (
        given if given is not None else default
        for given, default in zip((request.width, request.height), model.default_resolution)
    )
    for name, side in (("width", width), ("height", height)):
        if side % multiple:
            raise RequestError(name, f"{side} is not a multiple of {multiple} for this model"
                                     f"{_nearest_multiples(side, multiple, 64, MAX_SIDE)}")
    seed, subseed = request.seed, request.subseed
    if seed == -1:
        seed = secrets.randbelow(MAX_SEED + 1 - request.batch_size * request.n_iter)
    if subseed == -1:  # drawn once per job, like the seed
        subseed = secrets.randbelow(MAX_SEED + 1 - request.batch_size * request.n_iter)
    # replace re-checks the schema (e.g. the range)
    return replace(request, width=width, height=height, seed=seed, subseed=subseed)


def seeds_for_iteration(request: GenerationRequest, iteration: int) -> list[int]:
    """Image i of the whole job uses seed + i (A1111), across batch count and batch size; with a variation strength
    every image keeps the seed and the variation seeds vary instead."""
    if request.subseed_strength:
        return [request.seed] * request.batch_size
    start = request.seed + iteration * request.batch_size
    return [(start + i) % (MAX_SEED + 1) for i in range(request.batch_size)]


def subseeds_for_iteration(request: GenerationRequest, iteration: int) -> list[int]:
    """Image i of the whole job uses subseed + i (A1111's variation seeds), as the seeds do without variation."""
    start = request.subseed + iteration * request.batch_size
    return [(start + i) % (MAX_SEED + 1) for i in range(request.batch_size)]

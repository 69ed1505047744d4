"""A1111's `/sdapi/v1` request and response bodies, and their translation to the project's own requests.

Why a second schema beside `webui.services.requests`: A1111 clients send A1111's whole field set (about 60 fields,
many for features this app does not have, such as face restoration) with A1111's API defaults (50 steps, 512x512).
These wire models accept that shape as it is, so existing clients work unchanged; the translation then hands the
project's request schema only what it understands, where its constraints are checked. A field that asks for a
feature this app lacks is refused when it would change the image (tiling) and reported as ignored when it
would not (face restoration). `styles` names entries of the install's `styles.csv` (webui/services/styles.py).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from webui.services.infotext import parse_infotext
from webui.services.requests import RequestError

# Reported as ignored when set (the sampler noise knobs eta and s_* are not: clients send them by default).
IGNORED_WHEN_SET = ("restore_faces", "comments", "refiner_checkpoint", "refiner_switch_at")


class _Wire(BaseModel):
    """Numbers must be finite (Python's json reads NaN and Infinity); unknown fields are kept and reported."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)


class Txt2ImgBody(_Wire):
    """A1111's `StableDiffusionTxt2ImgProcessingAPI`, with A1111's API defaults."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False, json_schema_extra={"examples": [
        {"prompt": "a large red circle at the top left on a blue background", "negative_prompt": "", "seed": 42,
         "sampler_name": "Euler a", "steps": 4, "cfg_scale": 6.0, "width": 64, "height": 64, "batch_size": 1},
    ]})

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] | dict[str, Any] | None = Field(
        default=None, description="the selectable script's arguments: A1111's positional list, or named arguments")
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] | None = None
    infotext: str | None = None


class Img2ImgBody(Txt2ImgBody):
    """A1111's `StableDiffusionImg2ImgProcessingAPI`: txt2img's fields plus the image ones."""

    init_images: list[str] | None = None
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False
    denoising_strength: float | None = 0.75


class GenerationResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="base64 PNGs, each carrying its infotext")
    parameters: dict[str, Any]
    info: str = Field(description="A1111's generation info, as a JSON string")


class PngInfoBody(_Wire):
    image: str = Field(description="base64 image (data: URL prefix allowed)")


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class QueueEntry(BaseModel):
    """One of the caller's jobs (an admin sees everyone's), for `/sdapi/v1/queue` (our own addition)."""

    id: str
    owner: str
    kind: str
    status: str
    position: int | None
    progress: float
    eta_seconds: float | None
    error: str | None


class ExtrasBaseBody(_Wire):
    """A1111's `ExtrasBaseRequest`, with its defaults. Face restoration is not in this app: a visibility above 0 is
    refused (it would change the image); `upscale_first` only orders it and is ignored. `save_images` is our
    addition (A1111's API never saves Extras results; the UI does)."""

    resize_mode: int = Field(0, description="0: scale by upscaling_resize; 1: scale to upscaling_resize_w x _h")
    show_extras_results: bool = Field(True, description="false: return no image data")
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscaling_resize: float = Field(2.0, description="scale factor when resize_mode is 0")
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = Field(True, description="scale to: crop to the exact size (else keep the aspect ratio)")
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0.0, description="0..1: how much of upscaler 2 is blended in")
    upscale_first: bool = False
    save_images: bool = False


class ExtrasSingleImageBody(ExtrasBaseBody):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False, json_schema_extra={"examples": [
        {"image": "<base64 PNG>", "upscaling_resize": 2, "upscaler_1": "Lanczos"}]})

    image: str = Field("", description="base64 image (data: URL prefix allowed)")


class ExtrasFileData(_Wire):
    data: str = Field(description="base64 image (data: URL prefix allowed)")
    name: str = ""


class ExtrasBatchImagesBody(ExtrasBaseBody):
    imageList: list[ExtrasFileData] = Field(default_factory=list)  # noqa: N815 - A1111's field name


class ExtrasSingleImageResponse(BaseModel):
    html_info: str = Field(description="the postprocessing keys as HTML (A1111's)")
    image: str = Field(description="base64 PNG with its infotext; empty when show_extras_results is false")


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


# The `infotext` field: A1111's `apply_infotext` fills every field the request did not set from the infotext's keys
# (its paste fields that carry an API name), and adds the keys that are settings to override_settings.
INFOTEXT_FIELDS: dict[str, str] = {
    "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "Sampler": "sampler_name",
    "Schedule type": "scheduler", "CFG scale": "cfg_scale", "Seed": "seed", "Size-1": "width", "Size-2": "height",
    "Variation seed": "subseed", "Variation seed strength": "subseed_strength",
    "Seed resize from-1": "seed_resize_from_w", "Seed resize from-2": "seed_resize_from_h",
    "Denoising strength": "denoising_strength", "Hires upscale": "hr_scale", "Hires upscaler": "hr_upscaler",
    "Hires steps": "hr_second_pass_steps", "Hires resize-1": "hr_resize_x", "Hires resize-2": "hr_resize_y",
    "Hires sampler": "hr_sampler_name", "Hires schedule type": "hr_scheduler", "Hires prompt": "hr_prompt",
    "Hires negative prompt": "hr_negative_prompt", "Image CFG scale": "image_cfg_scale", "Mask blur": "mask_blur",
}
# A1111's `infotext_to_setting_name_mapping`, for the settings this app takes per job. `Model` and `VAE` are left
# out as A1111 leaves them out by default (`disable_weights_auto_swap`): an infotext never swaps the checkpoint.
INFOTEXT_SETTINGS: dict[str, str] = {"Clip skip": "CLIP_stop_at_last_layers", "ENSD": "eta_noise_seed_delta",
                                     "RNG": "randn_source", "Emphasis": "emphasis"}
BodyT = TypeVar("BodyT", bound="Txt2ImgBody")
_USE_SAME = {"hr_sampler_name": "Use same sampler", "hr_scheduler": "Use same scheduler"}


def apply_infotext(body: BodyT) -> tuple[BodyT, list[str]]:
    """The body with the fields it left unset taken from `body.infotext` (fields sent explicitly win), and warnings
    for infotext values that do not fit their field, which are skipped rather than failing the request."""
    if not body.infotext:
        return body, []
    params = parse_infotext(body.infotext)
    updates: dict[str, Any] = {}
    warnings: list[str] = []
    sent = body.model_fields_set
    for key, field in INFOTEXT_FIELDS.items():
        value = params.get(key)
        if value is None or field in sent or field not in type(body).model_fields or value == _USE_SAME.get(field):
            continue
        try:
            updates[field] = TypeAdapter(type(body).model_fields[field].annotation).validate_python(value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            warnings.append(f"infotext {key}: {value!r} does not fit {field} ({reason}); ignored")
    if not isinstance(body, Img2ImgBody) and "enable_hr" not in sent and "Denoising strength" in params and any(
            key in params for key in ("Hires upscale", "Hires upscaler", "Hires resize-1")):
        updates["enable_hr"] = True  # A1111's rule: a hires pass is recorded by its denoising strength and size
    overrides = dict(body.override_settings or {})
    for key, setting in INFOTEXT_SETTINGS.items():
        if key in params and setting not in overrides:
            overrides[setting] = params[key]
    updates["override_settings"] = overrides
    return body.model_copy(update=updates), warnings


def request_fields(body: Txt2ImgBody, user_model: str | None) -> tuple[dict[str, Any], list[str]]:
    """The fields of the project's request that the body asks for, and warnings about what it asked for but this
    app ignores. Raises RequestError for what this app cannot do and would silently get wrong."""
    warnings = [f"{name}: ignored (this app has no such option)" for name in sorted(body.model_extra or {})]
    for name in IGNORED_WHEN_SET:
        value = getattr(body, name)
        if value not in (None, False, [], {}, 0, 0.0, ""):
            warnings.append(f"{name}: ignored (not supported yet)")
    if body.enable_hr and isinstance(body, Img2ImgBody):
        warnings.append("enable_hr: ignored (hires fix is a txt2img option)")
    if body.tiling:
        raise RequestError("tiling", "tiling is not supported yet; send false or null")
    overrides = dict(body.override_settings or {})
    model = overrides.pop("sd_model_checkpoint", None) or user_model
    vae = overrides.pop("sd_vae", None)
    # A1111 settings that this app takes per job: the noise source and the eta noise seed delta.
    rng = overrides.pop("randn_source", None)
    ensd = overrides.pop("eta_noise_seed_delta", None)
    clip_skip = overrides.pop("CLIP_stop_at_last_layers", None)  # and the prompt encoding
    emphasis = overrides.pop("emphasis", None)
    warnings += [f"override_settings.{key}: ignored (no such setting here)" for key in sorted(overrides)]
    fields: dict[str, Any] = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "sampler_name": body.sampler_name or body.sampler_index,
        "scheduler": body.scheduler or "Automatic",
        "steps": body.steps,
        "cfg_scale": body.cfg_scale,
        "width": body.width,
        "height": body.height,
        "seed": body.seed,
        "batch_size": body.batch_size,
        "n_iter": body.n_iter,
        "model": _model_name(model) if model else None,
        "vae": vae,
        "subseed": body.subseed,
        "subseed_strength": body.subseed_strength,
        # A1111's API default is -1 and anything not above 0 means "off".
        "seed_resize_from_w": max(body.seed_resize_from_w, 0),
        "seed_resize_from_h": max(body.seed_resize_from_h, 0),
    }
    if rng is not None:
        if rng not in ("GPU", "CPU", "NV"):
            raise RequestError("override_settings.randn_source", f"{rng!r} is not one of 'GPU', 'CPU', 'NV'")
        fields["rng"] = rng
    if ensd is not None:
        fields["ensd"] = ensd
    if clip_skip is not None:
        fields["clip_skip"] = clip_skip  # the request schema checks the range
    if emphasis is not None:
        fields["emphasis"] = emphasis
    return fields, warnings


def hires_fields(body: Txt2ImgBody) -> dict[str, Any]:
    """txt2img's hires fix fields (A1111's API defaults: denoising 0.75, upscaler null = the default latent mode).

    A1111's legacy `firstphase_width/height` ask for the first pass at that size and the hires pass at
    `width` x `height`: the same as resizing to the requested size."""
    fields: dict[str, Any] = {
        "enable_hr": body.enable_hr,
        "denoising_strength": 0.75 if body.denoising_strength is None else body.denoising_strength,
        "hr_scale": body.hr_scale,
        "hr_upscaler": body.hr_upscaler,
        "hr_second_pass_steps": body.hr_second_pass_steps,
        "hr_resize_x": body.hr_resize_x,
        "hr_resize_y": body.hr_resize_y,
        "hr_checkpoint_name": _model_name(body.hr_checkpoint_name) if body.hr_checkpoint_name else None,
        "hr_sampler_name": body.hr_sampler_name,
        "hr_scheduler": body.hr_scheduler,
        "hr_prompt": body.hr_prompt,
        "hr_negative_prompt": body.hr_negative_prompt,
    }
    if body.enable_hr and (body.firstphase_width or body.firstphase_height):
        fields.update(width=body.firstphase_width or body.width, height=body.firstphase_height or body.height,
                      hr_resize_x=body.width, hr_resize_y=body.height)
    return fields


def _model_name(title: str) -> str:
    """A1111 clients send the title, `name [hash]`, or a file name: the model manager resolves the bare name."""
    name = str(title).strip()
    if name.endswith("]") and " [" in name:
        name = name[: name.rindex(" [")]
    return name


def strip_data_url(data: str) -> str:
    return data.split(",", 1)[1] if data.startswith("data:") and "," in data else data


def is_url(value: str) -> bool:
    return value.strip().lower().startswith(("http://", "https://", "file:", "ftp://"))

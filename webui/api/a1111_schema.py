"""A1111's `/sdapi/v1` request and response bodies, and their translation to the project's own requests.

Why a second schema beside `webui.services.requests`: A1111 clients send A1111's whole field set (about 60 fields,
many for features this app does not have, such as face restoration) with A1111's API defaults (50 steps, 512x512).
These wire models accept that shape as it is, so existing clients work unchanged; the translation then hands the
project's request schema only what it understands, where its constraints are checked. A field that asks for a
feature this app lacks is refused when it would change the image (hires fix, tiling) and reported as ignored when it
would not (styles, face restoration).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from webui.services.requests import RequestError

# Reported as ignored when set (the sampler noise knobs eta and s_* are not: clients send them by default).
IGNORED_WHEN_SET = ("styles", "restore_faces", "comments", "refiner_checkpoint", "refiner_switch_at")


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
    script_args: list[Any] | None = None
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


def request_fields(body: Txt2ImgBody, user_model: str | None) -> tuple[dict[str, Any], list[str]]:
    """The fields of the project's request that the body asks for, and warnings about what it asked for but this
    app ignores. Raises RequestError for what this app cannot do and would silently get wrong."""
    warnings = [f"{name}: ignored (this app has no such option)" for name in sorted(body.model_extra or {})]
    for name in IGNORED_WHEN_SET:
        value = getattr(body, name)
        if value not in (None, False, [], {}, 0, 0.0, ""):
            warnings.append(f"{name}: ignored (not supported yet)")
    if body.subseed_strength:
        raise RequestError("subseed_strength", "variation seeds are not supported yet; send 0")
    if body.enable_hr:
        raise RequestError("enable_hr", "hires fix is not supported yet; send false, then upscale with img2img")
    if body.tiling:
        raise RequestError("tiling", "tiling is not supported yet; send false or null")
    if body.script_name:
        raise RequestError("script_name", f"no selectable script named {body.script_name!r} here")
    overrides = dict(body.override_settings or {})
    model = overrides.pop("sd_model_checkpoint", None) or user_model
    vae = overrides.pop("sd_vae", None)
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
    }
    return fields, warnings


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

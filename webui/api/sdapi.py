"""`/sdapi/v1/*`: A1111's HTTP API over the app's services, so existing A1111 clients work unchanged.

Differences from A1111, all for sharing one server safely:
- generation goes through the job queue like the UI's, and every call acts for the logged-in user only: `progress`
  shows the caller's own job, `interrupt` and `skip` stop the caller's own jobs (A1111's are global);
- `POST options` with `sd_model_checkpoint`/`sd_vae` sets the caller's own default model and VAE (A1111 switches it
  for everyone); other settings need an admin;
- `cmd-flags` redacts secrets, and admin-only calls (refresh, settings) answer 403 to other users;
- `/sdapi/v1/queue` (an addition) lists the caller's jobs, and `jobs/{id}/cancel|skip` acts on one of them.
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
from dataclasses import asdict
from typing import Any, Callable

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from PIL import Image, UnidentifiedImageError

from webui.api.a1111_schema import (
    GenerationResponse,
    Img2ImgBody,
    PngInfoBody,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    QueueEntry,
    Txt2ImgBody,
    apply_infotext,
    hires_fields,
    is_url,
    request_fields,
    strip_data_url,
)
from webui.api.extras_api import ExtrasApi
from webui.api.job_http import run_to_completion, unprocessable
from webui.api.limits import ApiLimits
from webui.context import AppContext
from webui.services.hires import LATENT_MODES, hires_size
from webui.services.generation import APP_VERSION, GenerationOutOfMemory, GenerationResult
from webui.services.img2img import Img2ImgRequest, Img2ImgRunner
from webui.services.infotext import parse_infotext
from webui.services.jobs import Job
from webui.services.model_manager import ModelError
from webui.services.outputs import png_bytes, read_infotext
from webui.services.queue import UnknownJobError
from webui.services.requests import GenerationRequest, RequestError
from webui.services.scripts import ScriptService
from webui.services.uploads import UploadLimits, load_image_base64

SECRET_FLAG_WORDS = ("auth", "password", "token", "secret", "key")


def _b64_png(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _redact(flags: dict[str, Any]) -> dict[str, Any]:
    """`cmd-flags` without secrets: A1111 leaks `--gradio-auth` there (security case 23)."""
    return {key: ("<redacted>" if value and any(w in key.lower() for w in SECRET_FLAG_WORDS) else
                  str(value) if isinstance(value, os.PathLike) else value)
            for key, value in flags.items()}


def describe_validation_errors(errors: Any) -> dict[str, Any]:
    """FastAPI's 422 body without the rejected values (a NaN cannot even be written back as JSON, which made the
    default handler answer 500), led by one line that names the field."""
    cleaned = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part != "body"]
        cleaned.append({"loc": location, "msg": str(error.get("msg", "invalid")), "type": error.get("type")})
    first = cleaned[0] if cleaned else {"loc": [], "msg": "invalid request"}
    return {"detail": f"{'.'.join(first['loc']) or 'body'}: {first['msg']}", "errors": cleaned}


class ClearValidationRoute(APIRoute):
    """Answers body and query validation errors as `describe_validation_errors` does. A route class, because an app
    that is already serving (Gradio's) no longer takes new exception handlers."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def run(request: Request) -> Any:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return JSONResponse(status_code=422, content=describe_validation_errors(exc.errors()))

        return run


class SdApi:
    """The routes, and the one piece of per-user state they keep: each user's chosen checkpoint and VAE."""

    def __init__(self, context: AppContext, current_user: Callable[..., Any], require_admin: Callable[..., Any],
                 flags: dict[str, Any] | None = None, limits: ApiLimits | None = None,
                 upload_limits: UploadLimits | None = None) -> None:
        self.context = context
        self.current_user = current_user
        self.require_admin = require_admin
        self.flags = dict(flags or {})
        self.limits = limits or ApiLimits()
        self.upload_limits = upload_limits or UploadLimits.from_env()
        self.img2img_runner = Img2ImgRunner(context.samplers, context.controlnet.preprocessors)
        self.scripts = ScriptService(context.generation, context.extensions.scripts)  # `script_name` + `script_args`
        self._user_options: dict[str, dict[str, str]] = {}  # user -> {"sd_model_checkpoint": ..., "sd_vae": ...}

    # -- generation --------------------------------------------------------------------------------------------

    def _server_default(self) -> str | None:
        """The checkpoint of a user who chose none: the server's default, never whatever another user's job loaded
        last (that would let one user's choice change another's images)."""
        info = self.context.models.default_checkpoint()
        return info.name if info else None

    def _check_limits(self, request: GenerationRequest) -> None:
        limits = self.limits
        if isinstance(request.steps, int) and request.steps > limits.max_steps:
            raise RequestError("steps", f"{request.steps} is more than this server allows ({limits.max_steps})")
        for name in ("width", "height"):
            side = getattr(request, name)
            if isinstance(side, int) and side > limits.max_side:
                raise RequestError(name, f"{side} is larger than this server allows ({limits.max_side})")
        if request.enable_hr:
            self._check_hires_limits(request)
        count = request.batch_size * request.n_iter
        if count > limits.max_images:
            raise RequestError("n_iter", f"batch_size x n_iter = {count} images; this server allows "
                                         f"{limits.max_images} per request")

    def _check_hires_limits(self, request: GenerationRequest) -> None:
        """The hires pass's steps and size count against the same limits as the first pass's."""
        limits = self.limits
        if request.hr_second_pass_steps > limits.max_steps:
            raise RequestError("hr_second_pass_steps", f"{request.hr_second_pass_steps} is more than this server "
                                                       f"allows ({limits.max_steps})")
        if request.width is None or request.height is None:
            return
        size = hires_size(request.width, request.height, request.hr_scale, request.hr_resize_x, request.hr_resize_y)
        if max(size.upscale_to) > limits.max_side:
            field = "hr_resize_x" if request.hr_resize_x or request.hr_resize_y else "hr_scale"
            raise RequestError(field, f"the hires size {size.upscale_to[0]}x{size.upscale_to[1]} is larger than this "
                                      f"server allows ({limits.max_side} a side)")

    def _base_fields(self, body: Txt2ImgBody, user: Any) -> tuple[dict[str, Any], list[str]]:
        options = self._user_options.get(user.name, {})
        fields, warnings = request_fields(body, options.get("sd_model_checkpoint") or self._server_default())
        if body.styles:  # A1111 applies the styles to the prompts before anything else; the infotext shows the result
            fields["prompt"], fields["negative_prompt"] = self.context.styles.apply(
                fields["prompt"], fields["negative_prompt"], list(body.styles))
        if fields["vae"] is None and "sd_vae" in options:
            fields["vae"] = options["sd_vae"]
        extensions: dict[str, dict[str, Any]] = {}
        active = {record.name.lower(): record.name for record in self.context.extensions.active()}
        for name, value in (body.alwayson_scripts or {}).items():
            key = name.strip().lower()
            if key not in active:
                raise RequestError(f"alwayson_scripts.{name}", f"no active extension named {name!r} (active: "
                                                               f"{', '.join(sorted(active)) or 'none'})")
            if not isinstance(value, dict):
                raise RequestError(f"alwayson_scripts.{name}", 'must be an object like {"args": [...]}')
            extensions[active[key]] = value
        fields["extensions"] = extensions
        return fields, warnings

    async def _run(self, user: Any, request: GenerationRequest, runner: Any, body: Txt2ImgBody,
                   warnings: list[str]) -> GenerationResponse:
        def submit() -> Job:
            self._check_limits(request)
            save = bool(body.save_images) and not body.do_not_save_samples
            if body.script_name:  # a selectable script: its generations run as one job
                return self._submit_script(user, request, runner, body, save)
            return self.context.generation.submit(user.name, request, runner, save=save)

        job = await run_to_completion(submit)
        if job.status == "failed":
            exc = job.exception
            if isinstance(exc, GenerationOutOfMemory):  # the caches were freed; a smaller request can work now
                raise HTTPException(503, detail=str(exc))
            if isinstance(exc, (RequestError, ModelError, ValueError)):
                raise unprocessable(exc)
            raise HTTPException(500, detail=f"generation failed: {job.error}")
        result: GenerationResult = job.result or GenerationResult(interrupted=True)  # cancelled before it started
        return self._response(job, result, body, warnings)

    def _submit_script(self, user: Any, request: GenerationRequest, runner: Any, body: Txt2ImgBody, save: bool
                       ) -> Job:
        """Check the script's arguments and each generation it plans against this server's limits, then queue it."""
        mode = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        prepared = self.scripts.prepare(str(body.script_name), body.script_args, request, mode)
        for planned in prepared.requests:
            self._check_limits(planned)
        total = sum(planned.batch_size * planned.n_iter for planned in prepared.requests)
        if total > self.limits.max_images:
            raise RequestError("script_args", f"the script would make {total} images; this server allows "
                                              f"{self.limits.max_images} per request")
        return self.scripts.submit(user.name, prepared, request, runner, save=save)

    def _response(self, job: Job, result: GenerationResult, body: Txt2ImgBody, warnings: list[str]
                  ) -> GenerationResponse:
        images = []
        if body.send_images:
            for index, (image, infotext) in enumerate(zip(result.images, result.infotexts)):
                path = result.paths[index] if index < len(result.paths) else None
                data = open(path, "rb").read() if path and os.path.isfile(path) else png_bytes(image, infotext)
                images.append(_b64_png(data))
        info = self._info(result, job, warnings)
        info["styles"] = list(body.styles or [])  # as A1111: the names; the prompts already hold their text
        parameters = body.model_dump(exclude={"init_images", "mask"})
        return GenerationResponse(images=images, parameters=parameters, info=json.dumps(info))

    def _info(self, result: GenerationResult, job: Job, warnings: list[str]) -> dict[str, Any]:
        """A1111's `info` keys, read back from the first image's own infotext so the two always agree."""
        request = result.request
        first = parse_infotext(result.infotexts[0]) if result.infotexts else {}
        seeds = list(result.seeds)
        return {
            "prompt": request.prompt if request else "",
            "all_prompts": [request.prompt] * len(seeds) if request else [],
            "negative_prompt": request.negative_prompt if request else "",
            "all_negative_prompts": [request.negative_prompt] * len(seeds) if request else [],
            "seed": seeds[0] if seeds else (request.seed if request else -1),
            "all_seeds": seeds,
            "subseed": result.subseeds[0] if result.subseeds else (request.subseed if request else -1),
            "all_subseeds": list(result.subseeds),
            "subseed_strength": request.subseed_strength if request else 0,
            "width": request.width if request else 0, "height": request.height if request else 0,
            "sampler_name": request.sampler_name if request else "",
            "cfg_scale": request.cfg_scale if request else 0, "steps": request.steps if request else 0,
            "batch_size": request.batch_size if request else 1,
            "restore_faces": False, "face_restoration_model": None,
            "sd_model_name": first.get("Model"), "sd_model_hash": first.get("Model hash"),
            "sd_vae_name": first.get("VAE"), "sd_vae_hash": first.get("VAE hash"),
            "seed_resize_from_w": request.seed_resize_from_w if request and request.seed_resize_from_w else -1,
            "seed_resize_from_h": request.seed_resize_from_h if request and request.seed_resize_from_h else -1,
            "denoising_strength": getattr(request, "denoising_strength", None),
            "extra_generation_params": {k: v for k, v in first.items()
                                        if k not in ("Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale",
                                                     "Seed", "Size", "Size-1", "Size-2", "Model", "Model hash")},
            "index_of_first_image": 0,
            "infotexts": list(result.infotexts),
            "styles": [],
            "job_timestamp": datetime.datetime.fromtimestamp(job.created).strftime("%Y%m%d%H%M%S"),
            "clip_skip": 1,
            "is_using_inpainting_conditioning": False,
            "version": APP_VERSION,
            "job_id": job.id,
            "queue_seconds": round((job.started or job.created) - job.created, 3),
            "interrupted": result.interrupted,
            "warnings": [*warnings, *result.warnings],
        }

    async def txt2img(self, body: Txt2ImgBody, user: Any) -> GenerationResponse:
        body, pasted = apply_infotext(body)
        try:
            fields, warnings = self._base_fields(body, user)
            request = GenerationRequest(**{**fields, **hires_fields(body)})
        except (RequestError, ValueError) as exc:
            raise unprocessable(exc) from exc
        return await self._run(user, request, None, body, [*pasted, *warnings])

    def _image(self, value: str, field: str) -> Image.Image:
        if not isinstance(value, str) or not value:
            raise RequestError(field, "expected a base64-encoded image")
        if is_url(value):
            raise RequestError(field, "image URLs are not fetched (the server never makes outgoing requests); "
                                      "send the image as base64")
        return load_image_base64(strip_data_url(value), field, self.upload_limits)

    async def img2img(self, body: Img2ImgBody, user: Any) -> GenerationResponse:
        body, pasted = apply_infotext(body)
        try:
            fields, warnings = self._base_fields(body, user)
            warnings = [*pasted, *warnings]
            if not body.init_images:
                raise RequestError("init_images", "send one base64 image in init_images")
            if len(body.init_images) > 1:
                warnings.append("init_images: only the first image is used")
            init_image = self._image(body.init_images[0], "init_images")
            mask = self._image(body.mask, "mask") if body.mask else None
            request = Img2ImgRequest(
                **fields,
                init_image=init_image,
                mask=mask,
                denoising_strength=0.75 if body.denoising_strength is None else body.denoising_strength,
                resize_mode=body.resize_mode,
                mask_blur=body.mask_blur if body.mask_blur is not None else max(body.mask_blur_x, body.mask_blur_y),
                inpainting_fill=body.inpainting_fill,
                inpaint_full_res=body.inpaint_full_res,
                inpaint_full_res_padding=body.inpaint_full_res_padding,
                inpainting_mask_invert=body.inpainting_mask_invert,
            )
        except (RequestError, ValueError) as exc:
            raise unprocessable(exc) from exc
        response = await self._run(user, request, self.img2img_runner, body, warnings)
        if body.include_init_images and response.images is not None:
            response.images.append(strip_data_url(body.init_images[0]))
        return response

    # -- progress and control ------------------------------------------------------------------------------------

    def _jobs_of(self, user: Any) -> list[Job]:
        return [j for j in self.context.jobs.jobs_of(user.name) if j.kind != "train-lora"]

    def progress(self, user: Any, skip_current_image: bool) -> ProgressResponse:
        mine = [j for j in self._jobs_of(user) if not j.finished]
        running = next((j for j in mine if j.status == "running"), None)
        if running is None:
            if mine:  # waiting in the queue
                ahead = self.context.queue.jobs_ahead(mine[0]) or 0
                return ProgressResponse(progress=0.0, eta_relative=0.0,
                                        state=ProgressState(job=mine[0].id, job_count=len(mine)),
                                        textinfo=f"queued: {ahead} job(s) ahead")
            return ProgressResponse(progress=0.0, eta_relative=0.0, state=ProgressState())
        preview = None if skip_current_image else running.preview_image()
        current = None
        if preview is not None:
            buffer = io.BytesIO()
            preview.save(buffer, format="PNG")
            current = _b64_png(buffer.getvalue())
        state = ProgressState(
            skipped=running.skip_requested, interrupted=running.interrupted, job=running.id, job_count=len(mine),
            job_timestamp=datetime.datetime.fromtimestamp(running.created).strftime("%Y%m%d%H%M%S"),
            job_no=running.batches_done, sampling_step=running.step, sampling_steps=running.total_steps,
        )
        return ProgressResponse(progress=round(running.progress_fraction(), 4),
                                eta_relative=round(running.seconds_left() or 0.0, 2), state=state,
                                current_image=current, textinfo=None)

    def _entry(self, job: Job) -> QueueEntry:
        return QueueEntry(id=job.id, owner=job.owner, kind=job.kind, status=job.status,
                          position=self.context.queue.position(job), progress=round(job.progress_fraction(), 4),
                          eta_seconds=job.seconds_left(), error=job.error)

    def queue_entries(self, user: Any) -> list[QueueEntry]:
        jobs = self.context.jobs.unfinished() if user.is_admin else self._jobs_of(user)
        return [self._entry(job) for job in jobs]

    def _act_on(self, action: Callable[[str, str, bool], Job], job_id: str, user: Any) -> QueueEntry:
        """Cancel or skip one job; another user's job answers 404, as if it did not exist."""
        try:
            return self._entry(action(job_id, user.name, user.is_admin))
        except UnknownJobError as exc:
            raise HTTPException(404, detail=str(exc)) from exc

    # -- options and listings ------------------------------------------------------------------------------------

    def options(self, user: Any) -> dict[str, Any]:
        context = self.context
        settings = context.settings
        values = {key: settings.get(key) for key in settings.specs}
        mine = self._user_options.get(user.name, {})
        name = mine.get("sd_model_checkpoint") or self._server_default()
        try:  # A1111 answers with the title, `name [hash]`, which clients send back as they got it
            values["sd_model_checkpoint"] = context.models.display_title(context.models.resolve(name)) if name else None
        except ModelError:
            values["sd_model_checkpoint"] = name
        values["sd_vae"] = mine.get("sd_vae", context.models.vae_choice)
        return values

    def set_options(self, user: Any, changes: dict[str, Any]) -> bool:
        personal = {k: changes.pop(k) for k in ("sd_model_checkpoint", "sd_vae") if k in changes}
        try:
            if "sd_model_checkpoint" in personal:
                info = self.context.models.resolve(_bare(str(personal["sd_model_checkpoint"])))
                personal["sd_model_checkpoint"] = info.name
            if "sd_vae" in personal:
                personal["sd_vae"] = self.context.models.check_vae(str(personal["sd_vae"]))
        except (ModelError, ValueError) as exc:
            raise unprocessable(exc) from exc
        if changes:
            if not user.is_admin:
                raise HTTPException(403, detail="changing settings needs an admin; you may set sd_model_checkpoint "
                                                "and sd_vae for yourself")
            known = set(self.context.settings.specs)
            unknown = sorted(set(changes) - known)
            if unknown:
                raise HTTPException(422, detail=f"{unknown[0]}: no such setting (GET /sdapi/v1/options lists them)")
            try:
                self.context.settings.update(changes)
            except ValueError as exc:
                raise unprocessable(exc) from exc
        self._user_options.setdefault(user.name, {}).update(personal)
        return True

    def sd_models(self) -> list[dict[str, Any]]:
        models = self.context.models
        listing = []
        for info in models.checkpoints():
            short = models.hashes.cached_short_hash(info.path)
            full = None  # hashing multi-GB files for a listing would stall the call; the title has it once known
            listing.append({"title": models.display_title(info), "model_name": info.name.replace("/", "_"),
                            "hash": short, "sha256": full, "filename": str(info.path), "config": None})
        return listing

    def loras(self) -> list[dict[str, Any]]:
        return [{"name": info.name, "alias": info.alias or info.name, "path": str(info.path),
                 "metadata": dict(info.metadata)} for info in self.context.loras.loras()]

    def embeddings(self) -> dict[str, Any]:
        listing = self.context.embeddings.listing(self.context.models.active)
        loaded = {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                         "shape": int(next(iter(e.vectors.values())).shape[-1]), "vectors": e.vector_count}
                  for name, e in listing.loaded.items()}
        skipped = {name: {} for name in listing.skipped}
        return {"loaded": loaded, "skipped": skipped, "broken": dict(listing.broken)}

    def extensions(self) -> list[dict[str, Any]]:
        """A1111's listing plus each extension's status and error (our addition)."""
        listing = []
        for record in self.context.extensions.records:
            manifest = record.manifest
            listing.append({"name": record.name, "remote": None, "branch": None, "commit_hash": None,
                            "version": getattr(manifest, "version", None), "commit_date": None,
                            "enabled": record.enabled, "builtin": record.builtin, "status": record.status,
                            "error": record.error})
        return listing

    def png_info(self, body: PngInfoBody) -> PngInfoResponse:
        try:
            raw = base64.b64decode(strip_data_url(body.image), validate=False)
            with Image.open(io.BytesIO(raw)) as image:
                items = {k: v for k, v in image.info.items() if isinstance(v, (str, int, float))}
                text = read_infotext(image) or ""
        except (UnidentifiedImageError, ValueError, OSError) as exc:
            raise HTTPException(422, detail=f"image: not a readable image ({type(exc).__name__})") from exc
        items.pop("parameters", None)
        return PngInfoResponse(info=text, items=items, parameters=parse_infotext(text) if text else {})

    def memory(self) -> dict[str, Any]:
        """A1111's `ram` and `cuda` figures, plus `models`: each loaded checkpoint, where it is and its bytes."""
        import torch

        page, pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES")
        available = os.sysconf("SC_AVPHYS_PAGES") * page
        ram = {"free": available, "used": page * pages - available, "total": page * pages}
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            cuda: dict[str, Any] = {"system": {"free": free, "used": total - free, "total": total},
                                    "active": {"current": torch.cuda.memory_allocated(),
                                               "peak": torch.cuda.max_memory_allocated()}}
        else:
            cuda = {"error": "no CUDA device"}
        models = [asdict(entry) for entry in self.context.models.residency()]
        return {"ram": ram, "cuda": cuda, "models": models}

    # -- the router -------------------------------------------------------------------------------------------------

    def router(self) -> APIRouter:
        user_dep, admin_dep = Depends(self.current_user), Depends(self.require_admin)
        api = APIRouter(prefix="/sdapi/v1", tags=["sdapi"], route_class=ClearValidationRoute)
        context = self.context

        @api.post("/txt2img", response_model=GenerationResponse)
        async def txt2img(body: Txt2ImgBody, user: Any = user_dep) -> GenerationResponse:
            return await self.txt2img(body, user)

        @api.post("/img2img", response_model=GenerationResponse)
        async def img2img(body: Img2ImgBody, user: Any = user_dep) -> GenerationResponse:
            return await self.img2img(body, user)

        @api.get("/progress", response_model=ProgressResponse)
        def progress(skip_current_image: bool = Query(False), user: Any = user_dep) -> ProgressResponse:
            return self.progress(user, skip_current_image)

        @api.post("/interrupt")
        def interrupt(user: Any = user_dep) -> dict[str, int]:
            return {"interrupted": context.queue.cancel_all_of(user.name)}

        @api.post("/skip")
        def skip(user: Any = user_dep) -> dict[str, bool]:
            return {"skipped": context.queue.skip_running_of(user.name)}

        @api.get("/queue", response_model=list[QueueEntry])
        def queue(user: Any = user_dep) -> list[QueueEntry]:
            return self.queue_entries(user)

        @api.post("/jobs/{job_id}/cancel", response_model=QueueEntry)
        def cancel_job(job_id: str, user: Any = user_dep) -> QueueEntry:
            return self._act_on(context.queue.cancel, job_id, user)

        @api.post("/jobs/{job_id}/skip", response_model=QueueEntry)
        def skip_job(job_id: str, user: Any = user_dep) -> QueueEntry:
            return self._act_on(context.queue.skip, job_id, user)

        @api.get("/options")
        def get_options(user: Any = user_dep) -> dict[str, Any]:
            return self.options(user)

        @api.post("/options")
        def set_options(changes: dict[str, Any], user: Any = user_dep) -> bool:
            return self.set_options(user, dict(changes))

        @api.get("/cmd-flags")
        def cmd_flags(user: Any = user_dep) -> dict[str, Any]:
            return _redact(self.flags)

        @api.get("/samplers")
        def samplers(user: Any = user_dep) -> list[dict[str, Any]]:
            listing = []
            for name in context.samplers.names():
                spec = context.samplers.resolve(name)[0]
                listing.append({"name": name, "aliases": list(spec.aliases), "options": {}})
            return listing

        @api.get("/schedulers")
        def schedulers(user: Any = user_dep) -> list[dict[str, Any]]:
            return [{"name": label.lower().replace(" ", "_"), "label": label, "aliases": None, "default_rho": -1,
                     "need_inner_model": False} for label in context.samplers.schedule_names()]

        @api.get("/latent-upscale-modes")
        def latent_upscale_modes(user: Any = user_dep) -> list[dict[str, str]]:
            return [{"name": name} for name in LATENT_MODES]

        @api.get("/sd-models")
        def sd_models(user: Any = user_dep) -> list[dict[str, Any]]:
            return self.sd_models()

        @api.get("/sd-vae")
        def sd_vae(user: Any = user_dep) -> list[dict[str, Any]]:
            return [{"model_name": name, "filename": str(context.paths.vae_dir / name)}
                    for name in context.models.vae_names() if name not in ("Automatic", "None")]

        @api.post("/refresh-checkpoints")
        def refresh_checkpoints(user: Any = admin_dep) -> None:
            context.models.refresh()

        @api.post("/unload-checkpoint")
        def unload_checkpoint(user: Any = admin_dep) -> dict[str, list[str]]:
            """Drop every loaded checkpoint from the device and RAM, after the running job (A1111's endpoint)."""
            with context.jobs.device_lock:
                names = [entry.name for entry in context.models.residency()]
                for name in names:
                    context.models.unload(name)
            return {"unloaded": names}

        @api.post("/refresh-vae")
        def refresh_vae(user: Any = admin_dep) -> None:
            context.models.refresh()

        @api.get("/loras")
        def loras(user: Any = user_dep) -> list[dict[str, Any]]:
            return self.loras()

        @api.post("/refresh-loras")
        def refresh_loras(user: Any = admin_dep) -> None:
            context.loras.refresh()

        @api.get("/embeddings")
        def embeddings(user: Any = user_dep) -> dict[str, Any]:
            return self.embeddings()

        @api.post("/refresh-embeddings")
        def refresh_embeddings(user: Any = admin_dep) -> None:
            self.embeddings()  # the library rescans on every listing

        @api.post("/png-info", response_model=PngInfoResponse)
        def png_info(body: PngInfoBody, user: Any = user_dep) -> PngInfoResponse:
            return self.png_info(body)

        @api.get("/prompt-styles")
        def prompt_styles(user: Any = user_dep) -> list[dict[str, str]]:
            """The install's styles.csv, as A1111 lists it."""
            return [{"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt}
                    for style in context.styles.styles()]

        @api.get("/memory")
        def memory(user: Any = user_dep) -> dict[str, Any]:
            return self.memory()

        @api.get("/workers")
        def workers(user: Any = user_dep) -> dict[str, Any]:
            """Where generation jobs run: this process, or the Ray workers with their state, host, device, job,
            failures and the checkpoints they hold (a worker out of rotation is listed with its last error)."""
            pool = context.queue.pool
            if pool is None:
                return {"mode": "in-process", "workers": []}
            return {"mode": pool.description, "workers": pool.report()}

        @api.get("/scripts")
        def scripts(user: Any = user_dep) -> dict[str, list[str]]:
            """The selectable scripts (`script_name`, lower-case titles as A1111 lists them), then the always-on
            "scripts", which are extensions here (`alwayson_scripts` takes these names)."""
            names = [record.name.lower() for record in context.extensions.active()]
            return {mode: [script.name for script in self.scripts.scripts(mode)] + names
                    for mode in ("txt2img", "img2img")}

        @api.get("/script-info")
        def script_info(user: Any = user_dep) -> list[dict[str, Any]]:
            """A1111's script-info: each selectable script's arguments in positional order (label, name, default,
            range, choices), per mode; then the extensions as always-on scripts."""
            listing = [*self.scripts.info("txt2img"), *self.scripts.info("img2img")]
            for record in context.extensions.active():
                for is_img2img in (False, True):
                    listing.append({"name": record.name.lower(), "is_alwayson": True, "is_img2img": is_img2img,
                                    "args": []})
            return listing

        @api.get("/extensions")
        def extensions(user: Any = user_dep) -> list[dict[str, Any]]:
            return self.extensions()

        ExtrasApi(context, self._image).add_routes(api, user_dep, admin_dep)  # upscalers, extra-single/batch-image
        return api


def _bare(title: str) -> str:
    return title[: title.rindex(" [")] if title.endswith("]") and " [" in title else title

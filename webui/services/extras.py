"""Extras: upscale finished images (one, or a batch) with one or two upscalers, as A1111's Extras tab does.

The UI and `/sdapi/v1/extra-*` both come here. The work runs as a queued job (model upscalers use the device, so
they wait their turn like generation does), reports its tiles as progress, can be interrupted between tiles, and
saves each result under `outputs/extras-images` with A1111's postprocessing keys appended to the source's own
infotext (so PNG Info and "send to" still find the original prompt).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from webui.services.infotext import parse_infotext
from webui.services.jobs import Job
from webui.services.outputs import OutputSaveError, OutputStore
from webui.services.queue import JobQueue
from webui.services.requests import RequestError
from webui.services.upscalers import NONE, UpscalerError, UpscalerLibrary

MODE = "extras-images"  # the output mode, and its default folder (setting `core.outdir_extras_samples`)
MAX_SIDE = 8192  # A1111's "Scale to" slider maximum; larger results would not fit a browser or most viewers
MAX_SCALE = 8.0  # A1111's "Resize" slider maximum
MAX_IMAGES = 64  # one batch request


@dataclass(frozen=True)
class ExtrasRequest:
    """A1111's Extras fields under their API names (resize_mode 0 = scale by, 1 = scale to)."""

    resize_mode: int = 0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = NONE
    upscaler_2: str = NONE
    upscaler_2_visibility: float = 0.0


@dataclass(frozen=True)
class ExtrasInput:
    """One image to process: its name (A1111's imageList `name`), the decoded image, and the infotext its file held
    (kept in the saved result, so PNG Info and "send to" still find the original prompt)."""

    name: str
    image: Image.Image
    infotext: str | None = None


@dataclass
class ExtrasResult:
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)  # what each saved file holds
    postprocess: list[str] = field(default_factory=list)  # the postprocessing keys alone (A1111's html_info)
    names: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False


class ExtrasInterrupted(Exception):
    """Raised between tiles when the job is interrupted."""


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _quote(value: str) -> str:
    """A1111's infotext quoting: values with a comma, colon or quote are JSON-quoted."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


class ExtrasService:
    """Checks Extras requests, runs them as jobs through the queue, saves and describes the results."""

    def __init__(self, upscalers: UpscalerLibrary, outputs: OutputStore, queue: JobQueue) -> None:
        self.upscalers = upscalers
        self.outputs = outputs
        self.queue = queue

    def check(self, request: ExtrasRequest, count: int = 1) -> None:
        """Every field's range and each upscaler's name, before any work is queued (RequestError names the field)."""
        names = self.upscalers.names()
        for field_name, value in (("upscaler_1", request.upscaler_1), ("upscaler_2", request.upscaler_2)):
            try:
                self.upscalers.get(value)
            except UpscalerError:
                raise RequestError(field_name, f"unknown upscaler {value!r}; choose one of: {', '.join(names)}"
                                   ) from None
        if request.resize_mode not in (0, 1):
            raise RequestError("resize_mode", "use 0 (scale by upscaling_resize) or 1 (scale to width x height)")
        if request.resize_mode == 0 and not (0 < request.upscaling_resize <= MAX_SCALE):
            raise RequestError("upscaling_resize", f"must be above 0 and at most {MAX_SCALE:g}")
        if request.resize_mode == 1:
            for field_name, value in (("upscaling_resize_w", request.upscaling_resize_w),
                                      ("upscaling_resize_h", request.upscaling_resize_h)):
                if not 1 <= value <= MAX_SIDE:
                    raise RequestError(field_name, f"must be between 1 and {MAX_SIDE} pixels")
        if not 0 <= request.upscaler_2_visibility <= 1:
            raise RequestError("extras_upscaler_2_visibility", "must be between 0 and 1")
        if count < 1:
            raise RequestError("image", "send at least one image")
        if count > MAX_IMAGES:
            raise RequestError("imageList", f"at most {MAX_IMAGES} images per request, not {count}")

    def output_size(self, image: Image.Image, request: ExtrasRequest) -> tuple[int, int]:
        """The result's size (A1111's rule: "scale to" without crop keeps the aspect and covers the box)."""
        if request.resize_mode == 1:
            if request.upscaling_crop:
                return request.upscaling_resize_w, request.upscaling_resize_h
            ratio = max(request.upscaling_resize_w / image.width, request.upscaling_resize_h / image.height)
        else:
            ratio = request.upscaling_resize
        return max(1, round(image.width * ratio)), max(1, round(image.height * ratio))

    def _resize(self, image: Image.Image, request: ExtrasRequest, name: str,
                on_tile: Callable[[int, int], None]) -> Image.Image:
        if request.resize_mode == 1 and request.upscaling_crop:
            # A1111's Extras: scaled by the larger ratio, then the centre cut out (never a black border)
            width, height = request.upscaling_resize_w, request.upscaling_resize_h
            ratio = max(width / image.width, height / image.height)
            covered = self.upscalers.upscale(image, ratio, name, on_tile=on_tile)
            left, top = (covered.width - width) // 2, (covered.height - height) // 2
            return covered.crop((left, top, left + width, top + height))
        width, height = self.output_size(image, request)
        return self.upscalers.upscale(image, width / image.width if request.resize_mode == 1 else
                                      request.upscaling_resize, name, on_tile=on_tile)

    def postprocess_keys(self, image: Image.Image, request: ExtrasRequest) -> dict[str, str]:
        """A1111's keys, in its order: upscale by (or to), crop to, upscaler, upscaler 2 (when it counts)."""
        keys: dict[str, str] = {}
        if request.resize_mode == 1:
            keys["Postprocess upscale to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
            if request.upscaling_crop:
                keys["Postprocess crop to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
        else:
            keys["Postprocess upscale by"] = _format_number(request.upscaling_resize)
        keys["Postprocess upscaler"] = self.upscalers.get(request.upscaler_1).name
        if request.upscaler_2 != NONE and request.upscaler_2_visibility > 0:
            keys["Postprocess upscaler 2"] = self.upscalers.get(request.upscaler_2).name  # A1111 omits the blend
        return keys

    def process(self, image: Image.Image, request: ExtrasRequest,
                on_tile: Callable[[int, int], None] = lambda done, total: None) -> tuple[Image.Image, str]:
        """One image: upscaler 1, then upscaler 2 blended in by its visibility; returns it and its keys' text."""
        width, height = self.output_size(image, request)
        if max(width, height) > MAX_SIDE:
            raise RequestError("upscaling_resize", f"the result would be {width}x{height}; the largest side allowed "
                                                   f"is {MAX_SIDE}: choose a smaller factor")
        source = image.convert("RGB")
        if request.upscaler_1 == NONE:  # A1111 leaves the image alone then (and ignores upscaler 2)
            return source, ""
        result = self._resize(source, request, request.upscaler_1, on_tile)
        if request.upscaler_2 != NONE and request.upscaler_2_visibility > 0:
            second = self._resize(source, request, request.upscaler_2, on_tile)
            result = Image.blend(result, second.convert(result.mode), request.upscaler_2_visibility)
        keys = self.postprocess_keys(image, request)
        text = ", ".join(f"{key}: {_quote(value)}" for key, value in keys.items())
        return result, text

    def submit(self, owner: str, images: Sequence[ExtrasInput], request: ExtrasRequest, save: bool = True) -> Job:
        """Queue the work; `images` have been through the upload checks. job.result is an ExtrasResult (partial
        when interrupted)."""
        self.check(request, len(images))
        items = list(images)

        def work(job: Job) -> ExtrasResult:
            result = ExtrasResult()
            job.batches_total = len(items)
            job.result = result

            def on_tile(done: int, total: int) -> None:
                job.step, job.total_steps = done, total
                job.touch()
                if job.interrupted:
                    raise ExtrasInterrupted()

            for index, item in enumerate(items):
                name, image, source_text = item.name, item.image, item.infotext
                if job.interrupted:
                    break
                job.step, job.total_steps = 0, 1
                try:
                    upscaled, keys = self.process(image, request, on_tile)
                except ExtrasInterrupted:
                    break
                infotext = ", ".join(part for part in (source_text, keys) if part)
                result.images.append(upscaled)
                result.infotexts.append(infotext)
                result.postprocess.append(keys)
                result.names.append(name)
                if save:
                    seed = parse_infotext(source_text).get("Seed") if source_text else None
                    try:
                        result.paths.append(self.outputs.save_image(
                            upscaled, infotext, MODE, 0, owner,
                            fields={"seed": seed, "width": upscaled.width, "height": upscaled.height}))
                    except OutputSaveError as exc:  # the image is still returned; the message names the path
                        result.warnings.append(str(exc))
                job.batches_done = index + 1
                job.step = job.total_steps
                job.touch()
            result.interrupted = job.interrupted and len(result.images) < len(items)
            return result

        return self.queue.submit(owner, "extras", work)

"""`/sdapi/v1/upscalers`, `extra-single-image` and `extra-batch-images`: A1111's Extras API over ExtrasService.

Same rules as the generation routes: the caller's login, the upload checks on every image (no URLs fetched), the
work queued as the caller's job (one device job at a time), the job interrupted when the client goes away.
"""

from __future__ import annotations

import base64
import html
from typing import Any, Callable

from fastapi import APIRouter, HTTPException
from PIL import Image

from webui.api.a1111_schema import (
    ExtrasBaseBody,
    ExtrasBatchImagesBody,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageBody,
    ExtrasSingleImageResponse,
    UpscalerItem,
    strip_data_url,
)
from webui.api.job_http import run_to_completion, unprocessable
from webui.context import AppContext
from webui.services.extras import ExtrasInput, ExtrasRequest, ExtrasResult
from webui.services.outputs import png_bytes, read_infotext
from webui.services.requests import RequestError
from webui.services.upscalers import UpscalerError

# (base64 value, field name) -> the decoded image, through the same upload checks as img2img's init_images
ImageLoader = Callable[[str, str], Image.Image]


def extras_request(body: ExtrasBaseBody) -> ExtrasRequest:
    """The service's request from A1111's fields; face restoration (not in this app) is refused when asked for."""
    for name in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(body, name):
            raise RequestError(name, "face restoration is not available in this app; send 0")
    return ExtrasRequest(
        resize_mode=body.resize_mode,
        upscaling_resize=body.upscaling_resize,
        upscaling_resize_w=body.upscaling_resize_w,
        upscaling_resize_h=body.upscaling_resize_h,
        upscaling_crop=body.upscaling_crop,
        upscaler_1=body.upscaler_1,
        upscaler_2=body.upscaler_2,
        upscaler_2_visibility=body.extras_upscaler_2_visibility,
    )


def _decode(loader: ImageLoader, value: str, field: str, name: str) -> ExtrasInput:
    image = loader(value, field)
    try:
        infotext = read_infotext(base64.b64decode(strip_data_url(value), validate=False))
    except ValueError:
        infotext = None
    return ExtrasInput(name=name, image=image, infotext=infotext)


def html_info(result: ExtrasResult) -> str:
    """A1111 answers the last image's postprocessing text as a paragraph of HTML."""
    text = result.postprocess[-1] if result.postprocess else ""
    return f"<p>{html.escape(text)}</p>"


class ExtrasApi:
    def __init__(self, context: AppContext, load_image: ImageLoader) -> None:
        self.context = context
        self.load_image = load_image

    async def _run(self, user: Any, inputs: list[ExtrasInput], body: ExtrasBaseBody) -> ExtrasResult:
        job = await run_to_completion(
            lambda: self.context.extras.submit(user.name, inputs, extras_request(body), save=body.save_images))
        if job.status == "failed":
            exc = job.exception
            if isinstance(exc, UpscalerError) and "not enough memory" in str(exc):
                raise HTTPException(503, detail=str(exc))
            if isinstance(exc, (RequestError, UpscalerError, ValueError)):
                raise unprocessable(exc)
            raise HTTPException(500, detail=f"upscaling failed: {job.error}")
        return job.result or ExtrasResult(interrupted=True)

    @staticmethod
    def _encoded(result: ExtrasResult, index: int) -> str:
        return base64.b64encode(png_bytes(result.images[index], result.infotexts[index])).decode("ascii")

    async def single(self, body: ExtrasSingleImageBody, user: Any) -> ExtrasSingleImageResponse:
        try:
            inputs = [_decode(self.load_image, body.image, "image", "image")]
        except RequestError as exc:
            raise unprocessable(exc) from exc
        result = await self._run(user, inputs, body)
        image = self._encoded(result, 0) if body.show_extras_results and result.images else ""
        return ExtrasSingleImageResponse(html_info=html_info(result), image=image)

    async def batch(self, body: ExtrasBatchImagesBody, user: Any) -> ExtrasBatchImagesResponse:
        try:
            self.context.extras.check(extras_request(body), len(body.imageList))
            inputs = [_decode(self.load_image, item.data, f"imageList.{index}.data", item.name or f"image{index}")
                      for index, item in enumerate(body.imageList)]
        except RequestError as exc:
            raise unprocessable(exc) from exc
        result = await self._run(user, inputs, body)
        images = [self._encoded(result, i) for i in range(len(result.images))] if body.show_extras_results else []
        return ExtrasBatchImagesResponse(html_info=html_info(result), images=images)

    def upscalers(self) -> list[UpscalerItem]:
        return [UpscalerItem(name=item.name, model_name=item.model_name, model_path=item.model_path,
                             model_url=item.model_url, scale=item.scale)
                for item in self.context.upscalers.describe()]

    def add_routes(self, api: APIRouter, user_dep: Any, admin_dep: Any) -> None:
        """Called from SdApi.router with its dependencies, so these routes share its auth and error handling."""

        @api.get("/upscalers", response_model=list[UpscalerItem])
        def upscalers(user: Any = user_dep) -> list[UpscalerItem]:
            return self.upscalers()

        @api.post("/refresh-upscalers")
        def refresh_upscalers(user: Any = admin_dep) -> None:
            """Rescan the upscaler folders (our addition; A1111 scans only at start)."""
            self.context.upscalers.refresh()

        @api.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
        async def extra_single_image(body: ExtrasSingleImageBody, user: Any = user_dep) -> ExtrasSingleImageResponse:
            return await self.single(body, user)

        @api.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse)
        async def extra_batch_images(body: ExtrasBatchImagesBody, user: Any = user_dep) -> ExtrasBatchImagesResponse:
            return await self.batch(body, user)

"""img2img, inpaint and outpaint as generation modes: the request type and its `ModeRunner`s.

`Img2ImgRequest` extends `GenerationRequest` with A1111's img2img fields (API names, UI defaults), so the UI, the
API and the CLI share it. The images in it are already decoded and checked (`webui.services.uploads`). When neither
width nor height is given, the generation size is the input's own size: the image is padded up to a size the model
accepts and the output is cropped back (`restore_size`).

Depth models (SD 2 depth) need a depth map: the request's `depth_image` when one was uploaded, otherwise the
depth_midas preprocessor's estimate from the init image, when the runner was given a preprocessor runner and the
MiDaS weights are in its folder. They cannot inpaint or outpaint.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, Sequence

from PIL import Image
from pydantic import Field
from pydantic.json_schema import SkipJsonSchema

from webui.engine.denoise import DenoiseExtension
from webui.engine.generation import SamplingParams
from webui.engine.img2img import INPAINTING_FILL_LABELS, LATENT_NOISE, ORIGINAL, Img2ImgOptions, img2img
from webui.engine.loader import LoadedModel
from webui.engine.masking import (  # noqa: F401 (RESIZE_MODE_LABELS re-exported for the tab)
    RESIZE_MODE_LABELS, binary_mask, blur_reach, is_empty, outpaint_canvas,
)
from webui.engine.preprocessors import PreprocessorError, PreprocessorRunner, default_preprocessors
from webui.engine.samplers import SamplerRegistry
from webui.services.requests import (
    NOT_BOOL,
    Finite,
    GenerationRequest,
    RequestError,
    Whole,
    request_schema,
    size_multiple,
)

MAX_OUTPAINT = 2048
ASPECT_TOLERANCE = 0.01
DEPTH_PREPROCESSOR = "depth_midas"


def _ceil(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@request_schema
class Img2ImgRequest(GenerationRequest):
    """img2img/inpaint/outpaint parameters: A1111 API field names, A1111 UI defaults (§6 of the compat notes).

    The images are not part of the JSON schema: they arrive decoded and checked, by whichever interface read them."""

    init_image: SkipJsonSchema[Image.Image | None] = None  # decoded, checked RGB image
    mask: SkipJsonSchema[Image.Image | None] = None  # None: plain img2img; white/opaque = repaint
    denoising_strength: Finite = Field(0.75, ge=0, le=1)
    resize_mode: Annotated[Literal[0, 1, 2, 3], NOT_BOOL] = Field(
        0, description="0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale")
    mask_blur: Whole = Field(4, ge=0, le=64)
    inpainting_mask_invert: Annotated[Literal[0, 1], NOT_BOOL] = Field(
        0, description="0 inpaint masked, 1 inpaint not masked")
    inpainting_fill: Annotated[Literal[0, 1, 2, 3], NOT_BOOL] = Field(
        ORIGINAL, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(False, description="inpaint area: only masked")
    inpaint_full_res_padding: Whole = Field(32, ge=0, le=256)
    outpaint_left: Whole = Field(0, ge=0, le=MAX_OUTPAINT, multiple_of=8)
    outpaint_right: Whole = Field(0, ge=0, le=MAX_OUTPAINT, multiple_of=8)
    outpaint_up: Whole = Field(0, ge=0, le=MAX_OUTPAINT, multiple_of=8)
    outpaint_down: Whole = Field(0, ge=0, le=MAX_OUTPAINT, multiple_of=8)
    outpaint_fill: Literal["edge", "noise"] = Field(
        "edge", description="the new border starts as edge extension, or as latent noise")
    restore_size: SkipJsonSchema[tuple[int, int] | None] = None  # set from the image when no size is given
    depth_image: SkipJsonSchema[Image.Image | None] = None  # depth models: depth map aligned with init_image

    def __post_init__(self) -> None:
        """Without a size the generation size is the input's (padded later to the model's multiple); with one side
        the other keeps the image's aspect ratio. Runs after the fields are validated."""
        if self.init_image is None or self.restore_size is not None:
            return
        w = self.init_image.width + self.outpaint_left + self.outpaint_right
        h = self.init_image.height + self.outpaint_up + self.outpaint_down
        if self.width is None and self.height is None:
            self.restore_size = (w, h)
            self.width, self.height = _ceil(max(64, w), 8), _ceil(max(64, h), 8)
        elif self.height is None:  # one side given: keep the image's aspect ratio
            self.height = max(64, round(h * self.width / w / 8) * 8)
        elif self.width is None:
            self.width = max(64, round(w * self.height / h / 8) * 8)

    @property
    def is_outpaint(self) -> bool:
        return any((self.outpaint_left, self.outpaint_right, self.outpaint_up, self.outpaint_down))


def _mask_for(request: Img2ImgRequest) -> Image.Image | None:
    if request.mask is None:
        return None
    mask = binary_mask(request.mask)
    if request.inpainting_mask_invert:
        mask = Image.eval(mask, lambda v: 255 - v)
    return mask


def _same_shape(field: str, what: str, size: tuple[int, int], image_size: tuple[int, int]) -> None:
    """A map drawn for the image may be another size, but not another shape (it would no longer line up)."""
    (iw, ih), (mw, mh) = image_size, size
    if (mw, mh) != (iw, ih) and abs(mw / mh - iw / ih) > ASPECT_TOLERANCE * iw / ih:
        raise RequestError(field, f"the {what} is {mw}x{mh} but the image is {iw}x{ih}; use a {what} with the "
                                  f"image's shape (a same-shaped {what} of another size is scaled)")


class Img2ImgRunner:
    """img2img, and inpainting when the request has a mask. Results go to outputs/img2img/<date>/ like A1111.

    `depth_estimator` estimates depth maps for depth models when no depth image is uploaded: the app's
    PreprocessorRunner (the ControlNet service's, so networks are cached once), or the folder of preprocessor weights
    (models/ControlNetPreprocessor) to build one on the CPU. Without it, depth models need an uploaded depth image.
    """

    mode = "img2img"

    def __init__(
        self, samplers: SamplerRegistry, depth_estimator: PreprocessorRunner | Path | str | None = None
    ) -> None:
        self.samplers = samplers
        if isinstance(depth_estimator, (str, Path)):
            depth_estimator = PreprocessorRunner(default_preprocessors(), Path(depth_estimator))
        self.depth_estimator = depth_estimator

    def validate(self, request: GenerationRequest, model: LoadedModel) -> Img2ImgRequest:
        if not isinstance(request, Img2ImgRequest):
            raise RequestError("init_image", "img2img needs an image request")
        if request.init_image is None:
            raise RequestError("init_image", "no image: upload one (or send one from txt2img or PNG Info)")
        self._validate_mask(request)
        valid = self._with_depth(request, model)
        if valid.restore_size is not None:  # size from the image: pad up to what this model accepts
            multiple = size_multiple(model)
            valid = replace(valid, width=_ceil(valid.width, multiple), height=_ceil(valid.height, multiple))
        return valid

    def _validate_mask(self, request: Img2ImgRequest) -> None:
        mask = _mask_for(request)
        if mask is None:
            return
        _same_shape("mask", "mask", mask.size, request.init_image.size)
        if is_empty(mask):
            raise RequestError("mask", "the mask is empty: nothing to inpaint (paint over the area to change)")

    def _with_depth(self, request: Img2ImgRequest, model: LoadedModel) -> Img2ImgRequest:
        """Depth models: refuse a mask, check an uploaded depth image, or estimate one (once per request)."""
        if model.variant != "depth":
            if request.depth_image is not None:
                raise RequestError("depth_image", f"{model.name} is not a depth model, so it cannot use a depth image; "
                                                  "remove the depth image or choose a depth model (SD 2 depth)")
            return request
        if request.mask is not None:
            raise RequestError("mask", f"{model.name} is a depth model, which cannot inpaint (it has no mask input); "
                                       "remove the mask for depth-guided img2img, or inpaint with another model")
        if request.depth_image is not None:
            _same_shape("depth_image", "depth image", request.depth_image.size, request.init_image.size)
            return request
        if request.denoising_strength <= 0:  # nothing is denoised, so nothing reads a depth map
            return request
        return replace(request, depth_image=self._estimate_depth(request.init_image, model))

    def _estimate_depth(self, image: Image.Image, model: LoadedModel) -> Image.Image:
        need = f"{model.name} is a depth model and needs a depth map"
        if self.depth_estimator is None:
            raise RequestError("depth_image", f"{need}: upload a depth image (no depth preprocessor is set up here)")
        try:
            return self.depth_estimator.run(DEPTH_PREPROCESSOR, image, -1)  # -1: the preprocessor's own resolution
        except PreprocessorError as exc:  # weights missing (the message names the file and folder) or refused
            raise RequestError("depth_image", f"{need}: {exc}; or upload a depth image") from exc

    def options(self, request: Img2ImgRequest) -> Img2ImgOptions:
        return Img2ImgOptions(
            denoising_strength=request.denoising_strength,
            resize_mode=request.resize_mode,
            mask=request.mask,
            mask_blur=request.mask_blur,
            invert_mask=bool(request.inpainting_mask_invert),
            inpainting_fill=request.inpainting_fill,
            inpaint_full_res=request.inpaint_full_res,
            inpaint_full_res_padding=request.inpaint_full_res_padding,
            restore_size=request.restore_size,
            depth_map=request.depth_image,
        )

    def sample(
        self,
        model: LoadedModel,
        request: Img2ImgRequest,
        params: SamplingParams,
        extensions: Sequence[DenoiseExtension],
    ) -> list[Image.Image]:
        return img2img(model, params, self.samplers, request.init_image, self.options(request), extensions)

    def infotext_params(self, request: Img2ImgRequest) -> dict[str, Any]:
        """A1111's keys: Denoising strength always; the inpaint keys only where A1111 writes them."""
        params: dict[str, Any] = {"Denoising strength": request.denoising_strength}
        if request.mask is None:
            return params
        if request.inpainting_mask_invert:
            params["Mask mode"] = "Inpaint not masked"
        if request.mask_blur > 0:
            params["Mask blur"] = request.mask_blur
        if request.inpainting_fill != ORIGINAL:
            params["Masked content"] = INPAINTING_FILL_LABELS[request.inpainting_fill]
        if request.inpaint_full_res:
            params["Inpaint area"] = "Only masked"
            params["Masked area padding"] = request.inpaint_full_res_padding
        return params


class OutpaintRunner(Img2ImgRunner):
    """Outpainting: a bigger canvas whose new borders are inpainted, meeting the original in a soft seam."""

    def validate(self, request: GenerationRequest, model: LoadedModel) -> Img2ImgRequest:
        if not isinstance(request, Img2ImgRequest):
            raise RequestError("init_image", "outpaint needs an image request")
        if model.variant == "depth":
            raise RequestError("model", f"{model.name} is a depth model, which cannot outpaint (it has no mask input); "
                                        "choose an inpainting or normal model")
        if not request.is_outpaint:
            raise RequestError("outpaint_left", "choose how many pixels to add on at least one side")
        if request.mask is not None:
            raise RequestError("mask", "outpaint makes its own mask; leave the mask empty")
        return super().validate(request, model)

    @staticmethod
    def canvas(request: Img2ImgRequest) -> tuple[Image.Image, Image.Image]:
        """Edge-extended canvas and its mask; the mask reaches into the original by the seam overlap."""
        overlap = max(8, blur_reach(request.mask_blur))
        return outpaint_canvas(
            request.init_image, request.outpaint_left, request.outpaint_right, request.outpaint_up,
            request.outpaint_down, overlap,
        )

    @staticmethod
    def _fill(request: Img2ImgRequest) -> int:
        """"noise" starts the new area from latent noise; "edge" keeps the edge-extended pixels (or the chosen fill)."""
        if request.outpaint_fill == "noise" and request.inpainting_fill == ORIGINAL:
            return LATENT_NOISE
        return request.inpainting_fill

    def options(self, request: Img2ImgRequest) -> Img2ImgOptions:
        options = super().options(request)
        options.inpainting_fill = self._fill(request)
        return options

    def sample(self, model, request: Img2ImgRequest, params, extensions) -> list[Image.Image]:
        canvas, mask = self.canvas(request)
        filled = replace(request, init_image=canvas, mask=mask, inpainting_mask_invert=0)
        return img2img(model, params, self.samplers, canvas, self.options(filled), extensions)

    def infotext_params(self, request: Img2ImgRequest) -> dict[str, Any]:
        as_inpaint = replace(request, mask=Image.new("L", (1, 1), 255), inpainting_mask_invert=0,
                             inpainting_fill=self._fill(request))
        params = super().infotext_params(as_inpaint)
        params["Outpaint"] = (
            f"left {request.outpaint_left}, right {request.outpaint_right}, "
            f"up {request.outpaint_up}, down {request.outpaint_down}, fill {request.outpaint_fill}"
        )
        return params

"""Hires fix for txt2img, as A1111 runs it: checks, infotext keys and the two passes of one batch.

The request carries A1111's fields (`enable_hr`, `hr_scale`, `hr_upscaler`, ...). A batch runs its first pass at the
request's size, is upscaled (a latent mode, or an image upscaler of the app's `UpscalerLibrary`), switches to the
hires checkpoint if one is named, and runs img2img at `denoising_strength` with the hires sampler, schedule, steps and
prompts, then switches back. Progress counts both passes as one bar. Every denoise extension (Interrupt and Skip,
progress, step hooks, CFG rescale, ...) follows into the second pass except ControlNet units, whose control images
were set up for the first pass's size.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from PIL import Image

from webui.engine.denoise import DenoiseExtension
from webui.engine.controlnet import ControlNetExtension
from webui.engine.denoise_extensions import Progress
from webui.engine.generation import SamplingParams, generate_latents, latents_to_images
from webui.engine.hires import (
    LATENT_UPSCALE_MODES,
    HiresSize,
    hires_pass,
    hires_size,
    images_to_hires_latents,
    is_latent_mode,
    latent_upscale,
    upscaled_images,
)
from webui.engine.img2img import img2img_steps
from webui.engine.loader import LoadedModel
from webui.engine.prompt_parser import schedule_steps
from webui.engine.samplers import SamplerError, SamplerRegistry
from webui.services.embeddings import EmbeddingLibrary
from webui.services.extra_networks import extract_tags
from webui.services.model_manager import ModelError, ModelManager, ModelRecipe
from webui.services.requests import MAX_SIDE, GenerationRequest, RequestError

# What A1111's UI shows for "the first pass's choice" (sent as None through the API).
SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER = "Use same checkpoint", "Use same sampler", "Use same scheduler"
LATENT_MODES = tuple(LATENT_UPSCALE_MODES)


class ImageUpscalers(Protocol):
    """The part of the app's UpscalerLibrary (webui.services.upscalers) hires fix uses."""

    def names(self) -> list[str]: ...

    def upscale_to(self, image: Image.Image, width: int, height: int, name: str, crop: bool = False
                   ) -> Image.Image: ...


class PillowOnly:
    """None / Lanczos / Nearest without model upscalers, for a service built without the upscaler library (tests of
    the bare service, the CLI): the same resizes A1111 makes for these three."""

    _RESAMPLE = {"Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}

    def names(self) -> list[str]:
        return ["None", *self._RESAMPLE]

    def upscale_to(self, image: Image.Image, width: int, height: int, name: str, crop: bool = False
                   ) -> Image.Image:
        image = image.convert("RGB")
        if name in self._RESAMPLE and max(width / image.width, height / image.height) > 1:
            scale = max(width / image.width, height / image.height)
            image = image.resize((round(image.width * scale), round(image.height * scale)), self._RESAMPLE[name])
        return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)


def _same(value: str | None, same: str) -> str | None:
    """None for "use the first pass's" in any of its spellings (None, "", A1111's "Use same ...")."""
    return None if value in (None, "", same) else value


def upscaler_names(upscalers: ImageUpscalers) -> list[str]:
    """The "Upscaler" dropdown: the latent modes first, then the image upscalers, as in A1111."""
    return [*LATENT_MODES, *upscalers.names()]


@dataclass(frozen=True)
class HiresPlan:
    """What a validated request's second pass does."""

    size: HiresSize
    upscaler: str | None  # None: A1111's default latent mode
    sampler: str
    schedule: str
    steps: int
    checkpoint: str | None  # None: the first pass's model
    prompt: str  # as typed (tags included); "" means the first pass's
    negative_prompt: str


class HiresFix:
    """Validates, describes and runs hires fix for the txt2img runner."""

    def __init__(self, samplers: SamplerRegistry, models: ModelManager | None = None,
                 upscalers: ImageUpscalers | None = None, embeddings: EmbeddingLibrary | None = None) -> None:
        self.samplers = samplers
        self.models = models
        self.upscalers: ImageUpscalers = upscalers or PillowOnly()
        self.embeddings = embeddings

    # -- checks -------------------------------------------------------------------------------------------------

    def plan(self, request: GenerationRequest, model: LoadedModel) -> HiresPlan:
        """The second pass of `request` on `model`; raises RequestError naming the field for anything it cannot do."""
        upscaler = request.hr_upscaler or None
        if upscaler is not None and upscaler not in LATENT_UPSCALE_MODES and upscaler not in self.upscalers.names():
            raise RequestError("hr_upscaler", f"no upscaler named {upscaler!r}; choose one of: "
                                              f"{', '.join(upscaler_names(self.upscalers))}")
        width, height = (given or default for given, default in zip((request.width, request.height),
                                                                       model.default_resolution))
        size = hires_size(width, height, request.hr_scale, request.hr_resize_x, request.hr_resize_y,
                          model.vae_downscale)
        final_w, final_h = size.final_size
        field = "hr_scale" if not (request.hr_resize_x or request.hr_resize_y) else (
            "hr_resize_x" if request.hr_resize_x else "hr_resize_y")
        if max(*size.upscale_to, final_w, final_h) > MAX_SIDE:
            raise RequestError(field, f"the hires size {size.upscale_to[0]}x{size.upscale_to[1]} is larger than "
                                      f"{MAX_SIDE} pixels a side; lower the upscale factor or the resize size")
        if min(final_w, final_h) < 64:
            raise RequestError(field, f"the hires size {final_w}x{final_h} is smaller than 64 pixels a side; raise it")
        sampler = _same(request.hr_sampler_name, SAME_SAMPLER) or request.sampler_name
        schedule = _same(request.hr_scheduler, SAME_SCHEDULER) or request.scheduler
        try:
            spec, schedule = self.samplers.resolve(sampler, schedule)
            spec.config_for(schedule, model.prediction_type)
        except SamplerError as exc:
            name = "hr_sampler_name" if exc.field_name == "sampler_name" else "hr_scheduler"
            raise RequestError(name, str(exc)) from exc
        checkpoint = _same(request.hr_checkpoint_name, SAME_CHECKPOINT)
        if checkpoint is not None:
            if self.models is None:
                raise RequestError("hr_checkpoint_name", "a hires checkpoint needs the model manager here")
            try:
                info = self.models.resolve(checkpoint)
            except ModelError as exc:
                raise RequestError("hr_checkpoint_name", str(exc)) from exc
            checkpoint = None if info.name == model.name else info.name
        return HiresPlan(size, upscaler, spec.name, schedule, request.hr_second_pass_steps or request.steps,
                         checkpoint, request.hr_prompt, request.hr_negative_prompt)

    def validate(self, request: GenerationRequest, model: LoadedModel) -> GenerationRequest:
        if request.enable_hr:
            self.plan(request, model)
        return request

    # -- infotext -----------------------------------------------------------------------------------------------

    def infotext_params(self, request: GenerationRequest) -> dict[str, Any]:
        """A1111's keys in its order: `Denoising strength` (a core key), then Hires checkpoint, sampler, prompt,
        negative prompt, schedule type, upscale or resize, steps, upscaler; each only where A1111 writes it."""
        if not request.enable_hr:
            return {}
        params: dict[str, Any] = {"Denoising strength": request.denoising_strength}
        checkpoint = _same(request.hr_checkpoint_name, SAME_CHECKPOINT)
        if checkpoint is not None and self.models is not None:
            try:
                params["Hires checkpoint"] = self.models.title(self.models.resolve(checkpoint))
            except ModelError:
                params["Hires checkpoint"] = checkpoint
        first_spec, first_schedule = self.samplers.resolve(request.sampler_name, request.scheduler)
        hr_sampler = _same(request.hr_sampler_name, SAME_SAMPLER)
        hr_spec, hr_schedule = self.samplers.resolve(hr_sampler or request.sampler_name,
                                                     _same(request.hr_scheduler, SAME_SCHEDULER) or request.scheduler)
        if hr_sampler is not None and hr_spec.name != first_spec.name:
            params["Hires sampler"] = hr_spec.name
        if request.hr_prompt and request.hr_prompt != request.prompt:
            params["Hires prompt"] = request.hr_prompt
        if request.hr_negative_prompt and request.hr_negative_prompt != request.negative_prompt:
            params["Hires negative prompt"] = request.hr_negative_prompt
        if hr_schedule != first_schedule:
            params["Hires schedule type"] = hr_schedule
        if request.hr_resize_x == 0 and request.hr_resize_y == 0:
            params["Hires upscale"] = request.hr_scale
        else:
            params["Hires resize"] = f"{request.hr_resize_x}x{request.hr_resize_y}"
        if request.hr_second_pass_steps:
            params["Hires steps"] = request.hr_second_pass_steps
        if request.hr_upscaler:
            params["Hires upscaler"] = request.hr_upscaler
        return params

    # -- running ------------------------------------------------------------------------------------------------

    def sample(self, model: LoadedModel, request: GenerationRequest, params: SamplingParams,
               extensions: Sequence[DenoiseExtension]) -> list[Image.Image]:
        """Both passes of one batch: len(params.seeds) hires images."""
        plan = self.plan(request, model)
        second_total = img2img_steps(plan.steps, request.denoising_strength)
        counter = _TwoPassProgress(extensions, second_total)
        latents = generate_latents(model, params, self.samplers, counter.first_pass())
        if is_latent_mode(plan.upscaler):
            images, upscaled = None, latent_upscale(latents, plan.upscaler, plan.size)
        else:
            images = upscaled_images(model, latents, plan.size, self._image_upscaler(plan.upscaler))
        with self._hires_model(model, plan, request) as hires_model:
            if images is not None:
                upscaled = images_to_hires_latents(hires_model, images, plan.size)
            prompt, _ = extract_tags(plan.prompt) if plan.prompt else (params.prompt, [])
            negative, _ = extract_tags(plan.negative_prompt) if plan.negative_prompt else (params.negative_prompt, [])
            embeddings = params.embeddings
            if hires_model is not model and self.embeddings is not None:
                embeddings = self.embeddings.for_model(hires_model)
            width, height = plan.size.final_size
            second = replace(params, prompt=prompt, negative_prompt=negative, sampler=plan.sampler,
                             schedule=plan.schedule, steps=plan.steps, width=width, height=height,
                             embeddings=embeddings,
                             # A1111's `firstpass_steps`: the first pass's model calls (two a step for Heun, DPM2)
                             first_pass_steps=schedule_steps(params.sampler, params.steps))
            result = hires_pass(hires_model, second, self.samplers, upscaled, request.denoising_strength,
                                counter.second_pass())
            return latents_to_images(hires_model, result)

    def _image_upscaler(self, name: str | None) -> Callable[[Image.Image, int, int], Image.Image]:
        upscalers = self.upscalers
        return lambda image, width, height: upscalers.upscale_to(image, width, height, str(name))

    @contextmanager
    def _hires_model(self, model: LoadedModel, plan: HiresPlan, request: GenerationRequest
                     ) -> Iterator[LoadedModel]:
        """The hires checkpoint for the second pass (with the request's VAE), then the first model back on the
        device for the job's next batch, as A1111 switches back after each hires pass."""
        if plan.checkpoint is None or self.models is None:
            yield model
            return
        try:
            recipe = ModelRecipe(checkpoint=plan.checkpoint, vae=request.vae or self.models.vae_choice)
            with self.models.checkout(recipe) as hires_model:
                yield hires_model
        finally:
            self.models.get(model.name)


class _TwoPassProgress:
    """One progress bar over both passes: the first pass reports out of (its steps + the second pass's), the second
    continues from where the first ended. ControlNet units stay in the first pass."""

    def __init__(self, extensions: Sequence[DenoiseExtension], second_total: int) -> None:
        self.extensions = list(extensions)
        self.second_total = second_total
        self.first_total = 0

    def _first(self, callback: Callable[[int, int, torch.Tensor], None]) -> Callable[[int, int, torch.Tensor], None]:
        def report(step: int, total: int, latents: torch.Tensor) -> None:
            self.first_total = total
            callback(step, total + self.second_total, latents)
        return report

    def _second(self, callback: Callable[[int, int, torch.Tensor], None]) -> Callable[[int, int, torch.Tensor], None]:
        return lambda step, total, latents: callback(self.first_total + step, self.first_total + total, latents)

    def first_pass(self) -> list[DenoiseExtension]:
        return [Progress(self._first(ext.callback)) if isinstance(ext, Progress) else ext for ext in self.extensions]

    def second_pass(self) -> list[DenoiseExtension]:
        return [Progress(self._second(ext.callback)) if isinstance(ext, Progress) else ext
                for ext in self.extensions if not _first_pass_only(ext)]


def _first_pass_only(extension: DenoiseExtension) -> bool:
    """ControlNet units hold control images at the first pass's size (A1111's ControlNet has its own hires options);
    an extension's own ones come wrapped by the extension manager."""
    return isinstance(getattr(extension, "inner", extension), ControlNetExtension)

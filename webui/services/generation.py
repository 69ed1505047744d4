"""The generation service: validates a request, runs it as a job on the engine, saves every image as it finishes.

Interfaces (Gradio, HTTP, CLI) call `run`; none of them touches the engine directly. Each mode (txt2img here;
img2img, inpaint, outpaint elsewhere) is a `ModeRunner`: it validates its own extra inputs and samples one batch,
while the service owns everything modes share: model choice, seeds, batches, jobs, progress, previews and saving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

import torch
from PIL import Image

from webui.engine.denoise import DenoiseExtension, Interrupted, free_device_memory
from webui.engine.denoise_extensions import Interrupt, Progress, StepHook, StepHooks
from webui.engine.generation import SamplingParams, txt2img
from webui.engine.loader import DepthMapRequired, LoadedModel
from webui.engine.preview import fit_latent_to_rgb
from webui.engine.samplers import SamplerError, SamplerRegistry
from webui.services.embeddings import EmbeddingLibrary
from webui.services.extra_networks import ExtraNetworkActivation, ExtraNetworkTag, extract_tags, unhandled
from webui.services.infotext import format_infotext
from webui.services.jobs import Job
from webui.services.model_manager import ModelManager, ModelRecipe
from webui.services.outputs import OutputSaveError, OutputStore
from webui.services.queue import JobQueue
from webui.services.requests import GenerationRequest, RequestError, resolve_for_model, seeds_for_iteration

APP_VERSION = "0.1.0"


ProgressFn = Callable[[int, int, torch.Tensor], None]


class ModeRunner(Protocol):
    """One generation mode. `sample` returns one image per seed."""

    mode: str  # the output folder name and the job kind, e.g. "txt2img"

    def validate(self, request: GenerationRequest, model: LoadedModel) -> GenerationRequest: ...

    def sample(
        self,
        model: LoadedModel,
        request: GenerationRequest,
        params: SamplingParams,
        extensions: Sequence[DenoiseExtension],
    ) -> list[Image.Image]: ...

    def infotext_params(self, request: GenerationRequest) -> dict[str, Any]: ...


class GenerationHooks(Protocol):
    """Extension points around a job (implemented by the extension manager)."""

    def before_generate(self, request: GenerationRequest) -> GenerationRequest: ...

    def extra_networks(self, tags: list[ExtraNetworkTag], request: GenerationRequest) -> ExtraNetworkActivation: ...

    def step_hooks(self, request: GenerationRequest) -> list[StepHook]: ...

    def denoise_extensions(self, request: GenerationRequest, model: LoadedModel) -> list[DenoiseExtension]: ...

    def after_decode(self, images: list[Image.Image], request: GenerationRequest) -> list[Image.Image]: ...

    def on_save(self, params: dict[str, Any], request: GenerationRequest) -> dict[str, Any]: ...


class NoHooks:
    """Hooks that change nothing (CLI without extensions, tests of the bare service)."""

    def before_generate(self, request: GenerationRequest) -> GenerationRequest:
        return request

    def extra_networks(self, tags: list[ExtraNetworkTag], request: GenerationRequest) -> ExtraNetworkActivation:
        return unhandled(tags)

    def step_hooks(self, request: GenerationRequest) -> list[StepHook]:
        return []

    def denoise_extensions(self, request: GenerationRequest, model: LoadedModel) -> list[DenoiseExtension]:
        return []

    def after_decode(self, images: list[Image.Image], request: GenerationRequest) -> list[Image.Image]:
        return images

    def on_save(self, params: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
        return params


class Txt2ImgRunner:
    """txt2img: nothing beyond the shared request."""

    mode = "txt2img"

    def __init__(self, samplers: SamplerRegistry) -> None:
        self.samplers = samplers

    def validate(self, request: GenerationRequest, model: LoadedModel) -> GenerationRequest:
        if model.variant == "depth":
            raise RequestError("model", str(DepthMapRequired(model.name)))
        return request

    def sample(self, model, request, params, extensions) -> list[Image.Image]:
        return txt2img(model, params, self.samplers, extensions)

    def infotext_params(self, request: GenerationRequest) -> dict[str, Any]:
        return {}


class GenerationOutOfMemory(RuntimeError):
    """The device ran out of memory; its caches were freed, so the next (smaller) job works."""


@dataclass
class GenerationResult:
    """What a finished (or interrupted) job produced. Saved paths may be missing if saving failed."""

    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    request: GenerationRequest | None = None
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)


class GenerationService:
    """Owns nothing long-lived itself; it composes the model manager, jobs, outputs and the sampler table."""

    def __init__(
        self,
        models: ModelManager,
        outputs: OutputStore,
        samplers: SamplerRegistry,
        queue: JobQueue,
        preview_every: int = 3,
        hooks: GenerationHooks | None = None,
        embeddings: EmbeddingLibrary | None = None,
    ) -> None:
        self.models = models
        self.outputs = outputs
        self.samplers = samplers
        self.queue = queue
        self.preview_every = preview_every
        self.hooks: GenerationHooks = hooks or NoHooks()
        self.embeddings = embeddings  # textual inversion (models/embeddings), a core feature as in A1111
        self._preview_factors: dict[int, torch.Tensor] = {}
        self.txt2img = Txt2ImgRunner(samplers)

    def validate(self, request: GenerationRequest, model: LoadedModel, runner: ModeRunner | None = None
                 ) -> GenerationRequest:
        """Check a request against the model it will run on; raises RequestError with a one-line message.

        The fields were checked when the request was built (the schema); what is left depends on the mode and model."""
        valid = (runner or self.txt2img).validate(request, model)
        try:
            spec, schedule = self.samplers.resolve(valid.sampler_name, valid.scheduler)
            spec.config_for(schedule, model.prediction_type)
        except SamplerError as exc:
            raise RequestError(exc.field_name, str(exc)) from exc
        return resolve_for_model(valid, model)

    def recipe(self, request: GenerationRequest, activation: ExtraNetworkActivation) -> ModelRecipe:
        """The model a request runs on: its checkpoint, its VAE (or the app's default), its LoRA patches."""
        vae = self.models.check_vae(request.vae) if request.vae else self.models.vae_choice
        return ModelRecipe(checkpoint=request.model, vae=vae, patches=tuple(activation.patches))

    def infotext(
        self, request: GenerationRequest, model: LoadedModel, seed: int, extra: dict[str, Any] | None = None
    ) -> str:
        spec, schedule = self.samplers.resolve(request.sampler_name, request.scheduler)
        params = {
            "Steps": request.steps,
            "Sampler": spec.name,
            "Schedule type": schedule,
            "CFG scale": request.cfg_scale,
            "Seed": seed,
            "Size": f"{request.width}x{request.height}",
            "Model hash": self.models.model_hash(model),
            "Model": model.name,
            "VAE hash": self.models.vae_hash(request.vae or ""),
            "VAE": self.models.vae_title(request.vae or ""),
            **(extra or {}),
            "Version": f"LatentStudio {APP_VERSION}",
        }
        return format_infotext(request.prompt, request.negative_prompt, self.hooks.on_save(params, request))

    def _preview_factors_for(self, model: LoadedModel) -> torch.Tensor:
        key = id(model.vae)
        if key not in self._preview_factors:
            self._preview_factors = {key: fit_latent_to_rgb(model)}  # one model at a time
        return self._preview_factors[key]

    def submit(self, owner: str, request: GenerationRequest, runner: ModeRunner | None = None, save: bool = True
               ) -> Job:
        """Queue a generation for `owner`; returns the job at once (watch it, or `queue.wait` for it).

        The default VAE is the one chosen when the job was submitted, not when it starts. `save=False` (the HTTP
        API's `save_images: false`) returns the images without writing them to the outputs folder."""
        runner = runner or self.txt2img
        if not request.vae:
            request = replace(request, vae=self.models.vae_choice)
        return self.queue.submit(owner, runner.mode, lambda job: self.run(job, request, runner, save))

    def run(self, job: Job, request: GenerationRequest, runner: ModeRunner | None = None, save: bool = True
            ) -> GenerationResult:
        """Run a job to completion (or interruption) on this thread; the queue's worker calls it holding the device.

        The job's model is checked out for it alone: its VAE and its LoRAs (from `<lora:...>` tags, which are removed
        from the prompt the text encoder sees but kept in the infotext) apply only while it runs.
        """
        runner = runner or self.txt2img
        result = GenerationResult()
        if not request.vae:
            request = replace(request, vae=self.models.vae_choice)
        job.result = result
        job.set_status("running")
        try:
            request = self.hooks.before_generate(request)
            prompt, tags = extract_tags(request.prompt)
            negative, negative_tags = extract_tags(request.negative_prompt)
            activation = self.hooks.extra_networks([*tags, *negative_tags], request)
            result.warnings.extend(activation.warnings)
            with self.models.checkout(self.recipe(request, activation)) as model:
                self._generate(job, request, runner, model, prompt, negative, activation, result, save)
            job.set_status("done")
        except Interrupted:
            result.interrupted = True
            job.set_status("interrupted")
        except torch.OutOfMemoryError as exc:
            free_device_memory(self.models.device)  # the next job starts with the allocator's cache emptied
            kept = f"; {len(result.images)} finished image(s) were kept" if result.images else ""
            message = (f"out of memory on {self.models.device} at {request.width}x{request.height}, batch size "
                       f"{request.batch_size}{kept}. Lower the size or the batch size, or close other programs "
                       "using the device, then try again")
            job.error = message
            job.set_status("failed")
            raise GenerationOutOfMemory(message) from exc
        except Exception as exc:
            job.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            job.set_status("failed")
            raise
        return result

    def _generate(self, job: Job, request: GenerationRequest, runner: ModeRunner, model: LoadedModel, prompt: str,
                  negative: str, activation: ExtraNetworkActivation, result: GenerationResult, save: bool = True
                  ) -> None:
        valid = self.validate(request, model, runner)
        embeddings = self.embeddings.for_model(model) if self.embeddings else None
        extra_info = {**activation.infotext, **runner.infotext_params(valid)}
        if self.embeddings and embeddings:
            extra_info.update(self.embeddings.infotext(embeddings, prompt, negative))
        result.request = valid
        job.batches_total = valid.n_iter
        step_hooks = self.hooks.step_hooks(valid)
        feature_extensions = self.hooks.denoise_extensions(valid, model)  # ControlNet units, ...
        for iteration in range(valid.n_iter):
            seeds = seeds_for_iteration(valid, iteration)
            params = SamplingParams(
                prompt=prompt,
                negative_prompt=negative,
                sampler=valid.sampler_name,
                schedule=valid.scheduler,
                steps=valid.steps,
                cfg_scale=valid.cfg_scale,
                width=valid.width,
                height=valid.height,
                seeds=seeds,
                embeddings=embeddings,
            )

            def on_progress(step: int, total: int, latents: torch.Tensor) -> None:
                if job.sampling_started is None:
                    job.sampling_started = time.time()
                job.step, job.total_steps = step, total
                if self.preview_every and (step % self.preview_every == 0) and step < total:
                    job.preview_factors = self._preview_factors_for(model)
                    job.preview_latents = latents
                    job.preview_version += 1
                job.touch()

            extensions = [
                Interrupt(lambda: job.interrupted or job.skip_requested), *feature_extensions, StepHooks(step_hooks),
                Progress(on_progress),
            ]
            try:
                images = runner.sample(model, valid, params, extensions)
            except Interrupted:
                if job.interrupted or not job.skip_requested:
                    raise
                job.clear_skip()  # Skip drops this batch only; the next one starts
                job.batches_done, job.step = iteration + 1, 0
                job.touch()
                continue
            images = self.hooks.after_decode(images, valid)
            for image, seed in zip(images, seeds):
                info = self.infotext(valid, model, seed, extra_info)
                self._keep(result, image, info, seed, runner.mode, save, job.owner)
            job.batches_done = iteration + 1
            job.step = 0
            job.clear_skip()  # a Skip that came while decoding has nothing left to skip
            job.touch()
            if job.interrupted:
                raise Interrupted()

    def _keep(self, result: GenerationResult, image: Image.Image, infotext: str, seed: int, mode: str,
              save: bool = True, owner: str | None = None) -> None:
        result.images.append(image)
        result.infotexts.append(infotext)
        result.seeds.append(seed)
        if not save:
            return
        try:
            result.paths.append(str(self.outputs.save_png(image, infotext, mode, seed, owner)))
        except OutputSaveError as exc:  # the image is still returned to the user
            result.warnings.append(str(exc))

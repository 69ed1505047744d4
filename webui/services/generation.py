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
from webui.engine.preview import decode_for_preview, fit_latent_to_rgb, identity_factors
from webui.engine.samplers import SamplerError, SamplerRegistry
from webui.engine.conditioning import TextOptions
from webui.engine.prompt_parser import DEFAULT_EMPHASIS, PromptSyntaxError, plan_prompt, prompt_segments
from webui.engine.tokenizer import EmbeddingMatcher, tokenize_prompt
from webui.services.embeddings import EmbeddingLibrary
from webui.services.extra_networks import ExtraNetworkActivation, ExtraNetworkTag, extract_tags, unhandled
from webui.services.hires import HiresFix, ImageUpscalers
from webui.services.infotext import format_infotext
from webui.services.jobs import Job
from webui.services.model_manager import ModelManager, ModelRecipe
from webui.services.outputs import OutputSaveError, OutputStore
from webui.services.queue import JobQueue, RemoteWork
from webui.services.requests import (
    GenerationRequest, RequestError, resolve_for_model, seeds_for_iteration, subseeds_for_iteration,
)

APP_VERSION = "0.1.0"
# Live preview methods, A1111's names: a linear latent -> RGB map fitted from the model's VAE, or a full VAE decode.
PREVIEW_METHODS = ("Approx cheap", "Full")


@dataclass(frozen=True)
class GenerationOptions:
    """The settings a job reads when it starts (the app passes `core_settings.generation_options`)."""

    live_previews: bool = True
    preview_every: int = 3
    preview_method: str = PREVIEW_METHODS[0]
    eta: float = 0.0
    ensd: int = 0
    s_churn: float = 0.0
    rng_source: str = "GPU"  # A1111's `randn_source` (its default): the device's own generator
    # Prompt encoding (A1111 `emphasis`, `CLIP_stop_at_last_layers`, `sdxl_clip_l_skip`)
    emphasis: str = DEFAULT_EMPHASIS
    clip_skip: int = 1
    sdxl_clip_l_skip: bool = False
    old_scheduling: bool = False  # A1111 `use_old_scheduling` (infotext `Old prompt editing timelines`)

    def for_request(self, request: GenerationRequest) -> GenerationOptions:
        """The options one job runs with: a request's own RNG source and ENSD (a pasted infotext's `RNG`, `ENSD`,
        or the API's override_settings) win over the settings."""
        return replace(self, rng_source=request.rng or self.rng_source,
                       ensd=self.ensd if request.ensd is None else request.ensd,
                       emphasis=request.emphasis or self.emphasis,
                       clip_skip=self.clip_skip if request.clip_skip is None else request.clip_skip)

    def text_options(self) -> TextOptions:
        return TextOptions(emphasis=self.emphasis, clip_skip=self.clip_skip, sdxl_clip_l_skip=self.sdxl_clip_l_skip)


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
    """txt2img, with A1111's hires fix when the request enables it (webui.services.hires)."""

    mode = "txt2img"

    def __init__(self, samplers: SamplerRegistry, hires: HiresFix | None = None) -> None:
        self.samplers = samplers
        self.hires = hires or HiresFix(samplers)

    def validate(self, request: GenerationRequest, model: LoadedModel) -> GenerationRequest:
        if model.variant == "depth":
            raise RequestError("model", str(DepthMapRequired(model.name)))
        return self.hires.validate(request, model)

    def sample(self, model, request, params, extensions) -> list[Image.Image]:
        if request.enable_hr:
            return self.hires.sample(model, request, params, extensions)
        return txt2img(model, params, self.samplers, extensions)

    def infotext_params(self, request: GenerationRequest) -> dict[str, Any]:
        return self.hires.infotext_params(request)


def unapplied_embeddings(library: EmbeddingLibrary, model: LoadedModel, *prompts: str) -> list[str]:
    """One warning per embedding the prompts name that this model cannot use (made for another model, or an
    unreadable file). The tokenizer then reads the name as plain words, so without a warning nothing tells the user
    the embedding did nothing. Names are matched as the tokenizer matches them (fitting ones too, so a longer fitting
    name is not mistaken for a shorter unusable one)."""
    listing = library.listing(model)
    problems = {name: (f"it was made for another kind of model than {model.name!r} ({model.family.title}); pick a "
                       "checkpoint it fits, or remove it from the prompt") for name in listing.skipped}
    problems.update({name: f"its file cannot be read ({why}); replace the file in {library.folder}, or remove the "
                           "name from the prompt" for name, why in listing.broken.items()})
    if not problems:
        return []
    matcher = EmbeddingMatcher({name: 1 for name in [*listing.loaded, *problems]})
    named: list[str] = []
    for prompt in prompts:
        for fix in tokenize_prompt(prompt, 0, matcher).fixes:
            if fix.name in problems and fix.name not in named:
                named.append(fix.name)
    return [f"Embedding {name!r} was not applied and its name was read as plain words: {problems[name]}."
            for name in named]


def prompt_infotext(request: GenerationRequest, options: GenerationOptions) -> tuple[dict[str, Any], dict[str, Any]]:
    """A1111's prompt-encoding keys: (`Clip skip` when above 1, among the core keys), (`Emphasis` when not
    "Original" and a prompt has brackets it would act on, `Old prompt editing timelines` when that rule changes a
    schedule; after the extra keys)."""
    core = {"Clip skip": options.clip_skip} if options.clip_skip > 1 else {}
    texts = (request.prompt, request.negative_prompt)
    brackets = any("(" in text or "[" in text for text in texts)
    later = {"Emphasis": options.emphasis} if options.emphasis != DEFAULT_EMPHASIS and brackets else {}
    if options.old_scheduling and any(  # A1111 writes it only where the old rule changes a schedule
            plan_prompt(text, request.steps, old_scheduling=True) != plan_prompt(text, request.steps)
            for text in texts):
        later["Old prompt editing timelines"] = True
    return core, later


def check_prompt_syntax(request: GenerationRequest, emphasis: str = DEFAULT_EMPHASIS) -> None:
    """Refuse, with a one-line message, a prompt whose emphasis A1111 cannot read (e.g. `(cat:1.2.3)`), before the
    job loads anything. Every text a schedule can show is checked (20 steps stand for any count)."""
    for field_name in ("prompt", "negative_prompt"):
        text = getattr(request, field_name)
        try:
            for shown in plan_prompt(text, 20, positive=field_name == "prompt").texts:
                prompt_segments(shown, emphasis)
        except PromptSyntaxError as exc:
            raise RequestError(field_name, str(exc)) from None


def seed_infotext(request: GenerationRequest, options: GenerationOptions, subseed: int) -> dict[str, Any]:
    """A1111's seed keys, each only when it applies: `Variation seed` and its strength when the strength is not 0,
    `Seed resize from` when both sides are set, `RNG` when the source is not A1111's default (GPU)."""
    keys: dict[str, Any] = {}
    if request.subseed_strength:
        keys["Variation seed"] = subseed
        keys["Variation seed strength"] = request.subseed_strength
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        keys["Seed resize from"] = f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
    if options.rng_source != "GPU":
        keys["RNG"] = options.rng_source
    return keys


class GenerationOutOfMemory(RuntimeError):
    """The device ran out of memory; its caches were freed, so the next (smaller) job works."""


@dataclass
class GenerationResult:
    """What a finished (or interrupted) job produced. Saved paths may be missing if saving failed."""

    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    subseeds: list[int] = field(default_factory=list)  # each image's variation seed (A1111's all_subseeds)
    grid_paths: list[str] = field(default_factory=list)  # grids of batches, when grid saving is on
    fields: list[dict[str, Any]] = field(default_factory=list)  # each image's file-name pattern fields
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
        options: Callable[[], GenerationOptions] | None = None,
        upscalers: ImageUpscalers | None = None,
        settings_snapshot: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.models = models
        # The stored settings a pool worker adopts for each job (extensions read theirs there)
        self.settings_snapshot: Callable[[], dict[str, Any]] = settings_snapshot or dict
        self.outputs = outputs
        self.samplers = samplers
        self.queue = queue
        self.preview_every = preview_every
        self.hooks: GenerationHooks = hooks or NoHooks()
        self.embeddings = embeddings  # textual inversion (models/embeddings), a core feature as in A1111
        # Settings read at the start of each job; without a reader, previews every `preview_every` steps.
        self.options: Callable[[], GenerationOptions] = options or (lambda: GenerationOptions(
            live_previews=bool(preview_every), preview_every=max(1, preview_every)))
        self._preview_factors: dict[int, torch.Tensor] = {}
        self.txt2img = Txt2ImgRunner(samplers, HiresFix(samplers, models, upscalers, embeddings))

    def validate(self, request: GenerationRequest, model: LoadedModel, runner: ModeRunner | None = None
                 ) -> GenerationRequest:
        """Check a request against the model it will run on; raises RequestError with a one-line message.

        The fields were checked when the request was built (the schema); what is left depends on the mode and model."""
        valid = (runner or self.txt2img).validate(request, model)
        check_prompt_syntax(valid, valid.emphasis or DEFAULT_EMPHASIS)
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

    def sampler_infotext(self, request: GenerationRequest, options: GenerationOptions) -> tuple[dict[str, Any],
                                                                                               dict[str, Any]]:
        """A1111's keys for the sampler settings, only when they differ from the default and the sampler uses them:
        (`ENSD`, which sits among the core keys), (`Eta`, `Sigma churn`, which follow the extra keys)."""
        spec, _ = self.samplers.resolve(request.sampler_name, request.scheduler)
        eta = options.eta if options.eta and spec.step_takes("eta") else 0.0
        churn = options.s_churn if options.s_churn and spec.step_takes("s_churn") else 0.0
        draws_noise = spec.ancestral or bool(eta) or bool(churn)
        core = {"ENSD": options.ensd} if options.ensd and draws_noise else {}
        later: dict[str, Any] = {}
        if eta:
            later["Eta"] = eta
        if churn:
            later["Sigma churn"] = churn
        return core, later

    def infotext(
        self, request: GenerationRequest, model: LoadedModel, seed: int, extra: dict[str, Any] | None = None,
        options: GenerationOptions | None = None, subseed: int | None = None,
    ) -> str:
        spec, schedule = self.samplers.resolve(request.sampler_name, request.scheduler)
        options = options or GenerationOptions()
        core, later = self.sampler_infotext(request, options)  # the line puts ENSD in place
        core.update(seed_infotext(request, options, request.subseed if subseed is None else subseed))
        prompt_core, prompt_later = prompt_infotext(request, options)
        core.update(prompt_core)
        later = {**prompt_later, **later}
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
            **core,
            **(extra or {}),
            **later,
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
        remote = self._remote_work(owner, request, runner, save) if self.queue.pool is not None else None
        return self.queue.submit(owner, runner.mode, lambda job: self.run(job, request, runner, save), remote)

    def _remote_work(self, owner: str, request: GenerationRequest, runner: ModeRunner, save: bool
                     ) -> RemoteWork | None:
        """The job as data for a pool worker, or None when only this process can run it (an extension's runner).

        The checkpoint is pinned now (a request without one runs on the model this process would use), and the
        settings and options are those of this moment, as for an in-process job."""
        from webui.services.generation_worker import GenerationTask, runner_kind

        kind = runner_kind(runner)
        if kind is None:
            return None
        if request.model is None:
            request = replace(request, model=self.models.choice_name())
        task = GenerationTask(owner, request, kind, runner.mode, self.options(), self.settings_snapshot())
        return RemoteWork(task.checkpoint, lambda job, slot, attempt: self.run_on_worker(job, task, slot, save))

    def run_on_worker(self, job: Job, task: Any, slot: Any, save: bool = True) -> GenerationResult:
        """Run `task` on a pool worker and mirror it into `job`: counters, previews, cancel and skip cross the
        process boundary, and each image is saved here, as it arrives, under the usual rules (owner's folder, atomic
        writes), so a worker that dies later loses none of them. A retried job keeps its earlier images and goes on
        from its first unfinished batch. Raises WorkerLost (the queue retries) or the task's own error."""
        handle = slot.handle
        result = job.result if isinstance(job.result, GenerationResult) else GenerationResult()
        job.result = result
        result.warnings.extend(notice for notice in job.notices if notice not in result.warnings)
        task = replace(task, start_iteration=job.batches_done)
        call = handle.start(job.id, task)
        seen, cancelled, preview_seen = 0, False, -1
        while True:
            final = call.wait(0.1)
            if job.interrupted and not cancelled and final is None:
                handle.cancel(job.id)
                cancelled = True
            if job.skip_requested and final is None:
                handle.skip(job.id)
                job.clear_skip()
            progress = final if final is not None else handle.poll(job.id, seen, preview_seen)
            fresh = progress.images[seen:] if final is not None else progress.images
            preview_seen = self._mirror(job, progress, preview_seen)
            for image in fresh:
                self._keep(result, image.image, image.infotext, image.seed, task.mode, save, job.owner,
                           image.fields)
                result.subseeds.append(image.subseed)
            seen += len(fresh)
            job.touch()
            if final is not None:
                break
        slot.holds = list(final.holds)
        result.warnings.extend(final.warnings)
        result.request = final.request or result.request or task.request
        if final.exception is not None:
            raise final.exception  # the queue records it on the job, as for an in-process failure
        if final.interrupted:
            result.interrupted = True
            job.set_status("interrupted")
        elif save and len(result.images) > 1:
            fields = {**result.fields[0], "seed_first": result.seeds[0], "seed_last": result.seeds[-1],
                      "batch_size": len(result.seeds), "seed": result.seeds[0]}
            fields.pop("batch_number", None)
            self._keep_grid(result, result.images, result.infotexts[0], task.mode, job.owner, fields)
        return result

    @staticmethod
    def _mirror(job: Job, progress: Any, preview_seen: int) -> int:
        """Copy a worker's counters and newest preview into the front end's job; returns the preview version seen."""
        job.step, job.total_steps = progress.step, progress.total_steps
        job.batches_done, job.batches_total = progress.batches_done, progress.batches_total
        if progress.sampling_started is not None and job.sampling_started is None:
            job.sampling_started = time.time()  # this machine's clock: the ETA is computed here
        if progress.preview_latents is not None and progress.preview_version != preview_seen:
            job.preview_factors, job.preview_latents = progress.preview_factors, progress.preview_latents
            job.preview_version += 1
            return progress.preview_version
        return preview_seen

    def run(self, job: Job, request: GenerationRequest, runner: ModeRunner | None = None, save: bool = True,
            start_iteration: int = 0) -> GenerationResult:
        """Run a job to completion (or interruption) on this thread; the queue's worker calls it holding the device.

        The job's model is checked out for it alone: its VAE and its LoRAs (from `<lora:...>` tags, which are removed
        from the prompt the text encoder sees but kept in the infotext) apply only while it runs. `start_iteration`
        skips batches another worker already finished (a retried job); their seeds are not reused.
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
                self._generate(job, request, runner, model, prompt, negative, activation, result, save,
                               start_iteration)
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
                  negative: str, activation: ExtraNetworkActivation, result: GenerationResult, save: bool = True,
                  start_iteration: int = 0) -> None:
        valid = self.validate(request, model, runner)
        embeddings = self.embeddings.for_model(model) if self.embeddings else None
        # A1111 sets the mode's keys (hires fix, inpaint) before the networks' (Lora hashes, TI hashes), §1.3
        extra_info = {**runner.infotext_params(valid), **activation.infotext}
        if self.embeddings and embeddings:
            extra_info.update(self.embeddings.infotext(embeddings, prompt, negative))
        if self.embeddings:
            result.warnings.extend(unapplied_embeddings(self.embeddings, model, prompt, negative))
        result.request = valid
        options = self.options().for_request(valid)
        job.batches_total = valid.n_iter
        job.batches_done = start_iteration
        step_hooks = self.hooks.step_hooks(valid)
        feature_extensions = self.hooks.denoise_extensions(valid, model)  # ControlNet units, ...
        for iteration in range(start_iteration, valid.n_iter):
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
                eta=options.eta,
                s_churn=options.s_churn,
                ensd=options.ensd,
                subseeds=subseeds_for_iteration(valid, iteration),
                subseed_strength=valid.subseed_strength,
                seed_resize_from=(valid.seed_resize_from_w, valid.seed_resize_from_h),
                rng_source=options.rng_source,
                text_options=options.text_options(),
                old_prompt_scheduling=options.old_scheduling,
            )

            def on_progress(step: int, total: int, latents: torch.Tensor) -> None:
                if job.sampling_started is None:
                    job.sampling_started = time.time()
                job.step, job.total_steps = step, total
                if options.live_previews and step % options.preview_every == 0 and step < total:
                    if options.preview_method == "Full":  # decoded here: the VAE is on this job's device
                        job.preview_factors, job.preview_latents = (identity_factors(),
                                                                    decode_for_preview(model, latents))
                    else:  # rendered only when a watcher asks (Job.preview_image)
                        job.preview_factors, job.preview_latents = self._preview_factors_for(model), latents
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
            fields = self._pattern_fields(valid, model, seeds)
            for number, (image, seed, subseed) in enumerate(zip(images, seeds, params.subseeds or seeds)):
                info = self.infotext(valid, model, seed, extra_info, options, subseed=subseed)
                self._keep(result, image, info, seed, runner.mode, save, job.owner, {**fields, "batch_number": number})
                result.subseeds.append(subseed)
            job.batches_done = iteration + 1
            job.step = 0
            job.clear_skip()  # a Skip that came while decoding has nothing left to skip
            job.touch()
            if job.interrupted:
                raise Interrupted()
        if save and len(result.images) > 1:  # A1111: one grid of the job's images, batch size x count > 1
            fields = {**self._pattern_fields(valid, model, result.seeds), "seed": result.seeds[0]}
            self._keep_grid(result, result.images, result.infotexts[0], runner.mode, job.owner, fields)

    def _pattern_fields(self, request: GenerationRequest, model: LoadedModel, seeds: list[int]) -> dict[str, Any]:
        """What the file-name pattern's tokens are made of (the prompt as typed, `<lora:...>` tags included)."""
        spec, schedule = self.samplers.resolve(request.sampler_name, request.scheduler)
        denoising = getattr(request, "denoising_strength", None)
        return {
            "prompt": request.prompt, "negative_prompt": request.negative_prompt, "steps": request.steps,
            "cfg": request.cfg_scale, "width": request.width, "height": request.height, "sampler": spec.name,
            "scheduler": schedule, "model_name": model.name, "model_hash": self.models.model_hash(model),
            "seed_first": seeds[0], "seed_last": seeds[-1], "batch_size": len(seeds), "denoising": denoising,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        }

    def _keep(self, result: GenerationResult, image: Image.Image, infotext: str, seed: int, mode: str,
              save: bool = True, owner: str | None = None, fields: dict[str, Any] | None = None) -> None:
        result.images.append(image)
        result.infotexts.append(infotext)
        result.seeds.append(seed)
        result.fields.append(fields or {})
        if not save:
            return
        try:  # folder, name pattern, format and infotext as the Saving settings say
            result.paths.append(str(self.outputs.save_image(image, infotext, mode, seed, owner, fields)))
        except (OutputSaveError, ValueError) as exc:  # the image is still returned to the user
            result.warnings.append(str(exc))

    def _keep_grid(self, result: GenerationResult, images: list[Image.Image], infotext: str, mode: str,
                   owner: str | None, fields: dict[str, Any]) -> None:
        """The job's grid, when grid saving is on (the output store checks the setting)."""
        try:
            path = self.outputs.save_grid(images, infotext, mode, owner, fields)
        except (OutputSaveError, ValueError) as exc:
            result.warnings.append(str(exc))
            return
        if path is not None:
            result.grid_paths.append(str(path))

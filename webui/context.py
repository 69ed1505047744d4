"""The composition root: builds every service once and hands them to whichever interface runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webui.engine.samplers import SamplerRegistry
from webui.services.controlnet import ControlNetService
from webui.services import core_settings
from webui.services.extensions import ExtensionManager
from webui.services.generation import APP_VERSION, GenerationService
from webui.services.hashing import HashCache
from webui.services.jobs import JobManager
from webui.services.queue import DEFAULT_QUEUE_SIZE, JobQueue
from webui.services.embeddings import EmbeddingLibrary
from webui.services.lora import LoraLibrary
from webui.services.latent_upscalers import register_latent_upscalers
from webui.services.lora_training import LoraTrainingService
from webui.services.model_manager import AUTO_OFFLOAD, ModelManager, choose_device, choose_dtype
from webui.services.outputs import OutputStore
from webui.services.settings import SettingsStore
from webui.services.styles import StyleStore
from webui.services.unet_compiler import UNetCompiler
from webui.services.upscalers import UPSCALER_FOLDERS, UpscalerLibrary
from webui.services.extras import ExtrasService
from webui.services.users import UserStore

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_EXTENSIONS = Path(__file__).resolve().parent / "builtin_extensions"


@dataclass(frozen=True)
class AppPaths:
    models_dir: Path
    outputs_dir: Path
    data_dir: Path  # caches and settings
    extension_dirs: tuple[Path, ...] = ()

    @property
    def checkpoint_dir(self) -> Path:
        return self.models_dir / "Stable-diffusion"

    @property
    def vae_dir(self) -> Path:
        return self.models_dir / "VAE"

    @property
    def controlnet_dir(self) -> Path:
        return self.models_dir / "ControlNet"

    @property
    def lora_dir(self) -> Path:
        return self.models_dir / "Lora"

    @property
    def embeddings_dir(self) -> Path:
        """Textual-inversion embeddings (A1111 keeps them in `embeddings/` at its root; ours live with the models)."""
        return self.models_dir / "embeddings"

    @property
    def lora_training_dir(self) -> Path:
        """LoRA training runs (resumable state, snapshots, samples, loss log): inside the outputs, so samples can be
        shown in the browser without serving any other folder."""
        return self.outputs_dir / "lora-training"

    @property
    def preprocessor_dir(self) -> Path:
        """Weights for the preprocessors that need them (file names as in lllyasviel/Annotators)."""
        return self.models_dir / "ControlNetPreprocessor"

    @property
    def upscaler_dirs(self) -> tuple[Path, ...]:
        """Model upscalers, in A1111's folders: models/ESRGAN, RealESRGAN, SwinIR, DAT, ScuNET, HAT."""
        return tuple(self.models_dir / folder for folder in UPSCALER_FOLDERS)

    @classmethod
    def default(
        cls,
        models_dir: Path | None = None,
        outputs_dir: Path | None = None,
        extension_dirs: tuple[Path, ...] = (),
        data_dir: Path | None = None,
    ) -> "AppPaths":
        return cls(
            models_dir=Path(models_dir or PROJECT_ROOT / "models").resolve(),
            outputs_dir=Path(outputs_dir or PROJECT_ROOT / "outputs").resolve(),
            data_dir=Path(data_dir or PROJECT_ROOT / "cache").resolve(),
            extension_dirs=(PROJECT_ROOT / "extensions", *(Path(d).resolve() for d in extension_dirs)),
        )


@dataclass
class AppContext:
    paths: AppPaths
    models: ModelManager
    samplers: SamplerRegistry
    jobs: JobManager
    outputs: OutputStore
    generation: GenerationService
    settings: SettingsStore
    extensions: ExtensionManager
    controlnet: ControlNetService
    loras: LoraLibrary
    embeddings: EmbeddingLibrary
    lora_training: LoraTrainingService
    queue: JobQueue
    users: UserStore  # who may log in, and who is an admin (one "local" admin when no login is configured)
    upscalers: UpscalerLibrary  # model and Pillow upscalers: Extras, hires fix, /sdapi/v1/upscalers
    styles: StyleStore  # A1111's styles.csv, in the data folder next to config.json
    extras: ExtrasService  # the Extras tab's and /sdapi/v1/extra-* work: upscaling finished images
    compiler: UNetCompiler  # the optional torch.compile of each placed U-Net (`--compile`, core.compile_unet)
    workers: Any = None  # RayWorkers when generation runs on Ray workers (`start_workers`), else None

    def start_workers(self, count: int = 0, address: str | None = None, precision: str | None = None,
                      threads: int = 0) -> Any:
        """Run generation jobs on Ray workers from now on (`--workers`, `--ray-address`); Ray is imported only
        here. The queue stays the front door; images are still saved by this process."""
        import torch

        from webui.services.ray_workers import RayWorkers, WorkerSettings

        # CPU results depend on the thread count (reduction order), so workers use this process's unless told
        threads = threads or torch.get_num_threads()
        settings = WorkerSettings(self.paths.models_dir, self.paths.data_dir, precision, threads)
        self.workers = RayWorkers(settings, workers=count, address=address)
        self.queue.attach_pool(self.workers.pool)
        return self.workers

    def shutdown(self) -> None:
        """Stop the queue (the running job stops within a step) and any workers."""
        self.queue.shutdown()
        if self.workers is not None:
            self.workers.shutdown()


def build_context(
    paths: AppPaths,
    device: str | None = None,
    precision: str | None = None,
    ram_cache_size: int = 1,
    outputs: OutputStore | None = None,
    vram_budget_gb: float = 0.0,
    ram_budget_gb: float = 0.0,
    load_extensions: bool = True,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    users: UserStore | None = None,
    compile_unet: bool = False,
    offload: str = AUTO_OFFLOAD,
) -> AppContext:
    torch_device = choose_device(device)
    dtype = choose_dtype(torch_device, precision)
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    hashes = HashCache(paths.data_dir / "hashes.json")
    models = ModelManager(
        paths.checkpoint_dir,
        paths.vae_dir,
        hashes,
        torch_device,
        dtype,
        ram_cache_size=ram_cache_size,
    )
    controlnet = ControlNetService(paths.controlnet_dir, paths.preprocessor_dir, hashes, torch_device, dtype)
    loras = LoraLibrary(paths.lora_dir, hashes)
    embeddings = EmbeddingLibrary(paths.embeddings_dir, hashes)
    samplers = SamplerRegistry()
    jobs = JobManager()
    queue = JobQueue(jobs, queue_size)
    users = users or UserStore()
    outputs = outputs or OutputStore(paths.outputs_dir, per_user=users.is_multi_user)
    lora_training = LoraTrainingService(queue, models, loras, paths.lora_dir, paths.lora_training_dir,
                                        users=users, embeddings_dir=paths.embeddings_dir)

    settings = SettingsStore(paths.data_dir / "config.json")
    # Core options first (an extension cannot take a `core.` key); each is read where it acts (docs/settings.md).
    core_settings.register_core_settings(settings, samplers.names(), ram_cache_size, controlnet.cache_size,
                                         vram_budget_gb, ram_budget_gb, compile_unet, offload)
    settings.watch(core_settings.OFFLOAD, models.set_offload_mode)
    compiler = UNetCompiler(paths.data_dir / "torch-compile", enabled=bool(settings.get(core_settings.COMPILE_UNET)))
    models.on_placed.append(compiler.attach)
    settings.watch(core_settings.COMPILE_UNET, lambda on: compiler.set_enabled(on, models.loaded_models()))
    outputs.options = lambda: core_settings.save_options(settings)
    settings.watch(core_settings.CHECKPOINT_CACHE, models.set_ram_cache_size)
    for budget in (core_settings.VRAM_BUDGET, core_settings.RAM_BUDGET):
        settings.watch(budget, lambda _: models.set_budgets(*core_settings.model_budgets(settings)))
    settings.watch(core_settings.CONTROLNET_CACHE, lambda size: setattr(controlnet, "cache_size", int(size)))
    upscalers = UpscalerLibrary(paths, models.device, models.dtype,
                                options=lambda: core_settings.upscale_options(settings))
    register_latent_upscalers(upscalers, paths.models_dir, models.device, models.dtype,
                              options=lambda: core_settings.latent_upscale_options(settings))
    extras = ExtrasService(upscalers, outputs, queue)
    extensions = ExtensionManager(
        [(BUILTIN_EXTENSIONS, True), *((folder, False) for folder in paths.extension_dirs)],
        settings,
        samplers,
        paths.data_dir / "extensions.json",
        APP_VERSION,
        models,
        services={"controlnet": controlnet, "lora": loras, "embeddings": embeddings, "lora_training": lora_training,
                  "upscalers": upscalers, "extras": extras, "jobs": jobs, "queue": queue, "compiler": compiler},
    )
    if load_extensions:
        extensions.load_all()
    generation = GenerationService(models, outputs, samplers, queue, hooks=extensions, embeddings=embeddings,
                                   options=lambda: core_settings.generation_options(settings), upscalers=upscalers,
                                   settings_snapshot=settings.stored)
    return AppContext(paths, models, samplers, jobs, outputs, generation, settings, extensions, controlnet, loras,
                      embeddings, lora_training, queue, users, upscalers,
                      StyleStore(paths.data_dir / "styles.csv"), extras, compiler)

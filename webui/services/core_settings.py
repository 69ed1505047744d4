"""The app's own settings, registered through the same `SettingSpec` API extensions use (`api.add_setting`).

Grouped as A1111's Settings tab: saving, live previews, user interface, sampler parameters, model cache. Each one is
read where it acts: `save_options` by the output store at every save, `generation_options` by the generation service
at every job, the UI defaults when the UI is built (restart), the cache sizes through `SettingsStore.watch` (live).
Keys are `core.<A1111 option name>` where A1111 has one, so its documentation explains them; docs/settings.md lists
every key, its type, default and what it changes.
"""

from __future__ import annotations

import os

from webui.engine.conditioning import MAX_CLIP_SKIP
from webui.engine.prompt_parser import DEFAULT_EMPHASIS, EMPHASIS_MODES
from webui.engine.rng import RNG_SOURCES
from webui.services.generation import PREVIEW_METHODS, GenerationOptions
from webui.services.outputs import SAMPLE_FORMATS, SaveOptions, check_filename_pattern, check_folder
from webui.services.settings import SettingSpec, SettingsStore
from webui.services.latent_upscalers import LatentUpscaleOptions
from webui.services.model_manager import AUTO_OFFLOAD, OFFLOAD_CHOICES
from webui.services.upscalers import UpscaleOptions

SAVING = "Saving images"
PREVIEWS = "Live previews"
USER_INTERFACE = "User interface"
SAMPLER_PARAMETERS = "Sampler parameters"
MODEL_CACHE = "Model cache"
UPSCALING = "Upscaling"
PROMPTS = "Prompts"
# the tab's order; extensions follow
SECTIONS = (SAVING, PREVIEWS, USER_INTERFACE, SAMPLER_PARAMETERS, MODEL_CACHE, UPSCALING, PROMPTS)

OUTDIR_TXT2IMG = "core.outdir_txt2img_samples"
OUTDIR_IMG2IMG = "core.outdir_img2img_samples"
OUTDIR_TXT2IMG_GRIDS = "core.outdir_txt2img_grids"
OUTDIR_IMG2IMG_GRIDS = "core.outdir_img2img_grids"
OUTDIR_EXTRAS = "core.outdir_extras_samples"
FILENAME_PATTERN = "core.samples_filename_pattern"
GRID_SAVE = "core.grid_save"
SAMPLES_FORMAT = "core.samples_format"
JPEG_QUALITY = "core.jpeg_quality"
ENABLE_PNGINFO = "core.enable_pnginfo"
LIVE_PREVIEWS = "core.live_previews_enable"
PREVIEW_EVERY = "core.show_progress_every_n_steps"
PREVIEW_METHOD = "core.show_progress_type"
DEFAULT_SAMPLER = "core.default_sampler"
DEFAULT_STEPS = "core.default_steps"
DEFAULT_CFG = "core.default_cfg_scale"
DEFAULT_WIDTH = "core.default_width"
DEFAULT_HEIGHT = "core.default_height"
THEME = "core.theme"
ETA = "core.eta_ddim"
ENSD = "core.eta_noise_seed_delta"
RANDN_SOURCE = "core.randn_source"
S_CHURN = "core.s_churn"
CHECKPOINT_CACHE = "core.sd_checkpoint_cache"
CONTROLNET_CACHE = "core.control_net_model_cache_size"
VRAM_BUDGET = "core.vram_budget_gb"
RAM_BUDGET = "core.ram_budget_gb"
COMPILE_UNET = "core.compile_unet"
OFFLOAD = "core.offload"
EMPHASIS = "core.emphasis"
CLIP_SKIP = "core.CLIP_stop_at_last_layers"
SDXL_CLIP_L_SKIP = "core.sdxl_clip_l_skip"
OLD_SCHEDULING = "core.use_old_scheduling"
ESRGAN_TILE = "core.ESRGAN_tile"
ESRGAN_TILE_OVERLAP = "core.ESRGAN_tile_overlap"
LDSR_STEPS = "core.ldsr_steps"
SD_X4_STEPS = "core.sd_x4_upscaler_steps"
SD_X4_NOISE_LEVEL = "core.sd_x4_upscaler_noise_level"

THEMES = ("system", "light", "dark")
DEFAULT_SAMPLER_NAME = "DPM++ 2M"


def _multiple_of_8(value: int) -> str | None:
    return None if value % 8 == 0 else "not a multiple of 8"


def core_specs(sampler_names: list[str], checkpoint_cache: int = 1, controlnet_cache: int = 2,
               vram_budget_gb: float = 0.0, ram_budget_gb: float = 0.0, compile_unet: bool = False,
               offload: str = AUTO_OFFLOAD) -> list[SettingSpec]:
    """Every core option. `checkpoint_cache`, the budgets, `compile_unet` and `offload` are the `--ram-cache`,
    `--vram-budget`, `--ram-budget`, `--compile` and `--medvram`/`--lowvram` flags: the defaults until a value is
    saved."""
    folder_help = "a folder inside the outputs folder (letters, digits, space, '-', '_', '.'; '/' for subfolders)"
    pattern_help = ("text with [tokens] such as [seed], [prompt_words], [date], [model_name]; no '/' "
                    "(docs/settings.md lists every token)")
    sampler_default = DEFAULT_SAMPLER_NAME if DEFAULT_SAMPLER_NAME in sampler_names else sampler_names[0]

    def spec(key: str, default, label: str, kind: str = "text", section: str = SAVING, **more) -> SettingSpec:
        return SettingSpec(key, default, label, kind, owner="core", section=section, **more)  # type: ignore[arg-type]

    return [
        spec(OUTDIR_TXT2IMG, "txt2img", "Output folder for txt2img images", help=folder_help, check=check_folder),
        spec(OUTDIR_IMG2IMG, "img2img", "Output folder for img2img and inpaint images", help=folder_help,
             check=check_folder),
        spec(OUTDIR_TXT2IMG_GRIDS, "txt2img-grids", "Output folder for txt2img grids", help=folder_help,
             check=check_folder),
        spec(OUTDIR_IMG2IMG_GRIDS, "img2img-grids", "Output folder for img2img grids", help=folder_help,
             check=check_folder),
        spec(OUTDIR_EXTRAS, "extras-images", "Output folder for images from the Extras tab", help=folder_help,
             check=check_folder),
        spec(FILENAME_PATTERN, "[seed]", "File-name pattern (after the NNNNN- number)", help=pattern_help,
             check=check_filename_pattern),
        spec(GRID_SAVE, False, "Save a grid of each batch of more than one image", "checkbox"),
        spec(SAMPLES_FORMAT, "png", "File format for images", "dropdown", choices=SAMPLE_FORMATS),
        spec(JPEG_QUALITY, 80, "JPEG/WebP quality", "slider", minimum=1, maximum=100, step=1, integer=True),
        spec(ENABLE_PNGINFO, True, "Save the generation parameters in the file (PNG info / EXIF)", "checkbox"),
        spec(LIVE_PREVIEWS, True, "Show live previews while sampling", "checkbox", section=PREVIEWS),
        spec(PREVIEW_EVERY, 3, "Live preview every N sampling steps", "slider", section=PREVIEWS, minimum=1,
             maximum=32, step=1, integer=True),
        spec(PREVIEW_METHOD, PREVIEW_METHODS[0], "Live preview method", "dropdown", section=PREVIEWS,
             choices=PREVIEW_METHODS),
        spec(DEFAULT_SAMPLER, sampler_default, "Default sampling method", "dropdown", section=USER_INTERFACE,
             choices=tuple(sampler_names), restart_required=True),
        spec(DEFAULT_STEPS, 20, "Default sampling steps", "slider", section=USER_INTERFACE, minimum=1, maximum=150,
             step=1, integer=True, restart_required=True),
        spec(DEFAULT_CFG, 7.0, "Default CFG scale", "slider", section=USER_INTERFACE, minimum=1, maximum=30, step=0.5,
             restart_required=True),
        spec(DEFAULT_WIDTH, 0, "Default txt2img width (0 = the model's own size)", "slider", section=USER_INTERFACE,
             minimum=0, maximum=2048, step=8, integer=True, restart_required=True, check=_multiple_of_8,
             help="a multiple of 8"),
        spec(DEFAULT_HEIGHT, 0, "Default txt2img height (0 = the model's own size)", "slider",
             section=USER_INTERFACE, minimum=0, maximum=2048, step=8, integer=True, restart_required=True,
             check=_multiple_of_8, help="a multiple of 8"),
        spec(THEME, "system", "Theme", "dropdown", section=USER_INTERFACE, choices=THEMES,
             help="system follows the browser's light/dark preference; applies at once and on every page load"),
        spec(ETA, 0.0, "Eta for DDIM (noise multiplier)", "slider", section=SAMPLER_PARAMETERS, minimum=0, maximum=1,
             step=0.01),
        spec(ENSD, 0, "Eta noise seed delta (ENSD) for ancestral and SDE samplers", "number",
             section=SAMPLER_PARAMETERS, minimum=0, maximum=2**31 - 1, integer=True),
        spec(S_CHURN, 0.0, "Sigma churn (Euler)", "slider", section=SAMPLER_PARAMETERS, minimum=0, maximum=100,
             step=0.01),
        spec(RANDN_SOURCE, "GPU", "Random number generator source", "dropdown", section=SAMPLER_PARAMETERS,
             choices=RNG_SOURCES,
             help="GPU: the device's own (A1111's default; on a machine without one, the CPU's); CPU: the same on "
                  "every machine; NV: NVIDIA's GPU generator computed on the CPU, so seeds from NVIDIA cards "
                  "reproduce anywhere"),
        spec(CHECKPOINT_CACHE, checkpoint_cache, "Checkpoints to keep in RAM", "slider", section=MODEL_CACHE,
             minimum=0, maximum=16, step=1, integer=True),
        spec(CONTROLNET_CACHE, controlnet_cache, "ControlNet models to keep loaded", "slider", section=MODEL_CACHE,
             minimum=0, maximum=16, step=1, integer=True),
        spec(VRAM_BUDGET, vram_budget_gb, "Checkpoints on the device: memory budget in GB (0 = only the active one)",
             "number", section=MODEL_CACHE, minimum=0, maximum=4096),
        spec(RAM_BUDGET, ram_budget_gb, "Checkpoints in RAM: memory budget in GB (0 = half of this machine's RAM)",
             "number", section=MODEL_CACHE, minimum=0, maximum=65536),
        spec(COMPILE_UNET, compile_unet, "Compile the U-Net with torch.compile", "checkbox", section=MODEL_CACHE,
             help="faster sampling once compiled; each new image size is compiled in the background while the first "
                  "images of that size are made as usual (--compile)"),
        spec(OFFLOAD, offload, "Models that do not fit on the device", "dropdown", section=MODEL_CACHE,
             choices=list(OFFLOAD_CHOICES),
             help="auto: a model larger than the VRAM budget (or the GPU) runs offloaded, and the Models tab says "
                  "so; medvram: always move the text encoders, U-Net and VAE to the device one at a time; lowvram: "
                  "always move one layer at a time (slowest, least memory)"),
        spec(ESRGAN_TILE, 192, "Tile size for model upscalers (0 = no tiling)", "slider", section=UPSCALING,
             minimum=0, maximum=512, step=16, integer=True),
        spec(ESRGAN_TILE_OVERLAP, 8, "Tile overlap for model upscalers", "slider", section=UPSCALING, minimum=0,
             maximum=48, step=1, integer=True),
        spec(LDSR_STEPS, 100, "LDSR processing steps", "slider", section=UPSCALING, minimum=1, maximum=200, step=1,
             integer=True, help="DDIM steps of the LDSR upscaler (fewer is faster)"),
        spec(SD_X4_STEPS, 50, "SD x4 upscaler steps", "slider", section=UPSCALING, minimum=1, maximum=150, step=1,
             integer=True),
        spec(SD_X4_NOISE_LEVEL, 20, "SD x4 upscaler noise level", "slider", section=UPSCALING, minimum=0,
             maximum=350, step=1, integer=True,
             help="noise added to the low-resolution image (more = more new detail)"),
        spec(EMPHASIS, DEFAULT_EMPHASIS, "Emphasis mode", "dropdown", section=PROMPTS, choices=EMPHASIS_MODES,
             help="how (word), [word] and (word:1.2) act: Original scales the words' encodings and keeps the chunk's "
                  "mean; No norm scales only (often better for SDXL); Ignore drops the weights; None reads brackets "
                  "as text"),
        spec(CLIP_SKIP, 1, "Clip skip", "slider", section=PROMPTS, minimum=1, maximum=MAX_CLIP_SKIP, step=1,
             integer=True, help="SD 1.x: stop the text encoder this many layers before its end (2 for anime-style "
                                "models); SD 2.x and SDXL already use their penultimate layer"),
        spec(SDXL_CLIP_L_SKIP, False, "Clip skip for SDXL's CLIP-L too", "checkbox", section=PROMPTS),
        spec(OLD_SCHEDULING, False, "Old prompt editing timelines ([a:b:when]: below 1 a fraction, else a step)",
             "checkbox", section=PROMPTS),
    ]


def register_core_settings(settings: SettingsStore, sampler_names: list[str], checkpoint_cache: int = 1,
                           controlnet_cache: int = 2, vram_budget_gb: float = 0.0, ram_budget_gb: float = 0.0,
                           compile_unet: bool = False, offload: str = AUTO_OFFLOAD) -> None:
    """Register the core options (before extensions load, so an extension cannot take a `core.` key)."""
    for spec in core_specs(sampler_names, checkpoint_cache, controlnet_cache, vram_budget_gb, ram_budget_gb,
                           compile_unet, offload):
        settings.register(spec)


def model_budgets(settings: SettingsStore) -> tuple[int | None, int | None]:
    """The model manager's (VRAM, RAM) byte budgets from the settings. 0 means automatic: on the device only the
    active model (A1111's behaviour, leaving the rest of the GPU to the sampling), in RAM half of physical memory."""
    vram_gb, ram_gb = float(settings.get(VRAM_BUDGET) or 0), float(settings.get(RAM_BUDGET) or 0)
    vram = int(vram_gb * 2**30) if vram_gb > 0 else None
    ram = int(ram_gb * 2**30) if ram_gb > 0 else physical_ram_bytes() // 2
    return vram, ram


def physical_ram_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def save_options(settings: SettingsStore) -> SaveOptions:
    """The Saving settings as the output store uses them."""
    return SaveOptions(
        folders={"txt2img": settings.get(OUTDIR_TXT2IMG), "img2img": settings.get(OUTDIR_IMG2IMG),
                 "extras-images": settings.get(OUTDIR_EXTRAS)},
        grid_folders={"txt2img": settings.get(OUTDIR_TXT2IMG_GRIDS), "img2img": settings.get(OUTDIR_IMG2IMG_GRIDS)},
        filename_pattern=settings.get(FILENAME_PATTERN),
        format=settings.get(SAMPLES_FORMAT),
        quality=int(settings.get(JPEG_QUALITY)),
        pnginfo=bool(settings.get(ENABLE_PNGINFO)),
        save_grid=bool(settings.get(GRID_SAVE)),
    )


def generation_options(settings: SettingsStore) -> GenerationOptions:
    """Previews and sampler parameters as the generation service uses them, read once per job."""
    return GenerationOptions(
        live_previews=bool(settings.get(LIVE_PREVIEWS)),
        preview_every=int(settings.get(PREVIEW_EVERY)),
        preview_method=settings.get(PREVIEW_METHOD),
        eta=float(settings.get(ETA)),
        ensd=int(settings.get(ENSD)),
        s_churn=float(settings.get(S_CHURN)),
        rng_source=str(settings.get(RANDN_SOURCE)),
        emphasis=str(settings.get(EMPHASIS)),
        clip_skip=int(settings.get(CLIP_SKIP)),
        sdxl_clip_l_skip=bool(settings.get(SDXL_CLIP_L_SKIP)),
        old_scheduling=bool(settings.get(OLD_SCHEDULING)),
    )


def upscale_options(settings: SettingsStore) -> UpscaleOptions:
    """Tiling of the model upscalers, read at every upscale. A tile too small for its overlap runs untiled."""
    tile, overlap = int(settings.get(ESRGAN_TILE)), int(settings.get(ESRGAN_TILE_OVERLAP))
    return UpscaleOptions(tile=tile if tile > 2 * overlap else 0, overlap=overlap)


def latent_upscale_options(settings: SettingsStore) -> LatentUpscaleOptions:
    """Steps and noise level of the LDSR and SD x4 upscalers, read at every upscale."""
    return LatentUpscaleOptions(ldsr_steps=int(settings.get(LDSR_STEPS)), sd_x4_steps=int(settings.get(SD_X4_STEPS)),
                                sd_x4_noise_level=int(settings.get(SD_X4_NOISE_LEVEL)))


def ui_defaults(settings: SettingsStore) -> dict[str, object]:
    """The generation tabs' starting values; read when the UI is built."""
    return {
        "sampler": settings.get(DEFAULT_SAMPLER),
        "steps": settings.get(DEFAULT_STEPS),
        "cfg_scale": settings.get(DEFAULT_CFG),
        "width": settings.get(DEFAULT_WIDTH),
        "height": settings.get(DEFAULT_HEIGHT),
    }


def settings_table_markdown(specs: list[SettingSpec]) -> str:
    """The core options as a Markdown table; docs/settings.md holds this text and a test keeps them equal."""
    lines = ["| Section | Key | Type | Default | Allowed | Restart |", "|---|---|---|---|---|---|"]
    for section in SECTIONS:
        for spec in (s for s in specs if s.section == section):
            kind = "whole number" if spec.integer else "number" if spec.kind == "slider" else spec.kind
            allowed = spec.allowed().replace("|", "\\|")
            restart = "yes" if spec.restart_required else "no"
            lines.append(f"| {section} | `{spec.key}` | {kind} | `{spec.default!r}` | {allowed} | {restart} |")
    return "\n".join(lines) + "\n"

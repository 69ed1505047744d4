"""The sampler table: A1111 sampler name + schedule type -> how the loop samples.

Two kinds of entry (`SamplerSpec`): a sampler *function* in the k-diffusion style (k_samplers.py) run on A1111's sigma
schedules (sigma_schedules.py), which is how A1111 runs its k-diffusion samplers, so a seed gives A1111's image; or a
diffusers scheduler class with config overrides (DDIM, PLMS, UniPC, LCM, DEIS, DDPM, and the "(diffusers)" variants
of the k samplers). The UI, the HTTP API, the CLI and `docs/samplers.md` all read this one table. The registry is an
object (extensions add entries to it), not a global.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from . import k_samplers
from .k_samplers import SamplerFunction
from .sigma_schedules import SIGMA_SCHEDULE_FUNCTIONS

# The family's standard noise schedule (SD1/SD2/SDXL share it): scaled-linear betas 0.00085..0.012 over 1000 steps.
BASE_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}

# Schedule type label -> scheduler config overrides. "Automatic" means the sampler's own default (see SamplerSpec).
SCHEDULE_TYPES: dict[str, dict[str, Any]] = {
    "Uniform": {"timestep_spacing": "linspace"},
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "Beta": {"use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
    "DDIM": {"timestep_spacing": "leading"},
}
SCHEDULE_ALIASES = {"automatic": "Automatic", "sgm_uniform": "SGM Uniform", "sgmuniform": "SGM Uniform"}
# Every schedule type label, in A1111's order: function samplers run all of them (sigma_schedules.py), diffusers
# schedulers those of SCHEDULE_TYPES their class supports.
ALL_SCHEDULES: tuple[str, ...] = tuple(SIGMA_SCHEDULE_FUNCTIONS)
PATH_K_DIFFUSION, PATH_DIFFUSERS = "k-diffusion", "diffusers"
DIFFUSERS_SUFFIX = " (diffusers)"  # the diffusers-backed twin of a k-diffusion sampler name
SIGMA_SCHEDULES = {"Karras", "Exponential", "Beta"}


class SamplerError(ValueError):
    """Unknown sampler or schedule, or a combination the sampler cannot run; `field_name` says which input."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler name, backed by a sampler function (k-diffusion style) or by a diffusers scheduler class.

    - `function`: `fn(model, x, sigmas, *, callback=None, noise=None, **options) -> x` (k_samplers.py documents the
      shape); when set, `scheduler_class` is empty and `overrides` are fixed keyword options for the function.
    - `scheduler_class` + `overrides`: a diffusers scheduler and its config overrides.
    - `default_schedule`: what "Automatic" means for this sampler. `aliases`: other accepted names.
    - `ancestral`: draws step noise (ancestral or SDE), so ENSD applies.
    - `brownian_noise`: (functions) the step noise comes from a Brownian tree per image seed (A1111's SDE samplers),
      not from the images' generators. `discard_penultimate_sigma`: (functions) A1111's DPM2 rule: the schedule is
      built for one step more and its next-to-last sigma dropped.
    """

    name: str
    scheduler_class: str = ""
    overrides: dict[str, Any] = field(default_factory=dict)
    default_schedule: str = "Uniform"
    aliases: tuple[str, ...] = ()
    ancestral: bool = False
    function: SamplerFunction | None = None
    brownian_noise: bool = False
    discard_penultimate_sigma: bool = False

    def __post_init__(self) -> None:
        if (self.function is None) == (not self.scheduler_class):
            raise SamplerError("sampler_name", f"sampler {self.name!r} needs exactly one of a function or a diffusers "
                                               "scheduler class")
        if self.function is not None and not callable(self.function):
            raise SamplerError("sampler_name", f"sampler {self.name!r}: `function` must be callable")

    @property
    def path(self) -> str:
        """Which loop runs it: "k-diffusion" (a sampler function) or "diffusers" (a scheduler class)."""
        return PATH_K_DIFFUSION if self.function is not None else PATH_DIFFUSERS

    @property
    def scheduler_type(self) -> type[SchedulerMixin]:
        if self.function is not None:
            raise SamplerError("sampler_name",
                               f"sampler {self.name!r} is a sampler function, not a diffusers scheduler")
        return getattr(diffusers, self.scheduler_class)

    def step_takes(self, name: str) -> bool:
        """Whether this sampler takes the step option `name` (eta, s_churn): a setting acts, and enters the infotext,
        only where it does. A function's `eta` is A1111's ancestral eta (kept at its default 1), not the DDIM eta
        setting, so functions never take that one."""
        if self.function is not None:
            return name != "eta" and name in inspect.signature(self.function).parameters
        return name in inspect.signature(self.scheduler_type.step).parameters

    def supported_schedules(self) -> list[str]:
        if self.function is not None:
            return ["Automatic", *ALL_SCHEDULES]
        params = inspect.signature(self.scheduler_type.__init__).parameters
        names = ["Automatic"]
        for label, overrides in SCHEDULE_TYPES.items():
            if all(key in params for key in overrides):
                names.append(label)
        return names

    def _check_schedule(self, schedule: str) -> str:
        if schedule not in self.supported_schedules():
            raise SamplerError(
                "scheduler",
                f"sampler {self.name!r} does not support schedule type {schedule!r}; "
                f"choose one of: {', '.join(self.supported_schedules())}"
            )
        return self.default_schedule if schedule == "Automatic" else schedule

    def config_for(self, schedule: str, prediction_type: str) -> dict[str, Any]:
        """The full scheduler config (a function's: its schedule and options); documented in docs/samplers.md."""
        chosen = self._check_schedule(schedule)
        if self.function is not None:
            return {"schedule": chosen, "prediction_type": prediction_type, **self.overrides,
                    "brownian_noise": self.brownian_noise, "discard_penultimate_sigma": self.discard_penultimate_sigma}
        params = inspect.signature(self.scheduler_type.__init__).parameters
        config = {k: v for k, v in BASE_SCHEDULER_CONFIG.items() if k in params}
        config["prediction_type"] = prediction_type
        if "timestep_spacing" in params:
            config["timestep_spacing"] = "linspace"
        config.update(self.overrides)
        if chosen in SCHEDULE_TYPES and all(k in params for k in SCHEDULE_TYPES[chosen]):
            config.update(SCHEDULE_TYPES[chosen])
        return config

    def build(self, schedule: str, prediction_type: str, noise_seed: int | None = None) -> SchedulerMixin:
        """A diffusers scheduler (function samplers are built per model by `k_denoise.KDiffusionSchedule`)."""
        config = self.config_for(schedule, prediction_type)
        if "noise_sampler_seed" in inspect.signature(self.scheduler_type.__init__).parameters:
            config["noise_sampler_seed"] = noise_seed  # SDE samplers draw Brownian noise from this seed
        return self.scheduler_type.from_config(config)


def _k(name: str, function: SamplerFunction, schedule: str, aliases: tuple[str, ...], *, ancestral: bool = False,
       brownian: bool = False, discard: bool = False, options: dict[str, Any] | None = None) -> SamplerSpec:
    return SamplerSpec(name, "", options or {}, schedule, aliases, ancestral or brownian, function, brownian, discard)


def _builtin_samplers() -> list[SamplerSpec]:
    dpmpp = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    sde = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    diffusers_variants = [
        SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", dpmpp, "Karras"),
        SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", {}, "Karras", ancestral=True),
        SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", sde, "Exponential", ancestral=True),
        SamplerSpec("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler", {**sde, "solver_type": "heun"}, "Exponential",
                    ancestral=True),
        SamplerSpec("DPM++ 3M SDE", "DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                                     "solver_order": 3}, "Exponential", ancestral=True),
        SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, "Uniform", ancestral=True),
        SamplerSpec("Euler", "EulerDiscreteScheduler", {}, "Uniform"),
        SamplerSpec("LMS", "LMSDiscreteScheduler", {}, "Uniform"),
        SamplerSpec("Heun", "HeunDiscreteScheduler", {}, "Uniform"),
        SamplerSpec("DPM2", "KDPM2DiscreteScheduler", {}, "Karras"),
        SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, "Karras", ancestral=True),
    ]
    return [
        # A1111's k-diffusion samplers, in its UI order, with its default schedules and noise rules.
        _k("DPM++ 2M", k_samplers.dpmpp_2m, "Karras", ("k_dpmpp_2m",)),
        _k("DPM++ SDE", k_samplers.dpmpp_sde, "Karras", ("k_dpmpp_sde",), brownian=True),
        _k("DPM++ 2M SDE", k_samplers.dpmpp_2m_sde, "Exponential", ("k_dpmpp_2m_sde",), brownian=True),
        _k("DPM++ 2M SDE Heun", k_samplers.dpmpp_2m_sde, "Exponential", ("k_dpmpp_2m_sde_heun",), brownian=True,
           options={"solver_type": "heun"}),
        _k("DPM++ 2S a", k_samplers.dpmpp_2s_ancestral, "Karras", ("k_dpmpp_2s_a",), ancestral=True),
        _k("DPM++ 3M SDE", k_samplers.dpmpp_3m_sde, "Exponential", ("k_dpmpp_3m_sde",), brownian=True, discard=True),
        _k("Euler a", k_samplers.euler_ancestral, "Uniform", ("k_euler_a", "k_euler_ancestral", "Euler Ancestral"),
           ancestral=True),
        _k("Euler", k_samplers.euler, "Uniform", ("k_euler",)),
        _k("LMS", k_samplers.lms, "Uniform", ("k_lms",)),
        _k("Heun", k_samplers.heun, "Uniform", ("k_heun",)),
        _k("DPM2", k_samplers.dpm_2, "Karras", ("k_dpm_2",), discard=True),
        _k("DPM2 a", k_samplers.dpm_2_ancestral, "Karras", ("k_dpm_2_a",), ancestral=True, discard=True),
        # Timestep samplers: diffusers schedulers.
        SamplerSpec("DDIM", "DDIMScheduler", {"timestep_spacing": "leading"}, "DDIM", ("ddim",)),
        SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True, "timestep_spacing": "leading"}, "DDIM",
                    ("plms",)),
        SamplerSpec("UniPC", "UniPCMultistepScheduler", {"solver_type": "bh2"}, "Uniform", ("unipc",)),
        SamplerSpec("LCM", "LCMScheduler", {"timestep_spacing": "leading"}, "DDIM", ("lcm",)),
        SamplerSpec("DEIS", "DEISMultistepScheduler", {}, "Uniform", ("deis",)),
        SamplerSpec("DDPM", "DDPMScheduler", {"timestep_spacing": "leading"}, "DDIM", ("ddpm",), ancestral=True),
        # diffusers' own versions of the k samplers: the images diffusers pipelines give (and ComfyUI-style tools
        # built on them), for workflows that started there.
        *(dataclasses.replace(spec, name=f"{spec.name}{DIFFUSERS_SUFFIX}") for spec in diffusers_variants),
    ]


class SamplerRegistry:
    """Ordered name -> spec table with A1111's name resolution rules."""

    def __init__(self, specs: list[SamplerSpec] | None = None) -> None:
        self._specs: dict[str, SamplerSpec] = {}
        for spec in specs if specs is not None else _builtin_samplers():
            self.register(spec)

    def register(self, spec: SamplerSpec) -> None:
        if spec.name in self._specs:
            raise SamplerError("sampler_name", f"a sampler named {spec.name!r} is already registered")
        self._specs[spec.name] = spec

    def unregister(self, name: str) -> SamplerSpec:
        """Remove an entry again: how an extension whose registration failed half-way is rolled back."""
        try:
            return self._specs.pop(name)
        except KeyError:
            raise SamplerError("sampler_name", f"no sampler named {name!r} is registered") from None

    def names(self) -> list[str]:
        return list(self._specs)

    def schedule_names(self) -> list[str]:
        return ["Automatic", *ALL_SCHEDULES]

    def _lookup(self, name: str) -> SamplerSpec | None:
        folded = name.strip().lower()
        for spec in self._specs.values():
            if folded == spec.name.lower() or folded in (a.lower() for a in spec.aliases):
                return spec
        return None

    def resolve(self, sampler: str, schedule: str | None = None) -> tuple[SamplerSpec, str]:
        """Accept current names, k-diffusion aliases and old combined names such as `DPM++ 2M Karras`."""
        schedule_label = self.normalise_schedule(schedule or "Automatic")
        spec = self._lookup(sampler)
        if spec is None:
            for label in sorted(ALL_SCHEDULES, key=len, reverse=True):
                if sampler.strip().lower().endswith(" " + label.lower()):
                    spec = self._lookup(sampler.strip()[: -len(label)].strip())
                    if spec is not None and schedule_label == "Automatic":
                        schedule_label = label
                    break
        if spec is None:
            raise SamplerError("sampler_name", f"unknown sampler {sampler!r}; choose one of: {', '.join(self.names())}")
        return spec, schedule_label

    @staticmethod
    def normalise_schedule(schedule: str) -> str:
        text = schedule.strip()
        if text.lower() in SCHEDULE_ALIASES:
            return SCHEDULE_ALIASES[text.lower()]
        for label in ("Automatic", *ALL_SCHEDULES):
            if text.lower().replace("_", " ") == label.lower():
                return label
        raise SamplerError("scheduler", f"unknown schedule type {schedule!r}; "
                                        f"choose one of: Automatic, {', '.join(ALL_SCHEDULES)}")


def _noise_rule(spec: SamplerSpec) -> str:
    if not spec.ancestral:
        return "–"
    if spec.function is None:
        return "scheduler's own"
    return "Brownian tree per image seed" if spec.brownian_noise else "each image's generator, continued"


def sampler_table_markdown(registry: SamplerRegistry) -> str:
    """The mapping as a Markdown table; docs/samplers.md holds this text and a test keeps them equal."""
    lines = [
        "| Sampler | path | function / diffusers scheduler | options / config overrides | Automatic schedule = "
        "| step noise | schedule types |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in registry.names():
        spec = registry.resolve(name)[0]
        options = dict(spec.overrides)
        if spec.discard_penultimate_sigma:
            options["discard_penultimate_sigma"] = True
        overrides = ", ".join(f"`{k}={v!r}`" for k, v in options.items()) or "–"
        backing = f"`{spec.function.__name__}`" if spec.function is not None else f"`{spec.scheduler_class}`"
        schedules = "all" if spec.function is not None else ", ".join(spec.supported_schedules())
        lines.append(f"| {name} | {spec.path} | {backing} | {overrides} | {spec.default_schedule} | "
                     f"{_noise_rule(spec)} | {schedules} |")
    lines += ["", "| Schedule type | k-diffusion path | diffusers config overrides |", "|---|---|---|"]
    for label in ALL_SCHEDULES:
        diffusers_config = ", ".join(f"`{k}={v!r}`" for k, v in SCHEDULE_TYPES.get(label, {}).items()) or "–"
        lines.append(f"| {label} | yes | {diffusers_config} |")
    return "\n".join(lines) + "\n"

"""The sampler table: A1111 sampler name + schedule type -> a diffusers scheduler class and config overrides.

The UI, the HTTP API, the CLI and `docs/samplers.md` all read this one table. Entries are `SamplerSpec`s; a spec builds
a ready scheduler for a model's prediction type. The registry is an object (extensions add entries to it), not a global.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin

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
SIGMA_SCHEDULES = {"Karras", "Exponential", "Beta"}


class SamplerError(ValueError):
    """Unknown sampler or schedule, or a combination the sampler cannot run; `field_name` says which input."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field_name = field_name


@dataclass(frozen=True)
class SamplerSpec:
    """One A1111 sampler backed by a diffusers scheduler class."""

    name: str
    scheduler_class: str
    overrides: dict[str, Any] = field(default_factory=dict)
    default_schedule: str = "Uniform"
    aliases: tuple[str, ...] = ()
    ancestral: bool = False

    @property
    def scheduler_type(self) -> type[SchedulerMixin]:
        return getattr(diffusers, self.scheduler_class)

    def step_takes(self, name: str) -> bool:
        """Whether this scheduler's `step` accepts `name` (eta, s_churn): a setting acts, and enters the infotext,
        only where it does."""
        return name in inspect.signature(self.scheduler_type.step).parameters

    def supported_schedules(self) -> list[str]:
        params = inspect.signature(self.scheduler_type.__init__).parameters
        names = ["Automatic"]
        for label, overrides in SCHEDULE_TYPES.items():
            if all(key in params for key in overrides):
                names.append(label)
        return names

    def config_for(self, schedule: str, prediction_type: str) -> dict[str, Any]:
        """The full scheduler config; documented in docs/samplers.md."""
        if schedule not in self.supported_schedules():
            raise SamplerError(
                "scheduler",
                f"sampler {self.name!r} does not support schedule type {schedule!r}; "
                f"choose one of: {', '.join(self.supported_schedules())}"
            )
        chosen = self.default_schedule if schedule == "Automatic" else schedule
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
        config = self.config_for(schedule, prediction_type)
        if "noise_sampler_seed" in inspect.signature(self.scheduler_type.__init__).parameters:
            config["noise_sampler_seed"] = noise_seed  # SDE samplers draw Brownian noise from this seed
        return self.scheduler_type.from_config(config)


def _builtin_samplers() -> list[SamplerSpec]:
    dpmpp = {"algorithm_type": "dpmsolver++", "solver_order": 2}
    sde = {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}
    return [
        SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", dpmpp, "Karras", ("k_dpmpp_2m",)),
        SamplerSpec("DPM++ SDE", "DPMSolverSDEScheduler", {}, "Karras", ("k_dpmpp_sde",), ancestral=True),
        SamplerSpec("DPM++ 2M SDE", "DPMSolverMultistepScheduler", sde, "Exponential", ("k_dpmpp_2m_sde",), ancestral=True),
        SamplerSpec(
            "DPM++ 2M SDE Heun",
            "DPMSolverMultistepScheduler",
            {**sde, "solver_type": "heun"},
            "Exponential",
            ancestral=True,
        ),
        SamplerSpec(
            "DPM++ 3M SDE",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
            "Exponential",
            ancestral=True,
        ),
        SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler", {}, "Uniform", ("k_euler_a", "Euler Ancestral"), True),
        SamplerSpec("Euler", "EulerDiscreteScheduler", {}, "Uniform", ("k_euler",)),
        SamplerSpec("LMS", "LMSDiscreteScheduler", {}, "Uniform", ("k_lms",)),
        SamplerSpec("Heun", "HeunDiscreteScheduler", {}, "Uniform", ("k_heun",)),
        SamplerSpec("DPM2", "KDPM2DiscreteScheduler", {}, "Karras", ("k_dpm_2",)),
        SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, "Karras", ("k_dpm_2_a",), ancestral=True),
        SamplerSpec("DDIM", "DDIMScheduler", {"timestep_spacing": "leading"}, "DDIM", ("ddim",)),
        SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True, "timestep_spacing": "leading"}, "DDIM", ("plms",)),
        SamplerSpec("UniPC", "UniPCMultistepScheduler", {"solver_type": "bh2"}, "Uniform", ("unipc",)),
        SamplerSpec("LCM", "LCMScheduler", {"timestep_spacing": "leading"}, "DDIM", ("lcm",)),
        SamplerSpec("DEIS", "DEISMultistepScheduler", {}, "Uniform", ("deis",)),
        SamplerSpec("DDPM", "DDPMScheduler", {"timestep_spacing": "leading"}, "DDIM", ("ddpm",), ancestral=True),
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
        return ["Automatic", *SCHEDULE_TYPES]

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
            for label in sorted(SCHEDULE_TYPES, key=len, reverse=True):
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
        for label in ("Automatic", *SCHEDULE_TYPES):
            if text.lower() == label.lower():
                return label
        raise SamplerError("scheduler", f"unknown schedule type {schedule!r}; choose one of: Automatic, {', '.join(SCHEDULE_TYPES)}")


def sampler_table_markdown(registry: SamplerRegistry) -> str:
    """The mapping as a Markdown table; docs/samplers.md holds this text and a test keeps them equal."""
    lines = [
        "| A1111 sampler | diffusers scheduler | config overrides | Automatic schedule = | schedule types |",
        "|---|---|---|---|---|",
    ]
    for name in registry.names():
        spec = registry.resolve(name)[0]
        overrides = ", ".join(f"`{k}={v!r}`" for k, v in spec.overrides.items()) or "–"
        schedules = ", ".join(spec.supported_schedules())
        lines.append(f"| {name} | `{spec.scheduler_class}` | {overrides} | {spec.default_schedule} | {schedules} |")
    lines += ["", "| Schedule type | config overrides |", "|---|---|"]
    lines += [f"| {label} | " + ", ".join(f"`{k}={v!r}`" for k, v in o.items()) + " |" for label, o in SCHEDULE_TYPES.items()]
    return "\n".join(lines) + "\n"

"""The expected sampler table, written out by hand: which A1111 names run A1111's k-diffusion samplers, and what
each diffusers-backed name + schedule type must become in diffusers.

This is literal data (read off docs/samplers.md and A1111's sampler list, /work/shared/reference/a1111-compat.md §4),
never computed from the project's `SamplerSpec`, so that the parity tests build their reference schedulers
independently of the table they check. A change to the project's table has to be made here too, on purpose.
"""

from __future__ import annotations

from typing import Any

# The SD family's training noise schedule, shared by every scheduler class the table uses.
BASE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
}

# Schedule types a scheduler class can run: all of them when it has the use_*_sigmas switches, else spacing only.
SIGMA_SCHEDULES = ("Automatic", "Uniform", "Karras", "Exponential", "Beta", "SGM Uniform", "Simple", "DDIM")
SPACING_SCHEDULES = ("Automatic", "Uniform", "SGM Uniform", "Simple", "DDIM")

# Schedule type -> the complete spacing / sigma settings it stands for.
NO_SIGMAS: dict[str, Any] = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}
SCHEDULES: dict[str, dict[str, Any]] = {
    "Uniform": {"timestep_spacing": "linspace", **NO_SIGMAS},
    "Karras": {"timestep_spacing": "linspace", **NO_SIGMAS, "use_karras_sigmas": True},
    "Exponential": {"timestep_spacing": "linspace", **NO_SIGMAS, "use_exponential_sigmas": True},
    "Beta": {"timestep_spacing": "linspace", **NO_SIGMAS, "use_beta_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing", **NO_SIGMAS},
    "Simple": {"timestep_spacing": "trailing", **NO_SIGMAS},
    "DDIM": {"timestep_spacing": "leading", **NO_SIGMAS},
}
SIGMA_KEYS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

# A1111 name -> (diffusers class, what "Automatic" means, schedule types, class-specific settings, ancestral/SDE).
SAMPLERS: dict[str, tuple[str, str, tuple[str, ...], dict[str, Any], bool]] = {
    "DPM++ 2M (diffusers)": ("DPMSolverMultistepScheduler", "Karras", SIGMA_SCHEDULES,
                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}, False),
    "DPM++ SDE (diffusers)": ("DPMSolverSDEScheduler", "Karras", SIGMA_SCHEDULES, {}, True),
    "DPM++ 2M SDE (diffusers)": ("DPMSolverMultistepScheduler", "Exponential", SIGMA_SCHEDULES,
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}, True),
    "DPM++ 2M SDE Heun (diffusers)": ("DPMSolverMultistepScheduler", "Exponential", SIGMA_SCHEDULES,
                          {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "solver_type": "heun"}, True),
    "DPM++ 3M SDE (diffusers)": ("DPMSolverMultistepScheduler", "Exponential", SIGMA_SCHEDULES,
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 3, "solver_type": "midpoint"}, True),
    "Euler a (diffusers)": ("EulerAncestralDiscreteScheduler", "Uniform", SPACING_SCHEDULES, {}, True),
    "Euler (diffusers)": ("EulerDiscreteScheduler", "Uniform", SIGMA_SCHEDULES, {}, False),
    "LMS (diffusers)": ("LMSDiscreteScheduler", "Uniform", SIGMA_SCHEDULES, {}, False),
    "Heun (diffusers)": ("HeunDiscreteScheduler", "Uniform", SIGMA_SCHEDULES, {"clip_sample": False}, False),
    "DPM2 (diffusers)": ("KDPM2DiscreteScheduler", "Karras", SIGMA_SCHEDULES, {}, False),
    "DPM2 a (diffusers)": ("KDPM2AncestralDiscreteScheduler", "Karras", SIGMA_SCHEDULES, {}, True),
    "DDIM": ("DDIMScheduler", "DDIM", SPACING_SCHEDULES, {"clip_sample": False, "set_alpha_to_one": False}, False),
    "PLMS": ("PNDMScheduler", "DDIM", SPACING_SCHEDULES, {"skip_prk_steps": True, "set_alpha_to_one": False}, False),
    "UniPC": ("UniPCMultistepScheduler", "Uniform", SIGMA_SCHEDULES, {"solver_order": 2, "solver_type": "bh2"}, False),
    "LCM": ("LCMScheduler", "DDIM", SPACING_SCHEDULES, {"clip_sample": False, "set_alpha_to_one": False}, False),
    "DEIS": ("DEISMultistepScheduler", "Uniform", SIGMA_SCHEDULES,
             {"algorithm_type": "deis", "solver_order": 2, "solver_type": "logrho"}, False),
    "DDPM": ("DDPMScheduler", "DDIM", SPACING_SCHEDULES, {"clip_sample": False}, True),
}


# A1111 1.10's k-diffusion samplers (modules/sd_samplers_kdiffusion.py), run as sampler functions on A1111's sigma
# schedules: name -> (k-diffusion function, what "Automatic" means, Brownian-tree noise, discard next-to-last sigma,
# draws step noise).
K_SAMPLERS: dict[str, tuple[str, str, bool, bool, bool]] = {
    "DPM++ 2M": ("sample_dpmpp_2m", "Karras", False, False, False),
    "DPM++ SDE": ("sample_dpmpp_sde", "Karras", True, False, True),
    "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", "Exponential", True, False, True),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", "Exponential", True, False, True),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", "Karras", False, False, True),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", "Exponential", True, True, True),
    "Euler a": ("sample_euler_ancestral", "Uniform", False, False, True),
    "Euler": ("sample_euler", "Uniform", False, False, False),
    "LMS": ("sample_lms", "Uniform", False, False, False),
    "Heun": ("sample_heun", "Uniform", False, False, False),
    "DPM2": ("sample_dpm_2", "Karras", False, True, False),
    "DPM2 a": ("sample_dpm_2_ancestral", "Karras", False, True, True),
}
# A1111 1.10's schedule types (modules/sd_schedulers.py), all offered to the k-diffusion samplers.
A1111_SCHEDULES = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                   "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")


def expected_pairs() -> set[tuple[str, str]]:
    """Every (sampler, schedule type) the table says the project must offer."""
    diffusers_pairs = {(name, schedule) for name, row in SAMPLERS.items() for schedule in row[2]}
    return diffusers_pairs | {(name, schedule) for name in K_SAMPLERS for schedule in A1111_SCHEDULES}


def expected_scheduler(sampler: str, schedule: str, prediction_type: str = "epsilon") -> tuple[str, dict[str, Any]]:
    """(diffusers class name, config) for one pair: base + prediction + schedule type + the class's own settings."""
    cls, automatic, schedules, own, _ = SAMPLERS[sampler]
    if schedule not in schedules:
        raise KeyError(f"{sampler!r} has no schedule type {schedule!r} in the expected table")
    settings = dict(SCHEDULES[automatic if schedule == "Automatic" else schedule])
    if schedules is SPACING_SCHEDULES:  # these classes have no use_*_sigmas switches at all
        settings = {k: v for k, v in settings.items() if k not in SIGMA_KEYS}
    return cls, {**BASE, "prediction_type": prediction_type, **settings, **own}


def is_stochastic(sampler: str) -> bool:
    """Ancestral/SDE samplers draw per-step noise, so img2img parity with diffusers' shared generator is impossible."""
    return K_SAMPLERS[sampler][4] if sampler in K_SAMPLERS else SAMPLERS[sampler][4]

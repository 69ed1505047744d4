"""The sampler table: A1111 names, old combined names, schedule types, clear errors."""

from __future__ import annotations

import diffusers
import pytest

from tests.sampler_table import K_SAMPLERS, SAMPLERS, expected_pairs, expected_scheduler, is_stochastic
from webui.engine.samplers import SamplerError, SamplerRegistry

# Each test builds its own table (cheap): a table built at import time is made before a mutation run switches a
# mutant on, and is never attributed to the tests that read it.
REQUIRED = ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DDIM", "UniPC", "Heun", "LMS", "LCM"]


def test_required_a1111_samplers_exist() -> None:
    assert set(REQUIRED) <= set(SamplerRegistry().names())


@pytest.mark.parametrize(
    "name,sampler,schedule",
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
        ("LMS Karras", "LMS", "Karras"),
        ("k_euler_a", "Euler a", "Automatic"),
        ("euler a", "Euler a", "Automatic"),
    ],
)
def test_old_and_alias_names(name: str, sampler: str, schedule: str) -> None:
    spec, label = SamplerRegistry().resolve(name)
    assert (spec.name, label) == (sampler, schedule)


def test_karras_sets_karras_sigmas_and_ddim_is_the_documented_config() -> None:
    spec, label = SamplerRegistry().resolve("DPM++ 2M (diffusers)", "karras")
    assert spec.config_for(label, "epsilon")["use_karras_sigmas"] is True
    ddim = SamplerRegistry().resolve("DDIM")[0].config_for("Automatic", "epsilon")
    assert ddim["timestep_spacing"] == "leading" and ddim["steps_offset"] == 1
    assert (ddim["beta_start"], ddim["beta_end"], ddim["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")


def test_unknown_names_and_unsupported_combinations_are_clear() -> None:
    with pytest.raises(SamplerError, match="unknown sampler 'Nope'"):
        SamplerRegistry().resolve("Nope")
    with pytest.raises(SamplerError, match="unknown schedule type"):
        SamplerRegistry().resolve("Euler", "Wiggly")
    spec, _ = SamplerRegistry().resolve("DDIM")
    with pytest.raises(SamplerError, match="does not support schedule type 'Karras'"):
        spec.config_for("Karras", "epsilon")


# --- The project's table against the hand-written one in tests/sampler_table.py -------------------------------------


def _project_pairs() -> set[tuple[str, str]]:
    specs = [SamplerRegistry().resolve(name)[0] for name in SamplerRegistry().names()]
    return {(spec.name, schedule) for spec in specs for schedule in spec.supported_schedules()}


def test_supported_pairs_equal_the_expected_table() -> None:
    """A sampler or schedule type added (or dropped) without a row in tests/sampler_table.py fails here."""
    project = _project_pairs()
    assert project - expected_pairs() == set(), "pairs the project offers but the expected table lacks"
    assert expected_pairs() - project == set(), "pairs the expected table lists but the project does not offer"


@pytest.mark.parametrize(
    "sampler,schedule,prediction",
    [(*pair, "epsilon") for pair in sorted(expected_pairs()) if pair[0] in SAMPLERS]
    + [(*pair, "v_prediction") for pair in [("DPM++ 2M (diffusers)", "Karras"), ("DDIM", "Automatic"),
                                           ("Euler a (diffusers)", "Simple")]],
)
def test_every_pair_builds_exactly_the_expected_scheduler(sampler: str, schedule: str, prediction: str) -> None:
    cls_name, expected = expected_scheduler(sampler, schedule, prediction)
    spec, label = SamplerRegistry().resolve(sampler, schedule)
    scheduler = spec.build(label, prediction, noise_seed=7)
    assert type(scheduler) is getattr(diffusers, cls_name)
    actual = {key: scheduler.config.get(key, "<missing>") for key in expected}
    wrong = {key: (actual[key], value) for key, value in expected.items() if actual[key] != value}
    assert wrong == {}, f"{sampler} / {schedule}: config key -> (project, expected)"
    assert spec.ancestral == is_stochastic(sampler)


@pytest.mark.parametrize(
    "sampler,schedule,expected",
    [
        # linspace(0, 999, 10), reversed: k-diffusion's evenly spaced ("Uniform") timesteps
        ("Euler (diffusers)", "Automatic", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
        # trailing: round(arange(1000, 0, -100)) - 1
        ("Euler (diffusers)", "SGM Uniform", [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]),
        # leading with steps_offset 1: arange(10) * 100 + 1, reversed
        ("DDIM", "Automatic", [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]),
        # multistep solvers' linspace: round(linspace(0, 999, 11))[::-1][:-1] (trailing would end in 99)
        ("UniPC", "Automatic", [999, 899, 799, 699, 599, 500, 400, 300, 200, 100]),
    ],
)
def test_timesteps_for_ten_steps(sampler: str, schedule: str, expected: list[int]) -> None:
    """The spacing itself, so a change fails even if the config key that selects it were renamed."""
    spec, label = SamplerRegistry().resolve(sampler, schedule)
    scheduler = spec.build(label, "epsilon")
    scheduler.set_timesteps(10)
    assert [round(float(t), 3) for t in scheduler.timesteps] == expected


def test_an_explicit_schedule_wins_over_an_old_combined_name() -> None:
    registry = SamplerRegistry()
    assert registry.resolve("DPM++ 2M Karras", "Exponential") == (registry.resolve("DPM++ 2M")[0], "Exponential")
    assert registry.resolve("DPM++ 2M Karras", "Automatic")[1] == "Karras"
    assert registry.resolve("DPM++ 2M Karras")[1] == "Karras"


# --- The k-diffusion side: A1111's names run sampler functions with A1111's defaults --------------------------------


@pytest.mark.parametrize("name", sorted(K_SAMPLERS))
def test_a1111_names_take_the_k_diffusion_path_with_a1111_defaults(name: str) -> None:
    function, automatic, brownian, discard, stochastic = K_SAMPLERS[name]
    spec, _ = SamplerRegistry().resolve(name)
    assert spec.path == "k-diffusion" and spec.function is not None and spec.scheduler_class == ""
    assert spec.function.__name__ == function.removeprefix("sample_")
    assert (spec.default_schedule, spec.brownian_noise, spec.discard_penultimate_sigma, spec.ancestral) == (
        automatic, brownian, discard, stochastic)
    assert spec.config_for("Automatic", "epsilon")["schedule"] == automatic
    assert not spec.step_takes("eta"), "the DDIM eta setting must not reach ancestral samplers (A1111 eta_ancestral)"


def test_each_k_sampler_keeps_a_diffusers_twin_and_timestep_samplers_stay_diffusers() -> None:
    registry = SamplerRegistry()
    for name in K_SAMPLERS:
        if name == "DPM++ 2S a":  # diffusers has no ancestral DPM-Solver++(2S)
            continue
        assert registry.resolve(f"{name} (diffusers)")[0].path == "diffusers"
    for name in ("DDIM", "PLMS", "UniPC", "LCM", "DEIS", "DDPM"):
        assert registry.resolve(name)[0].path == "diffusers"


@pytest.mark.parametrize("name,schedule", [("kl_optimal", "KL Optimal"), ("Align Your Steps", "Align Your Steps"),
                                           ("polyexponential", "Polyexponential"), ("normal", "Normal")])
def test_a1111_only_schedule_types_resolve_for_k_samplers_and_are_refused_by_diffusers(
        name: str, schedule: str) -> None:
    registry = SamplerRegistry()
    spec, label = registry.resolve("Euler", name)
    assert label == schedule and spec.config_for(label, "epsilon")["schedule"] == schedule
    with pytest.raises(SamplerError, match="does not support schedule type"):
        registry.resolve("Euler (diffusers)")[0].config_for(label, "epsilon")

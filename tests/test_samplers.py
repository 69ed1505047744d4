"""The sampler table: A1111 names, old combined names, schedule types, clear errors."""

from __future__ import annotations

import pytest

from webui.engine.samplers import SamplerError, SamplerRegistry

REGISTRY = SamplerRegistry()
REQUIRED = ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DDIM", "UniPC", "Heun", "LMS", "LCM"]


def test_required_a1111_samplers_exist() -> None:
    assert set(REQUIRED) <= set(REGISTRY.names())


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
    spec, label = REGISTRY.resolve(name)
    assert (spec.name, label) == (sampler, schedule)


def test_karras_sets_karras_sigmas_and_ddim_is_the_documented_config() -> None:
    spec, label = REGISTRY.resolve("DPM++ 2M", "karras")
    assert spec.config_for(label, "epsilon")["use_karras_sigmas"] is True
    ddim = REGISTRY.resolve("DDIM")[0].config_for("Automatic", "epsilon")
    assert ddim["timestep_spacing"] == "leading" and ddim["steps_offset"] == 1
    assert (ddim["beta_start"], ddim["beta_end"], ddim["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")


def test_unknown_names_and_unsupported_combinations_are_clear() -> None:
    with pytest.raises(SamplerError, match="unknown sampler 'Nope'"):
        REGISTRY.resolve("Nope")
    with pytest.raises(SamplerError, match="unknown schedule type"):
        REGISTRY.resolve("Euler", "Wiggly")
    spec, _ = REGISTRY.resolve("DDIM")
    with pytest.raises(SamplerError, match="does not support schedule type 'Karras'"):
        spec.config_for("Karras", "epsilon")

import numpy as np
import pytest

from sd_app import samplers
from sd_app.errors import UserError

REQUIRED = ["Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM++ 2S a",
            "LMS", "DDIM", "UniPC", "LCM", "PLMS", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "DPM fast", "DPM adaptive",
            "Restart"]


def test_table_has_a1111_samplers_and_schedules():
    names = [s.name for s in samplers.SAMPLERS]
    assert set(REQUIRED) <= set(names)
    assert {"Automatic", "Karras", "Exponential", "SGM Uniform"} <= {s.name for s in samplers.SCHEDULES}


@pytest.mark.parametrize("name, sampler, schedule", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
    ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
    ("Euler a", "Euler a", "Automatic"),
    ("k_dpmpp_2m", "DPM++ 2M", "Karras"),
    ("dpm++ 2m  karras", "DPM++ 2M", "Karras"),
])
def test_resolve_names(name, sampler, schedule):
    got_sampler, got_schedule = samplers.resolve(name, "Automatic")
    assert (got_sampler.name, got_schedule.name) == (sampler, schedule)


def test_a1111_defaults_and_automatic_as_a1111_writes_it():
    """A1111 v1.10's own schedules: DPM++ 2M SDE on Automatic is Exponential there; Euler has none (the model's
    own spacing), written "Automatic"."""
    assert samplers.resolve("DPM++ 2M SDE")[1].name == "Exponential"
    assert samplers.resolve("DPM++ 3M SDE")[1].name == "Exponential"
    assert samplers.resolve("DPM++ 2M")[1].name == "Karras"
    assert samplers.resolve("Restart")[1].name == "Karras"
    assert samplers.resolve("Euler")[1].name == "Automatic"
    assert samplers.resolve("DDIM", "Karras")[1].name == "Karras"  # kept for the infotext, as A1111
    assert samplers.find_sampler("DPM++ 3M SDE").discard_penultimate
    assert samplers.find_sampler("DPM++ 2M SDE Heun").brownian


def test_explicit_schedule_wins_over_combined_name():
    assert samplers.resolve("DPM++ 2M Karras", "SGM Uniform")[1].name == "SGM Uniform"


def test_unknown_sampler_lists_choices():
    with pytest.raises(UserError) as err:
        samplers.resolve("Euler b")
    assert err.value.field == "sampler_name" and "DPM++ 2M" in err.value.message


def test_every_a1111_schedule_type_is_offered():
    assert [s.name for s in samplers.SCHEDULES] == [
        "Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
        "Align Your Steps", "Simple", "Normal", "DDIM", "Beta", "Turbo"]
    assert samplers.resolve("Euler a", "Karras")[1].name == "Karras"  # A1111 allows any pair
    assert samplers.resolve("Euler a", "sgm_uniform")[1].name == "SGM Uniform"
    assert samplers.resolve("DPM++ 2M SDE Heun Exponential")[0].name == "DPM++ 2M SDE Heun"
    assert samplers.resolve("DPM++ 2M Align Your Steps")[1].name == "Align Your Steps"


@pytest.mark.parametrize("name", REQUIRED)
def test_every_sampler_generates(engine, small, name):
    params = small.replace(sampler_name=name, steps=3)
    result = engine.generate(params)
    pixels = np.asarray(result.images[0])
    assert pixels.shape == (64, 64, 3) and pixels.std() > 0
    assert f"Sampler: {name}," in result.infotexts[0]


def test_sde_sampler_is_deterministic(engine, small):
    params = small.replace(sampler_name="DPM++ SDE", steps=3)
    a, b = engine.generate(params), engine.generate(params)
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))

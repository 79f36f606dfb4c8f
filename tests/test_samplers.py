import numpy as np
import pytest

from sd_app import samplers
from sd_app.errors import UserError

REQUIRED = ["Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ SDE", "DPM++ 2S a",
            "LMS", "DDIM", "UniPC", "LCM"]


def test_table_has_a1111_samplers_and_schedules():
    names = [s.name for s in samplers.SAMPLERS]
    assert set(REQUIRED) <= set(names)
    assert {"Automatic", "Karras", "Exponential", "SGM Uniform"} <= {s.name for s in samplers.SCHEDULES}


@pytest.mark.parametrize("name, sampler, schedule", [
    ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
    ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
    ("Euler a", "Euler a", "Uniform"),
    ("k_dpmpp_2m", "DPM++ 2M", "Karras"),
    ("dpm++ 2m  karras", "DPM++ 2M", "Karras"),
])
def test_resolve_names(name, sampler, schedule):
    got_sampler, got_schedule = samplers.resolve(name, "Automatic")
    assert (got_sampler.name, got_schedule.name) == (sampler, schedule)


def test_what_each_sampler_lacks_is_what_its_diffusers_class_lacks():
    """The table names the schedule options a scheduler does not take, so names resolve without diffusers."""
    import inspect

    import diffusers

    keys = {key for schedule in samplers.SCHEDULES for key in schedule.options}
    for sampler in samplers.SAMPLERS:
        params = inspect.signature(getattr(diffusers, sampler.scheduler_class).__init__).parameters
        assert set(sampler.lacks) == {key for key in keys if key not in params}, sampler.name


def test_explicit_schedule_wins_over_combined_name():
    assert samplers.resolve("DPM++ 2M Karras", "SGM Uniform")[1].name == "SGM Uniform"


def test_unknown_sampler_lists_choices():
    with pytest.raises(UserError) as err:
        samplers.resolve("Euler b")
    assert err.value.field == "sampler_name" and "DPM++ 2M" in err.value.message


def test_unsupported_combination_is_refused():
    with pytest.raises(UserError) as err:
        samplers.resolve("Euler a", "Karras")
    assert err.value.field == "scheduler" and "Uniform" in err.value.message


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

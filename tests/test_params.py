import pytest

from sd_app.errors import UserError
from sd_app.params import GenerationParams


@pytest.mark.parametrize("change, field, words", [
    ({"width": 1020}, "width", "multiple of 8"),
    ({"height": 32}, "height", "between 64"),
    ({"width": -512}, "width", "between"),
    ({"steps": 0}, "steps", "between 1 and 150"),
    ({"steps": 20.5}, "steps", "whole number"),
    ({"steps": "20"}, "steps", "whole number"),
    ({"steps": True}, "steps", "whole number"),
    ({"cfg_scale": 0.5}, "cfg_scale", "between"),
    ({"cfg_scale": float("nan")}, "cfg_scale", "number"),
    ({"seed": -2}, "seed", "between -1"),
    ({"seed": 2**40}, "seed", "between -1"),
    ({"batch_size": 0}, "batch_size", "between 1 and 8"),
    ({"batch_size": 500}, "batch_size", "between 1 and 8"),
    ({"n_iter": 1000}, "n_iter", "between 1 and 100"),
    ({"width": 4096, "height": 4096, "batch_size": 2}, "batch_size", "too many pixels"),
    ({"refiner_switch_at": 0}, "refiner_switch_at", "between"),
    ({"refiner_switch_at": 1.5}, "refiner_switch_at", "between"),
    ({"sampler_name": "Nope"}, "sampler_name", "choose one of"),
    ({"sampler_name": None}, "sampler_name", "text"),
    ({"scheduler": "Nope"}, "scheduler", "choose one of"),
    ({"prompt": None}, "prompt", "text"),
    ({"prompt": "x" * 20001}, "prompt", "at most"),
    ({"negative_prompt": 5}, "negative_prompt", "text"),
    ({"checkpoint": 3}, "checkpoint", "checkpoint name"),
])
def test_every_bad_value_names_its_field(change, field, words):
    with pytest.raises(UserError) as err:
        GenerationParams(**change).check()
    assert err.value.field == field
    assert words in err.value.message
    assert field in str(err.value)


def test_defaults_are_valid():
    assert GenerationParams(prompt="x").check().sampler_name == "DPM++ 2M"


@pytest.mark.parametrize("changes, field", [
    ({"subseed_strength": 1.5}, "subseed_strength"), ({"subseed": 2**32}, "subseed"),
    ({"seed_resize_from_w": 4104}, "seed_resize_from_w"), ({"randn_source": "TPU"}, "randn_source")])
def test_noise_fields_are_checked(changes, field):
    with pytest.raises(UserError) as err:
        GenerationParams(**changes).check()
    assert err.value.field == field


def test_with_defaults_draws_random_seeds_once_and_names_what_the_settings_chose():
    from sd_app.hires import HiresParams
    from sd_app.params import RunDefaults

    defaults = RunDefaults("GPU", "both passes")
    filled = GenerationParams(batch_size=4, n_iter=2, hires=HiresParams()).with_defaults(defaults)
    assert 0 <= filled.seed <= 2**32 - 8 and 0 <= filled.subseed <= 2**32 - 8 and filled.randn_source == "GPU"
    assert filled.hires.refiner_pass == "both passes"  # the setting's, as the infotext will say
    kept = GenerationParams(seed=5, subseed=9, randn_source="nv",
                            hires=HiresParams(refiner_pass="first pass")).with_defaults(defaults)
    assert (kept.seed, kept.subseed, kept.randn_source, kept.hires.refiner_pass) == (5, 9, "NV", "first pass")
    assert GenerationParams().with_defaults(defaults).hires is None

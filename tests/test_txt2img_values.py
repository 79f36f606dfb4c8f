"""The txt2img form's values become a request as they were typed: the engine's check refuses what it cannot use."""

import pytest

from sd_app.errors import UserError
from sd_app.params import GenerationParams
from sd_app.ui.components import UNCLAMPED, form_slider
from sd_app.ui.txt2img import values_to_params

GOOD = ["base", "a cat", "", "Euler a", "Automatic", 20, 1024, 1024, 7, -1, 1, 1, "None", 0.8, []]
NAMES = ["checkpoint", "prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "width", "height",
         "cfg_scale", "seed", "n_iter", "batch_size", "refiner_checkpoint", "refiner_switch_at", "styles"]


def with_value(name, value):
    values = list(GOOD)
    values[NAMES.index(name)] = value
    return values


@pytest.mark.parametrize("name, value", [("steps", 0), ("width", 13), ("seed", 1.5), ("cfg_scale", 0.5),
                                         ("batch_size", 9), ("n_iter", None), ("height", 5000),
                                         ("refiner_switch_at", 0.005)])
def test_a_value_the_engine_cannot_use_gets_the_engines_message(name, value):
    with pytest.raises(UserError) as page:
        values_to_params(with_value(name, value))
    with pytest.raises(UserError) as engine:
        GenerationParams(**{**dict(zip(NAMES, GOOD)), "checkpoint": None, "refiner_checkpoint": None,
                            "styles": (), name: value}).check()
    assert str(page.value) == str(engine.value) and str(page.value).startswith(f"{name}: ")


def test_whole_floats_are_whole_numbers():
    params = values_to_params(with_value("steps", 12.0))
    assert params.steps == 12 and isinstance(params.steps, int) and params.cfg_scale == 7.0
    assert params.refiner_checkpoint is None and params.checkpoint == "base"


def test_form_slider_passes_the_typed_value():
    slider = form_slider(1, 150, value=20, step=1, label="Steps", elem_id="steps")
    assert slider.preprocess(0) == 0 and slider.preprocess(1.5) == 1.5  # Gradio's slider raises or rounds
    config = slider.get_config()
    assert UNCLAMPED in config["elem_classes"]
    assert (config["minimum"], config["maximum"], config["label"], config["elem_id"]) == (1, 150, "Steps", "steps")


def test_clip_skip_fields_come_last_and_are_checked():
    params = values_to_params(GOOD + [2.0, True])
    assert (params.clip_skip, params.sdxl_clip_l_skip) == (2, True)
    assert values_to_params(GOOD).clip_skip == 1  # a form without them (older callers): A1111's default
    with pytest.raises(UserError) as err:
        values_to_params(GOOD + [0, False])
    assert err.value.field == "clip_skip"


def test_variation_seed_fields_follow_and_reach_the_request():
    params = values_to_params(GOOD + [1.0, False, False, 77.0, 0.25, 512.0, 768.0])
    assert (params.subseed, params.subseed_strength, params.seed_resize_from_w, params.seed_resize_from_h) == \
        (77, 0.25, 512, 768)
    assert isinstance(params.subseed, int) and isinstance(params.seed_resize_from_w, int)
    with pytest.raises(UserError) as err:
        values_to_params(GOOD + [1.0, False, False, 77.0, 1.5, 0, 0])
    assert err.value.field == "subseed_strength"

import pytest

from sd_app import infotext
from sd_app.params import GenerationParams

A1111_TEXT = """a (red:1.2) fox, masterpiece
in the snow
Negative prompt: blurry, lowres
Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 1216x832, \
Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, \
Version: v1.10.1"""


def test_parse_a1111_infotext():
    prompt, negative, fields = infotext.parse(A1111_TEXT)
    assert prompt == "a (red:1.2) fox, masterpiece\nin the snow"
    assert negative == "blurry, lowres"
    assert fields["Sampler"] == "DPM++ 2M" and fields["Model hash"] == "31e35c80fc"
    params = infotext.to_params(A1111_TEXT)
    assert (params.steps, params.cfg_scale, params.seed, params.width, params.height) == (30, 7.0, 1234, 1216, 832)
    assert (params.sampler_name, params.scheduler) == ("DPM++ 2M", "Karras")
    assert params.checkpoint == "sd_xl_base_1.0" and params.refiner_checkpoint == "sd_xl_refiner_1.0"
    assert params.refiner_switch_at == 0.8
    params.check()


def test_old_combined_sampler_names_parse():
    params = infotext.to_params("cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 1, Size: 512x512")
    assert params.sampler_name == "DPM++ 2M Karras" and params.scheduler == "Automatic"
    params.check()


def test_quoting_like_a1111():
    assert infotext.quote("plain") == "plain"
    assert infotext.quote("a, b") == '"a, b"'
    assert infotext.quote('say "hi": now') == '"say \\"hi\\": now"'
    assert infotext.quote(7.0) == "7" and infotext.quote(7.5) == "7.5"
    text = infotext.build("p", "", {"Steps": 20, "Lora hashes": "a: 123, b: 456", "Seed": 5, "Size": "64x64"})
    assert text == 'p\nSteps: 20, Lora hashes: "a: 123, b: 456", Seed: 5, Size: 64x64'
    assert infotext.parse(text)[2]["Lora hashes"] == "a: 123, b: 456"


def test_no_negative_line_when_empty():
    assert "Negative prompt" not in infotext.build("p", "", {"Steps": 1})


def test_round_trip_through_the_engine(engine, small):
    params = small.replace(prompt="a (fox:1.2), snow\nsecond line", negative_prompt="blurry, (bad:1.3)",
                           sampler_name="Euler a", cfg_scale=5.5, seed=77, steps=3)
    result = engine.generate(params)
    back = infotext.to_params(result.infotexts[0])
    assert back.replace(checkpoint=None, scheduler="Automatic") == params
    assert back.checkpoint == "homegrown-demo-base"
    again = engine.generate(back)
    assert again.infotexts == result.infotexts


def test_unparseable_text_gives_defaults():
    params = infotext.to_params("just a prompt, with: colons")
    assert params.prompt == "just a prompt, with: colons" and params.steps == GenerationParams().steps


@pytest.mark.parametrize("text", ["", "\n\n", "Steps: x, Seed: y, Size: big", "Negative prompt:"])
def test_odd_infotext_never_fails(text):
    infotext.to_params(text)

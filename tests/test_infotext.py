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
    assert infotext.quote(7.0) == "7.0" and infotext.quote(7.5) == "7.5"  # A1111 keeps a float's decimal
    text = infotext.build("p", "", {"Steps": 20, "Lora hashes": "a: 123, b: 456", "Seed": 5, "Size": "64x64"})
    assert text == 'p\nSteps: 20, Seed: 5, Size: 64x64, Lora hashes: "a: 123, b: 456"'  # A1111's key order
    assert infotext.parse(text)[2]["Lora hashes"] == "a: 123, b: 456"


def test_no_negative_line_when_empty():
    assert "Negative prompt" not in infotext.build("p", "", {"Steps": 1})


def test_round_trip_through_the_engine(engine, small):
    params = small.replace(prompt="a (fox:1.2), snow\nsecond line", negative_prompt="blurry, (bad:1.3)",
                           sampler_name="Euler a", cfg_scale=5.5, seed=77, steps=3)
    result = engine.generate(params)
    back = infotext.to_params(result.infotexts[0])
    assert back.replace(checkpoint=None, scheduler="Automatic") == params.replace(randn_source="GPU")  # the default source, named
    assert back.checkpoint == "homegrown-demo-base"
    again = engine.generate(back)
    assert again.infotexts == result.infotexts


def test_unparseable_text_gives_defaults():
    params = infotext.to_params("just a prompt, with: colons")
    assert params.prompt == "just a prompt, with: colons" and params.steps == GenerationParams().steps


@pytest.mark.parametrize("text", ["", "\n\n", "Steps: x, Seed: y, Size: big", "Negative prompt:"])
def test_odd_infotext_never_fails(text):
    infotext.to_params(text)


# A real A1111 infotext with what Homegrown cannot do (hires fix), a model and a LoRA not here.
A1111_HIRES = """masterpiece, a red fox in the snow <lora:missing:0.5> <lora:demo-style:0.8>
Negative prompt: lowres, blurry
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3890114117, Size: 832x1216, \
Model hash: 31e35c80fc, Model: unknown_model, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, \
Hires steps: 10, Hires upscaler: Latent, ADetailer model: face_yolov8n.pt, \
Lora hashes: "missing: 0123456789ab, demo-style: 1f2e3d4c5b6a", Version: v1.10.1"""


def _model(name, short_hash=None):
    from sd_app.studio_library import ModelInfo

    return ModelInfo(name, f"{name}.safetensors", name.rsplit("/", 1)[-1], short_hash, None, f"/m/{name}")


def test_paste_says_what_was_applied_and_what_not_and_why(demo_root):
    from sd_app.lora_library import LoraLibrary
    from sd_app.models import HashCache

    loras = LoraLibrary(demo_root / "models" / "Lora", HashCache(None))
    base = GenerationParams(checkpoint="homegrown-demo-base", n_iter=3, refiner_checkpoint="homegrown-demo-refiner")
    pasted = infotext.read_params(A1111_HIRES, base, loras=loras, checkpoints=[_model("homegrown-demo-base")],
                                  refiners=[_model("homegrown-demo-refiner")])
    p = pasted.params
    assert pasted.is_infotext and p.prompt.startswith("masterpiece, a red fox") and p.negative_prompt == "lowres, blurry"
    assert (p.steps, p.cfg_scale, p.seed, p.width, p.height, p.sampler_name, p.scheduler) == \
        (28, 6.5, 3890114117, 832, 1216, "DPM++ 2M", "Karras")
    assert p.checkpoint == "homegrown-demo-base" and p.n_iter == 3  # kept: not in the text, or not here
    assert p.refiner_checkpoint is None  # A1111 writes Refiner only when one was used
    assert {"Prompt", "Negative prompt", "Steps: 28", "Seed: 3890114117", "Size: 832x1216",
            "Sampler: DPM++ 2M, Schedule type: Karras", "CFG scale: 6.5"} <= set(pasted.applied)
    why = dict(pasted.not_applied)
    hires = "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Denoising strength: 0.45"
    assert hires in pasted.applied  # the hires fix is pasted back
    assert (p.hires.scale, p.hires.second_pass_steps, p.hires.upscaler, p.hires.denoising_strength) == \
        (2.0, 10, "Latent", 0.45)
    assert "Clip skip: 2" in pasted.applied and p.clip_skip == 2  # the form's field (on SDXL: A1111's meaning)
    assert "not in your checkpoint folder" in why["Model: unknown_model"] and "homegrown-demo-base" in \
        why["Model: unknown_model"]
    assert "no LoRA named 'missing'" in why["<lora:missing:0.5>"] and "Generate refuses" in why["<lora:missing:0.5>"]
    assert why["ADetailer model: face_yolov8n.pt"] == "not a setting Homegrown has"
    assert "<lora:demo-style:0.8>" not in why and "Version: v1.10.1" not in why
    assert len(pasted.not_applied) == 3


def test_paste_finds_models_by_hash_and_refuses_bad_values():
    text = ("a fox\nSteps: 500, Sampler: Ancestral Warp, CFG scale: 7, Seed: 1, Size: 1000x1001, "
            "Model hash: abcdef0123, "
            "Model: renamed_base, Refiner: my_refiner [7440042bbd], Refiner switch at: 0.7")
    base = GenerationParams(steps=25, sampler_name="Euler a", checkpoint="b")
    pasted = infotext.read_params(text, base, checkpoints=[_model("b"), _model("sub/base", "abcdef0123")],
                                  refiners=[_model("sub/my_refiner")])
    p = pasted.params
    assert (p.checkpoint, p.refiner_checkpoint, p.refiner_switch_at) == ("sub/base", "sub/my_refiner", 0.7)
    assert "Model: renamed_base (your sub/base)" in pasted.applied
    why = dict(pasted.not_applied)
    assert (p.steps, p.sampler_name, p.width, p.height) == (25, "Euler a", 1024, 1024)
    assert why["Steps: 500"] == "must be between 1 and 150, got 500"
    assert "unknown sampler 'Ancestral Warp'" in why["Sampler: Ancestral Warp"] and "multiple of 8" in why["Size: 1000x1001"]
    schedule = infotext.read_params("x\nSteps: 20, Sampler: Euler, Schedule type: Bogus, Seed: 1, Size: 64x64")
    assert schedule.params.sampler_name == "Euler" and "Sampler: Euler" in schedule.applied
    assert "unknown schedule type 'Bogus'" in dict(schedule.not_applied)["Schedule type: Bogus"]


def test_text_without_a_parameters_line_is_not_an_infotext():
    base = GenerationParams(prompt="kept", steps=33)
    pasted = infotext.read_params("just a prompt, with: colons\nNegative prompt: ugly", base)
    assert not pasted.is_infotext and pasted.applied == [] and pasted.not_applied == []


def test_paste_reads_variation_seed_seed_resize_and_rng():
    text = ("a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 5, Size: 512x512, Variation seed: 77, "
            "Variation seed strength: 0.25, Seed resize from: 768x640, RNG: NV")
    pasted = infotext.read_params(text)
    params = pasted.params
    assert (params.subseed, params.subseed_strength) == (77, 0.25)
    assert (params.seed_resize_from_w, params.seed_resize_from_h) == (768, 640)
    assert params.randn_source == "NV"
    assert not pasted.not_applied


def test_paste_without_rng_is_a1111s_gpu_unless_homegrown_0_1_wrote_it():
    a1111 = infotext.read_params("a cat\nSteps: 20, Sampler: Euler, Seed: 5, Size: 512x512, Version: v1.10.1")
    assert a1111.params.randn_source == "GPU"
    old = infotext.read_params("a cat\nSteps: 20, Sampler: Euler, Seed: 5, Size: 512x512, Version: Homegrown 0.1.0")
    assert old.params.randn_source == "CPU"


def test_paste_reports_a_bad_variation_strength():
    pasted = infotext.read_params("a cat\nSteps: 20, Seed: 5, Variation seed: 3, Variation seed strength: 4")
    assert pasted.params.subseed_strength == 0.0
    assert any("Variation seed strength" in label and "between 0.0 and 1.0" in why for label, why in pasted.not_applied)


# As A1111 v1.10 writes it: floats with their decimal, Clip skip after the VAE, the extensions' fields (Lora hashes
# when the networks activate, then the refiner's when sampling switches to it), Version last.
A1111_V110 = """a red fox <lora:fox:0.8>, (snow:1.2)
Negative prompt: lowres, "bad"
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 3890114117, Size: 832x1216, \
Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, Clip skip: 2, \
Lora hashes: "fox: 0123456789ab", Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, \
Version: v1.10.1"""


def test_a1111_text_round_trips_byte_for_byte():
    prompt, negative, fields = infotext.parse(A1111_V110)
    assert fields["CFG scale"] == "7.0" and fields["Clip skip"] == "2"
    assert infotext.build(prompt, negative, fields) == A1111_V110
    shuffled = dict(reversed(list(fields.items())))  # the engine's dict has its own order: the text has A1111's
    assert infotext.build(prompt, negative, shuffled) == A1111_V110


def test_engine_fields_come_out_in_a1111s_order_and_format():
    fields = {"Steps": 20, "Sampler": "Euler", "Schedule type": "Karras", "CFG scale": 7, "Seed": 1,
              "Size": "64x64", "Model hash": "abc", "Model": "m", "VAE": None, "Clip skip": 2,
              "Refiner": "r [0123456789]", "Refiner switch at": 0.8, "Lora hashes": "x: 1", "Styles": "Photo",
              "Version": "Homegrown 0.1.0"}
    text = infotext.build("p", "", fields)
    assert text == ('p\nSteps: 20, Sampler: Euler, Schedule type: Karras, CFG scale: 7.0, Seed: 1, Size: 64x64, '
                    'Model hash: abc, Model: m, Clip skip: 2, Lora hashes: "x: 1", Styles: Photo, '
                    'Refiner: r [0123456789], Refiner switch at: 0.8, Version: Homegrown 0.1.0')


def test_pasting_clip_skip_fills_the_field_and_its_absence_means_1():
    params = infotext.to_params(A1111_V110, GenerationParams(clip_skip=5, sdxl_clip_l_skip=True))
    assert (params.clip_skip, params.sdxl_clip_l_skip) == (2, False)  # A1111 writes no SDXL switch: its default
    without = infotext.to_params("a fox\nSteps: 3, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 64x64",
                                 GenerationParams(clip_skip=5))
    assert without.clip_skip == 1  # A1111's parser: a missing Clip skip was 1
    ours = infotext.to_params("a fox\nSteps: 3, Seed: 1, Size: 64x64, Clip skip: 3, Clip skip SDXL: True")
    assert (ours.clip_skip, ours.sdxl_clip_l_skip) == (3, True)
    bad = infotext.read_params("a fox\nSteps: 3, Seed: 1, Size: 64x64, Clip skip: 40")
    assert bad.params.clip_skip == 1 and "between 1 and 12" in dict(bad.not_applied)["Clip skip: 40"]


def test_a1111_parameters_are_what_a1111s_parser_returns():
    from server import ROOT
    from sd_app.styles import StyleLibrary

    p = infotext.a1111_parameters(A1111_V110)
    assert (p["Size-1"], p["Size-2"], p["Clip skip"], p["CFG scale"]) == ("832", "1216", "2", "7.0") and "Size" not in p
    assert p["Prompt"] == "a red fox <lora:fox:0.8>, (snow:1.2)" and p["Negative prompt"] == 'lowres, "bad"'
    assert (p["RNG"], p["Hires resize-1"], p["Hires checkpoint"], p["Masked area padding"], p["Emphasis"]) == \
        ("GPU", 0, "Use same checkpoint", 32, "Original")
    assert "Downcast alphas_cumprod" not in p and p["Refiner switch by sampling steps"] is False  # made by v1.10
    plain = infotext.a1111_parameters("a fox\nSteps: 3, Sampler: Euler, Seed: 1")
    assert plain["Clip skip"] == "1" and plain["Schedule type"] == "Automatic" and "Emphasis" not in plain
    styles = StyleLibrary(ROOT / "presets" / "styles")
    photo = styles.get("Photo")
    styled, negative = photo.apply_to("a fox", "")
    found = infotext.a1111_parameters(infotext.build(styled, negative, {"Steps": 3, "Sampler": "Euler", "Seed": 1}),
                                      styles)
    assert found["Styles array"] == ["Photo"] and (found["Prompt"], found["Negative prompt"]) == ("a fox", "")

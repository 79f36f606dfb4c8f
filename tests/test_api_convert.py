"""A1111 requests -> Homegrown requests and results -> A1111 answers, in-process (no server)."""

import pytest

from sd_app.api.convert import (A1111_XYZ_AXES, option_changes, options, txt2img_info, txt2img_plan, wants_xyz,
                                xyz_request)
from sd_app.api.schemas import Txt2ImgRequest
from sd_app.errors import UserError
from sd_app.jobs import GenerationResult
from sd_app.params import GenerationParams
from sd_app.styles import StyleLibrary
from sd_app.studio_library import ModelInfo

from server import ROOT

INFOTEXT = ("a fox\nNegative prompt: blurry\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6, "
            "Seed: 99, Size: 832x1216, Model: homegrown-demo-base")


def plan(**fields):
    return txt2img_plan(Txt2ImgRequest(**fields), current_vae="Automatic", default_format="png",
                        styles=StyleLibrary(ROOT / "presets" / "styles"))


def test_a1111_defaults_become_a1111_api_defaults():
    made = plan(prompt="a cat")
    assert made.params == GenerationParams(prompt="a cat", steps=50, width=512, height=512, sampler_name="Euler")
    assert made.output_format == "png" and made.save is False and made.restore_checkpoint is False


def test_infotext_is_the_base_and_only_sent_fields_override_it():
    made = plan(infotext=INFOTEXT, steps=12)
    p = made.params
    assert (p.prompt, p.negative_prompt, p.steps, p.cfg_scale, p.seed) == ("a fox", "blurry", 12, 6.0, 99)
    assert (p.width, p.height, p.sampler_name, p.scheduler) == (832, 1216, "DPM++ 2M", "Karras")
    assert p.checkpoint == "homegrown-demo-base" and made.restore_checkpoint  # loaded for it, then put back


@pytest.mark.parametrize("fields, field", [
    ({"enable_hr": True, "firstphase_width": 512}, "firstphase_width"), ({"script_name": "prompt matrix"}, "script_name"),
    ({"script_args": [1, "2"]}, "script_args"),
    ({"s_churn": 0.5}, "s_churn"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 13}}, "CLIP_stop_at_last_layers"),
    ({"override_settings": {"sd_vae": "other-vae"}}, "sd_vae"),
    ({"override_settings": {"samples_format": "gif"}}, "samples_format"),
])
def test_what_homegrown_cannot_do_is_refused_naming_the_field(fields, field):
    with pytest.raises(UserError) as err:
        plan(**fields)
    assert err.value.field == field


def test_overrides_styles_format_and_saving():
    made = plan(prompt="a fox", styles=["Photo"], save_images=True,
                override_settings={"samples_format": "jpg", "sd_vae": "Automatic",
                                   "sd_model_checkpoint": "homegrown-demo-base"})
    assert made.output_format == "jpeg" and made.save and made.params.checkpoint == "homegrown-demo-base"
    # Styles are named here and applied by the engine, so the infotext can name them.
    assert made.params.prompt == "a fox" and made.params.styles == ("Photo",)
    with pytest.raises(UserError) as err:
        plan(prompt="a fox", styles=["Photo", "Nope"])
    assert (err.value.field, err.value.status) == ("styles", 404) and "Cinematic" in err.value.message
    assert not plan(save_images=True, do_not_save_samples=True).save


def test_info_is_a1111s_shape_from_the_result():
    params = GenerationParams(prompt="p", seed=5, width=64, height=64, batch_size=2, styles=("s",))
    result = GenerationResult(images=[object(), object()], infotexts=["t1", "t2"], seeds=[5, 6], params=params,
                              sampler="Euler", schedule="Karras", model_name="m", model_hash="abc", vae_name="v",
                              vae_hash="def", warnings=["w"])
    info = txt2img_info(Txt2ImgRequest(styles=["s"]), result, started=0.0)
    assert info["all_prompts"] == ["p", "p"] and info["all_seeds"] == [5, 6] and info["infotexts"] == ["t1", "t2"]
    assert (info["sampler_name"], info["scheduler"], info["sd_model_name"], info["sd_model_hash"]) == \
        ("Euler", "Karras", "m", "abc")
    assert (info["sd_vae_name"], info["sd_vae_hash"], info["styles"], info["warnings"]) == ("v", "def", ["s"], ["w"])


def test_options_and_option_changes():
    model = ModelInfo("sub/m", "sub/m.safetensors [0123456789]", "m", "0123456789", "0123456789" + "a" * 54, "/x")
    settings = {"output_format": "jpeg", "vae": "sub/fix", "outputs_dir": "outputs", "save_images": True,
                "embed_metadata": False, "randn_source": "NV", "hires_fix_refiner_pass": "second pass"}
    shown = options(model, settings, {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337, "x": 1})
    assert shown["sd_model_checkpoint"] == "sub/m.safetensors [0123456789]" and shown["samples_format"] == "jpg"
    assert shown["sd_checkpoint_hash"] == "0123456789" + "a" * 54 and shown["sd_vae"] == "sub/fix.safetensors"
    assert (shown["CLIP_stop_at_last_layers"], shown["eta_noise_seed_delta"], shown["enable_pnginfo"]) == \
        (2, 31337, False)
    assert "x" not in shown and shown["randn_source"] == "NV" and shown["jpeg_quality"] == 80  # A1111's default
    assert options(None, settings, {})["sd_model_checkpoint"] is None
    changes = option_changes({"samples_format": "JPG", "sd_vae": "x.safetensors", "CLIP_stop_at_last_layers": 2,
                              "eta_noise_seed_delta": 31337, "control_net_max_models_num": 3,
                              "sd_checkpoint_hash": "abc"})
    assert (changes.checkpoint, changes.settings) == (None, {"output_format": "jpeg", "vae": "x"})
    assert changes.kept == {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337}
    assert changes.unknown == ["control_net_max_models_num"] and set(changes.no_effect) == {
        "eta_noise_seed_delta", "sd_checkpoint_hash"}
    assert changes.answer()["applied"] == ["sd_vae", "samples_format", "CLIP_stop_at_last_layers"]
    assert option_changes({"sd_model_checkpoint": "m [0123456789]"}).checkpoint == "m [0123456789]"
    for bad in ({"CLIP_stop_at_last_layers": 13}, {"CLIP_stop_at_last_layers": "2"}, {"samples_format": "bmp"},
                {"sdxl_clip_l_skip": "yes"}, {"samples_save": 1}):
        with pytest.raises(UserError) as err:
            option_changes({"eta_noise_seed_delta": 1, **bad})  # nothing is applied if one value is wrong
        assert err.value.field == next(iter(bad)) and err.value.status == 422


def test_clip_skip_from_the_options_the_override_and_the_infotext():
    assert plan(prompt="x").params.clip_skip == 1
    kept = {"CLIP_stop_at_last_layers": 3, "sdxl_clip_l_skip": True}
    made = txt2img_plan(Txt2ImgRequest(prompt="x"), "Automatic", "png", kept=kept)
    assert (made.params.clip_skip, made.params.sdxl_clip_l_skip, made.warnings) == (3, True, ())
    made = txt2img_plan(Txt2ImgRequest(prompt="x", override_settings={"CLIP_stop_at_last_layers": 2,
                                                                      "randn_source": "cpu"}), "Automatic",
                        "png", kept=kept)
    assert (made.params.clip_skip, made.params.randn_source, made.warnings) == (2, "CPU", ())
    text = "a fox\nSteps: 3, Sampler: Euler, CFG scale: 7.0, Seed: 1, Size: 64x64, Clip skip: 4"
    made = txt2img_plan(Txt2ImgRequest(infotext=text), "Automatic", "png", kept=kept)
    assert (made.params.clip_skip, made.params.sdxl_clip_l_skip) == (4, True)  # the option holds SDXL's switch
    with pytest.raises(UserError) as err:
        txt2img_plan(Txt2ImgRequest(override_settings={"CLIP_stop_at_last_layers": 0}), "Automatic", "png")
    assert err.value.field == "CLIP_stop_at_last_layers" and err.value.status == 422


def test_override_settings_say_what_had_no_effect():
    made = plan(prompt="x", override_settings={"eta_noise_seed_delta": 31337, "randn_source": "GPU",
                                               "my_extension_option": 1, "samples_save": False,
                                               "sd_checkpoint_hash": "abc"})
    text = " | ".join(made.warnings)
    assert "override_settings.eta_noise_seed_delta had no effect" in text
    assert "randn_source" not in text  # A1111's default: it changes nothing in A1111 either
    assert "my_extension_option: not an option A1111 knows" in text
    assert "samples_save had no effect" in text and "sd_checkpoint_hash had no effect" in text
    result = GenerationResult(images=[], infotexts=[], seeds=[], params=made.params, warnings=["engine"])
    assert txt2img_info(Txt2ImgRequest(), result, 0.0, made.warnings)["warnings"] == [*made.warnings, "engine"]


def xyz(*script_args, checkpoints=("homegrown-demo-base",), **fields):
    request = Txt2ImgRequest(script_name="X/Y/Z Plot", script_args=list(script_args),
                             **{"prompt": "a cat", "steps": 4, "width": 64, "height": 64, **fields})
    made = plan(**request.model_dump(exclude_unset=True))  # the script's fields pass the unsupported check
    return xyz_request(request, made.params, list(checkpoints))


def test_xyz_script_args_in_a1111s_order_with_its_axis_indices():
    assert A1111_XYZ_AXES.index("Steps") == 4 and A1111_XYZ_AXES.index("Prompt S/R") == 7
    assert A1111_XYZ_AXES.index("Sampler") == 9 and A1111_XYZ_AXES.index("Size") == 41
    wanted = xyz(4, "2, 3", [], 6, "5-7 [3]", [], 0, "", [], False, True, False, False, True, False, False, 8, False)
    plan = wanted.plan
    assert [a.axis.label for a in plan.axes] == ["Steps", "CFG Scale", "Nothing"] and plan.shape == (2, 3, 1)
    assert wanted.include_lone_images and not wanted.include_sub_grids and not plan.draw_legend and plan.margin == 8
    assert all(c.params.seed == plan.base.seed + c.ix for c in plan.cells)  # "Vary seeds for X"
    short = xyz(4, "2, 3")  # a shorter list takes the page's defaults, as A1111's API fills it
    assert short.plan.draw_legend and not short.include_lone_images and short.plan.shape == (2, 1, 1)


def test_xyz_list_axes_read_the_dropdown_unless_csv_mode():
    assert xyz(9, "", ["Euler a", "DDIM"]).plan.axes[0].values == ("Euler a", "DDIM")
    assert xyz(9, "Euler, LMS", ["Euler a"]).plan.axes[0].values == ("Euler a",)  # A1111 ignores the text
    csv_mode = [False] * 7 + [0, True]
    assert xyz(9, "Euler, LMS", ["Euler a"], 0, "", [], 0, "", [], *csv_mode).plan.axes[0].values == ("Euler", "LMS")
    assert xyz(9, "Euler, LMS", []).plan.axes[0].values == ("Euler", "LMS")  # no dropdown sent: the text
    assert xyz("Steps", "2").plan.axes[0].axis.label == "Steps"  # a label works as well as an index
    assert xyz(11, "", ["homegrown-demo-base.safetensors [abc]"]).plan.axes[0].values == ("homegrown-demo-base",)


@pytest.mark.parametrize("args, field, words", [
    ((2, "1, 2"), "x_type", ["'Var. seed'"]),
    ((5, "1, 2"), "x_values", ["Hires steps", "turn the hires fix on"]),
    ((4, "2", [], 29, "", ["vae"]), "y_type", ["'VAE'"]),
    ((99, "1"), "x_type", ["0 to 41"]),
    ((4, "2, x"), "x_values", ["Steps", "'x'"]),
    ((4, 5), "x_values", ["script_args[1]"]),
    ((4, "2", [], 0, "", [], 0, "", [], "yes"), "draw_legend", ["true or false", "script_args[9]"]),
    ((4, "1-9", [], 6, "1-9"), None, ["81 cells", "at most 64"]),
    (tuple([0] * 19), "script_args", ["takes 18"]),
])
def test_xyz_bad_script_args_are_refused_naming_them(args, field, words):
    with pytest.raises(UserError) as err:
        xyz(*args)
    assert err.value.field == field and err.value.status == 422
    for word in words:
        assert word in str(err.value)


def test_xyz_is_asked_by_title_in_any_case():
    assert wants_xyz(Txt2ImgRequest(script_name=" x/y/z PLOT")) and not wants_xyz(Txt2ImgRequest())
    assert not wants_xyz(Txt2ImgRequest(script_name="x/y plot"))


def test_variation_seed_and_seed_resize_reach_the_request():
    p = plan(prompt="a cat", seed=3, subseed=8, subseed_strength=0.4, seed_resize_from_w=768, seed_resize_from_h=512).params
    assert (p.subseed, p.subseed_strength, p.seed_resize_from_w, p.seed_resize_from_h) == (8, 0.4, 768, 512)
    assert plan(prompt="a cat").params.seed_resize_from_w == 0  # A1111's -1: off


def test_hires_refiner_pass_comes_from_override_settings_as_in_a1111():
    made = plan(prompt="a cat", enable_hr=True, override_settings={"hires_fix_refiner_pass": "both passes"})
    assert made.params.hires.refiner_pass == "both passes" and not made.warnings
    assert plan(prompt="a cat", enable_hr=True).params.hires.refiner_pass is None  # the setting's

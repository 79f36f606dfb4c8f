"""A1111 requests -> Homegrown requests and results -> A1111 answers, in-process (no server)."""

import pytest

from sd_app.api.convert import option_changes, options, txt2img_info, txt2img_plan
from sd_app.api.schemas import Txt2ImgRequest
from sd_app.errors import UserError
from sd_app.jobs import GenerationResult
from sd_app.params import GenerationParams
from sd_app.styles import StyleLibrary
from sd_app.studio import ModelInfo

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
    ({"enable_hr": True}, "enable_hr"), ({"script_name": "x/y/z plot"}, "script_name"),
    ({"s_churn": 0.5}, "s_churn"), ({"override_settings": {"sd_hypernetwork": "x"}}, "override_settings"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 5}}, "CLIP_stop_at_last_layers"),
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
    model = ModelInfo("sub/m", "sub/m.safetensors [0123456789]", "m", "0123456789", None, "/x")
    settings = {"output_format": "jpeg", "vae": "Automatic", "outputs_dir": "outputs", "save_images": True}
    shown = options(model, settings)
    assert shown["sd_model_checkpoint"] == "sub/m.safetensors [0123456789]" and shown["samples_format"] == "jpg"
    assert options(None, settings)["sd_model_checkpoint"] is None
    assert option_changes({"samples_format": "JPG", "sd_vae": "x.safetensors", "CLIP_stop_at_last_layers": 2}) == \
        (None, {"output_format": "jpeg", "vae": "x"})
    assert option_changes({"sd_model_checkpoint": "m [0123456789]"}) == ("m [0123456789]", {})
    with pytest.raises(UserError) as err:
        option_changes({"samples_format": "png", "sd_hypernetwork": "x"})  # nothing is applied if one key is bad
    assert err.value.field == "sd_hypernetwork"

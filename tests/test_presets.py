import json
import shutil
from pathlib import Path

import pytest

from sd_app.errors import UserError
from sd_app.lora_library import LoraLibrary
from sd_app.models import HashCache
from sd_app.params import GenerationParams
from sd_app.presets import PresetLibrary, parse
from sd_app.styles import StyleLibrary

SHIPPED = Path(__file__).resolve().parent.parent / "presets"


def test_shipped_presets_all_load():
    presets, problems = PresetLibrary(SHIPPED).load()
    assert problems == []
    assert {"SDXL base + refiner", "Fast draft", "Photo", "Anime", "Pixel art"} <= set(presets)
    default = presets["SDXL base + refiner"].apply(GenerationParams(prompt="a cat"))
    assert (default.width, default.height, default.steps, default.cfg_scale) == (1024, 1024, 30, 7.0)
    assert (default.sampler_name, default.scheduler) == ("DPM++ 2M", "Karras")
    assert (default.refiner_checkpoint, default.refiner_switch_at) == ("sd_xl_refiner_1.0", 0.8)
    for preset in presets.values():
        preset.apply(GenerationParams(prompt="x")).check()


def test_presets_choose_styles_instead_of_writing_the_prompt():
    photo, cinematic = parse(SHIPPED / "photo.json"), parse(SHIPPED / "cinematic.json")
    params = photo.apply(GenerationParams(prompt="a red fox", negative_prompt="text"))
    assert (params.prompt, params.negative_prompt, params.styles, params.width) == ("a red fox", "text", ("Photo",), 1216)
    both = cinematic.apply(params)  # one after the other: the second preset's styles replace the first's
    assert (both.prompt, both.styles, both.width) == ("a red fox", ("Cinematic",), 1344)
    demo = parse(SHIPPED / "demo.json")
    twice = demo.apply(demo.apply(GenerationParams(prompt="castle")))
    assert twice.prompt == "castle, <lora:demo-style:0.8>" and twice.styles == ()


def test_presets_name_styles_that_exist(tmp_path):
    styles = StyleLibrary(SHIPPED / "styles")
    presets, problems = PresetLibrary(SHIPPED).load(styles=styles)
    assert problems == [] and presets["Anime"].parameters["styles"] == ("Anime",)
    _write(tmp_path, "gone", {"name": "Gone", "parameters": {"styles": ["Photo", "Vaporwave"]}})
    presets, problems = PresetLibrary(tmp_path).load(styles=styles)
    assert presets == {} and problems[0].startswith("gone.json: parameters.styles[1]: no style 'Vaporwave'")
    assert "Photo" in problems[0]  # the styles there are


def _write(folder: Path, name: str, data) -> Path:
    path = folder / f"{name}.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize("data, words", [
    ("{not json", "not valid JSON"),
    ({"name": "x", "colour": "red"}, "unknown field 'colour'"),
    ({"name": "x", "parameters": {"steps": 500}}, "parameters.steps"),
    ({"name": "x", "parameters": {"width": 1000 + 3}}, "parameters.width"),
    ({"name": "x", "parameters": {"sampler": "Euler"}}, "unknown field 'parameters.sampler'"),
    ({"name": "x", "loras": [{"name": "a", "weight": "heavy"}]}, "loras[0].weight"),
    ({"name": "x", "refiner": {"switch_at": 3}}, "refiner.switch_at"),
    ({"name": "x", "parameters": {"styles": "Photo"}}, "parameters.styles: must be a list of style names"),
    ({"name": "x", "style": {"prompt": "photo of {prompt}"}}, "'style' is no longer part of a preset"),
    ({"name": ""}, "'name'"),
    ([1, 2], "JSON object"),
])
def test_bad_files_name_file_and_field_and_others_still_load(tmp_path, data, words):
    _write(tmp_path, "good", {"name": "Good", "parameters": {"steps": 10}})
    _write(tmp_path, "bad", data)
    presets, problems = PresetLibrary(tmp_path).load()
    assert list(presets) == ["Good"]
    assert len(problems) == 1 and problems[0].startswith("bad.json:") and words in problems[0]


def test_missing_lora_is_reported(tmp_path, demo_root):
    _write(tmp_path, "needs", {"name": "Needs LoRA", "loras": [{"name": "not-here", "weight": 1}]})
    _write(tmp_path, "has", {"name": "Has LoRA", "loras": [{"name": "demo-style", "weight": 1}]})
    loras = LoraLibrary(demo_root / "models" / "Lora", HashCache(None))
    presets, problems = PresetLibrary(tmp_path).load(loras)
    assert list(presets) == ["Has LoRA"]
    assert "needs.json: loras[0].name" in problems[0] and "not-here" in problems[0]
    with pytest.raises(UserError):
        PresetLibrary(tmp_path).get("Needs LoRA", loras)


def test_user_presets_add_and_replace(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    _write(user, "mine", {"name": "Fast draft", "parameters": {"steps": 6}})
    _write(user, "extra", {"name": "Extra", "description": "mine"})
    presets, _ = PresetLibrary(SHIPPED, user).load()
    assert presets["Fast draft"].parameters["steps"] == 6 and "Extra" in presets
    with pytest.raises(UserError) as err:
        PresetLibrary(SHIPPED, user).get("Nope")
    assert "Extra" in err.value.message and err.value.status == 404


def test_user_folder_copy_of_shipped(tmp_path):
    shutil.copytree(SHIPPED, tmp_path / "p")
    assert len(PresetLibrary(tmp_path / "p").load()[0]) == len(list(SHIPPED.glob("*.json")))

"""Styles: A1111's template rules, files (JSON and A1111's styles.csv), applied at generation time, taken back
out of a pasted infotext so that they never apply twice."""

import json
from pathlib import Path

import pytest

from sd_app import infotext
from sd_app.errors import UserError
from sd_app.params import GenerationParams
from sd_app.styles import StyleLibrary, merge, unmerge

SHIPPED = Path(__file__).resolve().parent.parent / "presets" / "styles"
FOX = "a red fox"


@pytest.mark.parametrize("template, text, expected", [
    ("photo of {prompt}, grain", "a fox", "photo of a fox, grain"),
    ("grain, film", "a fox", "a fox, grain, film"),  # no {prompt}: appended
    ("grain, film", "  ", "grain, film"),
    ("grain", "a fox, ", "a fox,, grain"),  # A1111 strips, then joins with ", "
    ("{prompt}", "", ""),
    ("", "a fox", "a fox"),
])
def test_merge_is_a1111s_and_unmerge_takes_it_back(template, text, expected):
    assert merge(template, text) == expected
    back = unmerge(template, expected)
    assert back is not None and merge(template, back) == expected


@pytest.mark.parametrize("template, text", [
    ("photo of {prompt}, grain", "a painting of a fox, grain"),
    ("grain, film", "a fox, film"),
    ("photo of {prompt}, grain", "grain"),
])
def test_unmerge_refuses_text_the_style_did_not_make(template, text):
    assert unmerge(template, text) is None


def test_shipped_styles_and_a1111_order():
    library = StyleLibrary(SHIPPED)
    styles, problems = library.load()
    assert problems == [] and {"Photo", "Cinematic", "Anime", "Pixel art"} <= set(styles)
    params = library.apply(GenerationParams(prompt=FOX, negative_prompt="text", styles=("Photo", "Cinematic")))
    # A1111 applies styles in order, each around the result of the ones before.
    assert params.prompt.startswith("cinematic film still of cinematic photo of a red fox, 35mm photograph")
    assert params.negative_prompt.startswith("text, drawing, painting") and "glitch" in params.negative_prompt
    assert params.styles == ("Photo", "Cinematic")
    with pytest.raises(UserError) as err:
        library.apply(GenerationParams(prompt=FOX, styles=("Vaporwave",)))
    assert (err.value.field, err.value.status) == ("styles", 404) and "Pixel art" in err.value.message


def test_a_hires_prompt_of_its_own_gets_the_styles_too_as_in_a1111():
    from sd_app.hires import HiresParams

    library = StyleLibrary(SHIPPED)
    plain = library.apply(GenerationParams(prompt=FOX, styles=("Photo",)))
    own = library.apply(GenerationParams(prompt=FOX, styles=("Photo",), hires=HiresParams(prompt=FOX)))
    assert own.hires.prompt == own.prompt == plain.prompt  # an echoed prompt stays the prompt
    assert own.hires.negative_prompt == ""  # empty: the (styled) negative prompt
    sharp = library.apply(GenerationParams(prompt=FOX, styles=("Photo",), hires=HiresParams(prompt="sharp")))
    assert sharp.hires.prompt.startswith("cinematic photo of sharp")


def test_json_and_a1111_csv_files_user_replaces_shipped(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "styles.csv").write_text(
        "name,prompt,negative_prompt\n"
        "None,,\n"  # A1111's old empty row
        'Photo,"my photo of {prompt}",ugly\n'
        "Sketch,pencil sketch,\n"
        '"Bad, name",x,y\n', encoding="utf-8-sig")
    (user / "neon.json").write_text(json.dumps({"name": "Neon", "prompt": "neon {prompt}", "description": "glow"}))
    (user / "broken.json").write_text("{nope")
    (user / "extra.json").write_text(json.dumps({"name": "X", "colour": "red"}))
    (user / "notes.txt").write_text("not a style")
    styles, problems = StyleLibrary(SHIPPED, user).load()
    assert styles["Photo"].prompt == "my photo of {prompt}" and styles["Photo"].negative_prompt == "ugly"
    assert styles["Sketch"].prompt == "pencil sketch" and styles["Neon"].description == "glow"
    assert "Cinematic" in styles and "None" not in styles and "Bad, name" not in styles
    assert len(problems) == 3
    assert any(p.startswith("styles.csv line 5:") and "comma" in p for p in problems)
    assert any(p.startswith("broken.json: not valid JSON") for p in problems)
    assert any(p.startswith("extra.json: unknown field 'colour'") for p in problems)
    (user / "other.csv").write_text("title,text\nA,b\n")
    assert any("other.csv: needs A1111's header" in p for p in StyleLibrary(user).load()[1])


def test_check_refuses_styles_that_are_not_a_list_of_names():
    for bad in ("Photo", ("Photo", "Photo"), ("Photo", ""), (1,)):
        with pytest.raises(UserError) as err:
            GenerationParams(styles=bad).check()
        assert err.value.field == "styles"


def test_take_out_undoes_apply_and_keeps_what_it_cannot():
    library = StyleLibrary(SHIPPED)
    applied = library.apply(GenerationParams(prompt=FOX, negative_prompt="text", styles=("Photo", "Cinematic")))
    taken = library.take_out(applied.prompt, applied.negative_prompt, ["Photo", "Cinematic"])
    assert (taken.prompt, taken.negative_prompt, taken.styles, taken.kept) == (FOX, "text", ("Photo", "Cinematic"), [])
    # Photo is not known here: Cinematic comes out, Photo's text stays in the prompt, and the report says why.
    taken = StyleLibrary(SHIPPED).take_out(applied.prompt, applied.negative_prompt, ["Nope", "Cinematic"])
    assert taken.styles == ("Cinematic",) and taken.prompt.startswith("cinematic photo of a red fox")
    assert taken.kept == [("Nope", "its text stays in the prompt: it is not among your styles")]
    # Edited by hand after the last style: nothing can come out, each style says why.
    taken = library.take_out("big " + applied.prompt, applied.negative_prompt, ["Photo", "Cinematic"])
    assert taken.styles == () and taken.prompt == "big " + applied.prompt
    assert [name for name, _ in taken.kept] == ["Photo", "Cinematic"] and "applied before" in taken.kept[0][1]


def test_engine_applies_styles_and_a_paste_never_applies_them_twice(engine, small, monkeypatch):
    library = StyleLibrary(SHIPPED)
    monkeypatch.setattr(engine, "styles", library)
    result = engine.generate(small.replace(prompt=FOX, styles=("Photo", "Cinematic")))
    text = result.infotexts[0]
    # The infotext holds the prompt as encoded (what A1111 writes, what civitai reads) and names the styles.
    assert text.startswith("cinematic film still of cinematic photo of a red fox, 35mm")
    assert 'Styles: "Photo, Cinematic",' in text
    pasted = infotext.read_params(text, GenerationParams(), styles=library)
    assert (pasted.params.prompt, pasted.params.negative_prompt) == (FOX, small.negative_prompt)
    assert pasted.params.styles == ("Photo", "Cinematic") and "Styles: Photo, Cinematic" in pasted.applied
    again = engine.generate(pasted.params.replace(scheduler="Automatic"))
    assert again.infotexts == result.infotexts
    # Without the style library (an A1111 reader) the prompt is the full text and no style is chosen.
    plain = infotext.read_params(text)
    assert plain.params.prompt == result.params.prompt and plain.params.styles == ()
    no_library = engine.generate(plain.params)
    assert no_library.infotexts[0].split("\n")[0] == text.split("\n")[0]

"""The LoRA library: metadata from files and their neighbours, base-model detection, tags resolved to files."""

import base64
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sd_app import infotext
from sd_app.errors import UserError
from sd_app.lora_library import LoraLibrary, base_model_of
from sd_app.models import HashCache

def test_library_reads_metadata_without_tensors(lora_engine):
    loras = {i.name: i for i in lora_engine.loras.list()}
    assert {"demo-style", "demo-detail", "chars/hero", "sd15-thing"} <= set(loras)
    style = loras["demo-style"]
    assert style.base_model == "sdxl" and style.base_label == "SDXL"
    assert style.trigger_words[0] == "demostyle" and "painting" in style.trigger_words
    assert loras["chars/hero"].category == "chars" and loras["chars/hero"].alias == "demo-detail"
    assert loras["sd15-thing"].base_model == "sd1"


def pixels(result, i=0):
    return np.asarray(result.images[i]).astype(np.int16)


def test_user_json_civitai_info_and_previews(tmp_path, ckpt_dir):
    folder = tmp_path / "Lora"
    folder.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(ckpt_dir.parent / "Lora" / "demo-style.safetensors", folder / f"{name}.safetensors")
    (folder / "a.json").write_text(json.dumps({"description": "A style", "activation text": "foo, bar baz",
                                               "preferred weight": 0.7, "negative text": "ugly", "sd version": "SDXL"}))
    (folder / "a.preview.png").write_bytes(b"png")
    (folder / "b.civitai.info").write_text(json.dumps({"trainedWords": ["civword"]}))
    (folder / "c.json").write_text("{broken")
    lib = LoraLibrary(folder, HashCache(None))
    a, b, c = lib.get("a"), lib.get("b"), lib.get("c")
    assert (a.description, a.trigger_words, a.preferred_weight, a.negative_text) == ("A style", ["foo", "bar baz"], 0.7, "ugly")
    assert a.preview == folder / "a.preview.png" and lib.cover(a) == b"png"
    assert b.trigger_words == ["civword"]
    assert c.trigger_words[0] == "demostyle"  # a broken user file is ignored, not fatal


def test_embedded_cover_image(tmp_path):
    folder = tmp_path / "Lora"
    folder.mkdir()
    png = b"\x89PNG fake"
    save_file({"lora_te2_x.lora_down.weight": torch.zeros(1, 1)}, str(folder / "cov.safetensors"),
              metadata={"modelspec.thumbnail": "data:image/png;base64," + base64.b64encode(png).decode()})
    lib = LoraLibrary(folder, HashCache(None))
    assert lib.cover(lib.get("cov")) == png


@pytest.mark.parametrize("keys, meta, kind", [
    (["lora_te2_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"], {}, "sdxl"),
    (["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"], {}, "sdxl"),
    (["x"], {"ss_base_model_version": "sd_v1"}, "sd1"),
    (["x"], {"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
    (["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"], {}, "sd1"),
])
def test_base_model_detection(keys, meta, kind):
    assert base_model_of(keys, meta, {}) == kind


def test_tags_are_removed_from_the_text(lora_engine, small):
    # A LoRA at weight 0 is loaded but changes nothing; the text seen by the encoder must lack the tag.
    plain = lora_engine.generate(small)
    tagged = lora_engine.generate(small.replace(prompt="a photo of <lora:demo-style:0>a cat"))
    assert np.array_equal(pixels(plain), pixels(tagged))


def addnet_hash(data: bytes) -> str:
    """A1111's LoRA hash (modules/hashes.py addnet_hash_safetensors), written out here from its definition."""
    header_length = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_length:]).hexdigest()


def _lora_file(path, metadata=None, value=1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.full((4, 8), value)}, str(path),
              metadata=metadata)
    return path


def test_lora_hash_is_a1111s_addnet_hash_and_survives_a_metadata_edit(tmp_path):
    folder = tmp_path / "Lora"
    path = _lora_file(folder / "mine.safetensors", {"ss_output_name": "mine"})
    library = LoraLibrary(folder, HashCache(tmp_path / "hashes.json"))
    expected = addnet_hash(path.read_bytes())[:12]
    assert library.short_hash(library.get("mine")) == expected
    assert expected != hashlib.sha256(path.read_bytes()).hexdigest()[:12]  # not the whole file's
    _lora_file(path, {"ss_output_name": "mine", "modelspec.title": "a much longer header than before"})
    again = LoraLibrary(folder, HashCache(tmp_path / "hashes.json"))  # the cache sees a changed file
    assert again.short_hash(again.get("mine")) == expected  # the same tensors: the same hash, as in A1111
    cached = json.loads((tmp_path / "hashes.json").read_text())[str(path.resolve())]
    assert cached["addnet"].startswith(expected)
    assert again.find_by_hash(expected).name == "mine"


def test_sshs_model_hash_metadata_is_the_lora_hash(tmp_path):
    folder = tmp_path / "Lora"
    stored = "ABCDEF0123456789" * 4
    _lora_file(folder / "tagged.safetensors", {"sshs_model_hash": stored})
    library = LoraLibrary(folder, HashCache(None))
    assert library.short_hash(library.get("tagged")) == stored[:12].lower()
    text = f'a fox <lora:renamed:0.5>\nSteps: 3, Seed: 1, Size: 64x64, Lora hashes: "renamed: {stored[:12]}"'
    assert "<lora:tagged:0.5>" in infotext.to_params(text, loras=library).prompt


def test_pasted_lora_found_by_the_old_whole_file_hash_too(tmp_path):
    folder = tmp_path / "Lora"
    path = _lora_file(folder / "old.safetensors")
    library = LoraLibrary(folder, HashCache(None))
    whole = hashlib.sha256(path.read_bytes()).hexdigest()[:12]  # what Homegrown wrote before it used A1111's hash
    assert library.find_by_hash(whole).name == "old" and library.find_by_hash("0" * 12) is None


def test_infotext_records_lora_hashes_and_paste_restores_names(lora_engine, small):
    result = lora_engine.generate(small.replace(prompt="cat <lora:demo-style:0.7> <lora:chars/hero:1>"))
    text = result.infotexts[0]
    style_sha = addnet_hash((lora_engine.loras.folder / "demo-style.safetensors").read_bytes())
    hero_sha = addnet_hash((lora_engine.loras.folder / "chars" / "hero.safetensors").read_bytes())
    assert f'Lora hashes: "demo-style: {style_sha[:12]}, hero: {hero_sha[:12]}"' in text
    assert "<lora:demo-style:0.7>" in infotext.to_params(text).prompt
    # Someone else's infotext names the file differently; the hash finds our copy.
    theirs = text.replace("demo-style", "their-name")
    assert "<lora:demo-style:0.7>" in infotext.to_params(theirs, loras=lora_engine.loras).prompt


@pytest.mark.parametrize("tag, words", [
    ("<lora:demo-styel:1>", "did you mean: demo-style"),
    ("<lora:../outside:1>", "only files inside the LoRA folder"),
    ("<lora:/etc/passwd:1>", "only files inside the LoRA folder"),
    ("<lora:..\\..\\outside:1>", "only files inside the LoRA folder"),
    ("<lora:sd15-thing:1>", "made for SD 1.x"),
    ("<lora:demo-style:abc>", "needs a weight"),
    ("<lora:demo-style:1e9>", "needs a weight"),
    ("<lora::1>", "no name"),
    ("<lora:evil.ckpt:1>", "pickle"),
])
def test_bad_tags_get_clear_errors(lora_engine, small, tag, words):
    with pytest.raises(UserError) as err:
        lora_engine.generate(small.replace(prompt=f"cat {tag}"))
    assert words in err.value.message and err.value.field == "prompt"


def test_a_damaged_lora_is_listed_with_its_fault_and_refused_by_name(tmp_path, ckpt_dir):
    from damaged import metadata_as_list, short_data_offsets

    from sd_app.lora_library import resolve_tags
    from sd_app.prompts import LoraTag

    folder = tmp_path / "Lora"
    folder.mkdir()
    good = ckpt_dir.parent / "Lora" / "demo-style.safetensors"
    shutil.copy(good, folder)
    short_data_offsets(good, folder / "bad-offsets.safetensors")
    metadata_as_list(good, folder / "bad-meta.safetensors")
    (folder / "demo-style.json").write_text("{\"description\": " + "[" * 100_000)  # a broken neighbour: ignored
    lib = LoraLibrary(folder, HashCache(None))
    listed = {i.name: i for i in lib.list()}
    assert set(listed) == {"demo-style", "bad-offsets", "bad-meta"} and listed["demo-style"].problem is None
    assert "bad-offsets.safetensors is not a valid .safetensors file" in listed["bad-offsets"].problem
    assert "data_offsets [" in listed["bad-offsets"].problem
    assert "its __metadata__ is a list" in listed["bad-meta"].problem
    assert [a.info.name for a in resolve_tags(lib, [LoraTag("demo-style", 0.5)])] == ["demo-style"]
    for name, words in (("bad-offsets", "data_offsets"), ("bad-meta", "__metadata__")):
        with pytest.raises(UserError) as err:
            resolve_tags(lib, [LoraTag("demo-style", 0.5), LoraTag(name, 1.0)])
        assert err.value.field == "prompt" and err.value.status == 422
        assert f"LoRA {name!r} cannot be used: {name}.safetensors is not a valid" in err.value.message
        assert words in err.value.message
    assert lib.find_by_hash(lib.short_hash(listed["demo-style"])).name == "demo-style"

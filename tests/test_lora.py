import base64
import hashlib
import json
import shutil
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sd_app import infotext
from sd_app.errors import UserError
from sd_app.lora import LoraLibrary, WeightCache, base_model_of
from sd_app.models import HashCache

from conftest import BASE, make_engine


def pixels(result, i=0):
    return np.asarray(result.images[i]).astype(np.int16)


@pytest.fixture(scope="module")
def lora_engine(ckpt_dir, tmp_path_factory):
    """An engine with its own LoRA folder: the demo LoRAs, a subfolder, and odd files for error tests."""
    tmp = tmp_path_factory.mktemp("lora")
    folder = tmp / "Lora"
    shutil.copytree(ckpt_dir.parent / "Lora", folder)
    (folder / "chars").mkdir()
    shutil.copy(folder / "demo-detail.safetensors", folder / "chars" / "hero.safetensors")
    style = load_file(str(folder / "demo-style.safetensors"))
    # SD 1.5 layout: diffusers-style module names and a 768-wide cross-attention.
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 768),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(320, 4)},
              str(folder / "sd15-thing.safetensors"))
    data = (folder / "demo-style.safetensors").read_bytes()
    (folder / "cut-short.safetensors").write_bytes(data[: len(data) // 2])
    wrong = {k: (torch.zeros(v.shape[0], v.shape[1] + 3) if k.endswith("lora_down.weight") else v) for k, v in style.items()}
    save_file(wrong, str(folder / "wrong-shapes.safetensors"), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    (tmp / "outside.safetensors").write_bytes(data)
    eng = make_engine(ckpt_dir, tmp, lora_dir=folder, save_images=False)
    eng.load_checkpoint(BASE)
    return eng


@pytest.fixture(scope="module")
def reference(lora_engine):
    """Pixels made before any LoRA was ever loaded into this engine."""
    return {}


def test_library_reads_metadata_without_tensors(lora_engine):
    loras = {i.name: i for i in lora_engine.loras.list()}
    assert {"demo-style", "demo-detail", "chars/hero", "sd15-thing"} <= set(loras)
    style = loras["demo-style"]
    assert style.base_model == "sdxl" and style.base_label == "SDXL"
    assert style.trigger_words[0] == "demostyle" and "painting" in style.trigger_words
    assert loras["chars/hero"].category == "chars" and loras["chars/hero"].alias == "demo-detail"
    assert loras["sd15-thing"].base_model == "sd1"


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


def test_lora_changes_pixels_and_removing_it_restores_them_exactly(lora_engine, small):
    before = lora_engine.generate(small)  # no LoRA ever loaded yet in this engine
    styled = lora_engine.generate(small.replace(prompt="a photo of a cat <lora:demo-style:1>"))
    assert np.abs(pixels(before) - pixels(styled)).mean() > 1
    half = lora_engine.generate(small.replace(prompt="a photo of a cat <lora:demo-style:0.5>"))
    assert not np.array_equal(pixels(half), pixels(styled))
    negative = lora_engine.generate(small.replace(prompt="a photo of a cat <lora:demo-style:-1>"))
    assert not np.array_equal(pixels(negative), pixels(before))
    both = lora_engine.generate(small.replace(prompt="<lora:demo-style:1> a photo of a cat <lora:chars/hero:0.8>"))
    assert not np.array_equal(pixels(both), pixels(styled))
    after = lora_engine.generate(small)
    assert np.array_equal(pixels(after), pixels(before))
    again = lora_engine.generate(small.replace(prompt="a photo of a cat <lora:demo-style:1>"))
    assert np.array_equal(pixels(again), pixels(styled))


def test_tags_are_removed_from_the_text(lora_engine, small):
    # A LoRA at weight 0 is loaded but changes nothing; the text seen by the encoder must lack the tag.
    plain = lora_engine.generate(small)
    tagged = lora_engine.generate(small.replace(prompt="a photo of <lora:demo-style:0>a cat"))
    assert np.array_equal(pixels(plain), pixels(tagged))


def test_infotext_records_lora_hashes_and_paste_restores_names(lora_engine, small):
    result = lora_engine.generate(small.replace(prompt="cat <lora:demo-style:0.7> <lora:chars/hero:1>"))
    text = result.infotexts[0]
    style_sha = hashlib.sha256((lora_engine.loras.folder / "demo-style.safetensors").read_bytes()).hexdigest()
    hero_sha = hashlib.sha256((lora_engine.loras.folder / "chars" / "hero.safetensors").read_bytes()).hexdigest()
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


@pytest.mark.parametrize("name, words", [("cut-short", "incomplete"), ("wrong-shapes", "could not be applied")])
def test_broken_lora_fails_its_job_and_leaves_nothing_behind(lora_engine, small, name, words):
    before = lora_engine.generate(small)
    def adapters():
        return {part: names for part, names in lora_engine.base.pipe.get_list_adapters().items() if names}

    adapters_before = adapters()
    with pytest.raises(UserError) as err:
        lora_engine.generate(small.replace(prompt=f"cat <lora:{name}:1>"))
    assert words in err.value.message
    assert adapters() == adapters_before
    assert np.array_equal(pixels(lora_engine.generate(small)), pixels(before))


def test_switching_uses_the_cache_and_never_reloads_the_checkpoint(lora_engine, small):
    pipe = lora_engine.base.pipe
    lora_engine.base.loras.max_loaded = 1  # force adapters out of the pipeline at each switch
    lora_engine.generate(small.replace(prompt="cat <lora:demo-style:1>"))
    lora_engine.generate(small.replace(prompt="cat <lora:chars/hero:1>"))
    reads = lora_engine.lora_weights.disk_reads
    for prompt in ("cat <lora:chars/hero:1>", "cat <lora:demo-style:1>", "cat <lora:chars/hero:1>"):
        lora_engine.generate(small.replace(prompt=prompt))
    lora_engine.base.loras.max_loaded = 8
    assert lora_engine.lora_weights.disk_reads == reads  # adapters were rebuilt from memory, not disk
    assert lora_engine.base.pipe is pipe
    assert sum(len(v) for v in pipe.get_list_adapters().values()) <= 3  # one adapter in unet + 2 encoders


def test_weight_cache_is_bounded(ckpt_dir):
    folder = ckpt_dir.parent / "Lora"
    size = sum(t.numel() * t.element_size() for t in load_file(str(folder / "demo-style.safetensors")).values())
    cache = WeightCache(max_bytes=size + 1)
    cache.get(folder / "demo-style.safetensors")
    cache.get(folder / "demo-detail.safetensors")
    cache.get(folder / "demo-style.safetensors")
    assert cache.disk_reads == 3


def test_peft_format_loads_like_kohya(lora_engine, small, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    kohya = lora_engine.generate(small.replace(prompt="cat <lora:demo-style:1>"))
    pipe = lora_engine.base.pipe
    lora_engine.base.loras._restore_layers()  # peft's layers stand aside while a fused set runs
    adapter = lora_engine.base.loras._loaded[next(k for k in lora_engine.base.loras._loaded if k[0].stem == "demo-style")]
    layers = {part: get_peft_model_state_dict(getattr(pipe, part), adapter_name=adapter)
              for part in ("unet", "text_encoder", "text_encoder_2")}
    configs = {part: getattr(pipe, part).peft_config[adapter].to_dict() for part in layers}
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=layers["unet"],
                                                text_encoder_lora_layers=layers["text_encoder"],
                                                text_encoder_2_lora_layers=layers["text_encoder_2"],
                                                unet_lora_adapter_metadata=configs["unet"],
                                                text_encoder_lora_adapter_metadata=configs["text_encoder"],
                                                text_encoder_2_lora_adapter_metadata=configs["text_encoder_2"],
                                                weight_name="peft-style.safetensors")
    shutil.copy(tmp_path / "peft-style.safetensors", lora_engine.loras.folder / "peft-style.safetensors")
    assert lora_engine.loras.get("peft-style").base_model == "sdxl"
    peft = lora_engine.generate(small.replace(prompt="cat <lora:peft-style:1>"))
    assert np.abs(pixels(peft) - pixels(kohya)).max() <= 1


def test_concurrent_jobs_never_see_each_others_loras(lora_engine, small):
    prompts = ["cat <lora:demo-style:1>", "cat <lora:chars/hero:1>", "cat", "cat <lora:demo-style:-0.5>"]
    solo = {p: pixels(lora_engine.generate(small.replace(prompt=p))) for p in prompts}
    results, errors = {}, []

    def run(i):
        try:
            p = prompts[i % len(prompts)]
            results[i] = (p, pixels(lora_engine.generate(small.replace(prompt=p))))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    for p, got in results.values():
        assert np.array_equal(got, solo[p]), p


def test_fused_and_unfused_agree_and_both_restore_exactly(lora_engine, small):
    before = lora_engine.generate(small)
    prompt = small.replace(prompt="cat <lora:demo-style:0.9> <lora:chars/hero:0.5>")
    fused = lora_engine.generate(prompt)
    assert lora_engine.base.loras.fused
    assert np.array_equal(pixels(lora_engine.generate(small)), pixels(before))  # unfused back, exactly
    loras = lora_engine.base.loras
    loras.fuse_budget, loras.originals, originals = 0, None, loras.originals  # nowhere to keep originals
    try:
        unfused = lora_engine.generate(prompt)
        assert not loras.fused
    finally:
        loras.fuse_budget, loras.originals = None, originals
    assert np.abs(pixels(fused) - pixels(unfused)).max() <= 2
    assert np.array_equal(pixels(lora_engine.generate(small)), pixels(before))
    assert np.array_equal(pixels(lora_engine.generate(prompt)), pixels(fused))


def test_fusion_undone_from_the_checkpoint_file_when_ram_is_short(lora_engine, small):
    before = lora_engine.generate(small)
    prompt = small.replace(prompt="cat <lora:demo-style:0.7>")
    in_ram = lora_engine.generate(prompt)
    lora_engine.generate(small)
    loras = lora_engine.base.loras
    loras.fuse_budget = 0  # no room for a RAM copy: the originals come back from the .safetensors file
    try:
        from_file = lora_engine.generate(prompt)
        assert loras.fused and loras._from_file and not loras._originals
        assert np.array_equal(pixels(from_file), pixels(in_ram))
        assert np.array_equal(pixels(lora_engine.generate(small)), pixels(before))
    finally:
        loras.fuse_budget = None

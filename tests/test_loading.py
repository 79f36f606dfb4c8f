import pickle
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from sd_app import demo, loading
from sd_app.errors import UserError
from sd_app.models import Checkpoint, kind_of, read_header

from conftest import BASE, REFINER, make_engine


def _same_weights(expected: torch.nn.Module, loaded: torch.nn.Module):
    a, b = expected.state_dict(), loaded.state_dict()
    assert set(a) == set(b)
    for key in a:
        # The files are fp16, like the released SDXL ones.
        assert torch.equal(a[key].half().float(), b[key].float()), key


def test_single_file_base_and_refiner_load_offline_with_every_weight(ckpt_dir, no_network):
    parts = demo._tiny_components()
    base = loading.load_base(Checkpoint(BASE, ckpt_dir / demo.BASE_FILE), torch.float32)
    _same_weights(parts["unet"], base.unet)
    _same_weights(parts["vae"], base.vae)
    _same_weights(parts["text_encoder"], base.text_encoder)
    _same_weights(parts["text_encoder_2"], base.text_encoder_2)
    assert base.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert base.tokenizer_2.pad_token == "!"

    refiner = loading.load_refiner(Checkpoint(REFINER, ckpt_dir / demo.REFINER_FILE), torch.float32, base=base)
    _same_weights(parts["refiner_unet"], refiner.unet)
    # One copy of the shared parts, not two.
    assert refiner.text_encoder_2 is base.text_encoder_2 and refiner.vae is base.vae
    alone = loading.load_refiner(Checkpoint(REFINER, ckpt_dir / demo.REFINER_FILE), torch.float32)
    _same_weights(parts["text_encoder_2"], alone.text_encoder_2)


def test_demo_files_have_the_real_sdxl_key_layout(ckpt_dir):
    keys = set(read_header(ckpt_dir / demo.BASE_FILE).tensors)
    for key in ["model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
                "model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
                "model.diffusion_model.output_blocks.2.2.conv.weight", "first_stage_model.decoder.up.0.block.2.conv1.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight",
                "conditioner.embedders.0.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
                "conditioner.embedders.1.model.transformer.resblocks.9.attn.in_proj_weight",
                "conditioner.embedders.1.model.text_projection"]:
        assert key in keys
    refiner = set(read_header(ckpt_dir / demo.REFINER_FILE).tensors)
    assert "conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight" in refiner
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in refiner  # 4 levels: upsampler without attention


def _fake(path, keys, metadata=None):
    save_file({k: torch.zeros(1) for k in keys}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("keys, kind, words", [
    (["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.transformer.text_model.x"], "sd1", "1.x"),
    (["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.transformer.x"], "sd2", "2.x"),
    (["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"], "lora", "Lora folder"),
    (["encoder.conv_in.weight", "decoder.conv_in.weight"], "vae", "VAE folder"),
    (["something.else"], "unknown", "not a checkpoint"),
])
def test_other_kinds_get_a_clear_error(tmp_path, keys, kind, words):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    _fake(folder / "other.safetensors", keys)
    assert kind_of(keys) == kind
    engine = make_engine(folder, tmp_path)
    with pytest.raises(UserError) as err:
        engine.pipelines.load_checkpoint("other")
    assert words in err.value.message and "SDXL" in err.value.message


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned-by-pickle",))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_pickle_files_are_refused_and_never_unpickled(tmp_path, monkeypatch, suffix):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / f"evil{suffix}").write_bytes(pickle.dumps({"state_dict": _Exploit()}))
    engine = make_engine(folder, tmp_path)
    for name in ("evil", f"evil{suffix}"):
        with pytest.raises(UserError) as err:
            engine.pipelines.load_checkpoint(name)
        assert "pickle" in err.value.message and "safetensors" in err.value.message
    with pytest.raises(UserError):
        read_header(folder / f"evil{suffix}")
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_unknown_checkpoint_lists_the_valid_names(tmp_path, ckpt_dir):
    engine = make_engine(ckpt_dir, tmp_path)
    with pytest.raises(UserError) as err:
        engine.pipelines.load_checkpoint("sd_xl_base_1.0")
    assert err.value.status == 404 and BASE in err.value.message


def test_checkpoint_names_as_a1111_writes_them(tmp_path, ckpt_dir):
    engine = make_engine(ckpt_dir, tmp_path)
    lib = engine.pipelines.checkpoints
    assert lib.get(BASE + ".safetensors").name == BASE
    assert lib.get(f"{BASE}.safetensors [{lib.short_hash(lib.get(BASE))}]").name == BASE


def test_refiner_file_as_base_is_refused(tmp_path, ckpt_dir):
    engine = make_engine(ckpt_dir, tmp_path)
    with pytest.raises(UserError) as err:
        engine.pipelines.load_checkpoint(REFINER)
    assert "refiner" in err.value.message


def test_diffusers_folder_loads(tmp_path, ckpt_dir):
    pipe = loading.load_base(Checkpoint(BASE, ckpt_dir / demo.BASE_FILE), torch.float32)
    folder = tmp_path / "ckpt" / "my-diffusers-model"
    pipe.save_pretrained(folder)
    engine = make_engine(tmp_path / "ckpt", tmp_path)
    names = [c.name for c in engine.pipelines.checkpoints.list()]
    assert names == ["my-diffusers-model"]
    loaded = engine.pipelines.load_checkpoint("my-diffusers-model")
    assert torch.equal(loaded.pipe.unet.conv_in.weight, pipe.unet.conv_in.weight)


def test_demo_files_are_identical_on_every_machine(demo_root, tmp_path):
    again = demo.write_demo(tmp_path)
    for path in again.values():
        original = demo_root / path.relative_to(tmp_path)
        assert path.read_bytes() == original.read_bytes(), path.name


def _two_tensors(path):
    save_file({"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4, dtype=torch.float16)}, str(path),
              metadata={"format": "pt"})
    return path


def _set(key, value):
    return lambda header: header.__setitem__(key, value)


def _tensor(field, value):
    return lambda header: header["a.weight"].__setitem__(field, value)


@pytest.mark.parametrize("change, words", [
    (_set("__metadata__", ["format", "pt"]), "its __metadata__ is a list"),
    (_set("__metadata__", {"steps": 5}), "__metadata__ entry 'steps' is a number, not text"),
    (_tensor("data_offsets", [0]), "tensor 'a.weight' has data_offsets [0]"),
    (_tensor("data_offsets", "0-24"), "tensor 'a.weight' has data_offsets '0-24'"),
    (_tensor("data_offsets", [0, 10 ** 9]), "needs 24 bytes"),
    (_tensor("shape", [2, 4]), "needs 32 bytes, but its data_offsets [0, 24] span 24"),
    (_tensor("shape", "2x3"), "has shape '2x3'"),
    (_tensor("dtype", "F33"), "has dtype 'F33'; known: BOOL"),
    (_tensor("dtype", ["F32"]), "has dtype ['F32']"),
    (lambda h: h["a.weight"].pop("dtype"), "tensor 'a.weight' has no dtype"),
    (_set("a.weight", 7), "the entry of tensor 'a.weight' is a number"),
    (lambda h: h["b.weight"].__setitem__("data_offsets", [0, 8]), "inside another tensor"),
])
def test_damaged_headers_are_user_errors_naming_the_file_and_the_fault(tmp_path, change, words):
    from damaged import with_header

    bad = with_header(_two_tensors(tmp_path / "good.safetensors"), tmp_path / "bad.safetensors", change)
    with pytest.raises(UserError) as err:
        read_header(bad)
    assert err.value.message.startswith("bad.safetensors is not a valid .safetensors file: ")
    assert words in err.value.message and err.value.status == 422
    assert read_header(tmp_path / "good.safetensors").metadata == {"format": "pt"}


@pytest.mark.parametrize("content, words", [
    (b"[1, 2]", "its header is a list"),
    (b"{\"a\": ", "not readable JSON"),
    (b"[" * 100_000, "not readable JSON"),  # nested too deep for Python's JSON reader
    (b"\xff\xfe{}", "not readable JSON"),
])
def test_headers_that_are_not_a_json_object(tmp_path, content, words):
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(content)) + content)
    with pytest.raises(UserError) as err:
        read_header(path)
    assert "odd.safetensors" in err.value.message and words in err.value.message


def test_any_damage_is_a_user_error_exactly_when_safetensors_refuses_the_file(tmp_path):
    import random

    from safetensors.torch import load_file

    data = _two_tensors(tmp_path / "good.safetensors").read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    rng = random.Random(13)
    verdicts = set()
    for _ in range(400):
        damaged = bytearray(data)
        how = rng.randrange(3)
        if how == 0:  # one byte of the JSON header, mostly to something JSON-like
            damaged[rng.randrange(8, header_end)] = rng.choice(b'0123456789[]{}",:-. eE\xff')
        elif how == 1:
            damaged = damaged[:rng.randrange(len(damaged))]  # cut short
        else:
            damaged[rng.randrange(8)] = rng.randrange(256)  # the header's length
        path = tmp_path / "damaged.safetensors"
        path.write_bytes(bytes(damaged))
        try:
            read_header(path)
            ours = True
        except UserError:  # and never any other exception
            ours = False
        try:
            load_file(str(path))
            theirs = True
        except Exception:
            theirs = False
        assert ours == theirs, bytes(damaged[:header_end])
        verdicts.add(ours)
    assert verdicts == {True, False}


def test_bytes_after_the_last_tensor_are_refused_as_safetensors_does(tmp_path):
    path = _two_tensors(tmp_path / "long.safetensors")
    path.write_bytes(path.read_bytes() + b"\0" * 5)
    with pytest.raises(UserError) as err:
        read_header(path)
    assert "5 bytes after its last tensor" in err.value.message


def test_a_damaged_checkpoint_is_listed_with_its_fault_and_refused_by_name(tmp_path, ckpt_dir):
    from damaged import metadata_as_list

    from conftest import make_studio

    folder = tmp_path / "Stable-diffusion"
    folder.mkdir()
    shutil.copy(ckpt_dir / demo.BASE_FILE, folder)
    metadata_as_list(ckpt_dir / demo.BASE_FILE, folder / "a-damaged.safetensors")  # sorts before the good one
    studio = make_studio(folder, tmp_path, lora_dir=ckpt_dir.parent / "Lora", vae_dir=str(ckpt_dir.parent / "VAE"))
    assert studio.checkpoint_names("sdxl-base") == [BASE]
    listed = {m.name: m for m in studio.checkpoints()}
    assert listed[BASE].problem is None
    assert listed["a-damaged"].problem.startswith("a-damaged.safetensors is not a valid .safetensors file: "
                                                  "its __metadata__ is a list")
    assert studio.checkpoint_problems() == [listed["a-damaged"].problem]
    assert studio.load_startup_checkpoint() == BASE  # the first SDXL base that can be read
    with pytest.raises(UserError) as err:
        studio.load_checkpoint("a-damaged")
    assert err.value.status == 422 and err.value.field == "checkpoint" and "a-damaged.safetensors" in err.value.message
    assert "__metadata__ is a list" in err.value.message
    assert studio.current_checkpoint() == BASE  # the loaded one stays


def test_a_diffusers_folder_with_a_broken_index_is_listed_with_its_fault(tmp_path):
    folder = tmp_path / "ckpt" / "broken-folder"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text('["not", "an", "index"]')
    engine = make_engine(tmp_path / "ckpt", tmp_path)
    library = engine.pipelines.checkpoints
    checkpoint, = library.list()
    assert "broken-folder/model_index.json names no pipeline class" in library.problem(checkpoint)
    assert library.kind(checkpoint) is None
    (folder / "model_index.json").write_bytes(b"\xff{")  # a changed file is read again
    assert "broken-folder/model_index.json cannot be read" in library.problem(checkpoint)
    with pytest.raises(UserError) as err:
        engine.pipelines.load_checkpoint("broken-folder")
    assert "model_index.json cannot be read" in err.value.message


def test_a_damaged_vae_is_listed_with_its_fault_and_refused_before_settings_change(tmp_path, ckpt_dir):
    from damaged import short_data_offsets

    from conftest import make_studio

    vae_dir = tmp_path / "VAE"
    vae_dir.mkdir()
    short_data_offsets(ckpt_dir.parent / "VAE" / demo.VAE_FILE, vae_dir / "bad-vae.safetensors")
    studio = make_studio(ckpt_dir, tmp_path, vae_dir=str(vae_dir))
    assert studio.vae_names() == ["Automatic", "bad-vae"]
    assert "data_offsets [0]" in studio.vae_problems()["bad-vae"]
    with pytest.raises(UserError) as err:
        studio.apply_settings({"vae": "bad-vae"})
    assert "bad-vae.safetensors is not a valid .safetensors file" in err.value.message
    assert err.value.status == 422 and err.value.field == "sd_vae" and studio.settings.get("vae") == "Automatic"


@pytest.mark.parametrize("content", [b"\xff\xfe{}", b"[1, 2]", b'{"%s": 5}', b'{"%s": {"size": 0, "mtime": 0}}',
                                     b"{" * 100_000])
def test_a_damaged_hash_cache_only_costs_a_rehash(tmp_path, content):
    import hashlib

    from sd_app.models import HashCache

    model = _two_tensors(tmp_path / "m.safetensors")
    stat = model.stat()
    content = content.replace(b"%s", str(model.resolve()).encode())
    content = content.replace(b'"size": 0, "mtime": 0', f'"size": {stat.st_size}, "mtime": {stat.st_mtime}'.encode())
    (tmp_path / "hashes.json").write_bytes(content)
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.cached(model) is None
    assert cache.sha256(model) == hashlib.sha256(model.read_bytes()).hexdigest()


# ---- checkpoints from the wild --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wild(tmp_path_factory):
    """Each variant of demo.WILD_VARIANTS in a checkpoint folder of its own, and the parts they were made from."""
    folder = tmp_path_factory.mktemp("wild") / "Stable-diffusion"
    folder.mkdir()
    parts = demo._tiny_components()
    for variant in demo.WILD_VARIANTS:
        demo.write_wild_checkpoint(parts, folder / f"{variant}.safetensors", variant)
    return folder, parts


@pytest.mark.parametrize("variant", ["fp32", "bf16", "ema", "comfy-leftovers", "v-pred", "edm-vpred"])
def test_checkpoints_saved_by_other_tools_load_with_the_same_weights(wild, variant):
    folder, parts = wild
    pipe = loading.load_base(Checkpoint(variant, folder / f"{variant}.safetensors"), torch.float32)
    pipe.to("cpu")  # nothing left on the meta device
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        for key, value in parts[part].state_dict().items():
            stored = value.half().to(torch.bfloat16 if variant == "bf16" else torch.float16)  # made from the fp16 file
            assert torch.equal(stored.float(), getattr(pipe, part).state_dict()[key].float()), (part, key)
    assert pipe.homegrown_warnings == []


def test_a_file_without_the_optional_clip_layers_loads_and_says_what_changes(wild):
    folder, parts = wild
    full = loading.load_base(Checkpoint("fp32", folder / "fp32.safetensors"), torch.float32)
    pruned = loading.load_base(Checkpoint("pruned-clip", folder / "pruned-clip.safetensors"), torch.float32)
    pruned.to("cpu")
    [warning] = pruned.homegrown_warnings
    assert "pruned-clip.safetensors" in warning and "text_projection" in warning and "pooled" in warning
    tokens = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])
    with torch.no_grad():
        for part in ("text_encoder", "text_encoder_2"):  # SDXL's token embeddings: the penultimate layers
            a = getattr(full, part)(tokens, output_hidden_states=True).hidden_states[-2]
            b = getattr(pruned, part)(tokens, output_hidden_states=True).hidden_states[-2]
            assert torch.allclose(a, b, atol=1e-3), part
        pooled = pruned.text_encoder_2(tokens).text_embeds
    assert torch.isfinite(pooled).all()


def test_a_file_without_a_vae_is_refused_by_name_or_loads_with_the_chosen_one(wild, ckpt_dir):
    folder, parts = wild
    checkpoint = Checkpoint("no-vae", folder / "no-vae.safetensors")
    with pytest.raises(UserError) as err:
        loading.load_base(checkpoint, torch.float32)
    assert "no VAE baked in" in err.value.message and "no-vae.safetensors" in err.value.message
    vae_file = ckpt_dir.parent / "VAE" / demo.VAE_FILE
    pipe = loading.load_base(checkpoint, torch.float32, vae_file)
    pipe.to("cpu")
    for key, value in parts["other_vae"].state_dict().items():
        assert torch.equal(value.half().float(), pipe.vae.state_dict()[key].float()), key


def test_a_file_missing_weights_sdxl_needs_names_what_it_lacks(wild, tmp_path):
    folder, parts = wild
    state = demo.wild_state_dict(parts, "fp32")
    state = {k: v for k, v in state.items() if "conditioner.embedders.0.transformer.text_model.encoder.layers.0." not in k}
    save_file(state, str(tmp_path / "holes.safetensors"), metadata={"homegrown.config": "tiny-sdxl-base"})
    with pytest.raises(UserError) as err:
        loading.load_base(Checkpoint("holes", tmp_path / "holes.safetensors"), torch.float32)
    assert "holes.safetensors is incomplete" in err.value.message and "CLIP-L" in err.value.message


@pytest.mark.parametrize("variant, yaml_text, prediction, ztsnr", [
    ("fp32", None, "epsilon", False),
    ("v-pred", None, "v_prediction", False),
    ("v-pred-ztsnr", None, "v_prediction", True),
    ("edm-vpred", None, "v_prediction", False),
    ("fp32", 'model:\n  params:\n    parameterization: "v"\n', "v_prediction", False),
    ("fp32", "parameterization: v\nzero_terminal_snr: true\n", "v_prediction", True),
    ("v-pred", 'model:\n  params:\n    parameterization: "eps"\n', "epsilon", False),
    ("fp32", "model: [unclosed\n", "epsilon", False),
])
def test_v_prediction_is_read_from_the_markers_or_a_same_name_yaml(wild, tmp_path, variant, yaml_text, prediction,
                                                                   ztsnr):
    from sd_app.checkpoint_traits import prediction_of

    folder, _ = wild
    path = tmp_path / f"{variant}.safetensors"
    shutil.copy(folder / f"{variant}.safetensors", path)
    if yaml_text is not None:
        path.with_suffix(".yaml").write_text(yaml_text)
    found = prediction_of(path, read_header(path).tensors, {"prediction_type": "epsilon"})
    assert (found.kind, found.zero_terminal_snr) == (prediction, ztsnr)
    changes = found.scheduler_changes()
    assert changes.get("prediction_type", "epsilon") == prediction and changes.get("rescale_betas_zero_snr", False) == ztsnr
    if yaml_text and "unclosed" in yaml_text:
        assert found.warnings and "could not be read" in found.warnings[0]
    if variant == "edm-vpred":
        assert found.edm_sigmas == pytest.approx((0.002, 120.0))

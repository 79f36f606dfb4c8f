"""The loaded pipelines: loading and freeing checkpoints, a failed load keeping the previous one, device,
precision and memory choices, a chosen VAE file, options that apply live or reload."""

import json
import shutil

import numpy as np
import pytest
import torch

from sd_app.errors import UserError

from conftest import BASE, make_engine


def pixels(result, i=0):
    return np.asarray(result.images[i]).astype(np.int16)


def test_failed_load_keeps_the_previous_checkpoint(ckpt_dir, tmp_path, small):
    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt_dir, folder)
    data = (folder / "homegrown-demo-base.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    # A header whose shapes disagree with its data: passes the cheap checks, fails inside the loader.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    name = next(k for k in header if k.startswith("model.diffusion_model.") and len(header[k]["shape"]) == 4)
    header[name]["shape"][0] *= 2
    text = json.dumps(header).encode()
    (folder / "lying.safetensors").write_bytes(len(text).to_bytes(8, "little") + text + data[8 + header_len:])
    engine = make_engine(folder, tmp_path)
    engine.pipelines.load_checkpoint(BASE)
    before = engine.generate(small)
    for name, words in (("truncated", "incomplete"), ("garbage", "not a valid"), ("missing", "no checkpoint"),
                        ("lying", "not a valid")):  # its shapes disagree with its data: the header check says so
        with pytest.raises(UserError) as err:
            engine.pipelines.load_checkpoint(name)
        assert words in err.value.message
        assert engine.pipelines.base.checkpoint.name == BASE
        assert np.array_equal(pixels(engine.generate(small)), pixels(before))
    with pytest.raises(UserError):
        engine.generate(small.replace(checkpoint="garbage"))
    assert np.array_equal(pixels(engine.generate(small)), pixels(before))


def test_checkpoint_switch_frees_the_old_one(ckpt_dir, tmp_path, small):
    import gc
    import weakref

    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(ckpt_dir / "homegrown-demo-base.safetensors", folder / "a.safetensors")
    shutil.copy(ckpt_dir / "homegrown-demo-base.safetensors", folder / "b.safetensors")
    engine = make_engine(folder, tmp_path)
    old = weakref.ref(engine.pipelines.load_checkpoint("a").pipe.unet)
    engine.generate(small)
    engine.pipelines.load_checkpoint("b")
    gc.collect()
    assert old() is None
    assert "Model: b," in engine.generate(small).infotexts[0]


def test_memory_mode_and_dtype_choices(ckpt_dir, tmp_path):
    engine = make_engine(ckpt_dir, tmp_path)
    assert engine.pipelines.device.type == "cpu" and engine.pipelines.dtype == torch.float32
    assert engine.pipelines.memory_mode() == "none"  # offloading needs a GPU
    with pytest.raises(UserError):
        make_engine(ckpt_dir, tmp_path, memory_mode="huge").pipelines.memory_mode()
    with pytest.raises(UserError):
        make_engine(ckpt_dir, tmp_path, dtype="float8")
    with pytest.raises(UserError):
        make_engine(ckpt_dir, tmp_path, device="cuda")


def test_a_chosen_vae_file_replaces_the_checkpoints_own(ckpt_dir, tmp_path, small):
    engine = make_engine(ckpt_dir, tmp_path)  # its VAE folder is the demo's
    engine.pipelines.load_checkpoint(BASE)
    own = engine.generate(small)
    engine.pipelines.replace_options(vae="homegrown-demo-vae")
    chosen = engine.generate(small)
    assert np.abs(pixels(own) - pixels(chosen)).mean() > 1
    assert "VAE: homegrown-demo-vae" in chosen.infotexts[0] and "VAE hash: " in chosen.infotexts[0]
    with pytest.raises(UserError) as err:
        engine.pipelines.replace_options(vae="nope")
    assert err.value.field == "sd_vae" and "homegrown-demo-vae" in err.value.message
    assert np.array_equal(pixels(engine.generate(small)), pixels(chosen))  # still the chosen VAE, working
    engine.pipelines.replace_options(vae="Automatic")
    assert np.array_equal(pixels(engine.generate(small)), pixels(own))


def test_configure_applies_live_or_reloads(ckpt_dir, tmp_path, small):
    engine = make_engine(ckpt_dir, tmp_path)
    engine.pipelines.load_checkpoint(BASE)
    pipe = engine.pipelines.base.pipe
    message = engine.pipelines.replace_options(prompt_syntax="compel")
    assert engine.pipelines.base.pipe is pipe and engine.pipelines.encoder.syntax == "compel" and "applied" in message
    message = engine.pipelines.replace_options(vae_tiling=True)
    assert engine.pipelines.base.pipe is not pipe and "reloaded" in message
    assert len(engine.generate(small).images) == 1


def test_a_checkpoint_is_not_a_vae(ckpt_dir, tmp_path):
    from sd_app.loading import load_vae

    with pytest.raises(UserError) as err:
        load_vae(ckpt_dir / "homegrown-demo-base.safetensors", torch.float32)
    assert "SDXL base checkpoint" in err.value.message


def test_checkpoints_from_the_wild_load_or_fail_by_name_and_the_app_keeps_running(ckpt_dir, tmp_path, small):
    from sd_app import demo

    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt_dir, folder)
    parts = demo._tiny_components()
    for variant in ("pruned-clip", "no-vae", "v-pred-ztsnr"):
        demo.write_wild_checkpoint(parts, folder / f"{variant}.safetensors", variant)
    engine = make_engine(folder, tmp_path)
    engine.pipelines.load_checkpoint(BASE)
    small = small.replace(steps=2)
    before = engine.generate(small)
    assert "Noise Schedule" not in before.infotexts[0] and "Prediction" not in before.infotexts[0]
    with pytest.raises(UserError) as err:
        engine.pipelines.load_checkpoint("no-vae")
    assert "no VAE baked in" in err.value.message
    assert engine.pipelines.base.checkpoint.name == BASE
    assert np.array_equal(pixels(engine.generate(small)), pixels(before))

    vpred = engine.generate(small.replace(checkpoint="v-pred-ztsnr"))
    model = engine.pipelines.base
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.scheduler_config["rescale_betas_zero_snr"] is True
    assert "Noise Schedule: Zero Terminal SNR" in vpred.infotexts[0] and "Prediction: v" in vpred.infotexts[0]

    pruned = engine.generate(small.replace(checkpoint="pruned-clip"))
    assert any("text_projection" in w for w in engine.pipelines.base.warnings)
    assert any("text_projection" in w for w in pruned.warnings)  # said with every image it changes
    assert not before.warnings
    assert pruned.images and np.asarray(pruned.images[0]).std() > 0

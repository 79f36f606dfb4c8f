"""A LoRA trained from a JSON file by `python -m sd_app.train`: the loss falls, the file is kohya's, it loads
through Homegrown's LoRA path and diffusers' own loader, and it pulls the model towards the training images."""

from __future__ import annotations

import json
import struct
import hashlib

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sd_app import train as train_cli
from sd_app.params import GenerationParams
from training_support import make_dataset, one_thread, run_settings, striped, write_settings  # noqa: F401

STEPS = 100


@pytest.fixture(scope="module")
def trained(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    dataset = make_dataset(out / "images")
    config = write_settings(out / "run.json", run_settings(demo_root, dataset, out, max_steps=STEPS,
                                                           sample_prompts=["a photo of zebra"], sample_steps=4))
    code = train_cli.main([str(config), "--every", "600"])
    return out, code


def test_the_cli_trains_from_json_and_reports_skipped_files(trained, capsys):
    out, code = trained
    assert code == 0
    lora = out / "Lora" / "zebra.safetensors"
    assert lora.is_file()
    assert (out / "Lora" / "zebra.preview.png").is_file()  # a sample, as A1111's card preview
    saved = json.loads((out / "Lora" / "zebra.train.json").read_text())
    assert saved["max_steps"] == STEPS and saved["rank"] == 8  # the settings beside the LoRA
    states = sorted((out / "work" / "states").glob("step-*.pt"))
    assert states[-1].name == f"step-{STEPS:08d}.pt"


def test_the_loss_falls(trained):
    out, _ = trained
    state = torch.load(sorted((out / "work" / "states").glob("step-*.pt"))[-1], weights_only=False)
    losses = state["losses"]
    assert len(losses) == STEPS
    assert np.mean(losses[-20:]) < 0.75 * np.mean(losses[:20])


def test_the_file_is_kohya_format_with_metadata_and_hashes(trained):
    out, _ = trained
    lora = out / "Lora" / "zebra.safetensors"
    with safe_open(str(lora), "pt") as file:
        keys, meta = set(file.keys()), file.metadata()
        down = file.get_tensor("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight")
    for key in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight",
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_out_0.alpha",
                "lora_unet_output_blocks_0_1_transformer_blocks_0_ff_net_0_proj.lora_down.weight",
                "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"):
        assert key in keys
    assert down.shape[0] == 8 and down.dtype == torch.float16
    assert meta["ss_network_dim"] == "8" and meta["ss_network_alpha"] == "8.0"
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["ss_output_name"] == "zebra" and meta["ss_resolution"] == "(64, 64)"
    assert meta["ss_num_train_images"] == "12" and meta["ss_steps"] == str(STEPS)  # 4 images x 3 repeats
    assert json.loads(meta["ss_tag_frequency"]) == {"3_zebra": {"zebra": 1, "stripes": 1, "red": 1,
                                                                 "a photo of zebra": 3}}
    assert float(meta["ss_learning_rate"]) == 1e-2 and float(meta["ss_training_started_at"]) > 0
    data = lora.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    assert meta["sshs_model_hash"] == hashlib.sha256(data[8 + header:]).hexdigest()  # A1111's addnet hash


def test_the_library_lists_it_at_once_with_its_preview_and_trigger_word(trained, tmp_path):
    from sd_app.lora_library import LoraLibrary
    from sd_app.models import HashCache

    out, _ = trained
    info = LoraLibrary(out / "Lora", HashCache(tmp_path / "h.json")).get("zebra")
    assert info.base_model == "sdxl" and info.preview.name == "zebra.preview.png"
    assert "a photo of zebra" in info.trigger_words


def test_the_engine_applies_it_and_removing_it_restores_the_base(trained, ckpt_dir, tmp_path):
    from conftest import BASE, make_engine

    out, _ = trained
    engine = make_engine(ckpt_dir, tmp_path, lora_dir=out / "Lora")
    engine.pipelines.load_checkpoint(BASE)
    params = GenerationParams(prompt="a photo of zebra", negative_prompt="", steps=4, width=64, height=64, seed=7)
    plain = np.asarray(engine.generate(params).images[0], np.int16)
    with_lora = np.asarray(engine.generate(params.replace(prompt="<lora:zebra:1> a photo of zebra")).images[0],
                           np.int16)
    again = np.asarray(engine.generate(params).images[0], np.int16)
    assert np.abs(with_lora - plain).mean() > 1.0
    assert np.array_equal(again, plain)


def test_diffusers_loads_it_and_it_pulls_towards_the_training_images(trained, demo_root):
    """Closeness is measured on the latents: the demo's random-weight VAE decodes any latents to much the same
    noise (its pixels move by under 1/255 while the latents halve their distance), so pixels cannot show it."""
    from sd_app.loading import load_base
    from sd_app.models import Checkpoint

    out, _ = trained
    path = demo_root / "models" / "Stable-diffusion" / "homegrown-demo-base.safetensors"
    pipe = load_base(Checkpoint("base", path), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        pixels = torch.from_numpy(np.asarray(striped(), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
        target = pipe.vae.encode(pixels).latent_dist.mean * pipe.vae.config.scaling_factor

    def distances():
        found = []
        for seed in (1, 2, 3):
            latents = pipe(prompt="a photo of zebra", num_inference_steps=10, width=64, height=64,
                           generator=torch.Generator().manual_seed(seed), output_type="latent").images
            found.append(float((latents - target).abs().mean()))
        return found

    without = distances()
    pipe.load_lora_weights(str(out / "Lora" / "zebra.safetensors"), adapter_name="zebra")
    with_lora = distances()
    assert all(w < 0.8 * b for w, b in zip(with_lora, without)), (with_lora, without)

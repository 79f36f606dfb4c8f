"""Same seed, same data: the same LoRA bit for bit; a run resumed from a saved state ends exactly as the
unbroken run; a run in the studio waits its turn behind generation and lands in the LoRA library."""

from __future__ import annotations

import time

import torch
from safetensors.torch import load_file

from sd_app.training.config import TrainConfig
from sd_app.training.run import train
from training_support import make_dataset, one_thread, run_settings  # noqa: F401


def _tensors(path):
    return load_file(str(path))


def test_same_seed_same_lora_and_resume_equals_an_unbroken_run(demo_root, tmp_path):
    dataset = make_dataset(tmp_path / "images", broken=False)
    common = dict(max_steps=6, save_every=3, save_precision="fp32", lr_schedule="cosine", warmup_steps=2,
                  min_snr_gamma=5.0, noise_offset=0.05, batch_size=2)
    unbroken = TrainConfig(**run_settings(demo_root, dataset, tmp_path / "a", **common))
    run = train(unbroken)
    assert run.error is None and run.step == 6
    halfway = tmp_path / "a" / "work" / "states" / "step-00000003.pt"
    assert halfway.is_file() and (tmp_path / "a" / "Lora" / "zebra-step00000003.safetensors").is_file()

    again = TrainConfig(**run_settings(demo_root, dataset, tmp_path / "b", **common))
    train(again)
    resumed = TrainConfig(**run_settings(demo_root, dataset, tmp_path / "c", resume=str(halfway), **common))
    resumed_run = train(resumed)
    assert any("Resumed from step-00000003.pt at step 3" in m for m in resumed_run.messages)

    first = _tensors(unbroken.output_path())
    for other in (again, resumed):
        second = _tensors(other.output_path())
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), other.output_dir
    losses = [loss for _, loss in run.losses]
    assert [loss for _, loss in resumed_run.losses] == losses[3:]


def test_resuming_with_other_settings_is_refused(demo_root, tmp_path):
    dataset = make_dataset(tmp_path / "images", broken=False)
    first = TrainConfig(**run_settings(demo_root, dataset, tmp_path, max_steps=2, train_conv=False,
                                       train_feed_forward=False))
    train(first)
    changed = TrainConfig(**run_settings(demo_root, dataset, tmp_path, max_steps=2, rank=4, resume="latest",
                                         train_conv=False, train_feed_forward=False))
    run = None
    try:
        train(changed)
    except Exception as err:  # noqa: BLE001
        run = err
    assert "other settings or images" in str(run)


def test_the_studio_trains_in_the_gpu_queue_and_generation_goes_first(demo_root, ckpt_dir, tmp_path, small):
    from conftest import BASE, make_studio

    studio = make_studio(ckpt_dir, tmp_path, lora_dir=tmp_path / "Lora")
    studio.load_checkpoint(BASE)
    dataset = make_dataset(tmp_path / "images")
    settings = run_settings(demo_root, dataset, tmp_path, max_steps=60, train_conv=False, train_feed_forward=False,
                            checkpoint=BASE, output_dir="")
    run = studio.start_training(TrainConfig(**settings))
    deadline = time.time() + 120
    while run.step < 2 and not run.done and time.time() < deadline:
        time.sleep(0.1)
    assert run.step >= 2, run.status()
    result = studio.generate(small, save=False)  # waits for one training step at most, not for the run
    assert result.images and not run.done
    run.stop()
    assert run.wait(120)
    assert run.error is None and run.stopped and run.output is not None
    assert "Skipped 3_zebra/broken.png: cannot be read as an image" in run.messages[0]
    assert "zebra" in [info.name for info in studio.loras.list()]  # listed at once


def test_text_encoder_lora_and_the_fallbacks_say_what_they_did(demo_root, tmp_path):
    from safetensors import safe_open

    dataset = make_dataset(tmp_path / "images", broken=False)
    config = TrainConfig(**run_settings(demo_root, dataset, tmp_path, max_steps=2, train_text_encoder=True,
                                        train_conv=False, train_feed_forward=False, optimizer="adamw8bit",
                                        mixed_precision="bf16", gradient_checkpointing=True))
    run = train(config)
    assert "8-bit AdamW is not available (it needs a CUDA GPU): training with AdamW (more memory)" in run.messages
    assert "Mixed precision (bf16) needs a GPU: training in fp32 on the cpu" in run.messages
    with safe_open(str(config.output_path()), "pt") as file:
        keys, meta = set(file.keys()), file.metadata()
    assert "lora_te1_text_model_encoder_layers_0_self_attn_out_proj.lora_down.weight" in keys
    assert "lora_te2_text_model_encoder_layers_9_self_attn_q_proj.lora_up.weight" in keys
    assert meta["ss_network_train_unet_only"] == "False" and meta["ss_optimizer"] == "torch.optim.AdamW"

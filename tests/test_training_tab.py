"""The Train tab: the page builds with it, the form's values become a run's settings or a message naming the
field, and the progress view shows a run's line, loss points and samples."""

from __future__ import annotations

import gradio as gr
import pytest
from PIL import Image

from sd_app.errors import UserError
from sd_app.training.config import TrainConfig
from sd_app.training.progress import TrainingRun
from sd_app.ui import train_tab


def _form(**changes):
    values = {"dataset_dir": " /data/me ", "output_name": "me", "checkpoint": "base", "trigger_word": "sks",
              "caption_template": "a photo of {trigger}", "resolution": "1024", "max_steps": 1500.0, "rank": 16,
              "alpha": 8, "batch_size": 1, "learning_rate": 1e-4, "lr_schedule": "cosine", "warmup_steps": 100,
              "optimizer": "adamw8bit", "mixed_precision": "auto", "train_feed_forward": False, "train_conv": False,
              "train_text_encoder": True, "text_encoder_lr": 5e-5, "gradient_checkpointing": True,
              "min_snr_gamma": 5, "noise_offset": 0.0357, "seed": 42, "save_every": 500, "resume": "",
              "sample_prompts": "a photo of sks\n\n sks on a beach ", "sample_every": 250, "sample_steps": 20}
    values.update(changes)
    return list(values), tuple(values.values())


def test_the_form_becomes_a_run_s_settings():
    config = train_tab.config_from_form(*_form())
    assert config.dataset_dir == "/data/me" and config.resolution == 1024 and config.max_steps == 1500
    assert config.alpha == 8.0 and config.sample_prompts == ["a photo of sks", "sks on a beach"]
    assert config.optimizer == "adamw8bit" and config.train_text_encoder is True


@pytest.mark.parametrize("field, value, message", [("max_steps", 2.5, "whole number"), ("rank", None, "needs a value"),
                                                   ("learning_rate", "fast", "must be a number"),
                                                   ("rank", 0, "between 1 and 256")])
def test_a_bad_value_is_refused_naming_its_field(field, value, message):
    with pytest.raises(UserError, match=message) as caught:
        train_tab.config_from_form(*_form(**{field: value}))
    assert caught.value.field == field


class _Studio:
    training = None


def test_the_progress_view_shows_steps_losses_and_samples():
    studio = _Studio()
    line, points, gallery, _ = train_tab.show(studio)
    assert line == "No LoRA is training." and points.empty and gallery == []
    run = TrainingRun(TrainConfig(dataset_dir="d", output_name="me", checkpoint="base", max_steps=10))
    run.record(1, 0.5)
    run.record(2, 0.25)
    run.add_samples(2, [Image.new("RGB", (8, 8))])
    run.say("Skipped a.png: too small")
    studio.training = run
    line, points, gallery, messages = train_tab.show(studio)
    assert "Step 2/10, loss 0.2500, ETA" in line
    assert points.to_dict("list") == {"step": [1, 2], "loss": [0.5, 0.25]}
    assert gallery[0][1] == "step 2" and "Skipped a.png" in messages
    run.pause()
    assert "Paused at step 2/10" in train_tab.show(studio)[0]
    train_tab.control(studio, "stop")
    assert run.stopped and not run.paused


def test_the_page_builds_with_the_train_tab(ckpt_dir, tmp_path):
    from conftest import make_studio
    from sd_app.ui import build

    blocks = build(make_studio(ckpt_dir, tmp_path))
    assert isinstance(blocks, gr.Blocks)
    assert any(getattr(block, "elem_id", None) == "train-start" for block in blocks.blocks.values())

"""The training dataset: kohya folders, captions, buckets, files that cannot train, and the run's settings."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sd_app.errors import UserError
from sd_app.training.buckets import bucket_sizes, choose_bucket, fit
from sd_app.training.config import TrainConfig
from sd_app.training.dataset import scan


def _image(path, size=(96, 96), mode="RGB", colour=(200, 40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else None).save(path)
    return path


def test_kohya_folders_repeats_captions_and_trigger(tmp_path):
    _image(tmp_path / "10_zebra" / "a.png")
    (tmp_path / "10_zebra" / "a.txt").write_text("zebra, stripes,  red\n")
    _image(tmp_path / "10_zebra" / "b.png")
    _image(tmp_path / "loose.jpg")
    dataset = scan(tmp_path, 64, trigger_word="", caption_template="a photo of {trigger}")
    by_name = {item.path.name: item for item in dataset.items}
    assert by_name["a.png"].caption == "zebra, stripes, red"
    assert by_name["b.png"].caption == "a photo of zebra"  # the folder's name is the trigger word
    assert by_name["loose.jpg"].caption == "a photo of"  # no folder name, no trigger word
    assert dataset.repeats == {"10_zebra": 10, "": 1}
    assert len(dataset.epoch()) == 21
    assert dataset.tag_frequency()["10_zebra"] == {"zebra": 1, "stripes": 1, "red": 1, "a photo of zebra": 1}
    assert dataset.dataset_dirs()["10_zebra"] == {"n_repeats": 10, "img_count": 2}
    again = {item.path.name: item for item in scan(tmp_path, 64, trigger_word="sks").items}
    assert again["b.png"].caption == "a photo of sks"


def test_bad_images_are_skipped_by_name_with_the_reason(tmp_path):
    _image(tmp_path / "good.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _image(tmp_path / "print.jpg", mode="CMYK")
    Image.new("RGBA", (96, 96), (0, 0, 0, 0)).save(tmp_path / "cutout.png")
    _image(tmp_path / "thumb.png", size=(8, 8))
    dataset = scan(tmp_path, 64)
    assert [item.path.name for item in dataset.items] == ["good.png"]
    reasons = dict(line.split(": ", 1) for line in dataset.skipped)
    assert set(reasons) == {"broken.png", "print.jpg", "cutout.png", "thumb.png"}
    assert "cannot be read" in reasons["broken.png"]
    assert "CMYK" in reasons["print.jpg"]
    assert "transparency" in reasons["cutout.png"]
    assert "too small (8x8" in reasons["thumb.png"]


def test_a_folder_without_usable_images_is_refused_naming_why(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.raises(UserError, match="no usable images.*broken.png") as caught:
        scan(tmp_path, 64)
    assert caught.value.field == "dataset_dir"
    with pytest.raises(UserError, match="no folder"):
        scan(tmp_path / "missing", 64)


def test_buckets_are_sdxl_sizes_and_keep_the_shape():
    assert bucket_sizes(1024)[:3] == [(1024, 1024), (1152, 896), (896, 1152)]
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in bucket_sizes(1024))
    # A portrait goes into a portrait bucket: at most a sliver is cut, never a square centre crop.
    portrait = Image.new("RGB", (832, 1216), (0, 0, 0))
    fitted = fit(portrait, choose_bucket(832, 1216, bucket_sizes(1024)))
    assert fitted.image.size == (832, 1216) and fitted.crop_top_left == (0, 0)
    assert fitted.original_size == (1216, 832)
    bucket = choose_bucket(500, 1000, bucket_sizes(1024))
    assert bucket == (768, 1344)
    fitted = fit(Image.new("RGB", (500, 1000)), bucket)
    assert fitted.image.size == bucket
    assert fitted.crop_top_left == (96, 0)  # the whole width kept, 1/8 of the height cut (half top, half bottom)


def test_settings_are_checked_by_field_and_round_trip_through_json(tmp_path):
    config = TrainConfig(dataset_dir="data", output_name="mine", checkpoint="base", max_steps=10)
    path = config.save(tmp_path / "run.json")
    loaded = TrainConfig.load(path)
    assert loaded.dataset_dir == str(tmp_path / "data") and loaded.max_steps == 10
    for field, value, message in (("rank", 0, "between 1 and 256"), ("learning_rate", 0.0, "above 0"),
                                  ("lr_schedule", "wavy", "one of constant"), ("output_name", "../x", "no slashes"),
                                  ("resolution", 100, "multiple of 32"), ("max_steps", 2.5, "whole number")):
        data = json.loads(config.to_json()) | {field: value}
        with pytest.raises(UserError, match=message) as caught:
            TrainConfig.from_dict(data)
        assert caught.value.field == field
    with pytest.raises(UserError, match="unknown setting.*colour"):
        TrainConfig.from_dict(json.loads(config.to_json()) | {"colour": "red"})
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(UserError, match="not valid JSON"):
        TrainConfig.load(tmp_path / "bad.json")


def test_the_cli_refuses_bad_settings_with_a_message(tmp_path, capsys):
    from sd_app import train as train_cli

    (tmp_path / "run.json").write_text(json.dumps({"dataset_dir": "d", "output_name": "x", "checkpoint": "c",
                                                   "rank": "many"}))
    assert train_cli.main([str(tmp_path / "run.json")]) == 2
    assert "rank: must be a whole number, got 'many'" in capsys.readouterr().err
    (tmp_path / "run.json").write_text(json.dumps({"dataset_dir": "d", "output_name": "x", "checkpoint": "c"}))
    assert train_cli.main([str(tmp_path / "run.json")]) == 2
    assert "output_dir" in capsys.readouterr().err

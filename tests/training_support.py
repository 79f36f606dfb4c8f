"""What the training tests share: a tiny dataset of one striped picture (and files that cannot train), a run's
settings on the demo base, and one CPU thread while they run (2 shared cores: tiny ops run many times faster)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

BASE_FILE = "homegrown-demo-base.safetensors"


def striped() -> Image.Image:
    pixels = np.zeros((64, 64, 3), np.uint8)
    pixels[:, :, 0] = 200
    pixels[:, :, 1] = np.linspace(0, 255, 64, dtype=np.uint8)[None, :]
    pixels[::8] = (20, 20, 20)
    return Image.fromarray(pixels)


def make_dataset(folder: Path, broken: bool = True) -> Path:
    images = folder / "3_zebra"
    images.mkdir(parents=True)
    for number in range(4):
        striped().save(images / f"img{number}.png")
    (images / "img0.txt").write_text("zebra, stripes, red")
    if broken:
        (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


def run_settings(demo_root: Path, dataset: Path, out: Path, **changes) -> dict:
    settings = dict(dataset_dir=str(dataset), output_name="zebra", checkpoint=str(demo_root / "models" /
                    "Stable-diffusion" / BASE_FILE), output_dir=str(out / "Lora"), work_dir=str(out / "work"),
                    trigger_word="zebra", resolution=64, rank=8, alpha=8.0, train_feed_forward=True, train_conv=True,
                    learning_rate=1e-2, min_snr_gamma=0.0, gradient_checkpointing=False, max_steps=6)
    settings.update(changes)
    return settings


def write_settings(path: Path, settings: dict) -> Path:
    path.write_text(json.dumps(settings))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

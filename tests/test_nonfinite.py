"""Never a silent black image (issue 13, item 4): out-of-range prompt weights are clamped with a warning, and a
job whose conditioning, latents or pixels are NaN fails with a message naming the LoRA, checkpoint or value."""

import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sd_app.encoding import PromptEncoder
from sd_app.errors import UserError
from sd_app.params import Limits
from sd_app.prompts import WEIGHT_RANGE

from conftest import BASE, make_engine


def not_black(image) -> bool:
    return np.asarray(image).max() > 0


def nan_copy(source, target, damaged) -> None:
    """A copy of a safetensors file with every tensor whose name starts with one of `damaged` set to NaN."""
    with safe_open(str(source), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    for name in tensors:
        if name.startswith(damaged):
            tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(target), metadata=metadata)


@pytest.fixture(scope="module")
def damaged(ckpt_dir, tmp_path_factory):
    """An engine whose folders hold the demo base, copies of it with NaN UNet / VAE / text encoder weights, and
    the demo LoRAs with a copy of demo-style whose weights are NaN."""
    tmp = tmp_path_factory.mktemp("nonfinite")
    models, loras = tmp / "Stable-diffusion", tmp / "Lora"
    models.mkdir()
    shutil.copytree(ckpt_dir.parent / "Lora", loras)
    base = ckpt_dir / f"{BASE}.safetensors"
    shutil.copy(base, models / base.name)
    nan_copy(base, models / "nan-unet.safetensors", ("model.diffusion_model.",))
    nan_copy(base, models / "nan-vae.safetensors", ("first_stage_model.decoder.",))
    nan_copy(base, models / "nan-clip.safetensors", ("conditioner.embedders.0.",))
    nan_copy(loras / "demo-style.safetensors", loras / "nan-style.safetensors", ("lora_unet_",))
    engine = make_engine(models, tmp, lora_dir=loras, preview_every=0)
    engine.pipelines.load_checkpoint(BASE)
    return engine


def test_a_huge_weight_is_clamped_with_a_warning_not_a_black_image(damaged, small):
    # "(cat:1e30)" is text in A1111's syntax (its weights are plain decimals): a normal image, no warning.
    plain = damaged.generate(small.replace(prompt="(cat:1e30)"))
    assert not_black(plain.images[0]) and plain.warnings == []
    result = damaged.generate(small.replace(prompt="a (cat:1000000000000000000000000000000)"))
    assert not_black(result.images[0])
    assert result.warnings == [f"prompt: the weight 1e+30 of 'cat' is outside {WEIGHT_RANGE[0]:g} to "
                               f"{WEIGHT_RANGE[1]:g}; {WEIGHT_RANGE[1]:g} was used"]
    # Clamped means the same image as asking for the top of the range.
    top = damaged.generate(small.replace(prompt=f"a (cat:{WEIGHT_RANGE[1]:g})"))
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(top.images[0]))


def test_1000_nested_parentheses_are_refused_or_clamped(damaged, small):
    prompt = "(" * 1000 + "cat" + ")" * 1000
    with pytest.raises(UserError) as err:
        damaged.generate(small.replace(prompt=prompt))
    assert err.value.field == "prompt" and "nested 1000 deep" in err.value.message
    damaged.configure(preview_every=0, limits=Limits(max_prompt_nesting=1000))
    try:
        result = damaged.generate(small.replace(prompt=prompt))  # 1.1^1000: used as 10
    finally:
        damaged.configure(preview_every=0, limits=Limits())
    assert not_black(result.images[0]) and "outside" in result.warnings[0]


def test_compel_syntax_weights_are_clamped_too(damaged):
    compel = PromptEncoder(damaged.pipelines.base.pipe, syntax="compel")
    cond = compel.encode("a cat" + "+" * 200, "")  # 1.1^200
    assert bool(torch.isfinite(cond.embeds).all()) and cond.largest_weight == WEIGHT_RANGE[1]
    assert "outside" in cond.notes[0] and cond.notes[0].startswith("prompt:")


def test_a_nan_lora_fails_the_job_naming_the_lora_and_the_next_job_is_fine(damaged, small):
    with pytest.raises(UserError) as err:
        damaged.generate(small.replace(prompt="a cat <lora:nan-style:0.8>"))
    assert err.value.field == "prompt" and err.value.status == 422
    assert "LoRA 'nan-style' has NaN or infinite values" in err.value.message
    assert "black" in err.value.message
    assert not_black(damaged.generate(small).images[0])  # its weights were taken out of the UNet again
    assert not_black(damaged.generate(small.replace(prompt="a cat <lora:demo-style:0.8>")).images[0])


@pytest.mark.parametrize("name, part, stage", [
    ("nan-unet", "UNet", "the base model's denoising"),
    ("nan-vae", "VAE", "decoding the image"),
    ("nan-clip", "first text encoder (CLIP-L)", "the prompt's conditioning"),
])
def test_a_checkpoint_with_nan_weights_fails_the_job_naming_it_and_the_part(damaged, small, name, part, stage):
    with pytest.raises(UserError) as err:
        damaged.generate(small.replace(checkpoint=name))
    assert err.value.field == "checkpoint"
    assert err.value.message.startswith(f"{stage} came out NaN or infinite")
    assert f"checkpoint {name!r} has NaN or infinite weights in its {part}" in err.value.message
    if name == "nan-unet":  # the checkpoint can be changed back and generates as before
        assert not_black(damaged.generate(small.replace(checkpoint=BASE)).images[0])


def test_an_overflow_without_damaged_weights_names_the_suspects(damaged, small, monkeypatch):
    """No file is at fault (fp16 overflow, say): the message says so and names what to lower."""
    from sd_app import engine as engine_module

    real = engine_module.loop.denoise

    def overflowing(*args):
        return real(*args) * float("inf")

    monkeypatch.setattr(engine_module.loop, "denoise", overflowing)
    with pytest.raises(UserError) as err:
        damaged.generate(small.replace(prompt="a (cat:8)", cfg_scale=25, checkpoint=BASE))
    message = err.value.message
    assert "no weights are damaged" in message and "a prompt weight of 8" in message and "CFG scale 25" in message

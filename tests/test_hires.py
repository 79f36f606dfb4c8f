"""The hires fix's request side (sd_app/hires.py): A1111's target size, checks naming its fields, infotext keys."""

import pytest
import torch

from sd_app import hires
from sd_app.errors import UserError
from sd_app.hires import HiresParams
from sd_app.params import GenerationParams


@pytest.mark.parametrize("spec, size, expected", [
    (HiresParams(scale=2), (64, 48), (128, 96, 0, 0)),
    (HiresParams(scale=1.5), (832, 1216), (1248, 1824, 0, 0)),
    (HiresParams(resize_x=1024), (512, 256), (1024, 512, 0, 0)),
    (HiresParams(resize_y=1024), (512, 256), (2048, 1024, 0, 0)),
    # both sides: the image is scaled to cover the box, then the overflow is cut in latent rows
    (HiresParams(resize_x=1024, resize_y=512), (512, 512), (1024, 1024, 0, 64)),
])
def test_target_size_as_a1111(spec, size, expected):
    target = spec.target(*size)
    assert (target.width, target.height, target.truncate_x, target.truncate_y) == expected


def test_truncate_cuts_half_each_side():
    latents = torch.zeros(1, 4, 128, 128)
    out = hires.truncate(latents, hires.Target(1024, 1024, 0, 64))
    assert out.shape[-2:] == (64, 128)


def test_latent_upscale_modes():
    latents = torch.arange(16.0).reshape(1, 1, 4, 4)
    for mode in hires.LATENT_MODES:
        assert hires.upscale_latents(latents, mode, 64, 64).shape[-2:] == (8, 8)


@pytest.mark.parametrize("spec, field", [
    (HiresParams(scale=9), "hr_scale"), (HiresParams(upscaler="4x-Nope"), "hr_upscaler"),
    (HiresParams(denoising_strength=2), "denoising_strength"), (HiresParams(second_pass_steps=-1), "hr_second_pass_steps"),
    (HiresParams(sampler_name="Nope"), "hr_sampler_name"), (HiresParams(scale=4), "hr_scale"),  # 4096x4096: too many
])
def test_checks_name_the_a1111_field(spec, field):
    with pytest.raises(UserError) as err:
        GenerationParams(width=1024, height=1024, hires=spec).check()
    assert err.value.field == field


def test_infotext_keys_in_a1111_order_and_back():
    spec = HiresParams(scale=2, upscaler="Latent", second_pass_steps=10, denoising_strength=0.45,
                       sampler_name="Euler a", prompt="sharp")
    fields = spec.infotext_fields("a cat", "", "DPM++ 2M", "Automatic")
    assert [k for k, v in fields.items() if v is not None] == ["Hires sampler", "Hires prompt", "Hires upscale",
                                                               "Hires steps", "Hires upscaler"]
    read, applied, refused = hires.from_infotext({"Hires upscale": "2", "Hires steps": "10", "Hires upscaler": "Latent",
                                                  "Hires sampler": "Euler a", "Hires prompt": "sharp",
                                                  "Denoising strength": "0.45", "Hires resize": "bad"})
    assert read == spec and len(applied) == 6 and refused == [("Hires resize: bad", "not WIDTHxHEIGHT")]


@pytest.fixture(scope="module")
def studio(ckpt_dir, tmp_path_factory):
    """A studio whose upscaler folder holds the demo 4x model (models/ESRGAN): the engine gets it from the studio."""
    from conftest import make_studio

    studio = make_studio(ckpt_dir, tmp_path_factory.mktemp("hires"), ckpt_dir.parent / "Lora",
                         upscaler_dir=str(ckpt_dir.parent), preview_every=0)
    studio.load_checkpoint("homegrown-demo-base")
    return studio


def test_model_upscaler_makes_the_hires_image(studio):
    from pathlib import Path

    import numpy as np

    from sd_app.demo import UPSCALER_FILE

    name = Path(UPSCALER_FILE).stem
    assert name in studio.upscaler_names()
    base = GenerationParams(prompt="a cat", steps=3, width=64, height=64, seed=7)

    def image(upscaler):
        spec = HiresParams(scale=2, upscaler=upscaler, second_pass_steps=2, denoising_strength=0.5)
        return studio.generate(base.replace(hires=spec), save=False)

    model, lanczos = image(name), image("Lanczos")
    assert model.images[0].size == (128, 128) == lanczos.images[0].size
    assert f"Hires upscaler: {name}" in model.infotexts[0]
    assert np.abs(np.asarray(model.images[0], dtype=int) - np.asarray(lanczos.images[0], dtype=int)).max() > 0
    assert np.array_equal(np.asarray(image(name).images[0]), np.asarray(model.images[0]))  # same seed, same pixels


def test_the_hires_prompt_runs_with_its_own_loras_as_in_a1111(studio):
    """A1111 activates the hires prompt's extra networks for the hires pass: its LoRA tags, none when it has a
    prompt of its own without tags, the prompt's when it has none."""
    import numpy as np

    def run(prompt="a cat", hr_prompt=""):
        spec = HiresParams(scale=2, upscaler="Latent", second_pass_steps=2, denoising_strength=0.6, prompt=hr_prompt)
        result = studio.generate(GenerationParams(prompt=prompt, steps=3, width=64, height=64, seed=11, hires=spec),
                                 save=False)
        return np.asarray(result.images[0], dtype=int), result.infotexts[0]

    plain, _ = run()
    hires_lora, text = run(hr_prompt="a cat <lora:demo-detail:1>")
    assert np.abs(hires_lora - plain).max() > 0 and "Lora hashes: \"demo-detail: " in text
    both, text = run(prompt="a cat <lora:demo-detail:1>")  # no hires prompt: the prompt's LoRAs in both passes
    first_only, _ = run(prompt="a cat <lora:demo-detail:1>", hr_prompt="a cat")
    assert np.abs(both - first_only).max() > 0 and "Lora hashes: \"demo-detail: " in text
    assert np.array_equal(run()[0], plain)  # every LoRA taken off again: the same pixels as before


def test_unknown_hires_upscaler_is_refused_listing_what_there_is(studio):
    from sd_app.demo import UPSCALER_FILE

    spec = HiresParams(upscaler="4x-Nope")
    with pytest.raises(UserError) as err:
        studio.start(GenerationParams(prompt="a cat", steps=3, width=64, height=64, hires=spec), "tester")
    assert (err.value.field, err.value.status) == ("hr_upscaler", 422)
    assert UPSCALER_FILE.rsplit(".", 1)[0] in err.value.message and "Lanczos" in err.value.message


def test_pasting_a_model_hires_upscaler_needs_it_here():
    from sd_app import infotext

    text = "a cat\nSteps: 4, Size: 64x64, Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: 4x-Demo"
    here = infotext.read_params(text, upscalers=["None", "Lanczos", "Nearest", "4x-Demo"])
    assert here.params.hires.upscaler == "4x-Demo" and not here.not_applied
    elsewhere = infotext.read_params(text)  # built-ins only: reported, not applied
    assert elsewhere.params.hires is None and "4x-Demo" in elsewhere.not_applied[0][0]


@pytest.fixture(scope="module")
def two_bases(ckpt_dir, tmp_path_factory):
    """A checkpoint folder with the demo base and "other-base", the same with another UNet output layer."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from conftest import BASE

    folder = tmp_path_factory.mktemp("two-bases") / "Stable-diffusion"
    folder.mkdir()
    shutil.copy(ckpt_dir / f"{BASE}.safetensors", folder)
    tensors = load_file(ckpt_dir / f"{BASE}.safetensors")
    tensors["model.diffusion_model.out.2.weight"] *= 0.5  # another UNet: its hires pass draws otherwise
    with safe_open(ckpt_dir / f"{BASE}.safetensors", "pt") as f:
        metadata = f.metadata()  # names the demo's config set
    save_file(tensors, folder / "other-base.safetensors", metadata)
    return folder


def hires_elsewhere(checkpoint="other-base", n_iter=1):
    spec = HiresParams(scale=2, upscaler="Latent", second_pass_steps=2, denoising_strength=0.6, checkpoint=checkpoint)
    return GenerationParams(prompt="a cat", steps=3, width=64, height=64, seed=21, n_iter=n_iter, hires=spec)


def test_a_hires_checkpoint_of_its_own_runs_the_second_passes_and_the_first_comes_back(two_bases, tmp_path):
    """A1111's hr_checkpoint_name: the first passes on the chosen checkpoint, the hires passes on the other (loaded
    once for every batch), and the chosen one loaded back for the next job."""
    import numpy as np

    from conftest import BASE, make_studio

    studio = make_studio(two_bases, tmp_path / "data", preview_every=0)
    studio.load_checkpoint(BASE)

    def pixels(image):
        return np.asarray(image, dtype=int)

    same = studio.generate(hires_elsewhere(None), save=False)
    other = studio.generate(hires_elsewhere(n_iter=2), save=False)
    assert [image.size for image in other.images] == [(128, 128)] * 2 and other.seeds == [21, 22]
    assert np.abs(pixels(other.images[0]) - pixels(same.images[0])).max() > 8
    assert "Hires checkpoint: other-base" in other.infotexts[0] and f"Model: {BASE}," in other.infotexts[0]
    assert studio.current_checkpoint() == BASE  # loaded back
    again = studio.generate(hires_elsewhere(None), save=False)
    assert np.abs(pixels(again.images[0]) - pixels(same.images[0])).max() <= 1  # a reloaded model: ~1e-6 apart
    with pytest.raises(UserError) as err:
        studio.generate(hires_elsewhere("nope"), save=False)
    assert err.value.field == "hr_checkpoint_name" and "nope" in err.value.message


def test_a_hires_checkpoint_of_its_own_loads_alone_and_skip_or_interrupt_spoil_nothing(two_bases, tmp_path,
                                                                                        monkeypatch):
    import gc
    import weakref

    import numpy as np

    from conftest import BASE, make_engine
    from sd_app.engine import Engine
    from sd_app.jobs import Job
    from sd_app.pipelines import Pipelines

    engine = make_engine(two_bases, tmp_path, preview_every=0)
    engine.pipelines.load_checkpoint(BASE)
    clean = engine.generate(hires_elsewhere(n_iter=2))
    ensure_base, first_pass = Pipelines.ensure_base, Engine._first_pass
    seen, job = {}, Job()

    def loading(pipes, name):  # the first model must be gone when the other is in memory; Skip pressed then
        first = weakref.ref(pipes.base.pipe.unet) if pipes.base is not None else None
        loaded = ensure_base(pipes, name)
        gc.collect()
        if name == "other-base":
            seen["first freed"] = first is not None and first() is None
            job.skip()
        return loaded

    monkeypatch.setattr(Pipelines, "ensure_base", loading)
    skipped = engine.generate(hires_elsewhere(n_iter=2), job)
    assert seen["first freed"]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(skipped.images, clean.images))

    monkeypatch.setattr(Pipelines, "ensure_base", ensure_base)
    job, calls = Job(), []

    def interrupting(*args):  # Interrupt during the second batch's first pass
        calls.append(1)
        if len(calls) == 2:
            job.interrupt()
        return first_pass(*args)

    monkeypatch.setattr(Engine, "_first_pass", interrupting)
    stopped = engine.generate(hires_elsewhere(n_iter=2), job)
    assert stopped.interrupted and stopped.seeds == [21, 22]  # the first batch's image is kept
    assert [image.size for image in stopped.images] == [(64, 64)] * 2  # first passes: no hires pass ran
    assert engine.pipelines.base.checkpoint.name == BASE


@pytest.mark.parametrize("refiner_pass, first, second", [
    ("second pass", ["base"] * 4, ["base"] * 2 + ["refiner"] * 2),  # A1111's default
    ("first pass", ["base"] * 2 + ["refiner"] * 2, ["base"] * 4),
    ("both passes", ["base"] * 2 + ["refiner"] * 2, ["base"] * 2 + ["refiner"] * 2),
])
def test_the_refiner_runs_in_the_pass_a1111s_hires_refiner_option_says(engine, small, refiner_pass, first, second):
    from conftest import REFINER

    engine.pipelines.load_refiner(REFINER)
    unets = {"base": engine.pipelines.base.pipe.unet, "refiner": engine.pipelines.refiner.pipe.unet}
    calls = []
    handles = [unet.register_forward_pre_hook(lambda module, args, kwargs, name=name: calls.append(name),
                                              with_kwargs=True) for name, unet in unets.items()]
    spec = HiresParams(scale=2, upscaler="Latent", second_pass_steps=4, denoising_strength=1.0,
                       refiner_pass=refiner_pass)
    try:
        result = engine.generate(small.replace(steps=4, refiner_checkpoint=REFINER, refiner_switch_at=0.5,
                                               hires=spec))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == first + second
    text = result.infotexts[0]
    assert f"Refiner: {REFINER}" in text
    assert ("Hires refiner: " in text) == (refiner_pass != "second pass")  # A1111 writes it unless the default


def test_hires_refiner_option_is_checked_and_read_back():
    with pytest.raises(UserError) as err:
        GenerationParams(width=64, height=64, hires=HiresParams(refiner_pass="third pass")).check()
    assert err.value.field == "hires_fix_refiner_pass"
    read, _, _ = hires.from_infotext({"Hires upscale": "2", "Hires refiner": "both passes"})
    assert read.refiner_pass == "both passes"

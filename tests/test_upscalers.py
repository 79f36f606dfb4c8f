"""Upscalers: the demo file is detected as a downloaded one would be, sizes follow A1111, tiles reassemble to the
untiled result, damaged and unsafe files are refused with the reason, the size limit names itself."""

from __future__ import annotations

import argparse
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sd_app.demo import UPSCALER_FILE, rrdbnet_state_dict, write_demo_upscaler
from sd_app.errors import UserError
from sd_app.jobs import Job
from sd_app.params import Limits
from sd_app.upscaler_library import UpscalerLibrary, scale_from_name
from sd_app.upscalers import (LATENT_MODES, Tiling, Upscalers, run_tiled, tile_starts, upscale_latents,
                              upscaler_names)

DEMO = UPSCALER_FILE.removesuffix(".safetensors")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscalers") / "demo"
    write_demo_upscaler(root)
    return root / "models"


@pytest.fixture(scope="module")
def library(models):
    return UpscalerLibrary(models)


def picture(width=64, height=48, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(smooth).resize((width, height), Image.Resampling.BICUBIC)


def test_spandrel_detects_the_demo_upscaler_as_esrgan(library):
    listed = library.list()
    assert [f.name for f in listed] == [DEMO]
    assert listed[0].folder == "ESRGAN" and listed[0].problem is None and listed[0].scale == 4
    loaded = library.load(DEMO)
    assert (loaded.architecture, loaded.scale) == ("ESRGAN", 4)
    assert library.list()[0].architecture == "ESRGAN"  # what the load found is shown in the list
    assert upscaler_names(library) == ["None", "Lanczos", "Nearest", DEMO]


def test_the_demo_model_keeps_the_picture(library):
    image = picture()
    result = Upscalers(library).upscale(image, DEMO, scale=4)
    plain = image.resize(result.size, Image.Resampling.NEAREST)
    difference = np.abs(np.asarray(result, dtype=float) - np.asarray(plain, dtype=float)).mean()
    assert difference < 60  # random weights, yet the image rides through: a user sees their picture


@pytest.mark.parametrize("name", ["None", "Lanczos", "Nearest", DEMO])
def test_sizes_by_scale_follow_a1111(library, name):
    upscalers = Upscalers(library)
    image = picture(64, 48)
    assert upscalers.upscale(image, name, scale=4).size == (256, 192)
    assert upscalers.upscale(image, name, scale=2).size == (128, 96)
    assert upscalers.upscale(image, name, scale=1.3).size == (80, 56)  # rounded down to multiples of 8, as A1111
    assert upscalers.upscale(image, name, size=(100, 70)).size == (100, 70)


def test_nearest_and_lanczos_are_plain_resizes(library):
    image = picture()
    upscalers = Upscalers(library)
    assert upscalers.upscale(image, "Nearest", scale=2).tobytes() == \
        image.resize((128, 96), Image.Resampling.NEAREST).tobytes()
    assert upscalers.upscale(image, "Lanczos", scale=2).tobytes() == \
        image.resize((128, 96), Image.Resampling.LANCZOS).tobytes()


def test_a_model_pass_then_lanczos_to_the_exact_size(library):
    image = picture(64, 48)
    upscalers = Upscalers(library, tiling=Tiling(tile=1024))
    four = upscalers.upscale(image, DEMO, scale=4)
    two = upscalers.upscale(image, DEMO, scale=2)
    assert two.tobytes() == four.resize((128, 96), Image.Resampling.LANCZOS).tobytes()


def test_tiles_reassemble_to_the_untiled_result(library):
    model = library.load(DEMO).model
    image = picture(96, 80, seed=3)
    tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0).float() / 255
    whole = (model(tensor)[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    job = Job()
    tiled = np.asarray(run_tiled(model, image, 4, Tiling(tile=40, overlap=8, context=24), job))
    assert len(tile_starts(96, 40, 8)) * len(tile_starts(80, 40, 8)) > 4  # several tiles each way
    assert tiled.shape == whole.shape
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1  # float rounding only
    assert job.note == f"Upscaling: tile {3 * 3}/{3 * 3}" and job.progress == 1.0


def test_tiles_overlap_and_cover(library):
    for length, tile, overlap in ((1024, 192, 16), (193, 192, 16), (100, 192, 16), (500, 64, 8)):
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and min(starts[-1] + tile, length) == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_an_interrupted_upscale_stops_between_tiles(library):
    job = Job()
    job.interrupt()
    assert Upscalers(library, tiling=Tiling(tile=32)).upscale(picture(), DEMO, scale=4, job=job) is None


def test_the_size_limit_is_named(library):
    limits = Limits(max_upscale_pixels=200 * 200)
    with pytest.raises(UserError) as refused:
        Upscalers(library).upscale(picture(64, 64), "Lanczos", scale=4, limits=limits)
    assert refused.value.field == "upscaling_resize"
    assert "256x256 = 65,536 pixels; at most 40,000" in str(refused.value) and "Upscaled image pixels" in str(
        refused.value)
    # a model's own 4x output counts, even for a 2x result
    with pytest.raises(UserError, match="256x256 = 65,536 pixels; at most 20,000"):
        Upscalers(library).upscale(picture(64, 64), DEMO, scale=2, limits=Limits(max_upscale_pixels=20_000))


def test_a_damaged_file_is_marked_and_refused_while_the_rest_works(models, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(models, root)
    data = (root / "ESRGAN" / UPSCALER_FILE).read_bytes()
    (root / "ESRGAN" / "4x-cut.safetensors").write_bytes(data[: len(data) // 2])
    (root / "RealESRGAN").mkdir()
    (root / "RealESRGAN" / "garbage.pth").write_bytes(b"PK\x03\x04 not really a zip")
    (root / "SwinIR").mkdir()
    (root / "SwinIR" / "empty.pth").write_bytes(b"")
    library = UpscalerLibrary(root)
    problems = {f.name: f.problem for f in library.list()}
    assert problems[DEMO] is None
    assert "shorter than its header says" in problems["4x-cut"]
    assert "damaged" in problems["garbage"] and "empty" in problems["empty"]
    for name in ("4x-cut", "garbage", "empty"):
        with pytest.raises(UserError, match=f"{name} cannot be used"):
            Upscalers(library).upscale(picture(), name, scale=2)
    assert Upscalers(library).upscale(picture(), DEMO, scale=2).size == (128, 96)


def test_a_pth_of_plain_tensors_loads_and_one_needing_unpickling_is_refused(tmp_path):
    folder = tmp_path / "models" / "ESRGAN"
    folder.mkdir(parents=True)
    state = {k: v.float() for k, v in rrdbnet_state_dict().items()}
    torch.save({"params_ema": state}, folder / "RealESRGAN_x4plus.pth")  # as Real-ESRGAN's releases nest it
    torch.save({"params_ema": state, "opt": argparse.Namespace(lr=1e-4)}, folder / "4x-pickled.pth")
    library = UpscalerLibrary(tmp_path / "models")
    assert library.load("RealESRGAN_x4plus").architecture == "ESRGAN"
    with pytest.raises(UserError) as refused:
        library.load("4x-pickled")
    assert "needs full unpickling" in str(refused.value) and "argparse.Namespace" in str(refused.value)
    assert "needs full unpickling" in {f.name: f.problem for f in library.list()}["4x-pickled"]


def test_a_file_of_another_kind_is_refused_with_the_reason(tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "models" / "DAT"
    folder.mkdir(parents=True)
    save_file({"first.weight": torch.zeros(3, 3)}, str(folder / "not-an-upscaler.safetensors"))
    with pytest.raises(UserError, match="not an architecture spandrel knows"):
        UpscalerLibrary(tmp_path / "models").load("not-an-upscaler")


def test_unknown_and_latent_names_for_an_image(library):
    with pytest.raises(UserError, match="unknown upscaler 'R-ESRGAN 4x\\+'; known: None, Lanczos, Nearest, "):
        Upscalers(library).upscale(picture(), "R-ESRGAN 4x+", scale=2)
    with pytest.raises(UserError, match="works on latents"):
        Upscalers(library).upscale(picture(), "Latent", scale=2)


def test_scale_from_the_file_name():
    assert [scale_from_name(n) for n in ("4x-UltraSharp", "RealESRGAN_x2plus", "2x_foo", "SwinIR_4x", "DAT_x3",
                                         "something")] == [4, 2, 2, 4, 3, 4]


def test_latent_modes_are_a1111s_interpolations():
    latents = torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    assert list(LATENT_MODES) == ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                                  "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"]
    for name, (mode, antialias) in LATENT_MODES.items():
        out = upscale_latents(latents, name, scale=2)
        assert out.shape == (1, 4, 16, 24)
        expected = torch.nn.functional.interpolate(latents, size=(16, 24), mode=mode, antialias=antialias)
        assert torch.equal(out, expected)
    assert upscale_latents(latents.half(), "Latent (bicubic antialiased)", latent_size=(12, 20)).shape == (1, 4, 12, 20)
    assert not torch.equal(upscale_latents(latents, "Latent", scale=2), upscale_latents(latents, "Latent (nearest)",
                                                                                         scale=2))
    with pytest.raises(UserError, match="must be one of Latent, "):
        upscale_latents(latents, "Lanczos", scale=2)

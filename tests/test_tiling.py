"""Seamless tiling: with `tiling` the picture is a torus (its left edge continues its right, its top its bottom),
the infotext says so, and afterwards every convolution pads as before: the next plain image is unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd_app import infotext, rng
from sd_app.params import GenerationParams
from sd_app.tiling import convolutions, seamless


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def test_the_vae_decoder_wraps_around_with_seamless(engine):
    vae = engine.pipelines.base.pipe.vae
    latents = torch.randn(1, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    rolled = torch.roll(latents, 3, dims=-1)
    with torch.no_grad():
        with seamless(engine.pipelines.base.pipe):
            wrapped = vae.decode(latents).sample
            shifted = vae.decode(rolled).sample
        plain = vae.decode(latents).sample
        plain_shifted = vae.decode(rolled).sample
    # a torus: moving the latents by 3 cells moves the picture by 24 pixels, the right edge coming in on the left
    assert torch.allclose(torch.roll(wrapped, 24, dims=-1), shifted, atol=1e-4)
    assert not torch.allclose(torch.roll(plain, 24, dims=-1), plain_shifted, atol=1e-2)  # zero padding: edges
    assert all(layer.padding_mode == "zeros" for layer in convolutions(engine.pipelines.base.pipe))


def test_a_tiled_image_wraps_around_and_says_so(engine, small, monkeypatch):
    plain = engine.generate(small)
    params = small.replace(tiling=True)
    tiled = engine.generate(params)
    assert "Tiling: True" in tiled.infotexts[0] and "Tiling" not in plain.infotexts[0]
    assert not np.array_equal(pixels(plain), pixels(tiled))

    # The same noise moved by 4 latent cells (the tiny UNet's whole downsampling): the picture moves by 32 pixels,
    # what leaves on the right coming back on the left, as only a seamless picture can.
    real = rng.ImageRNG.first

    def moved(self):
        return torch.roll(real(self), 4, dims=-1)

    monkeypatch.setattr(rng.ImageRNG, "first", moved)
    shifted = engine.generate(params)
    monkeypatch.undo()
    assert np.abs(np.roll(pixels(tiled), 32, axis=1) - pixels(shifted)).max() <= 2

    # left and right edges continue each other as much as neighbouring columns inside do
    image = pixels(tiled)
    inside = np.abs(np.diff(image, axis=1)).mean()
    seam = np.abs(image[:, 0] - image[:, -1]).mean()
    assert seam < 1.5 * inside

    # afterwards every layer pads as before: the plain request gives the very same pixels
    assert np.array_equal(pixels(engine.generate(small)), pixels(plain))


def test_tiling_in_the_request_and_the_paste():
    assert GenerationParams(tiling=True).check().tiling
    with pytest.raises(Exception, match="tiling: must be true or false"):
        GenerationParams(tiling="yes").check()
    pasted = infotext.read_params("a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Tiling: True")
    assert pasted.params.tiling and "Tiling: True" in pasted.applied
    assert not any("Tiling" in what for what, _ in pasted.not_applied)
    assert not infotext.read_params("a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1").params.tiling


def test_seamless_restores_even_when_the_job_fails(engine):
    pipe = engine.pipelines.base.pipe
    with pytest.raises(RuntimeError):
        with seamless(pipe):
            assert any(layer.padding_mode == "circular" for layer in convolutions(pipe))
            raise RuntimeError("the job failed")
    assert all(layer.padding_mode == "zeros" for layer in convolutions(pipe))
    with seamless(pipe, on=False):
        assert all(layer.padding_mode == "zeros" for layer in convolutions(pipe))


def test_the_api_takes_tiling():
    from sd_app.api.convert import txt2img_plan
    from sd_app.api.schemas import Txt2ImgRequest

    assert txt2img_plan(Txt2ImgRequest(tiling=True), "Automatic", "png").params.tiling
    assert not txt2img_plan(Txt2ImgRequest(tiling=None), "Automatic", "png").params.tiling


def test_the_form_has_the_tiling_checkbox():
    from sd_app.ui.txt2img import values_to_params

    values = ["base", "a cat", "", "Euler a", "Automatic", 20, 1024, 1024, 7, -1, 1, 1, "None", 0.8, []]
    assert not values_to_params(values).tiling
    assert values_to_params(values + [1, False, True]).tiling

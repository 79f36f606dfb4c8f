"""The benchmark's side-by-side rows run end to end (tiny model, CPU); the figures themselves are not asserted."""

import pytest

from sd_app import bench
from sd_app import engine as engine_module

from conftest import BASE, REFINER, make_engine, make_studio


def test_speed_rows_compare_plain_diffusers_and_homegrown_for_base_and_refiner(ckpt_dir, tmp_path, small):
    studio = make_studio(ckpt_dir, tmp_path, save_images=False, preview_every=0)
    studio.load_checkpoint(BASE)
    report = bench.Report()
    bench.speed_rows(report, "gpu", studio, small, runs=1, refiner_name=REFINER)
    rows = report.data["cases"]["gpu"]
    for what in ("base", "base+refiner"):
        assert rows[f"plain diffusers, {what}: 64x64, 4 steps"]["median"] > 0
        assert rows[f"Homegrown, {what}: it/s"] > 0
        assert 0.2 < rows[f"Homegrown / plain diffusers, {what}"] < 5
    assert studio.pipelines.refiner is not None and studio.pipelines.options.compile == "off"
    assert "| gpu | Homegrown, base+refiner: 64x64, 4 steps |" in report.table()


def test_plain_diffusers_starts_from_the_same_noise_as_the_engine(ckpt_dir, tmp_path, small, monkeypatch):
    """Else the comparison would time two different requests."""
    engine = make_engine(ckpt_dir, tmp_path)
    engine.pipelines.load_checkpoint(BASE)
    seen = []
    real_call = type(engine.pipelines.base.pipe).__call__

    def spy(pipe, *args, **kwargs):
        seen.append(kwargs["latents"].clone())
        return real_call(pipe, *args, **kwargs)

    monkeypatch.setattr(type(engine.pipelines.base.pipe), "__call__", spy)
    bench.plain_diffusers(engine.pipelines, small)()
    real_denoise = engine_module.loop.denoise

    def spy_loop(request, callback=None):
        seen.append(request.noise.clone())
        return real_denoise(request, callback)

    monkeypatch.setattr(engine_module.loop, "denoise", spy_loop)
    engine.generate(small)
    assert len(seen) == 2 and seen[0].shape == seen[1].shape and bool((seen[0] == seen[1]).all())


def test_unknown_case_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--cases", "nope"])
    assert "fastpath" in capsys.readouterr().err

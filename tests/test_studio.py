"""The studio, the one seam for the page and the API: jobs on one board, saving after the run, models, settings."""

import threading

import pytest

from sd_app import engine as engine_module, jobs, studio as studio_module
from sd_app.errors import UserError
from sd_app.jobs import Job
from sd_app.outputs import OUTPUT_FORMATS
from sd_app.pipeline_choices import DEVICES, MEMORY_MODES, RELOAD_OPTIONS
from sd_app.settings import BY_NAME

from conftest import BASE, make_studio


@pytest.fixture(scope="module")
def studio(ckpt_dir, tmp_path_factory):
    made = make_studio(ckpt_dir, tmp_path_factory.mktemp("studio"), save_images=False, preview_every=0)
    made.load_checkpoint(BASE)
    return made


def test_a_job_is_on_the_board_while_it_runs_and_off_it_after_an_error(studio, small, monkeypatch):
    seen = []
    real_generate = studio.engine.generate

    def watching(params, job):
        seen.append((studio.job_of("tab-1"), studio.running_job()))
        return real_generate(params, job)

    monkeypatch.setattr(studio.engine, "generate", watching)
    result = studio.generate(small, owner="tab-1")
    assert len(result.images) == 1 and seen[0][0] is not None and seen[0][0].owner == "tab-1"
    assert len(studio.jobs) == 0
    with pytest.raises(UserError):
        studio.generate(small.replace(steps=0), owner="tab-1")
    assert len(studio.jobs) == 0 and studio.job_of("tab-1") is None  # removed in a finally


def test_start_runs_in_a_thread_and_ends_with_the_result_or_a_message(studio, small):
    job = studio.start(small, owner="tab-2")
    assert job.wait(120) and job.error is None and len(job.result.images) == 1
    bad = studio.start(small.replace(prompt="x <lora:nope:1>"), owner="tab-2")
    assert bad.wait(60) and bad.result is None and "nope" in bad.error
    assert studio.job_of("tab-2") is None


def test_an_unexpected_failure_is_a_message_and_the_studio_keeps_working(studio, small, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    with monkeypatch.context() as mp:
        mp.setattr(studio.engine, "generate", broken)
        job = studio.start(small, owner="tab-3")
        assert job.wait(30) and "RuntimeError: a bug" in job.error
    assert len(studio.generate(small).images) == 1 and len(studio.jobs) == 0


def test_interrupt_by_owner_stops_only_that_job_and_the_api_stops_the_running_one(studio):
    mine, theirs = Job(owner="tab-a"), Job(owner="tab-b")
    studio.jobs.add(mine)
    studio.jobs.add(theirs)
    try:
        theirs.started = 1.0  # on the GPU
        assert studio.interrupt("tab-a") and mine.interrupted and not theirs.interrupted
        assert studio.skip("tab-a") and mine.skipped and not theirs.skipped
        assert studio.interrupt() and theirs.interrupted  # A1111's /interrupt: the running job
        assert not studio.interrupt("tab-z")
    finally:
        studio.jobs.remove(mine)
        studio.jobs.remove(theirs)


def test_interrupt_from_another_thread_through_the_studio(studio, small):
    job = studio.start(small.replace(steps=40, n_iter=3), owner="tab-4")

    def stop_when_running():
        while not job.done:
            if job.sampling_step >= 2:
                studio.interrupt("tab-4")
                return
            threading.Event().wait(0.005)

    threading.Thread(target=stop_when_running).start()
    assert job.wait(120) and job.result.interrupted and len(job.result.images) == 1


def test_models_as_the_front_ends_see_them(studio):
    loaded = studio.loaded_model()
    assert loaded.name == BASE and loaded.title == f"{BASE}.safetensors [{loaded.short_hash}]"
    listed = {m.name: m for m in studio.checkpoints()}
    assert listed[BASE].title == loaded.title and listed[BASE].sha256.startswith(loaded.short_hash)
    assert studio.current_checkpoint() == BASE and BASE in studio.checkpoint_names("sdxl-base")


def test_settings_choices_come_from_where_they_act():
    assert BY_NAME["memory_mode"].choices == MEMORY_MODES and BY_NAME["device"].choices == DEVICES
    assert BY_NAME["output_format"].choices == OUTPUT_FORMATS
    reloads = {name for name, s in BY_NAME.items() if s.applies == "reload"}
    assert reloads == set(RELOAD_OPTIONS)


def test_settings_reach_the_engine_the_pipelines_and_the_writer(studio, tmp_path):
    before = studio.settings.all()
    try:
        message = studio.apply_settings({"preview_every": 5, "output_format": "webp", "filename_pattern": "[seed]-x",
                                         "prompt_syntax": "compel"})
        assert "applied" in message
        assert studio.engine.preview_every == 5 and studio.outputs.options.output_format == "webp"
        assert studio.outputs.options.filename_pattern == "[seed]-x" and studio.pipelines.encoder.syntax == "compel"
    finally:
        studio.apply_settings({name: before[name] for name in ("preview_every", "output_format", "filename_pattern",
                                                               "prompt_syntax")})


def test_core_modules_know_no_front_end():
    for module in (engine_module, jobs, studio_module):
        source = open(module.__file__).read()
        assert "gradio" not in source and "fastapi" not in source

"""The fast path (torch.compile): same pictures as eager, LoRAs still work, a failed compile never costs the image."""

import numpy as np
import pytest
import torch

from sd_app import fastpath
from sd_app.jobs import Job
from sd_app.errors import UserError

from conftest import BASE, make_engine


def pixels(result):
    return np.asarray(result.images[0]).astype(np.int16)


def compile_as(engine, mode):
    return engine.pipelines.replace_options(compile=mode)


def test_compiled_engine_gives_eager_pictures_and_lora_still_applies(ckpt_dir, tmp_path, small):
    """Real inductor on the CPU: the slowest test here (compiling takes about a minute on 2 cores)."""
    engine = make_engine(ckpt_dir, tmp_path, preview_every=0)
    engine.pipelines.load_checkpoint(BASE)
    styled = small.replace(prompt=small.prompt + " <lora:demo-style:1>")
    eager, eager_lora = pixels(engine.generate(small)), pixels(engine.generate(styled))

    assert "compiles the model first" in compile_as(engine, "default")
    assert fastpath.is_compiled(engine.pipelines.base.pipe)
    compiled = engine.generate(small)
    assert not compiled.warnings
    # Kernels sum in another order: a level or two of 255 at most, never a different picture.
    assert np.abs(pixels(compiled) - eager).max() <= 2
    compiled_lora = pixels(engine.generate(styled))
    assert np.abs(compiled_lora - eager_lora).max() <= 2  # the fused LoRA is seen by the compiled UNet
    assert np.abs(compiled_lora - pixels(compiled)).mean() > 1
    assert np.array_equal(pixels(engine.generate(small)), pixels(compiled))  # and removing it restores exactly

    compile_as(engine, "off")
    assert not fastpath.is_compiled(engine.pipelines.base.pipe)
    assert np.array_equal(pixels(engine.generate(small)), eager)


def test_failed_compile_falls_back_to_eager_with_a_warning(ckpt_dir, tmp_path, small, monkeypatch):
    notes = []  # what the progress bar says while torch compiles

    def broken_backend(graph, example_inputs):
        notes.append(job.note)  # the job being compiled for
        raise RuntimeError("no C compiler here")

    monkeypatch.setitem(fastpath.COMPILE_MODES, "broken", {"backend": broken_backend})
    engine = make_engine(ckpt_dir, tmp_path, compile="broken")
    engine.pipelines.load_checkpoint(BASE)
    assert fastpath.is_compiled(engine.pipelines.base.pipe)
    job = Job()
    result = engine.generate(small, job)
    assert len(result.images) == 1 and "fast path" in result.warnings[0] and "no C compiler" in result.warnings[0]
    assert notes and "compiling" in notes[0] and job.note is None
    assert not fastpath.is_compiled(engine.pipelines.base.pipe) and engine.pipelines.compile_mode() == "off"
    again = engine.generate(small)
    assert not again.warnings and np.array_equal(pixels(again), pixels(result))
    compile_as(engine, "off")
    assert engine.pipelines.compile_problem is None  # a new choice gets a new try


def test_unknown_compile_mode_names_the_field(ckpt_dir, tmp_path):
    engine = make_engine(ckpt_dir, tmp_path)
    with pytest.raises(UserError) as err:
        compile_as(engine, "turbo")
    assert err.value.field == "compile" and "max-autotune" in str(err.value)
    assert engine.pipelines.options.compile == "off"


def channels_last(module) -> bool:
    return module.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_on_the_cpu_the_convolutions_run_channels_last(ckpt_dir, tmp_path):
    """oneDNN's native layout (a VAE decode ~30 % faster here); the eager and compiled paths alike."""
    engine = make_engine(ckpt_dir, tmp_path)
    pipe = engine.pipelines.load_checkpoint(BASE).pipe
    assert channels_last(pipe.unet) and channels_last(pipe.vae.encoder) and channels_last(pipe.vae.decoder)
    assert fastpath.conv_layout(torch.device("cpu"), compiled=True) == torch.channels_last
    # half-precision weights on the CPU are mapped from the file: a new layout would copy them
    assert fastpath.conv_layout(torch.device("cpu"), False, torch.float16) == torch.contiguous_format


def test_on_a_gpu_compiled_convolutions_go_channels_last_and_back(ckpt_dir, tmp_path):
    """The CUDA branch, checked without a GPU: nothing here runs the model, so no kernel needs CUDA."""
    engine = make_engine(ckpt_dir, tmp_path)
    pipe = engine.pipelines.load_checkpoint(BASE).pipe
    cuda = torch.device("cuda")
    fastpath.set_compiled(pipe, "off", cuda)  # eager on a GPU: as loaded
    assert not channels_last(pipe.unet) and not channels_last(pipe.vae.decoder)
    fastpath.set_compiled(pipe, "max-autotune", cuda)
    assert fastpath.is_compiled(pipe) and channels_last(pipe.unet) and channels_last(pipe.vae.decoder)
    fastpath.set_compiled(pipe, "off", cuda)
    assert not fastpath.is_compiled(pipe) and pipe.unet.conv_in.weight.is_contiguous()


def test_progress_bar_shows_the_compiling_note_instead_of_step_zero():
    from sd_app.ui.txt2img import progress_html

    job = Job()
    job.started, job.sampling_steps = 1.0, 20
    assert "Step 0/20" in progress_html(job)
    job.note = "Fast path: compiling first"
    assert "compiling" in progress_html(job) and "Step" not in progress_html(job)


def test_switching_fused_loras_reuses_the_compiled_graphs(ckpt_dir, tmp_path, small, monkeypatch):
    """Compiling again for every LoRA set would cost tens of seconds per switch on a GPU."""
    graphs = []

    def counting_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward  # runs eagerly: this test counts compilations, not speed

    monkeypatch.setitem(fastpath.COMPILE_MODES, "counting", {"backend": counting_backend})
    engine = make_engine(ckpt_dir, tmp_path, preview_every=0, compile="counting")
    engine.pipelines.load_checkpoint(BASE)
    plain = pixels(engine.generate(small))
    compiled_once = len(graphs)
    for tags in ("<lora:demo-style:1>", "<lora:demo-detail:0.5>", "<lora:demo-style:1> <lora:demo-detail:1>", ""):
        result = engine.generate(small.replace(prompt=f"{small.prompt} {tags}"))
        assert engine.pipelines.base.loras.fused or not tags
    assert compiled_once > 0 and len(graphs) == compiled_once
    assert np.array_equal(pixels(result), plain)

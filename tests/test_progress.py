"""What a waiting user sees: the phase before the first step, the place in the queue, a preview at a size a
person can judge."""

import threading

from PIL import Image

from sd_app import engine as engine_module, lora_patch, plan
from sd_app.jobs import Job, JobBoard
from sd_app.preview import enlarged
from sd_app.ui.txt2img import progress_html

from conftest import BASE, REFINER, make_engine, make_studio


def test_each_phase_before_the_steps_says_what_it_does(ckpt_dir, tmp_path, small, monkeypatch):
    engine = make_engine(ckpt_dir, tmp_path, preview_every=0)
    job = Job()
    seen = {}

    def watch(name, real):
        def watching(*args, **kwargs):
            seen.setdefault(name, (job.note, job.sampling_steps))
            return real(*args, **kwargs)
        return watching

    pipes = engine.pipelines
    monkeypatch.setattr(pipes, "ensure_base", watch("load", pipes.ensure_base))
    monkeypatch.setattr(pipes, "ensure_refiner", watch("refiner", pipes.ensure_refiner))
    monkeypatch.setattr(lora_patch.LoraSet, "apply", watch("lora", lora_patch.LoraSet.apply))
    monkeypatch.setattr(plan, "passes", watch("encode", plan.passes))
    monkeypatch.setattr(engine_module, "decode_latents", watch("decode", engine_module.decode_latents))
    real_callback = engine._progress_callback
    monkeypatch.setattr(engine, "_progress_callback",
                        lambda *args: watch("first step", real_callback(*args)))
    params = small.replace(prompt="a cat <lora:demo-style:0.8>", checkpoint=BASE, refiner_checkpoint=REFINER)
    engine.generate(params, job)
    assert seen["load"][0] == f"Loading the checkpoint {BASE}…"
    assert seen["refiner"][0] == f"Loading the refiner {REFINER}…"
    assert seen["lora"][0] == "Applying LoRA…"
    assert seen["encode"][0] == "Encoding the prompt…"
    assert seen["first step"] == (None, small.steps)  # "Step 0/4" while the first step runs
    assert seen["decode"][0] == "Decoding the image…"
    assert job.note is None

    seen.clear()
    again = Job()
    job = again
    engine.generate(params.replace(prompt="a dog"), again)
    assert seen["load"][0] is None and seen["refiner"][0] is None  # loaded already: nothing to wait for
    assert seen["lora"][0] is None and seen["encode"][0] == "Encoding the prompt…"


def test_the_bar_shows_the_note_escaped_and_never_step_zero_of_unknown():
    job = Job()
    job.started = 1.0
    assert "Starting…" in progress_html(job) and "?" not in progress_html(job)
    job.note = "Loading the checkpoint <b>odd</b>…"
    assert "&lt;b&gt;odd&lt;/b&gt;" in progress_html(job) and "<b>" not in progress_html(job)
    job.note, job.sampling_steps, job.sampling_step = None, 20, 3
    assert "Step 3/20" in progress_html(job)


def test_the_queue_place_counts_the_running_job_and_those_queued_before():
    board = JobBoard()
    first, second, third = Job(owner="a"), Job(owner="b"), Job(owner="c")
    for job in (first, second, third):
        board.add(job)
    assert [board.ahead_of(job) for job in (first, second, third)] == [0, 1, 2]
    first.started = 1.0
    assert [board.ahead_of(job) for job in (first, second, third)] == [0, 1, 2]
    third.started, first.finished = 2.0, 3.0  # the third got the GPU first: it is ahead of the second
    board.remove(first)
    assert [board.ahead_of(job) for job in (second, third)] == [1, 0]
    assert board.ahead_of(Job()) == 0  # not on the board (ended, or not yet added)
    texts = [progress_html(second, queued=True, ahead=n) for n in (0, 1, 2)]
    assert "Waiting for the GPU…" in texts[0]
    assert "Waiting for the GPU: 1 job ahead" in texts[1] and "Waiting for the GPU: 2 jobs ahead" in texts[2]


def test_the_studio_tells_a_queued_job_its_place(ckpt_dir, tmp_path, small):
    studio = make_studio(ckpt_dir, tmp_path, save_images=False, preview_every=0)
    studio.load_checkpoint(BASE)
    with studio.pipelines.lock:  # the GPU is busy (a checkpoint load, another job)
        first = studio.start(small, owner="tab-1")
        second = studio.start(small, owner="tab-2")
        for _ in range(200):
            if len(studio.jobs) == 2:
                break
            threading.Event().wait(0.01)
        assert studio.queue_position(second) == 1 and studio.queue_position(first) == 0
        assert first.started is None and second.started is None
    assert first.wait(120) and second.wait(120) and first.error is None and second.error is None


def test_the_preview_is_shown_at_the_image_size_up_to_512_px():
    latent_sized = Image.new("RGB", (32, 24), "red")
    assert enlarged(latent_sized, 256, 192).size == (256, 192)
    assert enlarged(latent_sized, 1216, 832).size == (512, 350)
    assert enlarged(Image.new("RGB", (8, 8)), 64, 64).size == (64, 64)
    same = Image.new("RGB", (64, 64))
    assert enlarged(same, 64, 64) is same

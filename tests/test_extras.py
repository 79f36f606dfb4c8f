"""Extras through the studio and the page's handler: A1111's upscale postprocessing as a job that queues on the GPU
lock, shows its tiles, keeps the source's infotext and saves into extras-images."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

from conftest import make_studio
from sd_app import infotext
from sd_app.errors import UserError
from sd_app.extras import ExtrasRequest, info_text
from sd_app.jobs import Job
from sd_app.ui import extras_tab

DEMO = "homegrown-demo-4x"
SOURCE_TEXT = "a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x48"


@pytest.fixture(scope="module")
def studio(ckpt_dir, tmp_path_factory):
    return make_studio(ckpt_dir, tmp_path_factory.mktemp("extras"), upscaler_dir=str(ckpt_dir.parent))


def source(width=64, height=48) -> Image.Image:
    image = Image.new("RGB", (width, height), (180, 60, 20))
    image.paste((10, 200, 90), (8, 8, 24, 24))
    image.info[infotext.PNG_KEY] = SOURCE_TEXT
    return image


def test_an_upscale_job_shows_its_tiles_and_saves_with_the_infotext(studio, monkeypatch):
    from sd_app.upscalers import Tiling

    small_tiles = studio.upscalers()
    small_tiles.tiling = Tiling(tile=24, overlap=4, context=8)  # 3x3 tiles over 64x48
    monkeypatch.setattr(studio, "upscalers", lambda: small_tiles)
    job = Job(None, "tester")
    result = studio.extras([source()], ExtrasRequest(upscaler_1=DEMO, upscaling_resize=4), "tester", job, save=True)
    assert [image.size for image in result.images] == [(256, 192)]
    assert result.infotexts == [f"Postprocess upscale by: 4, Postprocess upscaler: {DEMO}"]
    assert job.note == "Upscaling: tile 9/9" and job.progress == 1.0 and job.finished is not None
    saved = Image.open(result.paths[0])
    assert result.paths[0].parent.parent.name == "extras-images"
    assert saved.info["parameters"] == SOURCE_TEXT
    assert saved.info["postprocessing"] == saved.info["extras"] == result.infotexts[0]
    assert len(studio.jobs) == 0


def test_jpeg_keeps_the_source_infotext(studio):
    result = studio.extras([source()], ExtrasRequest(upscaler_1="Lanczos"), save=True, output_format="jpeg")
    assert infotext.read_image(result.paths[0]) == SOURCE_TEXT


def test_scale_to_without_crop_keeps_the_aspect(studio):
    result = studio.extras([source()], ExtrasRequest(resize_mode=1, upscaling_resize_w=200, upscaling_resize_h=100,
                                                     upscaling_crop=False, upscaler_1="Nearest"), save=False)
    assert result.images[0].size == (200, 144)  # by max(200/64, 100/48), rounded down to 8 as A1111
    assert result.infotexts[0] == "Postprocess upscale to: 200x100, Postprocess upscaler: Nearest"


def test_an_extras_job_queues_behind_the_gpu(studio):
    lock = studio.pipelines.lock
    holder_has_it, release = threading.Event(), threading.Event()

    def hold():
        with lock:
            holder_has_it.set()
            release.wait(30)

    threading.Thread(target=hold, daemon=True).start()
    holder_has_it.wait(10)
    job = studio.start_extras([source()], ExtrasRequest(upscaler_1="Lanczos"), "queued", save=False)
    time.sleep(0.3)
    assert job.started is None and not job.done
    release.set()
    assert job.wait(30) and job.error is None and job.result.images[0].size == (128, 96)


def test_refused_before_it_queues(studio):
    with pytest.raises(UserError) as refused:
        studio.start_extras([source(1100, 1100)], ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=8), "x")
    assert refused.value.field == "upscaling_resize" and "at most 67,108,864" in str(refused.value)
    with pytest.raises(UserError, match="unknown upscaler 'nope'"):
        studio.start_extras([source()], ExtrasRequest(upscaler_1="nope"), "x")
    assert len(studio.jobs) == 0


def test_info_text_is_a1111s():
    assert info_text({"Postprocess upscale by": 2.5, "Postprocess upscaler": "4x, sharp", "Flip": "Flip",
                      "Skipped": None}) == 'Postprocess upscale by: 2.5, Postprocess upscaler: "4x, sharp", Flip'


def test_the_page_handler_shows_the_result_and_refuses_a_bad_value(studio):
    outputs = ["progress", "error", "result", "info"]
    updates = list(extras_tab.run(studio, outputs, None, source(), 0, 2, 512, 512, True, "Lanczos", "None", 0))
    last = updates[-1]
    assert last["result"].size == (128, 96) and last["info"].endswith("Postprocess upscaler: Lanczos")
    assert "Done: 128x96" in last["progress"]
    handler = extras_tab.run(studio, outputs, None, source(), 0, 0, 512, 512, True, "Lanczos", "None", 0)
    first = next(handler)
    assert "upscaling_resize: must be a number above 0" in first["error"]
    with pytest.raises(Exception, match="upscaling_resize"):
        next(handler)


def test_the_page_has_the_extras_tab(studio):
    from sd_app import ui

    blocks = ui.build(studio)
    ids = {getattr(block, "elem_id", None) for block in blocks.blocks.values()}
    assert {"extras-image", "extras-upscaler-1", "extras-go", "extras-result"} <= ids
    upscaler = next(b for b in blocks.blocks.values() if getattr(b, "elem_id", None) == "extras-upscaler-1")
    assert [c[0] for c in upscaler.choices] == ["None", "Lanczos", "Nearest", DEMO]


def test_studio_upscale_by_scale_or_to_a_size(studio):
    assert studio.upscale(source(), "Lanczos", scale=2).size == (128, 96)
    assert studio.upscale(source(), DEMO, size=(200, 100)).size == (200, 100)
    assert len(studio.jobs) == 0


def test_send_to_extras_puts_the_chosen_image_in_the_tab_and_selects_it():
    import numpy as np

    from sd_app.errors import UserError
    from sd_app.ui import extras_tab

    first, second = source(), Image.new("RGB", (40, 30), (200, 10, 10))
    image, tab = extras_tab.send_chosen.__wrapped__([(first, "seed 1"), (second, "seed 2")], 1)
    assert image is second and tab.selected == extras_tab.TAB_ID
    image, _ = extras_tab.send_chosen.__wrapped__([(first, "seed 1")], None)  # nothing chosen yet: the first
    assert image is first
    image, tab = extras_tab.send_image.__wrapped__(np.asarray(second))  # PNG Info / History hand over an image
    assert np.array_equal(np.asarray(image), np.asarray(second)) and tab.selected == extras_tab.TAB_ID
    for empty in ([], None):
        with pytest.raises(UserError, match="no image to send"):
            extras_tab.send_chosen.__wrapped__(empty, 0)
    with pytest.raises(UserError, match="no image to send"):
        extras_tab.send_image.__wrapped__(None)


def test_the_page_sends_to_extras_from_txt2img_img2img_png_info_and_history(studio):
    from sd_app import ui

    blocks = ui.build(studio)
    by_id = {getattr(b, "elem_id", None): b for b in blocks.blocks.values()}
    extras_image = by_id["extras-image"]
    for elem_id in ("send-to-extras", "png-info-to-extras", "img2img-to-extras", "history-to-extras"):
        button = by_id[elem_id]
        assert button.interactive is not False, elem_id
        clicks = [d for d in blocks.fns.values() if any(t[0] == button._id for t in d.targets)]
        assert any(extras_image in d.outputs for d in clicks), elem_id

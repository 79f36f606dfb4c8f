"""Saving finished images: numbering, formats with their infotext, safe names, a result written after its run."""

from datetime import datetime

import pytest
from PIL import Image

from sd_app import infotext, outputs
from sd_app.errors import UserError
from sd_app.infotext import read_image

from conftest import BASE, make_studio


def test_save_numbering_and_metadata(tmp_path):
    image = Image.new("RGB", (8, 8), "red")
    now = datetime(2026, 1, 2)
    first = outputs.save_image(image, "cat\nSteps: 1, Seed: 5, Size: 8x8", tmp_path, "5", now=now)
    second = outputs.save_image(image, "dög ✓\nSteps: 1, Seed: 6, Size: 8x8", tmp_path, "6", now=now)
    assert first == tmp_path / "2026-01-02" / "00000-5.png"
    assert second.name == "00001-6.png"
    assert infotext.read_image(second).startswith("dög ✓")
    (tmp_path / "2026-01-02" / "00007-1.png").write_bytes(b"")
    assert outputs.save_image(image, None, tmp_path, "9", now=now).name == "00008-9.png"


@pytest.mark.parametrize("fmt, ext", [("png", "png"), ("jpeg", "jpg"), ("webp", "webp")])
def test_every_format_keeps_the_infotext(tmp_path, fmt, ext):
    text = "a cat, ünïcode ✓\nNegative prompt: dog\nSteps: 3, Seed: 1, Size: 8x8"
    path = outputs.save_image(Image.new("RGB", (8, 8), "blue"), text, tmp_path, "1", fmt)
    assert path.suffix == "." + ext
    assert infotext.read_image(path) == text


def test_file_name_patterns_are_safe():
    values = {"seed": 5, "model": "my/model:v2", "width": 64}
    assert outputs.file_name("[seed]-[model]", values) == "5-my_model_v2"
    assert outputs.file_name("[seed]-[unknown]", values) == "5-[unknown]"
    assert outputs.file_name("../../[seed]", values) == "_5" or "/" not in outputs.file_name("../../[seed]", values)
    assert outputs.file_name("", values) == "5"


def test_format_names_as_users_and_clients_write_them():
    assert [outputs.output_format(v) for v in ("png", "PNG", "jpg", "jpeg", "webp")] == \
        ["png", "png", "jpeg", "jpeg", "webp"]
    with pytest.raises(UserError) as err:
        outputs.output_format("gif", field="samples_format")
    assert err.value.field == "samples_format" and "webp" in err.value.message


def test_images_are_saved_with_infotext(ckpt_dir, tmp_path, small):
    studio = make_studio(ckpt_dir, tmp_path)
    result = studio.generate(small.replace(checkpoint=BASE, batch_size=2))
    assert [p.name for p in result.paths] == ["00000-1234.png", "00001-1235.png"]
    assert result.paths[0].parent.parent == tmp_path / "outputs" / "txt2img-images"
    assert read_image(result.paths[1]) == result.infotexts[1]
    assert not [p for p in result.paths[0].parent.iterdir() if p.name.startswith(".saving")]


def test_a_run_without_saving_writes_nothing(ckpt_dir, tmp_path, small):
    studio = make_studio(ckpt_dir, tmp_path, save_images=False)
    result = studio.generate(small.replace(checkpoint=BASE))
    assert len(result.images) == 1 and result.paths == [] and not (tmp_path / "outputs").exists()
    saved = studio.generate(small.replace(checkpoint=BASE), save=True, output_format="jpeg")
    assert saved.paths[0].suffix == ".jpg" and read_image(saved.paths[0]) == saved.infotexts[0]
    assert "save" in saved.timings


def _result(count=2):
    from sd_app.jobs import GenerationResult
    from sd_app.params import GenerationParams

    params = GenerationParams(prompt="cat", steps=2, width=8, height=8, seed=5)
    return GenerationResult(images=[Image.new("RGB", (8, 8), c) for c in ("red", "blue", "green")[:count]],
                            infotexts=[f"cat\nSteps: 2, Seed: {5 + i}" for i in range(count)],
                            seeds=[5 + i for i in range(count)], params=params)


def test_an_outputs_folder_that_cannot_be_made_keeps_every_image_with_a_warning(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")  # read-only folders do not stop root; this stops everyone
    writer = outputs.OutputWriter(outputs.OutputOptions(outputs_dir=tmp_path / "a-file" / "outputs"))
    result = _result()
    assert writer.save(result) == [] and len(result.images) == 2
    warning, = result.warnings
    assert warning.startswith(f"2 of 2 images were not saved: {tmp_path / 'a-file' / 'outputs' / 'txt2img-images'} "
                              "cannot be written (Not a directory: ")
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_a_full_disk_keeps_every_image_and_leaves_no_half_written_file(tmp_path, monkeypatch):
    import errno

    written = []

    def fill_the_disk(image, text, f, fmt):
        if written:  # the second image finds the disk full halfway through
            f.write(b"\x89PNG half an image")
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(fmt)
        return real(image, text, f, fmt)

    real = outputs.write_image
    monkeypatch.setattr(outputs, "write_image", fill_the_disk)
    writer = outputs.OutputWriter(outputs.OutputOptions(outputs_dir=tmp_path / "out"))
    result = _result(3)
    saved = writer.save(result)
    assert [p.name for p in saved] == ["00000-5.png"] and len(result.images) == 3
    assert result.warnings == [f"2 of 3 images were not saved: {tmp_path / 'out' / 'txt2img-images'} cannot be "
                               "written (No space left on device). The images are only in this result: download "
                               "them, or fix the outputs folder in Settings."]
    assert [p.name for p in saved[0].parent.iterdir()] == ["00000-5.png"]  # no .saving- leftovers


def test_a_page_job_whose_images_cannot_be_saved_still_shows_them(ckpt_dir, tmp_path, small):
    (tmp_path / "a-file").write_text("")
    studio = make_studio(ckpt_dir, tmp_path, outputs_dir=str(tmp_path / "a-file" / "outputs"))
    job = studio.start(small.replace(checkpoint=BASE, batch_size=2), owner="page")  # the page's way in
    assert job.wait(300)
    assert job.error is None and len(job.result.images) == 2 and job.result.paths == []
    assert "2 of 2 images were not saved" in job.result.warnings[0] and "a-file" in job.result.warnings[0]

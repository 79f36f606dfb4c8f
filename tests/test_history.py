"""The outputs browser: saved images newest first with their infotext, search by prompt, paging, and a delete
that moves files into the trash folder (and back) without ever losing or overwriting one."""

import os
from datetime import datetime

import pytest
from PIL import Image

from sd_app import infotext
from sd_app.errors import UserError
from sd_app.history import TRASH, History
from sd_app.outputs import save_image

from conftest import BASE, make_studio


def saved(folder, prompt, seed, fmt="png", day=datetime(2026, 11, 20), when=None, size=(64, 48)):
    """An image as the app saves it: `txt2img-images/DAY/NNNNN-SEED.EXT` with its infotext."""
    text = infotext.build(prompt, "blurry", {"Steps": 20, "Seed": seed, "Size": f"{size[0]}x{size[1]}"})
    path = save_image(Image.new("RGB", size, (seed % 255, 80, 160)), text, folder / "txt2img-images", str(seed),
                      fmt, now=day)
    if when is not None:
        os.utime(path, (when, when))
    return path


def newer(path):
    with open(path, "wb") as f:
        infotext.write_image(Image.new("RGB", (8, 8)), "another fox\nSteps: 5, Seed: 1, Size: 8x8", f)


@pytest.fixture
def outputs(tmp_path):
    folder = tmp_path / "outputs"
    saved(folder, "a red fox in the snow", 1, when=1_000)
    saved(folder, "a blue whale", 2, fmt="jpeg", when=2_000)
    saved(folder, "a Red Panda, (masterpiece:1.2)", 3, fmt="webp", day=datetime(2026, 11, 21), when=3_000)
    return folder


def relatives(page):
    return [image.relative for image in page.images]


def test_lists_newest_first_with_the_infotext_of_every_format(outputs):
    history = History(outputs)
    page = history.page()
    assert page.total == 3 and page.pages == 1
    assert relatives(page) == ["txt2img-images/2026-11-21/00000-3.webp", "txt2img-images/2026-11-20/00001-2.jpg",
                               "txt2img-images/2026-11-20/00000-1.png"]
    texts = [history.infotext(image) for image in page.images]
    assert texts[0].startswith("a Red Panda, (masterpiece:1.2)\nNegative prompt: blurry\nSteps: 20")
    assert "Seed: 2," in texts[1] and "Seed: 1," in texts[2]  # JPEG's EXIF, PNG's chunk


def test_skips_the_trash_half_written_files_links_and_other_files(outputs, tmp_path):
    (outputs / "txt2img-images" / "2026-11-20" / ".saving-abc.png").write_bytes(b"partial")
    (outputs / "notes.txt").write_text("not an image")
    (tmp_path / "elsewhere.png").write_bytes((outputs / "txt2img-images/2026-11-20/00000-1.png").read_bytes())
    (outputs / "link.png").symlink_to(tmp_path / "elsewhere.png")
    History(outputs).trash("txt2img-images/2026-11-20/00000-1.png")
    assert relatives(History(outputs).page()) == ["txt2img-images/2026-11-21/00000-3.webp",
                                                  "txt2img-images/2026-11-20/00001-2.jpg"]


def test_search_needs_every_word_of_the_prompt_in_any_case(outputs):
    history = History(outputs)
    assert relatives(history.page("red")) == ["txt2img-images/2026-11-21/00000-3.webp",
                                              "txt2img-images/2026-11-20/00000-1.png"]
    assert relatives(history.page("RED fox")) == ["txt2img-images/2026-11-20/00000-1.png"]
    assert relatives(history.page("masterpiece:1.2")) == ["txt2img-images/2026-11-21/00000-3.webp"]
    assert history.page("blurry").total == 0  # the negative prompt is not the prompt
    assert history.page("  ").total == 3


def test_pages_are_clamped_and_an_empty_folder_has_one_empty_page(outputs, tmp_path):
    history = History(outputs)
    first, last = history.page(page=0, per_page=2), history.page(page=9, per_page=2)
    assert (first.pages, len(first.images), last.page, len(last.images)) == (2, 2, 1, 1)
    assert relatives(last) == ["txt2img-images/2026-11-20/00000-1.png"]
    assert history.page(page=-3, per_page=2).page == 0
    empty = History(tmp_path / "no-such-folder").page()
    assert (empty.images, empty.total, empty.pages) == ([], 0, 1)
    with pytest.raises(UserError) as err:
        history.page(per_page=0)
    assert err.value.field == "per_page"


def test_a_changed_file_is_read_again(outputs):
    history = History(outputs)
    image = history.find("txt2img-images/2026-11-20/00000-1.png")
    assert history.prompt(image) == "a red fox in the snow"
    text = infotext.build("a grey wolf", "", {"Steps": 5, "Seed": 1, "Size": "64x48"})
    with open(image.path, "wb") as f:
        infotext.write_image(Image.new("RGB", (64, 48)), text, f)
    os.utime(image.path, (5_000, 5_000))
    assert relatives(history.page("wolf")) == ["txt2img-images/2026-11-20/00000-1.png"]
    assert history.page("fox").total == 0


def test_thumbnails_are_small_and_the_full_image_keeps_its_infotext(tmp_path):
    folder = tmp_path / "outputs"
    saved(folder, "a tall tower", 7, fmt="jpeg", size=(512, 1024))
    history = History(folder)
    image = history.page().images[0]
    assert history.thumbnail(image).size == (128, 256)
    assert [small.size for small in history.thumbnails([image, image])] == [(128, 256)] * 2
    full = history.open(image)
    assert full.size == (512, 1024) and full.info[infotext.PNG_KEY].startswith("a tall tower")


def test_a_broken_file_is_listed_without_parameters_and_opening_it_says_why(outputs):
    broken = outputs / "txt2img-images" / "2026-11-20" / "00002-9.png"
    broken.write_bytes(b"\x89PNG not really")
    history = History(outputs)
    image = history.find("txt2img-images/2026-11-20/00002-9.png")
    assert history.infotext(image) is None and history.prompt(image) == ""
    assert history.page("fox").total == 1  # the search goes on past it
    with pytest.raises(UserError) as err:
        history.open(image)
    assert "00002-9.png" in str(err.value)


@pytest.mark.parametrize("path", ["../secret.png", "/etc/passwd", "txt2img-images/../../secret.png", "link.png",
                                  "", ".trash/txt2img-images/2026-11-20/00000-1.png", "notes.txt",
                                  "txt2img-images/2026-11-20/99999-0.png"])
def test_paths_outside_the_folder_in_the_trash_or_not_images_are_refused(outputs, tmp_path, path):
    (tmp_path / "secret.png").write_bytes((outputs / "txt2img-images/2026-11-20/00000-1.png").read_bytes())
    (outputs / "link.png").symlink_to(tmp_path / "secret.png")
    (outputs / "notes.txt").write_text("not an image")
    history = History(outputs)
    history.trash("txt2img-images/2026-11-20/00000-1.png")
    history.restore(".trash/txt2img-images/2026-11-20/00000-1.png")
    history.trash("txt2img-images/2026-11-20/00000-1.png")
    with pytest.raises(UserError) as err:
        history.trash(path)
    assert err.value.field == "image"
    assert (tmp_path / "secret.png").exists() and (outputs / "notes.txt").exists()


def test_delete_moves_into_the_trash_keeping_the_path_and_never_overwrites(outputs):
    history = History(outputs)
    name = "txt2img-images/2026-11-20/00000-1.png"
    original = (outputs / name).read_bytes()
    assert history.trash(name) == f"{TRASH}/{name}"
    assert not (outputs / name).exists() and (outputs / TRASH / name).read_bytes() == original
    newer(outputs / name)  # a file of the same name again (an A1111 copy, a restored backup)
    assert history.trash(name) == f"{TRASH}/txt2img-images/2026-11-20/00000-1 (2).png"
    assert (outputs / TRASH / name).read_bytes() == original  # the first one is still there, untouched
    with pytest.raises(UserError):
        history.trash(name)  # already gone: a second click deletes nothing else


def test_restore_puts_it_back_or_beside_a_newer_file_of_the_same_name(outputs):
    history = History(outputs)
    name = "txt2img-images/2026-11-20/00000-1.png"
    original = (outputs / name).read_bytes()
    trashed = history.trash(name)
    assert history.restore(trashed) == name and (outputs / name).read_bytes() == original
    assert not (outputs / trashed).exists()
    trashed = history.trash(name)
    newer(outputs / name)
    later = (outputs / name).read_bytes()
    assert history.restore(trashed) == "txt2img-images/2026-11-20/00000-1 (2).png"
    assert (outputs / name).read_bytes() == later
    for wrong in (trashed, "txt2img-images/2026-11-20/00001-2.jpg", ".trash", "../x.png"):
        with pytest.raises(UserError):
            history.restore(wrong)


def test_the_studio_browses_the_outputs_folder_in_use(ckpt_dir, tmp_path):
    studio = make_studio(ckpt_dir, tmp_path, outputs_dir=str(tmp_path / "first"))
    saved(tmp_path / "first", "a heron", 5)
    saved(tmp_path / "second", "a crane", 6)
    assert studio.history().page("heron").total == 1
    studio.apply_settings({"outputs_dir": str(tmp_path / "second")})
    assert studio.history().folder == tmp_path / "second" and studio.history().page("crane").total == 1


def test_a_generated_image_is_found_by_its_prompt(ckpt_dir, tmp_path, small):
    studio = make_studio(ckpt_dir, tmp_path, outputs_dir=str(tmp_path / "outputs"), preview_every=0)
    studio.load_checkpoint(BASE)
    result = studio.generate(small.replace(prompt="a lighthouse at dusk"))
    page = studio.history().page("lighthouse")
    assert page.total == 1 and page.images[0].path.resolve() == result.paths[0].resolve()
    assert studio.history().infotext(page.images[0]) == result.infotexts[0]


def test_the_tab_says_where_it_looks_and_refuses_a_delete_without_a_choice(ckpt_dir, tmp_path):
    import gradio as gr

    from sd_app.ui import history_tab

    studio = make_studio(ckpt_dir, tmp_path, outputs_dir=str(tmp_path / "empty"))
    thumbnails, label, shown, page = history_tab.show_page(studio, "", 3)
    assert (thumbnails, shown, page) == ([], [], 0) and str((tmp_path / "empty").resolve()) in label
    saved(tmp_path / "empty", "a heron", 5)
    thumbnails, label, shown, page = history_tab.show_page(studio, "heron", 0)
    assert label == "Page 1 of 1 · 1 image" and shown == ["txt2img-images/2026-11-20/00000-5.png"]
    assert "No saved image matches “crane”" in history_tab.show_page(studio, "crane", 0)[1]
    for handler in (history_tab.delete_image, history_tab.undo_delete):
        with pytest.raises(gr.Error):
            handler(studio, "", "", 0)
    with pytest.raises(gr.Error) as err:
        history_tab.delete_image(studio, "../outside.png", "", 0)
    assert "not inside the outputs folder" in str(err.value)

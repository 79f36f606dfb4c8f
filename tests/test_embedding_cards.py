"""The embedding cards under the prompt: listed from the embeddings folder, a click toggles the name in the prompt
or the negative prompt, an SD 1.x file says why it cannot be used."""

from types import SimpleNamespace

import gradio as gr
import pytest

from conftest import make_studio
from sd_app.ui import build
from sd_app.ui.embedding_cards import list_cards, pick_card


@pytest.fixture(scope="module")
def studio(ckpt_dir, tmp_path_factory):
    return make_studio(ckpt_dir, tmp_path_factory.mktemp("cards"), save_images=False)


def test_cards_list_the_folder_and_search(studio):
    gallery, names, note = list_cards(studio, "")
    assert names == ["demo-negative", "demo-sd1"] and note == ""
    assert gallery[0][1] == "demo-negative · 2 vectors" and gallery[1][1].startswith("⚠ demo-sd1")
    assert list_cards(studio, "NEG")[1] == ["demo-negative"]
    assert list_cards(studio, "nothing")[1] == [] and "No embeddings" in list_cards(studio, "nothing")[2]


def test_a_click_toggles_the_name_in_the_chosen_prompt(studio):
    names = ["demo-negative", "demo-sd1"]
    prompt, negative, _ = pick_card(studio, names, "Negative prompt", "a cat", "blurry", SimpleNamespace(index=0))
    assert negative == "blurry, demo-negative" and prompt == gr.update()
    _, negative, _ = pick_card(studio, names, "Negative prompt", "a cat", negative, SimpleNamespace(index=0))
    assert negative == "blurry"
    prompt, _, _ = pick_card(studio, names, "Prompt", "a cat", "", SimpleNamespace(index=0))
    assert prompt == "a cat, demo-negative"
    with pytest.raises(gr.Error, match="SD 1.x"):
        pick_card(studio, names, "Prompt", "a cat", "", SimpleNamespace(index=1))


def test_the_page_builds_with_the_cards(studio):
    blocks = build(studio)
    assert any(getattr(block, "elem_id", None) == "txt2img-ti-cards" for block in blocks.blocks.values())

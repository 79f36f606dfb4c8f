"""Textual inversion cards, next to the LoRA cards under the prompt (A1111's Extra Networks): a click puts the
embedding's name into the prompt or the negative prompt (negative embeddings are common), a second click takes
it out. SD 1.x and damaged files are shown marked; clicking one says why it cannot be used."""

from __future__ import annotations

import gradio as gr
from PIL import Image, ImageDraw

from ..embedding_library import EmbeddingInfo
from ..errors import UserError
from ..prompts import toggle_embedding
from ..studio import Studio
from .handlers import bind, shows_user_errors

TARGETS = ("Negative prompt", "Prompt")


def card_image(info: EmbeddingInfo) -> Image.Image:
    if info.preview is not None:
        try:
            with Image.open(info.preview) as image:
                return image.convert("RGB")
        except Exception:
            pass  # a broken preview gets the tile
    hue = sum(map(ord, info.name)) % 360
    image = Image.new("HSV", (256, 256), (int(hue / 360 * 255), 0 if info.problem else 90, 170)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.text((20, 110), info.name[:18], fill="white", font_size=28)
    draw.text((20, 160), f"{info.kind_label} · {info.vectors} vectors" if not info.problem else "cannot be used",
              fill="white", font_size=20)
    return image


def caption(info: EmbeddingInfo) -> str:
    return f"⚠ {info.name} · {info.problem}" if info.problem else f"{info.name} · {info.vectors} vectors"


def list_cards(studio: Studio, query):
    """(gallery items, their names, a note when nothing matches) for a search."""
    words = (query or "").lower().split()
    items = [i for i in studio.embedding_list() if all(word in i.name.lower() for word in words)]
    folder = studio.embedding_library.folder
    note = "" if items else f"No embeddings found in `{folder}`" + (" for this search." if query else ".")
    return [(card_image(i), caption(i)) for i in items], [i.name for i in items], note


@shows_user_errors
def pick_card(studio: Studio, names, target, prompt, negative, evt: gr.SelectData):
    if not 0 <= evt.index < len(names):
        return gr.update(), gr.update(), ""
    info = studio.embedding_library.get(names[evt.index])
    if info.problem:
        raise UserError(f"{info.name} cannot be used: {info.problem}")
    if target == "Prompt":
        return toggle_embedding(prompt or "", info.name), gr.update(), ""
    return gr.update(), toggle_embedding(negative or "", info.name), ""


def extra_networks(studio: Studio, prompt: gr.Textbox, negative_prompt: gr.Textbox) -> None:
    """The embedding cards in an accordion of their own, listed when it opens."""
    with gr.Accordion("Extra networks: Textual inversion", open=False, elem_id="extra-networks-ti") as box:
        with gr.Row():
            search = gr.Textbox(label="Search", placeholder="name…", scale=3, elem_id="txt2img-ti-search")
            target = gr.Radio(list(TARGETS), value=TARGETS[0], label="A click adds it to", scale=2,
                              elem_id="txt2img-ti-target")
            refresh = gr.Button("↻ Refresh", scale=0)
        shown = gr.State([])
        cards = gr.Gallery(label="Embeddings", columns=6, height=280, allow_preview=False, elem_id="txt2img-ti-cards",
                           fit_columns=False, object_fit="cover", format="png", interactive=False)
        details = gr.Markdown()
    listing = bind(list_cards, studio)
    for event in (box.expand, search.change, refresh.click):
        event(listing, search, [cards, shown, details], api_name=False)
    cards.select(bind(pick_card, studio), [shown, target, prompt, negative_prompt], [prompt, negative_prompt, details],
                 api_name=False)

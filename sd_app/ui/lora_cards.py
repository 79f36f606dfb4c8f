"""LoRA cards: a searchable grid of the LoRA library (preview, name, base model, trigger words); a click puts
`<lora:name:weight>` and the LoRA's trigger words into a prompt. Shown in the LoRA tab and, as A1111's Extra
Networks are, under the txt2img prompt: `card_grid` builds one grid, the handlers are plain functions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import gradio as gr
from PIL import Image, ImageDraw

from ..lora_library import LoraInfo
from ..prompts import insert_lora_tag
from ..studio import Studio
from .handlers import bind, shows_user_errors

TRIGGER_WORDS = 3  # trigger words a click adds at most (kohya metadata lists many tags, most frequent first)


@dataclass
class CardGrid:
    search: gr.Textbox
    cards: gr.Gallery
    shown: gr.State  # the names of the cards shown, in order: a click's index finds its LoRA here
    details: gr.Markdown

    def outputs(self) -> list:
        """What a listing fills, in the order `list_cards` returns it."""
        return [self.cards, self.shown, self.details]


def card_image(studio: Studio, info: LoraInfo) -> Image.Image:
    data = studio.loras.cover(info)
    if data:
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            return image.convert("RGB")
        except Exception:
            pass  # a broken preview gets the placeholder
    # No preview: a tile with the name's initials, coloured by the name so cards stay recognisable;
    # a damaged file's tile is grey and says so.
    hue = sum(map(ord, info.name)) % 360
    image = Image.new("HSV", (256, 256), (int(hue / 360 * 255), 0 if info.problem else 90, 200)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.text((20, 110), info.stem[:18], fill="white", font_size=28)
    if info.problem:
        draw.text((20, 160), f"{info.algorithm}: not run" if info.unsupported else "damaged file", fill="white",
                  font_size=24)
    return image


def caption(info: LoraInfo) -> str:
    if info.problem:
        return f"⚠ {info.name} · {info.problem}"
    words = ", ".join(info.trigger_words[:4])
    kind = f" · {info.algorithm}" if info.algorithm != "LoRA" else ""
    return f"{info.name} · {info.base_label}{kind}" + (f" · {words}" if words else "")


def matches(info: LoraInfo, query: str) -> bool:
    query = (query or "").strip().lower()
    haystack = " ".join([info.name, info.alias, info.description, *info.trigger_words]).lower()
    return all(word in haystack for word in query.split())


def card_grid(studio: Studio, prompt: gr.Textbox, prefix: str, columns: int = 6, height: int = 520,
              refresh_api: str | bool = False) -> CardGrid:
    """Search, weight, the trigger-word switch and the cards; a click edits `prompt`. Element ids start with
    `prefix`. The grid is empty until a listing fills it (the caller decides when: page load, tab, accordion)."""
    with gr.Row():
        search = gr.Textbox(label="Search", placeholder="name, trigger word…", scale=3, elem_id=f"{prefix}-search")
        weight = gr.Slider(-2, 2, value=0.8, step=0.05, label="Weight", scale=2, elem_id=f"{prefix}-weight")
        add_words = gr.Checkbox(value=True, label="add trigger words (not for negative weights)", scale=1,
                                elem_id=f"{prefix}-words")
        refresh = gr.Button("↻ Refresh", scale=0)
    shown = gr.State([])
    cards = gr.Gallery(label="LoRAs", columns=columns, height=height, allow_preview=False, elem_id=f"{prefix}-cards",
                       fit_columns=False, object_fit="cover", format="png", interactive=False)
    details = gr.Markdown()
    grid = CardGrid(search, cards, shown, details)
    listing = bind(list_cards, studio)
    search.change(listing, search, grid.outputs(), api_name=False)
    refresh.click(listing, search, grid.outputs(), api_name=refresh_api)
    cards.select(bind(pick_card, studio), [shown, prompt, weight, add_words], [prompt, details], api_name=False)
    return grid


def list_cards(studio: Studio, query):
    """(gallery items, their names, a note when nothing matches) for a search."""
    items = [i for i in studio.loras.list() if matches(i, query)]
    gallery = [(card_image(studio, i), caption(i)) for i in items]
    note = "" if items else f"No LoRAs found in `{studio.loras.folder}`" + (" for this search." if query else ".")
    return gallery, [i.name for i in items], note


@shows_user_errors
def pick_card(studio: Studio, names, text, weight, add_words, evt: gr.SelectData):
    """A card clicked: its tag into the prompt (once), then its trigger words after the tag."""
    if not 0 <= evt.index < len(names):
        return gr.update(), ""
    info = studio.loras.get(names[evt.index])
    if info.base_model in ("sd1", "sd2"):
        raise gr.Error(f"{info.name} was made for {info.base_label}; it cannot be used with SDXL")
    words = info.trigger_words[:TRIGGER_WORDS] if add_words else ()
    new = insert_lora_tag(text or "", info.name, weight, words)
    about = f"**{info.name}** ({info.base_label}) {info.description}"
    return new, about

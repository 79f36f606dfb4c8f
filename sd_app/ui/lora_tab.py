"""The LoRA tab: a searchable card grid of the LoRA library; a click puts <lora:name:w> into the prompt."""

from __future__ import annotations

import io

import gradio as gr
from PIL import Image, ImageDraw

from ..errors import UserError
from ..lora_library import LoraInfo
from ..prompts import insert_lora_tag
from ..studio import Studio
from .handlers import shows_user_errors


def card_image(studio: Studio, info: LoraInfo) -> Image.Image:
    data = studio.loras.cover(info)
    if data:
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
            return image.convert("RGB")
        except Exception:
            pass  # a broken preview gets the placeholder
    # No preview: a tile with the name's initials, coloured by the name so cards stay recognisable.
    hue = sum(map(ord, info.name)) % 360
    image = Image.new("HSV", (256, 256), (int(hue / 360 * 255), 90, 200)).convert("RGB")
    ImageDraw.Draw(image).text((20, 110), info.stem[:18], fill="white", font_size=28)
    return image


def caption(info: LoraInfo) -> str:
    words = ", ".join(info.trigger_words[:4])
    return f"{info.name} · {info.base_label}" + (f" · {words}" if words else "")


def matches(info: LoraInfo, query: str) -> bool:
    query = (query or "").strip().lower()
    haystack = " ".join([info.name, info.alias, info.description, *info.trigger_words]).lower()
    return all(word in haystack for word in query.split())


def build(studio: Studio, prompt: gr.Textbox):
    """Build the tab; return (listing function, its input, its outputs) so the app can fill it on load."""
    gr.Markdown("Click a card to put `<lora:name:weight>` into the txt2img prompt. LoRAs made for SD 1.x/2.x are "
                "marked and cannot be used with SDXL.")
    with gr.Row():
        search = gr.Textbox(label="Search", placeholder="name, trigger word…", scale=3, elem_id="lora-search")
        weight = gr.Slider(-2, 2, value=0.8, step=0.05, label="Weight", scale=2, elem_id="lora-weight")
        add_words = gr.Checkbox(value=True, label="add trigger words", scale=1)
        refresh = gr.Button("↻ Refresh", scale=0)
    shown = gr.State([])
    cards = gr.Gallery(label="LoRAs", columns=6, height=520, allow_preview=False, elem_id="lora-cards",
                       fit_columns=False, object_fit="cover",
                       format="png", interactive=False)
    details = gr.Markdown()

    def listing(query):
        items = [i for i in studio.loras.list() if matches(i, query)]
        gallery = [(card_image(studio, i), caption(i)) for i in items]
        note = "" if items else f"No LoRAs found in `{studio.loras.folder}`" + (" for this search." if query else ".")
        return gallery, [i.name for i in items], note

    search.change(listing, search, [cards, shown, details], api_name=False)
    refresh.click(listing, search, [cards, shown, details], api_name="refresh_loras")

    @shows_user_errors
    def pick(names, text, w, words, evt: gr.SelectData):
        if not 0 <= evt.index < len(names):
            return gr.update(), ""
        info = studio.loras.get(names[evt.index])
        if info.base_model in ("sd1", "sd2"):
            raise UserError(f"{info.name} was made for {info.base_label}; it cannot be used with SDXL")
        new = insert_lora_tag(text or "", info.name, w)
        if words and info.trigger_words:
            missing = [t for t in info.trigger_words[:3] if t.lower() not in new.lower()]
            if missing:
                new = f"{', '.join(missing)}, {new}"
        about = f"**{info.name}** ({info.base_label}) {info.description}"
        return new, about

    cards.select(pick, [shown, prompt, weight, add_words], [prompt, details], api_name=False)

    with gr.Accordion("Download from Hugging Face", open=False, visible=not studio.offline):
        with gr.Row():
            repo_id = gr.Textbox(label="Repository", placeholder="owner/name", elem_id="hf-repo")
            filename = gr.Textbox(label="File", placeholder="my_lora.safetensors", elem_id="hf-file")
            revision = gr.Textbox(label="Revision (optional)", placeholder="main")
        overwrite = gr.Checkbox(label="Replace a file of the same name", value=False)
        fetch = gr.Button("Download", variant="primary")
        status = gr.Markdown(elem_id="hf-status")

        @shows_user_errors
        def download(repo, name, rev, replace, query, progress=gr.Progress()):
            def report(done, total):
                progress((done, total) if total else None, desc=f"Downloading {name}", unit="bytes")
            path = studio.download("lora", repo, name, rev, replace, report)
            return (f"Saved `{path.name}` into the LoRA folder.", *listing(query))

        fetch.click(download, [repo_id, filename, revision, overwrite, search], [status, cards, shown, details],
                    api_name=False)

    return listing, search, [cards, shown, details]

"""The History tab: the images in the outputs folder, newest first, with their infotext; search by prompt,
send the parameters to txt2img, the image to img2img, inpaint or extras; delete into the trash folder with undo.

The gallery shows thumbnails (a page of full-size PNGs would be tens of MB to send); the selected image is
shown full size with its infotext. Images reach the browser through Gradio's cache as copies made here, so
the outputs folder itself is never opened to Gradio's file route.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import gradio as gr

from ..studio import Studio
from .handlers import bind, shows_user_errors
from .txt2img import fill_form

PER_PAGE = 36  # six rows of six thumbnails


@dataclass
class Browser:
    """The components a listing fills, in the order `show_page` returns them."""

    gallery: gr.Gallery
    page_label: gr.Markdown
    shown: gr.State  # the relative paths on the page shown, by gallery index
    page: gr.State

    def outputs(self) -> list:
        return [getattr(self, name) for name in self.__dataclass_fields__]


@dataclass
class Detail:
    """The selected image, in the order `select_image` returns them."""

    image: gr.Image
    file: gr.Markdown
    info: gr.Textbox
    selected: gr.State  # its path, relative to the outputs folder

    def outputs(self) -> list:
        return [getattr(self, name) for name in self.__dataclass_fields__]


def build(studio: Studio, form, size: gr.Dropdown, tabs: gr.Tabs, parts: dict | None = None):
    """Build the tab; return (listing function, its inputs, its outputs) for the app to fill it when shown.
    `parts` (when given) gets the shown image, its infotext and the "Send to img2img / inpaint / extras" buttons,
    for the app to wire to those tabs."""
    with gr.Row():
        search = gr.Textbox(label="Search prompts", placeholder="words in the prompt, e.g. red fox", scale=4,
                            elem_id="history-search")
        refresh = gr.Button("↻ Refresh", scale=0, min_width=90, elem_id="history-refresh")
    with gr.Row():
        with gr.Column(scale=3):
            # Thumbnails carry no infotext (the full image beside them does), so JPEG keeps the page light.
            gallery = gr.Gallery(label="Saved images, newest first", columns=6, height=620, allow_preview=False,
                                 format="jpeg", interactive=False, object_fit="contain", buttons=[],
                                 elem_id="history-gallery")
            with gr.Row():
                previous = gr.Button("◀ Newer", size="sm", elem_id="history-newer")
                page_label = gr.Markdown(elem_id="history-page")
                following = gr.Button("Older ▶", size="sm", elem_id="history-older")
        with gr.Column(scale=2):
            image = gr.Image(label="Image", type="pil", format="png", interactive=False, height=360,
                             elem_id="history-image")
            file = gr.Markdown(elem_id="history-file")
            info = gr.Textbox(label="Generation parameters", lines=5, interactive=False, buttons=["copy"],
                              elem_id="history-infotext")
            with gr.Row():
                to_txt2img = gr.Button("Send to txt2img", variant="primary", elem_id="history-to-txt2img")
                sends = {target: gr.Button(f"Send to {target}", interactive=parts is not None,
                                           elem_id=f"history-to-{target}") for target in ("img2img", "inpaint", "extras")}
            with gr.Row():
                delete = gr.Button("Delete (to the trash)", variant="stop", elem_id="history-delete")
                undo = gr.Button("↶ Undo delete", visible=False, elem_id="history-undo")
            status = gr.Markdown(elem_id="history-status")
    browser = Browser(gallery, page_label, shown=gr.State([]), page=gr.State(0))
    detail = Detail(image, file, info, selected=gr.State(""))
    trashed = gr.State("")  # where the last deleted image went, for Undo
    if parts is not None:  # the Send buttons are wired once their tabs exist (ui/__init__.py)
        parts["history_image"], parts["history_info"], parts["history_sends"] = image, info, sends

    listing = bind(show_page, studio)
    search.submit(lambda query: listing(query, 0), search, browser.outputs(), api_name=False)
    refresh.click(listing, [search, browser.page], browser.outputs(), api_name=False)
    previous.click(lambda query, page: listing(query, page - 1), [search, browser.page], browser.outputs(),
                   api_name=False)
    following.click(lambda query, page: listing(query, page + 1), [search, browser.page], browser.outputs(),
                    api_name=False)
    gallery.select(bind(select_image, studio), browser.shown, detail.outputs(), api_name=False)

    form_outputs = form.inputs() + [size]
    to_txt2img.click(bind(send_to_txt2img, studio, form, size), detail.selected, form_outputs, api_name=False).success(
        lambda: gr.Tabs(selected="txt2img"), None, tabs, api_name=False)
    after_delete = browser.outputs() + detail.outputs() + [trashed, undo, status]
    delete.click(bind(delete_image, studio), [detail.selected, search, browser.page], after_delete, api_name=False)
    undo.click(bind(undo_delete, studio), [trashed, search, browser.page], browser.outputs() + [trashed, undo, status],
               api_name=False)
    return (lambda query: listing(query, 0)), [search], browser.outputs()


# ---- handlers -----------------------------------------------------------------------------------------


@shows_user_errors
def show_page(studio: Studio, query, page):
    """One page of thumbnails: (gallery, page label, the paths shown, the page number)."""
    history = studio.history()
    found = history.page(query or "", int(page or 0), PER_PAGE)
    thumbnails = history.thumbnails(found.images)
    if not found.total:
        where = html.escape(str(history.folder.resolve()))
        label = f"No saved image matches “{html.escape(query.strip())}”." if (query or "").strip() else \
            f"No saved images yet in `{where}`."
    else:
        label = f"Page {found.page + 1} of {found.pages} · {found.total} image{'s' if found.total != 1 else ''}"
    return thumbnails, label, [image.relative for image in found.images], found.page


@shows_user_errors
def select_image(studio: Studio, shown, evt: gr.SelectData):
    """The clicked thumbnail's image, full size, with its file, date and infotext."""
    if not 0 <= evt.index < len(shown):
        return None, "", "", ""
    history = studio.history()
    image = history.find(shown[evt.index])
    full = history.open(image)
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(image.modified))
    file = f"`{image.relative}` · {when} · {full.width}×{full.height}"
    return full, file, history.infotext(image) or "(no parameters in this image)", image.relative


@shows_user_errors
def send_to_txt2img(studio: Studio, form, size, selected):
    """Fill the txt2img form from the selected image's parameters (as read from the file, not the text box)."""
    if not selected:
        raise gr.Error("choose an image first")
    history = studio.history()
    text = history.infotext(history.find(selected))
    if not text:
        raise gr.Error("this image holds no generation parameters")
    return fill_form(studio, form, size, None, None, text)


@shows_user_errors
def delete_image(studio: Studio, selected, query, page):
    """Move the selected image into the trash folder; the gallery loses it and Undo appears."""
    if not selected:
        raise gr.Error("choose an image first")
    trashed = studio.history().trash(selected)
    message = f"Moved `{selected}` to `{trashed}` in the outputs folder."
    return (*show_page(studio, query, page), None, "", "", "", trashed, gr.update(visible=True), message)


@shows_user_errors
def undo_delete(studio: Studio, trashed, query, page):
    """Put the last deleted image back where it was."""
    if not trashed:
        raise gr.Error("nothing to undo")
    restored = studio.history().restore(trashed)
    return (*show_page(studio, query, page), "", gr.update(visible=False), f"Restored `{restored}`.")

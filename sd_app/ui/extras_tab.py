"""The Extras tab: an image in, A1111's upscale choices (scale by / scale to, upscaler 1 and 2), the result with
the infotext it keeps. Runs as a job on the studio: it queues with generation and shows its tiles as progress.

Other tabs send an image here with `receive` (or target `ExtrasTab.image` and select the tab `TAB_ID`):
    button.click(extras_tab.receive, [some_image], [extras.image, tabs])
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import gradio as gr

from .. import infotext
from ..errors import UserError
from ..extras import ExtrasRequest
from ..studio import Studio
from ..upscalers import NONE
from .components import form_slider
from .handlers import bind, refused, shows_user_errors
from .txt2img import POLL_SECONDS, error_html, progress_html, session_owner

TAB_ID = "extras"


@dataclass
class ExtrasTab:
    image: gr.Image  # the source image: what "Send to extras" fills
    upscaler_1: gr.Dropdown
    upscaler_2: gr.Dropdown
    result: gr.Image
    info: gr.Textbox


def receive(image):
    """For a "Send to extras" button elsewhere: the image into this tab, and this tab selected."""
    return image, gr.Tabs(selected=TAB_ID)


def wire_send(extras: "ExtrasTab", tabs: gr.Tabs, gallery: gr.Gallery | None = None, image: gr.Image | None = None,
              elem_id: str = "send-to-extras", label: str = "Send to extras", button: gr.Button | None = None) -> None:
    """A "Send to extras" button (laid out where called, or `button` as it is) that puts the gallery's chosen
    image, or `image`'s, into this tab and selects it."""
    button = button or gr.Button(label, elem_id=elem_id, size="sm")
    if gallery is not None:
        chosen = gr.State(0)
        gallery.select(_chosen_index, None, chosen, api_name=False)
        button.click(send_chosen, [gallery, chosen], [extras.image, tabs], api_name=False)
    else:
        button.click(send_image, [image], [extras.image, tabs], api_name=False)


def _chosen_index(evt: gr.SelectData):
    return evt.index


@shows_user_errors
def send_chosen(images, index):
    """A gallery's chosen image (the first when none is chosen) -> this tab's image, and this tab selected."""
    if not images:
        raise UserError("there is no image to send: generate one first")
    index = index if isinstance(index, int) and 0 <= index < len(images) else 0
    return send_image.__wrapped__(images[index])


@shows_user_errors
def send_image(image):
    """An image (a gallery item, an array, a file path or a PIL image) -> this tab's image, and this tab selected."""
    import numpy as np
    from PIL import Image

    if isinstance(image, (tuple, list)):
        image = image[0]  # a gallery item: (image, caption)
    if image is None:
        raise UserError("there is no image to send: generate or choose one first")
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        image = Image.open(image)
    return receive(image)


def build(studio: Studio) -> ExtrasTab:
    names = studio.upscaler_names()
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Source", type="pil", format="png", sources=["upload", "clipboard"], height=360,
                             elem_id="extras-image")
            mode = gr.State(0)
            with gr.Tabs(elem_id="extras-resize-mode"):
                with gr.Tab("Scale by", id="extras-scale-by") as by_tab:
                    resize = form_slider(1.0, 8.0, value=4, step=0.05, label="Resize", elem_id="extras-resize")
                with gr.Tab("Scale to", id="extras-scale-to") as to_tab:
                    with gr.Row():
                        width = gr.Number(value=1024, precision=0, label="Width", elem_id="extras-width")
                        height = gr.Number(value=1024, precision=0, label="Height", elem_id="extras-height")
                        crop = gr.Checkbox(value=True, label="Crop to fit", elem_id="extras-crop")
            with gr.Row():
                upscaler_1 = gr.Dropdown(names, value=names[-1] if len(names) > 3 else NONE, label="Upscaler 1",
                                         scale=4, elem_id="extras-upscaler-1")
                refresh = gr.Button("↻", scale=0, min_width=50, elem_id="extras-refresh")
            with gr.Row():
                upscaler_2 = gr.Dropdown(names, value=NONE, label="Upscaler 2", scale=3, elem_id="extras-upscaler-2")
                visibility = gr.Slider(0.0, 1.0, value=0.0, step=0.001, label="Upscaler 2 visibility", scale=2,
                                       elem_id="extras-visibility")
            problems = gr.Markdown(_problems(studio), elem_id="extras-problems")
            with gr.Row():
                go = gr.Button("Upscale", variant="primary", elem_id="extras-go")
                stop = gr.Button("Interrupt", elem_id="extras-interrupt")
        with gr.Column():
            progress = gr.HTML(elem_id="extras-progress")
            error = gr.HTML(elem_id="extras-error")
            result = gr.Image(label="Result", type="pil", format="png", interactive=False, height=360,
                              elem_id="extras-result")
            info = gr.Textbox(label="Postprocessing", interactive=False, elem_id="extras-info")
            source = gr.Textbox(label="Generation parameters (kept in the result)", lines=3, interactive=False,
                                buttons=["copy"], elem_id="extras-source-info")
    by_tab.select(lambda: 0, None, mode, api_name=False)
    to_tab.select(lambda: 1, None, mode, api_name=False)
    image.change(_source_text, image, source, api_name=False)
    refresh.click(bind(_refresh, studio), [upscaler_1, upscaler_2], [upscaler_1, upscaler_2, problems],
                  api_name=False)
    outputs = [progress, error, result, info]
    go.click(bind(run, studio, outputs), [image, mode, resize, width, height, crop, upscaler_1, upscaler_2, visibility],
             outputs, api_name=False)
    stop.click(bind(_interrupt, studio), None, None, api_name=False)
    return ExtrasTab(image, upscaler_1, upscaler_2, result, info)


def request_from(mode, resize, width, height, crop, upscaler_1, upscaler_2, visibility) -> ExtrasRequest:
    """The form's values as a request; the request's check says what is wrong with a value."""
    def whole(value):
        return int(value) if isinstance(value, float) and value.is_integer() else value

    return ExtrasRequest(resize_mode=int(mode or 0), upscaling_resize=resize, upscaling_resize_w=whole(width),
                         upscaling_resize_h=whole(height), upscaling_crop=bool(crop), upscaler_1=upscaler_1 or NONE,
                         upscaler_2=upscaler_2 or NONE, extras_upscaler_2_visibility=visibility)


@shows_user_errors
def run(studio: Studio, outputs: list, request: gr.Request, image, mode, resize, width, height, crop, upscaler_1,
        upscaler_2, visibility):
    progress, error, result_image, info = outputs
    if image is None:
        yield {error: error_html("image: choose or drop an image first")}
        raise refused("extras", UserError("choose or drop an image first", field="image"), toast=False)
    try:
        wanted = request_from(mode, resize, width, height, crop, upscaler_1, upscaler_2, visibility)
        job = studio.start_extras([image], wanted, owner=session_owner(request))
    except UserError as err:
        yield {error: error_html(str(err))}
        raise refused("extras", err, toast=False) from None
    yield {error: ""}
    try:
        while not job.done:
            job.wait(POLL_SECONDS)
            queued = job.started is None
            yield {progress: progress_html(job, queued, studio.queue_position(job) if queued else 0)}
    finally:
        if not job.done:
            job.interrupt()
    if job.error is not None:
        yield {progress: "", error: error_html(job.error)}
        raise refused("extras", job.error, toast=False)
    done = job.result
    for warning in done.warnings:
        gr.Warning(warning)
    if not done.images:
        yield {progress: "<div class='hg-progress'><span>Interrupted</span></div>"}
        return
    saved = f" · saved as {html.escape(done.paths[0].name)}" if done.paths else ""
    shown = done.images[0]
    yield {progress: f"<div class='hg-progress'><span>Done: {shown.width}x{shown.height} in "
                     f"{time.time() - job.started:.1f}s{saved}</span></div>",
           result_image: shown, info: done.infotexts[0]}


def _source_text(image) -> str:
    if image is None:
        return ""
    return infotext.read_image(image) or "(no generation parameters in this image)"


def _problems(studio: Studio) -> str:
    bad = [f"**{f.name}**: {f.problem}" for f in studio.upscaler_library().list() if f.problem]
    return ("Cannot be used: " + "; ".join(bad)) if bad else ""


def _refresh(studio: Studio, first, second):
    names = studio.upscaler_names()
    keep = [value if value in names else NONE for value in (first, second)]
    return gr.update(choices=names, value=keep[0]), gr.update(choices=names, value=keep[1]), _problems(studio)


def _interrupt(studio: Studio, request: gr.Request):
    studio.interrupt(session_owner(request))

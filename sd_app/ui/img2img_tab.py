"""The img2img tab (A1111's): img2img and inpaint sub-tabs, resize mode, denoising strength and the mask options;
"Send to img2img / inpaint" from the txt2img gallery and from PNG Info. Generation goes through
`Studio.img2img`, with the same progress, interrupt and results as txt2img.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import numpy as np
from PIL import Image

from .. import infotext, samplers
from ..errors import UserError
from ..img2img import INPAINT_AREAS, MASK_MODES, MASKED_CONTENT, RESIZE_MODES, Img2ImgParams
from ..params import LIMITS, GenerationParams
from ..studio import Studio
from .components import form_slider
from .handlers import bind, refused, shows_user_errors
from .txt2img import done_html, error_html, follow_job, interrupt_job, session_owner, skip_job

MODES = ("img2img", "inpaint")


@dataclass
class Img2ImgForm:
    """The components of an img2img request, in the order `values_to_request` reads them."""

    mode: gr.State  # "img2img" or "inpaint": the sub-tab shown
    image: gr.Image
    editor: gr.ImageEditor  # the inpaint image with the mask drawn on it
    mask_upload: gr.Image  # or a mask uploaded (white: redraw)
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    sampler_name: gr.Dropdown
    scheduler: gr.Dropdown
    steps: gr.Slider
    width: gr.Slider
    height: gr.Slider
    cfg_scale: gr.Slider
    seed: gr.Number
    batch_size: gr.Slider
    denoising_strength: gr.Slider
    resize_mode: gr.Radio
    mask_blur: gr.Slider
    mask_mode: gr.Radio
    masked_content: gr.Radio
    inpaint_area: gr.Radio
    padding: gr.Slider

    def inputs(self) -> list:
        return [getattr(self, name) for name in self.__dataclass_fields__]


@dataclass
class Img2ImgResults:
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    error: gr.HTML

    def outputs(self) -> list:
        return [getattr(self, name) for name in self.__dataclass_fields__]


def build(studio: Studio, loading: bool = False, parts: dict | None = None) -> tuple[Img2ImgForm, gr.Tabs]:
    """The tab; `parts` (when given: txt2img's) gets its results gallery as "img2img_gallery", for Send-to buttons,
    and its Generate button in "generate_buttons"."""
    defaults = Img2ImgParams()
    mode = gr.State("img2img")
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox("", label="Prompt", lines=3, elem_id="img2img-prompt")
            negative = gr.Textbox("", label="Negative prompt", lines=2, elem_id="img2img-negative-prompt")
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id="img2img-generate", size="lg",
                                 interactive=not loading)
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="img2img-interrupt", variant="stop")
                skip = gr.Button("Skip", elem_id="img2img-skip")
            error = gr.HTML("", elem_id="img2img-error")
    with gr.Row():
        with gr.Column(scale=1):
            with gr.Tabs() as sub_tabs:
                with gr.Tab("img2img", id="img2img") as img2img_tab:
                    image = gr.Image(type="pil", label="Image", sources=["upload", "clipboard"], format="png",
                                     elem_id="img2img-image", height=360)
                with gr.Tab("Inpaint", id="inpaint") as inpaint_tab:
                    editor = gr.ImageEditor(type="pil", label="Image: paint the area to redraw", format="png",
                                            sources=["upload", "clipboard"], elem_id="inpaint-editor", height=420,
                                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
                    mask_upload = gr.Image(type="pil", label="Or upload a mask (white: redraw)", format="png",
                                           sources=["upload", "clipboard"], elem_id="inpaint-mask", height=160)
            resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode", type="index",
                                   elem_id="resize-mode")
            with gr.Row():
                sampler = gr.Dropdown([s.name for s in samplers.SAMPLERS], value="DPM++ 2M", label="Sampler")
                scheduler = gr.Dropdown([s.name for s in samplers.SCHEDULES], value="Automatic", label="Schedule type")
            steps = form_slider(*LIMITS["steps"], value=20, step=1, label="Steps", elem_id="img2img-steps")
            with gr.Row():
                width = form_slider(*LIMITS["width"], value=1024, step=8, label="Width", elem_id="img2img-width")
                height = form_slider(*LIMITS["height"], value=1024, step=8, label="Height", elem_id="img2img-height")
            cfg = form_slider(*LIMITS["cfg_scale"], value=7.0, step=0.5, label="CFG scale")
            strength = form_slider(0.0, 1.0, value=defaults.denoising_strength, step=0.01, label="Denoising strength",
                                   elem_id="denoising-strength")
            with gr.Row():
                seed = gr.Number(-1, label="Seed (-1: random)", elem_id="img2img-seed")
                batch = form_slider(*LIMITS["batch_size"], value=1, step=1, label="Batch size")
            with gr.Accordion("Inpaint options", open=True, elem_id="inpaint-options"):
                blur = form_slider(0, 64, value=defaults.mask_blur_x, step=1, label="Mask blur", elem_id="mask-blur")
                mask_mode = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], type="index", label="Mask mode")
                content = gr.Radio(list(MASKED_CONTENT), value=MASKED_CONTENT[1], type="index",
                                   label="Masked content", elem_id="masked-content")
                area = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], type="index", label="Inpaint area",
                                elem_id="inpaint-area")
                padding = form_slider(0, 256, value=defaults.inpaint_full_res_padding, step=4,
                                      label="Only masked padding, pixels")
        with gr.Column(scale=1):
            results = Img2ImgResults(
                gr.HTML("", elem_id="img2img-progress"),
                gr.Image(label="Preview", visible=False, format="png", interactive=False, height=320),
                gr.Gallery(label="Results", format="png", columns=2, height=420, elem_id="img2img-gallery",
                           interactive=False),
                gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="img2img-infotext"),
                error)
    form = Img2ImgForm(mode, image, editor, mask_upload, prompt, negative, sampler, scheduler, steps, width, height,
                       cfg, seed, batch, strength, resize_mode, blur, mask_mode, content, area, padding)
    img2img_tab.select(lambda: "img2img", None, mode, queue=False, api_name=False)
    inpaint_tab.select(lambda: "inpaint", None, mode, queue=False, api_name=False)
    generate.click(bind(run, studio, results), form.inputs(), results.outputs(), concurrency_limit=None,
                   api_name="img2img", show_progress_on=[results.error])
    interrupt.click(bind(interrupt_job, studio), None, None, queue=False, api_name=False)
    skip.click(bind(skip_job, studio), None, None, queue=False, api_name=False)
    # The working size follows a new image (A1111 keeps the slider; here the image's own size, to a multiple of 8).
    image.upload(image_size, image, [width, height], queue=False, api_name=False)
    if parts is not None:
        parts["img2img_gallery"] = results.gallery
        parts["generate_buttons"].append(generate)  # turned on by ui.startup_status when loading ends
    return form, sub_tabs


def image_size(image):
    if image is None:
        return gr.update(), gr.update()
    return max(64, image.width // 8 * 8), max(64, image.height // 8 * 8)


def mask_from_editor(editor, uploaded) -> Image.Image | None:
    """The mask: an uploaded one, else the strokes painted in the editor (their alpha), else None."""
    if uploaded is not None:
        return uploaded
    if not editor or not editor.get("layers"):
        return None
    alpha = np.zeros((editor["background"].height, editor["background"].width), dtype=np.uint8)
    for layer in editor["layers"]:
        if layer is not None:
            alpha = np.maximum(alpha, np.asarray(layer.convert("RGBA"))[..., 3])
    return Image.fromarray(alpha, "L") if alpha.any() else None


def values_to_request(values: list, limits=None) -> GenerationParams:
    """The form's values -> a checked request with its Img2ImgParams; UserError naming the field."""
    (mode, image, editor, mask_upload, prompt, negative, sampler, scheduler, steps, width, height, cfg, seed, batch,
     strength, resize_mode, blur, mask_mode, content, area, padding) = values

    def whole(value):
        return int(value) if isinstance(value, float) and value.is_integer() else value

    def number(value):
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value

    mask = None
    if mode == "inpaint":
        image = editor.get("background") if editor else None
        mask = mask_from_editor(editor, mask_upload)
        if image is not None and mask is None:
            raise UserError("paint the area to redraw on the image (or upload a mask)", field="mask")
    if image is None:
        raise UserError("upload an image first (or send one from txt2img)", field="init_images")
    spec = Img2ImgParams(init_images=(image,), mask=mask, resize_mode=resize_mode or 0,
                         denoising_strength=number(strength), mask_blur_x=whole(blur), mask_blur_y=whole(blur),
                         inpainting_fill=1 if content is None else content, inpaint_full_res=area == 1,
                         inpaint_full_res_padding=whole(padding), inpainting_mask_invert=mask_mode == 1)
    return GenerationParams(prompt=prompt or "", negative_prompt=negative or "", steps=whole(steps),
                            cfg_scale=number(cfg), width=whole(width), height=whole(height), sampler_name=sampler,
                            scheduler=scheduler, seed=whole(seed), batch_size=whole(batch), img2img=spec).check(limits)


@shows_user_errors
def run(studio: Studio, results: Img2ImgResults, request: gr.Request, *values):
    """Generate: as txt2img's, on an img2img request."""
    try:
        params = values_to_request(list(values), studio.limits())
    except UserError as err:
        yield {results.error: error_html(str(err))}
        raise refused("img2img", err, toast=False) from None
    job = studio.start(params, owner=session_owner(request))
    yield {results.error: ""}
    result = yield from follow_job(studio, job, results, params, "img2img")
    yield {results.progress: done_html(job), results.preview: gr.update(visible=False),
           results.gallery: [(img, f"seed {s}") for img, s in zip(result.images, result.seeds)],
           results.info: result.infotexts[0] if result.infotexts else ""}


# ---- Send to img2img / inpaint ----------------------------------------------------------------------


def send_image(image, text: str | None, target: str):
    """An image (and its infotext) -> the img2img tab's values: the image in the chosen sub-tab, the prompt, the
    sizes and the sampling fields the text holds."""
    if image is None:
        raise UserError("there is no image to send: generate or choose one first")
    if isinstance(image, (tuple, list)):
        image = image[0]  # a gallery item: (image, caption)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    elif not isinstance(image, Image.Image):
        image = Image.open(image)
    text = text or infotext.read_image(image) or ""
    params = infotext.to_params(text) if text.strip() else GenerationParams(width=image.width, height=image.height)
    editor = {"background": image, "layers": [], "composite": image} if target == "inpaint" else gr.update()
    return (target, image if target == "img2img" else gr.update(), editor, params.prompt, params.negative_prompt,
            params.steps, max(64, image.width // 8 * 8), max(64, image.height // 8 * 8), params.cfg_scale, params.seed,
            gr.Tabs(selected=target), gr.Tabs(selected="img2img"))


def wire_send(gallery: gr.Gallery, info: gr.Textbox, dropped: gr.Image, dropped_info: gr.Textbox,
              form: Img2ImgForm, sub_tabs: gr.Tabs, tabs: gr.Tabs) -> None:
    """The "Send to img2img / inpaint" buttons under the txt2img results and PNG Info (laid out where called)."""
    chosen = gr.State(0)
    gallery.select(_chosen_index, None, chosen, api_name=False)
    targets = _send_targets(form, sub_tabs, tabs)
    with gr.Row():
        for target in MODES:
            button = gr.Button(f"Send to {target}", elem_id=f"send-to-{target}", size="sm")
            button.click(bind(_send_from_gallery, target), [gallery, chosen, info], targets, api_name=False)
        for target in MODES:
            button = gr.Button(f"PNG Info → {target}", elem_id=f"png-info-to-{target}", size="sm")
            button.click(bind(_send_image_with_text, target), [dropped, dropped_info], targets, api_name=False)


def wire_image_send(image: gr.Image, info: gr.Textbox, form: Img2ImgForm, sub_tabs: gr.Tabs, tabs: gr.Tabs,
                    buttons: dict[str, gr.Button]) -> None:
    """`buttons` ("img2img" / "inpaint" -> a button laid out elsewhere) send `image` with the text in `info`."""
    targets = _send_targets(form, sub_tabs, tabs)
    for target, button in buttons.items():
        button.click(bind(_send_image_with_text, target), [image, info], targets, api_name=False)


def _send_targets(form: Img2ImgForm, sub_tabs: gr.Tabs, tabs: gr.Tabs) -> list:
    """What `send_image` fills, in its order."""
    return [form.mode, form.image, form.editor, form.prompt, form.negative_prompt, form.steps, form.width,
            form.height, form.cfg_scale, form.seed, sub_tabs, tabs]


def _chosen_index(evt: gr.SelectData):
    return evt.index


@shows_user_errors
def _send_from_gallery(target: str, images, index, text):
    if not images:
        raise UserError("there is no image to send: generate one first")
    index = index if isinstance(index, int) and 0 <= index < len(images) else 0
    return send_image(images[index], text, target)  # the infotext box shows the chosen image's


@shows_user_errors
def _send_image_with_text(target: str, image, text):
    return send_image(image, text if text and not text.startswith("(") else None, target)

"""A1111's Extras routes: `POST /extra-single-image`, `POST /extra-batch-images`, `GET /upscalers`,
`GET /latent-upscale-modes`. The upscale runs as a job on the studio (queued with generation on the GPU lock);
a client that goes away interrupts it, as for txt2img."""

from __future__ import annotations

import base64
import html
import io

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from .. import infotext
from ..errors import UserError
from ..extras import ExtrasRequest
from ..studio import API_OWNER, Studio
from ..upscalers import BUILTIN, LATENT_MODES
from .schemas import ExtrasBaseRequest, ExtrasBatchImagesRequest, ExtrasSingleImageRequest

FACE_RESTORATION = ("gfpgan_visibility", "codeformer_visibility")


def register(api: FastAPI, studio: Studio) -> None:
    from .routes import _decode_image, _until_done  # here: routes imports this module

    @api.get("/upscalers")
    def upscalers():
        listed = [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4,
                   "problem": None} for name in BUILTIN]
        for item in studio.upscaler_library().list():
            listed.append({"name": item.name, "model_name": item.architecture or item.folder,
                           "model_path": str(item.path.resolve()), "model_url": None, "scale": item.scale,
                           "problem": item.problem})
        return listed

    @api.get("/latent-upscale-modes")
    def latent_upscale_modes():
        return [{"name": name} for name in LATENT_MODES]

    @api.post("/extra-single-image")
    async def extra_single_image(request: ExtrasSingleImageRequest, http: Request):
        if not request.image:
            raise UserError("send the image as base64 (a data: URL works too)", field="image")
        image = _image(_decode_image, request.image, "image")
        result = await _run(studio, [image], request, http, _until_done)
        return {"html_info": _html(result.infotexts[-1] if result.infotexts else ""),
                "image": _b64(result.images[0]) if result.images else None}

    @api.post("/extra-batch-images")
    async def extra_batch_images(request: ExtrasBatchImagesRequest, http: Request):
        if not request.imageList:
            raise UserError("send at least one image: [{\"data\": base64, \"name\": \"a.png\"}]", field="imageList")
        images = [_image(_decode_image, item.data, f"imageList.{i}.data") for i, item in enumerate(request.imageList)]
        result = await _run(studio, images, request, http, _until_done)
        return {"html_info": _html(result.infotexts[-1] if result.infotexts else ""),
                "images": [_b64(image) for image in result.images]}


def extras_request(request: ExtrasBaseRequest) -> ExtrasRequest:
    """A1111's request body -> Homegrown's; what Homegrown lacks (face restoration) is a 422 naming the field."""
    for name in FACE_RESTORATION:
        if getattr(request, name):
            raise UserError(f"face restoration is not available in Homegrown (got {getattr(request, name)!r})",
                            field=name)
    return ExtrasRequest(resize_mode=request.resize_mode, upscaling_resize=request.upscaling_resize,
                         upscaling_resize_w=request.upscaling_resize_w, upscaling_resize_h=request.upscaling_resize_h,
                         upscaling_crop=request.upscaling_crop, upscaler_1=request.upscaler_1 or "None",
                         upscaler_2=request.upscaler_2 or "None",
                         extras_upscaler_2_visibility=request.extras_upscaler_2_visibility)


async def _run(studio: Studio, images, request: ExtrasBaseRequest, http: Request, until_done):
    wanted = extras_request(request)
    job = await run_in_threadpool(studio.start_extras, images, wanted, API_OWNER, request.save_images)
    try:
        await until_done(job, http)
    finally:
        if not job.done:
            job.interrupt()
    if job.cause is not None:
        raise job.cause
    return job.result


def _image(decode, data: str, field: str):
    try:
        return decode(data)
    except UserError as err:
        raise UserError(err.message, field=field) from None


def _html(text: str) -> str:
    """A1111's plaintext_to_html."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def _b64(image) -> str:
    """PNG with every text chunk the image carries (the source's `parameters`, `postprocessing`, `extras`), as
    A1111's API encodes it."""
    buffer = io.BytesIO()
    chunks = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
    infotext.write_image(image, chunks.get(infotext.PNG_KEY), buffer, "png", chunks)
    return base64.b64encode(buffer.getvalue()).decode()

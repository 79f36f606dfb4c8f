"""`POST /sdapi/v1/img2img`: A1111's img2img and inpainting over the studio, as txt2img is (same queue, progress,
interrupt, saving and answer)."""

from __future__ import annotations

import json
import time

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool

from ..studio import API_OWNER, Studio
from . import convert, routes
from .img2img_convert import Img2ImgRequest, answer_parameters, img2img_plan, script


def register(api: FastAPI, studio: Studio) -> None:
    @api.post("/img2img")
    async def img2img(request: Img2ImgRequest, http: Request):
        return await _img2img(studio, request, http)


async def _img2img(studio: Studio, request: Img2ImgRequest, http: Request) -> dict:
    # Decoding the images and reading an infotext's files: in a worker thread, never on the server's loop.
    plan = await run_in_threadpool(img2img_plan, request, studio.settings.get("vae"),
                                   studio.settings.get("output_format"), loras=studio.loras, styles=studio.styles)
    previous = studio.current_checkpoint()
    started = time.time()
    upscale = await run_in_threadpool(lambda: script(request, studio.upscaler_names()))  # lists a folder
    if upscale is not None:
        job = studio.start_sd_upscale(plan.params, upscale, API_OWNER, save=plan.save, output_format=plan.output_format)
    else:
        job = studio.start(plan.params, API_OWNER, save=plan.save, output_format=plan.output_format)
    result = await routes.job_result(studio, job, http, plan.restore_checkpoint and previous)
    info = convert.txt2img_info(request, result, started)
    info["denoising_strength"] = plan.params.img2img.denoising_strength
    info["is_using_inpainting_conditioning"] = plan.params.img2img.mask is not None
    return await run_in_threadpool(_answer, request, result, info, plan.output_format)


def _answer(request: Img2ImgRequest, result, info: dict, fmt: str) -> dict:
    images = [routes._b64_image(img, text, fmt) for img, text in zip(result.images, result.infotexts)] \
        if request.send_images else []
    return {"images": images, "parameters": answer_parameters(request), "info": json.dumps(info, ensure_ascii=False)}

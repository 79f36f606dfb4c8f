"""The routes of AUTOMATIC1111's REST API (`/sdapi/v1/...`), over the studio, so existing A1111 clients just work.

Same paths as A1111's `modules/api`; the request bodies are `schemas.py`, the conversions `convert.py`.
The API runs in the page's process and goes through the same studio, so API and page jobs queue on the
same GPU and show on the same progress.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
import time
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image

from .. import __version__, infotext, samplers
from ..errors import UserError
from ..startup import RETRY_AFTER_SECONDS, Startup
from ..studio import Studio
from . import convert
from .schemas import OptionsRequest, PngInfoRequest, Txt2ImgRequest

PREFIX = "/sdapi/v1"


def mount(app: FastAPI, studio: Studio, startup: Startup | None = None) -> FastAPI:
    """Serve the API on the Gradio app's server: `/sdapi/v1/...`, docs at `/docs`."""
    api = build_api(studio, startup)
    app.mount(PREFIX, api)
    app.add_api_route("/docs", lambda: RedirectResponse(f"{PREFIX}/docs"), include_in_schema=False)
    return api


def build_api(studio: Studio, startup: Startup | None = None) -> FastAPI:
    """The API; with `startup`, every route answers 503 with Retry-After until start-up loading ends."""
    api = FastAPI(title="Homegrown API (AUTOMATIC1111-compatible)", version=__version__,
                  description="A1111's /sdapi/v1 on Homegrown's SDXL engine. Differences: see README.",
                  dependencies=[Depends(_auth_dependency(studio)), Depends(_startup_dependency(startup))])

    @api.exception_handler(UserError)
    async def user_error(request: Request, err: UserError):
        return JSONResponse({"error": "UserError", "detail": err.message, "field": err.field,
                             "errors": str(err)}, status_code=err.status)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        problems = [_describe(e) for e in err.errors()]
        return JSONResponse({"error": "ValidationError", "detail": "; ".join(problems),
                             "field": _field(err.errors()[0]) if err.errors() else None,
                             "errors": problems}, status_code=422)

    @api.exception_handler(Exception)
    async def crashed(request: Request, err: Exception):  # never a stack trace, never a dead server
        return JSONResponse({"error": type(err).__name__, "detail": f"internal error: {err}"}, status_code=500)

    _job_routes(api, studio)
    _model_routes(api, studio)
    _other_routes(api, studio)
    return api


def _job_routes(api: FastAPI, studio: Studio) -> None:
    @api.post("/txt2img")
    def txt2img(request: Txt2ImgRequest):
        return _txt2img(studio, request)

    @api.get("/progress")
    def progress(skip_current_image: bool = False):
        job = studio.running_job()
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None), "current_image": None,
                    "textinfo": None, "current_task": None}
        image = None
        if not skip_current_image and job.preview is not None:
            image = _b64_png(job.preview)
        eta = job.eta()
        return {"progress": round(job.progress, 4), "eta_relative": round(eta, 2) if eta is not None else 0.0,
                "state": _state(job), "current_image": image, "textinfo": job.note, "current_task": str(id(job))}

    @api.post("/interrupt")
    def interrupt():
        studio.interrupt()  # the running job, whoever started it: what A1111 clients expect
        return {}

    @api.post("/skip")
    def skip():
        studio.skip()
        return {}


def _model_routes(api: FastAPI, studio: Studio) -> None:
    @api.get("/sd-models")
    def sd_models():
        return [{"title": m.title, "model_name": m.name, "hash": m.short_hash, "sha256": m.sha256,
                 "filename": m.filename, "config": None} for m in studio.checkpoints()]

    @api.get("/sd-vae")
    def sd_vae():
        folder = studio.settings.folder("vae")
        files = sorted(folder.rglob("*.safetensors")) if folder.is_dir() else []
        return [{"model_name": p.relative_to(folder).as_posix(), "filename": str(p.resolve())} for p in files]

    @api.get("/loras")
    def loras():
        return [{"name": i.name, "alias": i.alias, "path": str(i.path.resolve()), "metadata": i.metadata}
                for i in studio.loras.list()]

    @api.post("/refresh-checkpoints")
    def refresh_checkpoints():
        studio.checkpoints()  # lists are read fresh on each call; this checks the folder is readable
        return None

    @api.post("/refresh-loras")
    def refresh_loras():
        studio.loras.list()
        return None


def _other_routes(api: FastAPI, studio: Studio) -> None:
    @api.get("/samplers")
    def sampler_list():
        return [{"name": s.name, "aliases": list(s.aliases),
                 "options": {"scheduler": s.default_schedule.lower()} if s.default_schedule != "Uniform" else {}}
                for s in samplers.SAMPLERS]

    @api.get("/schedulers")
    def scheduler_list():
        return [{"name": s.api_name, "label": s.name, "aliases": None, "default_rho": -1, "need_inner_model": False}
                for s in samplers.SCHEDULES]

    @api.get("/prompt-styles")
    def styles():
        presets, _ = studio.presets.load()
        return [{"name": p.name, "prompt": p.style_prompt, "negative_prompt": p.style_negative}
                for p in presets.values()]

    @api.get("/options")
    def get_options():
        return convert.options(studio.loaded_model(), studio.settings.all())

    @api.post("/options")
    def set_options(request: OptionsRequest):
        checkpoint, settings = convert.option_changes(request.model_dump())
        if settings:
            studio.apply_settings(settings)
        if checkpoint is not None:
            studio.load_checkpoint(checkpoint)
        return None

    @api.post("/png-info")
    def png_info(request: PngInfoRequest):
        if not request.image:
            raise UserError("send the image as base64 (a data: URL works too)", field="image")
        image = _decode_image(request.image)
        text = infotext.read_image(image)
        if text is None:
            return {"info": "", "items": {}, "parameters": {}}
        prompt, negative, fields = infotext.parse(text)
        return {"info": text, "items": {"parameters": text},
                "parameters": {"Prompt": prompt, "Negative prompt": negative, **fields}}

    @api.get("/cmd-flags")
    def cmd_flags():
        return {"demo": studio.demo, "offline": studio.offline, "api": True, "nowebui": False,
                "ckpt_dir": str(studio.settings.folder("ckpt")), "lora_dir": str(studio.settings.folder("lora")),
                "vae_dir": str(studio.settings.folder("vae")), "models_dir": studio.settings.get("models_dir"),
                "outputs_dir": studio.settings.get("outputs_dir"), "api_auth": studio.credentials.enabled}

    @api.get("/scripts")
    def scripts():
        return {"txt2img": [], "img2img": []}

    @api.get("/memory")
    def memory():
        return _memory()


# ---- txt2img ---------------------------------------------------------------------------------


def _txt2img(studio: Studio, request: Txt2ImgRequest) -> dict:
    plan = convert.txt2img_plan(request, studio.settings.get("vae"), studio.settings.get("output_format"),
                                loras=studio.loras, presets=studio.presets)
    previous = studio.current_checkpoint()
    started = time.time()
    try:
        result = studio.generate(plan.params, save=plan.save, output_format=plan.output_format)
    finally:
        if plan.restore_checkpoint and previous and studio.current_checkpoint() != previous:
            studio.load_checkpoint(previous)
    info = convert.txt2img_info(request, result, started)
    images = [_b64_image(img, text, plan.output_format) for img, text in zip(result.images, result.infotexts)] \
        if request.send_images else []
    return {"images": images, "parameters": request.model_dump(), "info": json.dumps(info, ensure_ascii=False)}


# ---- helpers ---------------------------------------------------------------------------------


def _auth_dependency(studio: Studio):
    basic = HTTPBasic(auto_error=False)

    def check(credentials: HTTPBasicCredentials | None = Depends(basic)):
        if not studio.credentials.enabled:
            return
        if credentials is None or not studio.credentials.check(credentials.username, credentials.password):
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})

    return check


def _startup_dependency(startup: Startup | None):
    def check():
        if startup is not None and not startup.done:
            raise HTTPException(status_code=503, detail="Homegrown is starting: the model is still loading",
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    return check


def _state(job) -> dict:
    if job is None:
        return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    return {"skipped": job.skipped, "interrupted": job.interrupted, "stopping_generation": job.interrupted,
            "job": "txt2img", "job_count": job.job_count,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.started or job.created)),
            "job_no": job.job_no, "sampling_step": job.sampling_step, "sampling_steps": job.sampling_steps}


def _b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _b64_image(image: Image.Image, text: str, fmt: str) -> str:
    buffer = io.BytesIO()
    infotext.write_image(image, text, buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def _decode_image(data: str) -> Image.Image:
    if data.startswith("data:"):
        data = data.split(",", 1)[-1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        return image
    except (binascii.Error, ValueError):
        raise UserError("is not valid base64", field="image") from None
    except Exception:
        raise UserError("is not an image Homegrown can read (PNG, JPEG or WebP)", field="image") from None


def _describe(error: dict) -> str:
    field = _field(error) or "body"
    if error.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
    value = error.get("input")
    shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return f"{field}: {error.get('msg', 'invalid')} (got {shown})"


def _field(error: dict) -> str | None:
    location = [str(p) for p in error.get("loc", ()) if p not in ("body", "query")]
    return ".".join(location) or None


def _memory() -> dict:
    import psutil
    import torch

    ram = psutil.virtual_memory()
    out: dict[str, Any] = {"ram": {"free": ram.available, "used": ram.total - ram.available, "total": ram.total},
                           "process": {"rss": psutil.Process(os.getpid()).memory_info().rss}}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()
        out["cuda"] = {"system": {"free": free, "used": total - free, "total": total},
                       "active": {"current": stats.get("active_bytes.all.current", 0),
                                  "peak": stats.get("active_bytes.all.peak", 0)},
                       "allocated": {"current": torch.cuda.memory_allocated(), "peak": torch.cuda.max_memory_allocated()}}
    else:
        out["cuda"] = {"error": "no CUDA GPU"}
    return out

"""AUTOMATIC1111's REST API (`/sdapi/v1/...`) on the Homegrown engine, so existing A1111 clients just work.

Same paths, field names, types and defaults as A1111's `modules/api`. Fields for features Homegrown
lacks (hires fix, face restoration, scripts...) are accepted while they hold A1111's default or an empty
value, and refused with a 422 naming the field when they ask for the feature. The API runs in the UI's
process and shares its engine, so API and UI jobs queue on the same GPU lock.
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
from pydantic import BaseModel, ConfigDict, Field

from . import __version__, infotext, samplers
from .errors import UserError
from .params import GenerationParams
from .studio import Studio

PREFIX = "/sdapi/v1"


class Txt2ImgRequest(BaseModel):
    """A1111's StableDiffusionTxt2ImgProcessingAPI: every field, with A1111's defaults."""

    model_config = ConfigDict(extra="ignore")  # A1111 ignores fields it does not know; so do we

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


# Fields for features Homegrown does not have, with the values that mean "not used" in A1111.
UNSUPPORTED = {
    "enable_hr": ((False,), "hires fix is not supported; generate at the final size (SDXL works at ~1 megapixel)"),
    "restore_faces": ((None, False), "face restoration is not supported"),
    "tiling": ((None, False), "tiling is not supported"),
    "subseed_strength": ((0, 0.0), "variation seeds are not supported"),
    "seed_resize_from_h": ((-1, 0), "seed resize is not supported"),
    "seed_resize_from_w": ((-1, 0), "seed resize is not supported"),
    "script_name": ((None, ""), "scripts are not supported"),
    "script_args": (([],), "scripts are not supported"),
    "alwayson_scripts": (({},), "extensions (alwayson_scripts) are not supported"),
    "firstpass_image": ((None, ""), "a first-pass image needs hires fix, which is not supported"),
    "s_churn": ((None, 0, 0.0), "sampler noise settings (s_churn) are not supported"),
    "s_noise": ((None, 1, 1.0), "sampler noise settings (s_noise) are not supported"),
    "s_tmin": ((None, 0, 0.0), "sampler noise settings (s_tmin) are not supported"),
    "s_tmax": ((None, 0, 0.0, float("inf")), "sampler noise settings (s_tmax) are not supported"),
    "s_min_uncond": ((None, 0, 0.0), "NGMS (s_min_uncond) is not supported"),
    "eta": ((None, 0, 0.0, 1, 1.0), "eta is not supported"),
    "disable_extra_networks": ((False,), "disable_extra_networks is not supported; remove <lora:...> tags instead"),
}
OPTION_KEYS = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "samples_format")
FORMATS = {"png": "png", "jpg": "jpeg", "jpeg": "jpeg", "webp": "webp"}


class OptionsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")


class PngInfoRequest(BaseModel):
    image: str = ""


def mount(app: FastAPI, studio: Studio) -> FastAPI:
    """Serve the API on the Gradio app's server: `/sdapi/v1/...`, docs at `/docs`."""
    api = build_api(studio)
    app.mount(PREFIX, api)
    app.add_api_route("/docs", lambda: RedirectResponse(f"{PREFIX}/docs"), include_in_schema=False)
    return api


def build_api(studio: Studio) -> FastAPI:
    api = FastAPI(title="Homegrown API (AUTOMATIC1111-compatible)", version=__version__,
                  description="A1111's /sdapi/v1 on Homegrown's SDXL engine. Differences: see README.",
                  dependencies=[Depends(_auth_dependency(studio))])

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

    @api.post("/txt2img")
    def txt2img(request: Txt2ImgRequest):
        return _txt2img(studio, request)

    @api.get("/progress")
    def progress(skip_current_image: bool = False):
        job = studio.engine.current_job
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
        job = studio.engine.current_job
        if job is not None:
            job.interrupt()
        return {}

    @api.post("/skip")
    def skip():
        job = studio.engine.current_job
        if job is not None:
            job.skip()
        return {}

    @api.get("/sd-models")
    def sd_models():
        hashes = studio.engine.checkpoints.hashes
        out = []
        for checkpoint in studio.engine.checkpoints.list():
            sha = None if checkpoint.is_folder else hashes.cached(checkpoint.path)
            title = checkpoint.name + ("" if checkpoint.is_folder else ".safetensors")
            out.append({"title": f"{title} [{sha[:10]}]" if sha else title, "model_name": checkpoint.name,
                        "hash": sha[:10] if sha else None, "sha256": sha, "filename": str(checkpoint.path.resolve()),
                        "config": None})
        return out

    @api.get("/sd-vae")
    def sd_vae():
        folder = studio.settings.folder("vae")
        files = sorted(folder.rglob("*.safetensors")) if folder.is_dir() else []
        return [{"model_name": p.relative_to(folder).as_posix(), "filename": str(p.resolve())} for p in files]

    @api.get("/loras")
    def loras():
        return [{"name": i.name, "alias": i.alias, "path": str(i.path.resolve()), "metadata": i.metadata}
                for i in studio.loras.list()]

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
        return _options(studio)

    @api.post("/options")
    def set_options(request: OptionsRequest):
        changes = request.model_dump()
        unknown = [k for k in changes if k not in OPTION_KEYS]
        if unknown:
            raise UserError(f"option {unknown[0]!r} is not supported; supported: {', '.join(OPTION_KEYS)}",
                            field=unknown[0])
        for key, value in changes.items():
            _apply_option(studio, key, value)
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

    @api.post("/refresh-checkpoints")
    def refresh_checkpoints():
        studio.engine.checkpoints.list()  # lists are read fresh on each call; this checks the folder is readable
        return None

    @api.post("/refresh-loras")
    def refresh_loras():
        studio.loras.list()
        return None

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

    return api


# ---- txt2img ---------------------------------------------------------------------------------


def _txt2img(studio: Studio, request: Txt2ImgRequest) -> dict:
    for name, (allowed, why) in UNSUPPORTED.items():
        if getattr(request, name) not in allowed:
            raise UserError(f"{why} (got {getattr(request, name)!r})", field=name)
    base = GenerationParams()
    if request.infotext:
        base = infotext.to_params(request.infotext, loras=studio.loras)
    overrides = dict(request.override_settings or {})
    unknown = [k for k in overrides if k not in OPTION_KEYS]
    if unknown:
        raise UserError(f"override_settings.{unknown[0]} is not supported; supported: {', '.join(OPTION_KEYS)}",
                        field="override_settings")
    if "CLIP_stop_at_last_layers" in overrides:
        _check_option("CLIP_stop_at_last_layers", overrides["CLIP_stop_at_last_layers"])
    if "sd_vae" in overrides and _vae_name(overrides["sd_vae"]) != _vae_name(studio.settings.get("vae")):
        raise UserError("a per-request VAE is not supported: set it with POST /sdapi/v1/options "
                        f"{{\"sd_vae\": ...}} (now: {studio.settings.get('vae')!r})", field="sd_vae")
    fmt = _format(overrides.get("samples_format", studio.settings.get("output_format")))
    # With `infotext`, its values are the base and only the fields the client sent override them (A1111).
    sent = request.model_fields_set if request.infotext else set(Txt2ImgRequest.model_fields)
    fields = {
        "prompt": request.prompt, "negative_prompt": request.negative_prompt, "steps": request.steps,
        "cfg_scale": request.cfg_scale, "width": request.width, "height": request.height, "seed": request.seed,
        "batch_size": request.batch_size, "n_iter": request.n_iter,
        "sampler_name": request.sampler_name or request.sampler_index,
        "scheduler": request.scheduler or "Automatic",
        "refiner_checkpoint": _checkpoint_name(request.refiner_checkpoint)
        if request.refiner_checkpoint not in (None, "", "None") else None,
        "refiner_switch_at": request.refiner_switch_at if request.refiner_switch_at is not None else 0.8,
    }
    aliases = {"sampler_name": ("sampler_name", "sampler_index")}
    changes = {name: value for name, value in fields.items()
               if any(field in sent for field in aliases.get(name, (name,)))}
    changes["checkpoint"] = _checkpoint_name(overrides.get("sd_model_checkpoint")) or (
        base.checkpoint if request.infotext else None)
    params = base.replace(**changes)
    for style in request.styles or []:
        params = studio.presets.get(style, loras=studio.loras).apply(params, prompts_only=True)
    previous = studio.current_checkpoint()
    save = request.save_images and not request.do_not_save_samples
    started = time.time()
    try:
        result = studio.engine.generate(params, save=save, output_format=fmt)
    finally:
        if request.override_settings_restore_afterwards and previous and params.checkpoint:
            if studio.current_checkpoint() != previous:
                studio.engine.load_checkpoint(previous)
    loaded = studio.engine.base
    info = {
        "prompt": result.params.prompt, "all_prompts": [result.params.prompt] * len(result.images),
        "negative_prompt": result.params.negative_prompt,
        "all_negative_prompts": [result.params.negative_prompt] * len(result.images),
        "seed": result.params.seed, "all_seeds": result.seeds, "subseed": result.params.seed,
        "all_subseeds": result.seeds, "subseed_strength": 0, "width": params.width, "height": params.height,
        "sampler_name": samplers.resolve(params.sampler_name, params.scheduler)[0].name,
        "scheduler": samplers.resolve(params.sampler_name, params.scheduler)[1].name,
        "cfg_scale": params.cfg_scale, "steps": params.steps, "batch_size": params.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": loaded.checkpoint.short_name if loaded else None,
        "sd_model_hash": loaded.short_hash if loaded else None,
        "sd_vae_name": studio.engine.vae_file[0] if studio.engine.vae_file else None,
        "sd_vae_hash": studio.engine.vae_file[1] if studio.engine.vae_file else None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": request.denoising_strength,
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": result.infotexts,
        "styles": request.styles or [], "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
        "clip_skip": 1, "is_using_inpainting_conditioning": False, "version": f"Homegrown {__version__}",
        "interrupted": result.interrupted, "saved_files": [str(p) for p in result.paths],
        "warnings": result.warnings,
    }
    images = [_b64_image(img, text, fmt) for img, text in zip(result.images, result.infotexts)] \
        if request.send_images else []
    return {"images": images, "parameters": request.model_dump(), "info": json.dumps(info, ensure_ascii=False)}


def _checkpoint_name(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise UserError("must be a checkpoint name", field="sd_model_checkpoint")
    return value


# ---- options -----------------------------------------------------------------------------------


def _options(studio: Studio) -> dict:
    loaded = studio.engine.base
    title = None
    if loaded:
        suffix = "" if loaded.checkpoint.is_folder else ".safetensors"
        title = f"{loaded.checkpoint.name}{suffix}" + (f" [{loaded.short_hash}]" if loaded.short_hash else "")
    fmt = studio.settings.get("output_format")
    return {"sd_model_checkpoint": title, "sd_checkpoint_hash": loaded.short_hash if loaded else None,
            "sd_vae": studio.settings.get("vae"), "CLIP_stop_at_last_layers": 1,
            "samples_format": "jpg" if fmt == "jpeg" else fmt, "outdir_samples": studio.settings.get("outputs_dir"),
            "samples_save": studio.settings.get("save_images")}


def _vae_name(value: Any) -> str:
    if value in (None, "", "None", "Automatic"):
        return "Automatic"
    if not isinstance(value, str):
        raise UserError("must be a VAE name", field="sd_vae")
    return value.removesuffix(".safetensors")


def _check_option(key: str, value: Any) -> None:
    if key == "CLIP_stop_at_last_layers" and value not in (1, 2):
        raise UserError("must be 1 or 2 (SDXL always uses the penultimate layer, as A1111 does)",
                        field="CLIP_stop_at_last_layers")


def _format(value: Any) -> str:
    if not isinstance(value, str) or value.lower() not in FORMATS:
        raise UserError(f"must be one of {', '.join(FORMATS)}, got {value!r}", field="samples_format")
    return FORMATS[value.lower()]


def _apply_option(studio: Studio, key: str, value: Any) -> None:
    if key == "sd_model_checkpoint":
        studio.engine.load_checkpoint(_checkpoint_name(value) or "")
    elif key == "samples_format":
        studio.apply_settings({"output_format": _format(value)})
    elif key == "sd_vae":
        studio.apply_settings({"vae": _vae_name(value)})
    else:
        _check_option(key, value)


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

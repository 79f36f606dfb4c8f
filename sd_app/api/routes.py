"""The routes of AUTOMATIC1111's REST API (`/sdapi/v1/...`), over the studio, so existing A1111 clients just work.

Same paths as A1111's `modules/api`; the request bodies are `schemas.py`, the conversions `convert.py`.
The API runs in the page's process and goes through the same studio, so API and page jobs queue on the
same GPU and show on the same progress.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import io
import json
import logging
import math
import time

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image

from .. import __version__, infotext, samplers, xyz
from ..auth import SignInThrottle
from ..errors import UserError
from ..logs import user_error
from ..startup import RETRY_AFTER_SECONDS, Startup
from ..studio import API_OWNER, Studio
from . import convert, extras_routes, img2img_routes
from .schemas import OptionsRequest, PngInfoRequest, Txt2ImgRequest

PREFIX = "/sdapi/v1"
# What A1111's PNG Info leaves out of `items` (images.IGNORED_INFO_KEYS): PIL's own keys, not text chunks.
IGNORED_INFO_KEYS = {"jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
                     "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity", "photoshop"}
CLIENT_POLL_SECONDS = 0.5  # how often a waiting txt2img looks whether its client is still there
log = logging.getLogger(__name__)


def mount(app: FastAPI, studio: Studio, throttle: SignInThrottle | None = None,
          startup: Startup | None = None) -> FastAPI:
    """Serve the API on the Gradio app's server: `/sdapi/v1/...`, docs at `/docs`."""
    api = build_api(studio, throttle, startup)
    app.mount(PREFIX, api)
    app.add_api_route("/docs", lambda: RedirectResponse(f"{PREFIX}/docs"), include_in_schema=False)
    app.add_api_route("/internal/ping", lambda: {}, methods=["GET"], include_in_schema=False)  # A1111's "alive?"
    return api


def build_api(studio: Studio, throttle: SignInThrottle | None = None, startup: Startup | None = None) -> FastAPI:
    """The API; with `startup`, every route answers 503 with Retry-After until start-up loading ends."""
    # FastAPI's own docs routes skip the app's dependencies: they are served by _docs_routes, behind the password.
    api = FastAPI(title="Homegrown API (AUTOMATIC1111-compatible)", version=__version__,
                  description="A1111's /sdapi/v1 on Homegrown's SDXL engine. Differences: see README.",
                  dependencies=[Depends(_auth_dependency(studio, throttle or SignInThrottle())),
                                Depends(_startup_dependency(startup))],
                  docs_url=None, redoc_url=None, openapi_url=None)

    @api.exception_handler(UserError)
    async def refused(request: Request, err: UserError):
        user_error(log, f"{request.method} {request.url.path}", err)
        return JSONResponse({"error": "UserError", "detail": err.message, "field": err.field,
                             "errors": str(err)}, status_code=err.status)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        problems = [_describe(e) for e in err.errors()]
        user_error(log, f"{request.method} {request.url.path}", "; ".join(problems))
        return JSONResponse({"error": "ValidationError", "detail": "; ".join(problems),
                             "field": _field(err.errors()[0]) if err.errors() else None,
                             "errors": problems}, status_code=422)

    @api.exception_handler(Exception)
    async def crashed(request: Request, err: Exception):  # never a stack trace, never a dead server
        return JSONResponse({"error": type(err).__name__, "detail": f"internal error: {err}"}, status_code=500)

    _job_routes(api, studio)
    img2img_routes.register(api, studio)
    _model_routes(api, studio)
    _other_routes(api, studio)
    extras_routes.register(api, studio)
    _docs_routes(api)
    return api


def _docs_routes(api: FastAPI) -> None:
    @api.get("/openapi.json", include_in_schema=False)
    def openapi(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")  # as FastAPI's own: "Try it out" calls /sdapi/v1/...
        return {**api.openapi(), **({"servers": [{"url": root}]} if root else {})}

    @api.get("/docs", include_in_schema=False)
    def docs(request: Request):
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json",
                                   title=api.title + " - docs")

    @api.get("/redoc", include_in_schema=False)
    def redoc(request: Request):
        return get_redoc_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json",
                              title=api.title + " - ReDoc")


def _job_routes(api: FastAPI, studio: Studio) -> None:
    # These are `async def`: txt2img waits for its job without holding a worker thread, and progress,
    # interrupt and skip only read or flip thread-safe job state, so they answer at once however many
    # requests are queued (as sync routes they waited for a free thread: 31 s behind 40 queued jobs).
    @api.post("/txt2img")
    async def txt2img(request: Txt2ImgRequest, http: Request):
        return await _txt2img(studio, request, http)

    @api.get("/progress")
    async def progress(skip_current_image: bool = False):
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
    async def interrupt():
        studio.interrupt()  # the running job, whoever started it: what A1111 clients expect
        return {}

    @api.post("/skip")
    async def skip():
        studio.skip()
        return {}


def _model_routes(api: FastAPI, studio: Studio) -> None:
    # Damaged files are listed with a "problem" (A1111 clients ignore the extra field); using one is a 4xx.
    @api.get("/sd-models")
    def sd_models():
        # model_name as A1111 makes it: the path below the folder, "/" as "_", no extension
        return [{"title": m.title, "model_name": m.name.replace("/", "_"), "hash": m.short_hash, "sha256": m.sha256,
                 "filename": m.filename, "config": None, "problem": m.problem} for m in studio.checkpoints()]

    @api.get("/sd-vae")
    def sd_vae():
        folder = studio.settings.folder("vae")
        files = sorted(folder.rglob("*.safetensors")) if folder.is_dir() else []
        problems = studio.vae_problems()
        return [{"model_name": p.relative_to(folder).as_posix(), "filename": str(p.resolve()),
                 "problem": problems.get(p.relative_to(folder).with_suffix("").as_posix())} for p in files]

    @api.get("/loras")
    def loras():
        return [{"name": i.name, "alias": i.alias, "path": str(i.path.resolve()), "metadata": i.metadata,
                 "problem": i.problem, "algorithm": i.algorithm} for i in studio.loras.list()]

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
        return [{"name": s.name, "aliases": list(s.aliases), "options": samplers.api_options(s)}
                for s in samplers.SAMPLERS]

    @api.get("/schedulers")
    def scheduler_list():
        return [{"name": s.api_name, "label": s.name, "aliases": list(s.aliases) or None,
                 "default_rho": s.default_rho, "need_inner_model": s.need_inner_model} for s in samplers.SCHEDULES]

    @api.get("/prompt-styles")
    def styles():
        styles, _ = studio.styles.load()
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles.values()]

    @api.get("/options")
    def get_options():
        return convert.options(studio.loaded_model(), studio.settings.all(), studio.kept_options.all())

    @api.post("/options")
    def set_options(request: OptionsRequest):
        changes = convert.option_changes(request.model_dump())  # every value checked before any is applied
        if changes.settings:
            studio.apply_settings(changes.settings)
        if changes.checkpoint is not None:
            studio.load_checkpoint(changes.checkpoint)
        if changes.kept:
            studio.kept_options.update(changes.kept)
        return changes.answer()

    @api.post("/png-info")
    def png_info(request: PngInfoRequest):
        if not request.image:
            raise UserError("send the image as base64 (a data: URL works too)", field="image")
        image = _decode_image(request.image)
        text = infotext.read_image(image)
        items = {key: value for key, value in image.info.items()
                 if key != infotext.PNG_KEY and key not in IGNORED_INFO_KEYS and isinstance(value, (str, int, float))}
        if text is None:
            return {"info": "", "items": items, "parameters": {}}
        return {"info": text, "items": items, "parameters": infotext.a1111_parameters(text, studio.styles)}

    @api.get("/cmd-flags")
    def cmd_flags():
        return {"demo": studio.demo, "offline": studio.offline, "api": True, "nowebui": False,
                "ckpt_dir": str(studio.settings.folder("ckpt")), "lora_dir": str(studio.settings.folder("lora")),
                "vae_dir": str(studio.settings.folder("vae")), "models_dir": studio.settings.get("models_dir"),
                "outputs_dir": studio.settings.get("outputs_dir"), "api_auth": studio.credentials.enabled}

    @api.get("/scripts")
    def scripts():
        return {"txt2img": [xyz.TITLE.lower()], "img2img": ["sd upscale"]}  # A1111 lists script titles in lower case

    @api.get("/memory")
    def memory():
        return {**studio.memory(), "workers": [dataclasses.asdict(w) for w in studio.workers()]}  # a pool's, else []

    @api.get("/embeddings")
    def embeddings():
        found = studio.embeddings()
        return {"loaded": found.loaded, "skipped": found.skipped}

    # What Homegrown does not have, in A1111's shape: empty lists, so that clients listing them carry on.
    for path in ("/hypernetworks", "/face-restorers", "/realesrgan-models", "/sd-modules", "/extensions"):
        api.add_api_route(path, _nothing, methods=["GET"])


def _nothing() -> list:
    return []


# ---- txt2img ---------------------------------------------------------------------------------


async def _txt2img(studio: Studio, request: Txt2ImgRequest, http: Request) -> dict:
    """Run the request as a job and wait for it without holding a thread; if the client goes away first, the
    job is interrupted (a queued one never starts). A request over the limits is refused before it queues."""
    # The plan may read preset files and hash LoRA files (infotext): in a worker thread, as before.
    plan = await run_in_threadpool(convert.txt2img_plan, request, studio.settings.get("vae"),
                                   studio.settings.get("output_format"), loras=studio.loras, styles=studio.styles,
                                   kept=studio.kept_options.all())
    if convert.wants_xyz(request):
        return await run_in_threadpool(_xyz_plot, studio, request, plan)
    previous = studio.current_checkpoint()
    started = time.time()
    job = studio.start(plan.params, API_OWNER, save=plan.save, output_format=plan.output_format)
    result = await job_result(studio, job, http, plan.restore_checkpoint and previous)
    info = convert.txt2img_info(request, result, started, plan.warnings)
    return await run_in_threadpool(_answer, request, result, info, plan.output_format)


def _xyz_plot(studio: Studio, request: Txt2ImgRequest, plan: convert.Txt2ImgPlan) -> dict:
    """`script_name: "x/y/z plot"`: the grid first, then (with include_lone_images) the single images."""
    wanted = convert.xyz_request(request, plan.params, studio.checkpoint_names(), studio.upscaler_names())
    started = time.time()
    grid = studio.generate_grid(wanted.plan, save=plan.save, output_format=plan.output_format)
    result = grid.as_result(singles=wanted.include_lone_images, sub_grids=wanted.include_sub_grids)
    info = convert.txt2img_info(request, result, started, plan.warnings)
    info["index_of_first_image"] = 1  # as A1111's script says: the grid comes first
    return _answer(request, result, info, plan.output_format)


def _answer(request: Txt2ImgRequest, result, info: dict, fmt: str) -> dict:
    images = [_b64_image(img, text, fmt) for img, text in zip(result.images, result.infotexts)] \
        if request.send_images else []
    return {"images": images, "parameters": request.model_dump(), "info": json.dumps(info, ensure_ascii=False)}


async def job_result(studio: Studio, job, http: Request, load_back: str | None):
    """Wait for an API job (interrupted if the client goes away), load `load_back` again if the request had
    switched checkpoints, and return the result, or raise the job's error (the handlers answer with its status)."""
    try:
        await _until_done(job, http)
    finally:
        if not job.done:
            job.interrupt()  # this request was cancelled: its job must not run on for nobody
    if load_back and studio.current_checkpoint() != load_back:
        await run_in_threadpool(studio.load_checkpoint, load_back)
    if job.cause is not None:
        raise job.cause
    return job.result


async def _until_done(job, http: Request) -> None:
    """Wait for the job to end; interrupt it once the client has disconnected."""
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(ended.set)
        except RuntimeError:  # the server's loop is gone (shutting down): nobody is waiting
            pass

    job.on_end(wake)
    while not ended.is_set():
        try:
            await asyncio.wait_for(ended.wait(), CLIENT_POLL_SECONDS)
        except TimeoutError:
            if not job.interrupted and await http.is_disconnected():
                job.interrupt()


# ---- helpers ---------------------------------------------------------------------------------


def _auth_dependency(studio: Studio, throttle: SignInThrottle):
    basic = HTTPBasic(auto_error=False)

    def refused():
        return HTTPException(status_code=401, detail="Incorrect username or password",
                             headers={"WWW-Authenticate": "Basic"})

    # async: never waits for a worker thread (the throttle only reads and writes its table)
    async def check(request: Request, credentials: HTTPBasicCredentials | None = Depends(basic)):
        if not studio.credentials.enabled:
            return
        if credentials is None:  # not an attempt: browsers and clients ask first without credentials
            raise refused()
        client = request.client.host if request.client else "unknown"
        wait = throttle.begin(client)
        if wait:
            seconds = math.ceil(wait)
            raise HTTPException(status_code=429, detail=f"too many failed sign-ins from this address: try again "
                                f"in {seconds} s", headers={"Retry-After": str(seconds)})
        if not studio.credentials.check(credentials.username, credentials.password):
            throttle.failed(client)
            raise refused()
        throttle.succeeded(client)

    return check


def _startup_dependency(startup: Startup | None):
    async def check():  # async: never waits for a worker thread
        if startup is not None and not startup.done:
            raise HTTPException(status_code=503, detail="Homegrown is starting: the model is still loading",
                                headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    return check


def _state(job) -> dict:
    if job is None:
        return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
    return {"skipped": job.skipped, "interrupted": job.interrupted, "stopping_generation": job.interrupted,
            "job": "txt2img", "job_count": job.job_count * job.part_count,
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.started or job.created)),
            "job_no": job.part_no * job.job_count + job.job_no,  # an X/Y/Z plot counts its cells, as A1111
            "sampling_step": job.sampling_step, "sampling_steps": job.sampling_steps}


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

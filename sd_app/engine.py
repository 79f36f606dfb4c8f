"""The engine: loaded pipelines, one lock, and `generate(params) -> images`.

The UI, the API and the notebook all call `Engine.generate` with a `GenerationParams`; nothing here
knows about Gradio or HTTP. One GPU runs one job at a time, so jobs take the engine's lock in turn;
each job carries its own `Job` handle, so interrupting one user's job never touches another's.
"""

from __future__ import annotations

import gc
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from . import __version__, fastpath, infotext, samplers
from .encoding import PromptEncoder
from .errors import UserError
from .loading import CheckpointWeights, check_kind, load_base, load_refiner, load_vae
from .lora import ActiveLora, LoraLibrary, LoraSet, WeightCache, resolve_tags
from .models import AUTOMATIC_VAE, Checkpoint, CheckpointLibrary, VaeLibrary
from .params import GenerationParams
from .preview import latent_preview
from .prompts import extract_lora_tags

MEMORY_MODES = ("auto", "none", "model-offload", "sequential-offload")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
GIB = 1024**3


@dataclass
class EngineOptions:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU) | float16 | bfloat16 | float32
    memory_mode: str = "auto"  # see MEMORY_MODES; auto picks by free VRAM
    vae_tiling: bool = False  # decode large images tile by tile (less VRAM, a little slower)
    prompt_syntax: str = "a1111"  # a1111 | compel
    preview_every: int = 3  # steps between live previews; 0 turns them off
    save_images: bool = True
    outputs_dir: Path = Path("outputs")
    output_format: str = "png"  # png | jpeg | webp
    filename_pattern: str = "[seed]"  # after the file's number; see infotext.file_name
    embed_metadata: bool = True
    vae: str = "Automatic"  # Automatic: the checkpoint's own VAE; else a file in the VAE folder
    compile: str = "off"  # fastpath.COMPILE_MODES: torch.compile the UNet and VAE decoder (no reload needed)

    # Changing these means loading the checkpoint again.
    RELOAD_FIELDS = ("device", "dtype", "memory_mode", "vae_tiling", "vae")


class Job:
    """One request's progress and controls; safe to read and to interrupt from other threads."""

    def __init__(self, params: GenerationParams | None = None):
        self.params = params
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.job_no = 0  # the batch running now (A1111's state.job_no)
        self.job_count = 1  # batches in this job (n_iter)
        self.sampling_step = 0
        self.sampling_steps = 0
        self.progress = 0.0  # 0..1 over the whole job
        self.preview: Image.Image | None = None
        self.preview_step = -1
        self.note: str | None = None  # what the job does while no step is counted (compiling), for the user
        self._interrupt = threading.Event()
        self._skip = threading.Event()

    def interrupt(self) -> None:
        """Stop after the current step; what is done so far is decoded and returned."""
        self._interrupt.set()

    def skip(self) -> None:
        """Finish the current batch early and go on with the next one."""
        self._skip.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    @property
    def skipped(self) -> bool:
        return self._skip.is_set()

    @property
    def running(self) -> bool:
        return self.started is not None and self.finished is None

    def eta(self) -> float | None:
        """Seconds left, from the pace so far."""
        if not self.started or self.progress <= 0:
            return None
        elapsed = time.time() - self.started
        return max(0.0, elapsed / self.progress * (1 - self.progress))


@dataclass
class GenerationResult:
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    paths: list[Path]
    params: GenerationParams  # as run: the seed is the real one, never -1
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)  # for the user: what went other than asked, and why
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    pipe: object
    short_hash: str
    scheduler_config: dict
    loras: LoraSet | None = None

    @property
    def title(self) -> str:
        return f"{self.checkpoint.short_name} [{self.short_hash}]" if self.short_hash else self.checkpoint.short_name


class Engine:
    def __init__(self, checkpoints: CheckpointLibrary, options: EngineOptions | None = None,
                 loras: LoraLibrary | None = None, vaes: VaeLibrary | None = None):
        self.checkpoints = checkpoints
        self.loras = loras
        self.vaes = vaes
        self.vae_file: tuple[str, str] | None = None  # (name, hash10) of a chosen VAE file, for the infotext
        self.lora_weights = WeightCache()  # survives checkpoint switches: no disk read for recent LoRAs
        self.options = options or EngineOptions()
        self.device = _pick_device(self.options.device)
        self.dtype = _pick_dtype(self.options.dtype, self.device)
        self.base: LoadedModel | None = None
        self.refiner: LoadedModel | None = None
        self.encoder: PromptEncoder | None = None
        self.current_job: Job | None = None
        self.compile_problem: str | None = None  # why the fast path was switched off, until options change
        self._lock = threading.RLock()  # one job or model change at a time

    # ---- models -------------------------------------------------------------------------------

    def load_checkpoint(self, name: str) -> LoadedModel:
        """Make `name` the base checkpoint. If it cannot be loaded, the previous one stays loaded."""
        with self._lock:
            return self._ensure_base(name)

    def _ensure_base(self, name: str | None) -> LoadedModel:
        if name is None:
            if self.base is None:
                raise UserError("no checkpoint is loaded; choose one (put SDXL .safetensors files into "
                                f"{self.checkpoints.folder})", field="checkpoint", status=503)
            return self.base
        checkpoint = self.checkpoints.get(name)
        if self.base is not None and self.base.checkpoint.path == checkpoint.path:
            return self.base
        check_kind(checkpoint, "sdxl-base")  # cheap checks first: the old model stays if they fail
        short_hash = self.checkpoints.short_hash(checkpoint)
        previous = self.base.checkpoint if self.base else None
        self._unload_all()  # one SDXL at a time: holding two would need twice the memory
        try:
            pipe = load_base(checkpoint, self.dtype)
        except UserError:
            if previous is not None:
                self._install_base(previous, load_base(previous, self.dtype), self.checkpoints.short_hash(previous))
            raise
        return self._install_base(checkpoint, pipe, short_hash)

    def _install_base(self, checkpoint: Checkpoint, pipe, short_hash: str) -> LoadedModel:
        scheduler_config = dict(pipe.scheduler.config)
        self._choose_vae(pipe)
        self._place(pipe)
        originals = CheckpointWeights(checkpoint, pipe.unet.config)
        self.base = LoadedModel(checkpoint, pipe, short_hash, scheduler_config,
                                LoraSet(pipe, self.lora_weights, originals=originals))
        self.encoder = PromptEncoder(pipe, self.options.prompt_syntax)
        return self.base

    def _choose_vae(self, pipe) -> None:
        """Put the VAE file chosen in the options into the pipeline (before it is placed on the device)."""
        name = self.options.vae
        self.vae_file = None
        if name in AUTOMATIC_VAE:
            return
        if self.vaes is None:
            raise UserError("no VAE folder is configured", field="sd_vae")
        path = self.vaes.get(name)
        pipe.vae = load_vae(path, self.dtype)
        self.vae_file = (path.stem, self.vaes.hashes.sha256(path)[:10])

    def _ensure_refiner(self, name: str) -> LoadedModel:
        checkpoint = self.checkpoints.get(name)
        if self.refiner is not None and self.refiner.checkpoint.path == checkpoint.path:
            return self.refiner
        check_kind(checkpoint, "sdxl-refiner")
        short_hash = self.checkpoints.short_hash(checkpoint)
        self._drop_refiner()
        pipe = load_refiner(checkpoint, self.dtype, base=self.base.pipe)
        scheduler_config = dict(pipe.scheduler.config)
        self._place(pipe)
        self.refiner = LoadedModel(checkpoint, pipe, short_hash, scheduler_config)
        return self.refiner

    def load_refiner(self, name: str) -> LoadedModel:
        with self._lock:
            self._ensure_base(None)  # the refiner borrows the base's second text encoder and VAE
            return self._ensure_refiner(name)

    def unload_refiner(self) -> None:
        with self._lock:
            self._drop_refiner()

    def _drop_refiner(self) -> None:
        if self.refiner is not None:
            self.refiner = None
            _free_memory()

    def _unload_all(self) -> None:
        self.refiner = None
        self.base = None
        self.encoder = None
        _free_memory()

    def memory_mode(self) -> str:
        mode = self.options.memory_mode
        if mode not in MEMORY_MODES:
            raise UserError(f"unknown memory mode {mode!r}; choose one of: {', '.join(MEMORY_MODES)}",
                            field="memory_mode")
        if self.device.type != "cuda":
            return "none"  # offloading moves weights between CPU and GPU; without a GPU there is nothing to gain
        if mode != "auto":
            return mode
        free, _ = torch.cuda.mem_get_info(self.device)
        # SDXL base in fp16 is ~7 GB of weights; 1024x1024 sampling needs ~3 GB more.
        if free >= 12 * GIB:
            return "none"
        return "model-offload" if free >= 6 * GIB else "sequential-offload"

    def _place(self, pipe) -> None:
        for part in pipe.components.values():
            if isinstance(part, torch.nn.Module):
                # Inference only. peft freezes the layers it wraps; freezing everything up front keeps a
                # compiled UNet's guards (requires_grad is one) the same before and after the first LoRA.
                part.requires_grad_(False)
        mode = self.memory_mode()
        if mode == "model-offload":
            pipe.enable_model_cpu_offload(device=self.device)
        elif mode == "sequential-offload":
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        pipe.vae.enable_slicing()  # batches decode one image at a time: same pixels, far less memory
        if self.options.vae_tiling:
            pipe.vae.enable_tiling()
        fastpath.set_compiled(pipe, self.compile_mode(), self.device)

    def compile_mode(self) -> str:
        """The fast path in force: the option, unless offloading is on or compiling failed here before."""
        mode = fastpath.check_mode(self.options.compile)
        # Offload hooks move weights inside forward(): a compiled graph would bake those moves in.
        if self.compile_problem or self.memory_mode() != "none":
            return "off"
        return mode

    def _note_compiling(self, job: Job) -> None:
        """Compiling shows no steps: say why the bar waits (the next step callback clears it)."""
        if self._compiled():
            job.note = "Fast path: compiling first if the image size or model is new here (tens of seconds)…"

    def _compiled(self) -> bool:
        """Whether the loaded pipelines run compiled: what _place or configure did, not the options read again
        (with memory mode auto, free VRAM after loading would give another answer than it gave before)."""
        return any(fastpath.is_compiled(pipe) for pipe in self._loaded_pipes())

    def _loaded_pipes(self) -> list:
        return [model.pipe for model in (self.base, self.refiner) if model is not None]

    def _eager_if_compile_fails(self, fn, result: GenerationResult):
        """Run `fn`; if compiling fails (no C compiler, an unsupported GPU), switch the fast path off and run
        it again eagerly: the user still gets the image, and a warning that says why."""
        if not self._compiled():
            return fn()
        try:
            return fn()
        except fastpath.compile_errors() as exc:
            # torch wraps the compiler's own error, which is the one that says what is wrong.
            cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
            reason = (str(cause).strip().splitlines() or [""])[0][:300]
            self.compile_problem = (f"the fast path (compile: {self.options.compile}) failed and is off until the "
                                    f"setting changes: {type(cause).__name__}: {reason}")
            for pipe in self._loaded_pipes():
                fastpath.set_compiled(pipe, "off", self.device)
            result.warnings.append(self.compile_problem)
            return fn()

    # ---- generation -------------------------------------------------------------------------

    def generate(self, params: GenerationParams, job: Job | None = None, save: bool | None = None,
                 output_format: str | None = None) -> GenerationResult:
        """Run one request. `save` and `output_format` override the options for this request alone."""
        params.check()
        prompt, tags = extract_lora_tags(params.prompt)
        if tags and self.loras is None:
            raise UserError("this Homegrown has no LoRA folder configured", field="prompt")
        active = resolve_tags(self.loras, tags) if tags else []
        sampler, schedule = samplers.resolve(params.sampler_name, params.scheduler)
        seed = params.seed if params.seed != -1 else random.randrange(2**32 - params.batch_size * params.n_iter)
        params = params.replace(seed=seed)
        job = job or Job(params)
        job.params = params
        with self._lock:
            self.current_job = job
            job.started = time.time()
            job.job_count = params.n_iter
            try:
                save = self.options.save_images if save is None else save
                return self._run(params, prompt, active, sampler, schedule, job, save,
                                 output_format or self.options.output_format)
            except (torch.OutOfMemoryError, MemoryError):
                _free_memory()
                raise UserError("out of memory: lower the size or batch size, or choose a memory-saving mode in "
                                "Settings", status=507) from None
            finally:
                job.finished = time.time()
                self.current_job = None

    def _run(self, params, prompt, active: list[ActiveLora], sampler, schedule, job, save: bool,
             output_format: str) -> GenerationResult:
        timings = {"load": 0.0, "lora": 0.0, "encode": 0.0, "denoise": 0.0, "decode": 0.0, "save": 0.0}
        mark = time.perf_counter()
        base = self._ensure_base(params.checkpoint)
        refiner = None
        if params.refiner_checkpoint and params.refiner_switch_at < 1.0:
            refiner = self._ensure_refiner(params.refiner_checkpoint)
        timings["load"] = time.perf_counter() - mark

        mark = time.perf_counter()
        base.loras.apply(active)  # exactly this job's LoRAs, before the text encoders run
        lora_hashes = ", ".join(f"{a.info.stem}: {self.loras.short_hash(a.info)}" for a in active) or None
        timings["lora"] = time.perf_counter() - mark

        mark = time.perf_counter()
        cond = self.encoder.encode(prompt, params.negative_prompt)
        batch = cond.repeat(params.batch_size)
        refiner_batch = batch.for_refiner() if refiner else None
        timings["encode"] = time.perf_counter() - mark

        result = GenerationResult([], [], [], [], params, timings=timings)
        for batch_no in range(params.n_iter):
            if job.interrupted:
                break
            job.job_no = batch_no
            job._skip.clear()
            seeds = [params.seed + batch_no * params.batch_size + i for i in range(params.batch_size)]
            mark = time.perf_counter()
            self._note_compiling(job)
            latents = self._eager_if_compile_fails(lambda: self._denoise(
                params, base, refiner, batch, refiner_batch, sampler, schedule, seeds, job), result)
            timings["denoise"] += time.perf_counter() - mark
            mark = time.perf_counter()
            self._note_compiling(job)
            images = self._eager_if_compile_fails(lambda: decode_latents(base.pipe.vae, latents), result)
            job.note = None
            timings["decode"] += time.perf_counter() - mark
            mark = time.perf_counter()
            for image, seed in zip(images, seeds):
                text = self.infotext(params, sampler, schedule, seed, base, refiner, lora_hashes)
                image.info[infotext.PNG_KEY] = text  # kept by anything that saves the image as PNG
                result.images.append(image)
                result.infotexts.append(text)
                result.seeds.append(seed)
                if save:
                    result.paths.append(self._save(image, text, params, seed, base, output_format))
            timings["save"] += time.perf_counter() - mark
        result.interrupted = job.interrupted
        job.progress = 1.0
        return result

    def _save(self, image, text: str, params: GenerationParams, seed: int, base: LoadedModel, fmt: str) -> Path:
        values = {"seed": seed, "model": base.checkpoint.short_name, "width": params.width, "height": params.height,
                  "steps": params.steps, "sampler": params.sampler_name, "date": time.strftime("%Y-%m-%d")}
        return infotext.save_image(image, text if self.options.embed_metadata else None,
                                   Path(self.options.outputs_dir) / "txt2img-images",
                                   infotext.file_name(self.options.filename_pattern, values), fmt)

    def configure(self, options: EngineOptions) -> str:
        """Apply new options; reload the checkpoint if device, precision, memory mode or VAE changed.

        If the reload fails, the previous options and checkpoint come back. Returns a sentence for the user."""
        with self._lock:
            reload = any(getattr(options, f) != getattr(self.options, f) for f in EngineOptions.RELOAD_FIELDS)
            device = _pick_device(options.device)
            dtype = _pick_dtype(options.dtype, device)
            if options.vae not in AUTOMATIC_VAE:
                if self.vaes is None:
                    raise UserError("no VAE folder is configured", field="sd_vae")
                self.vaes.get(options.vae)
            fastpath.check_mode(options.compile)
            syntax_changed = options.prompt_syntax != self.options.prompt_syntax
            compile_changed = options.compile != self.options.compile
            previous = (self.options, self.device, self.dtype)
            self.options = options
            if compile_changed:
                self.compile_problem = None  # a new choice gets a new try
            if not reload:
                if syntax_changed and self.base is not None:
                    self.encoder = PromptEncoder(self.base.pipe, options.prompt_syntax)
                if compile_changed:
                    for pipe in self._loaded_pipes():
                        fastpath.set_compiled(pipe, self.compile_mode(), self.device)
                    if options.compile != "off":
                        return ("Settings applied; the fast path stays off while the memory mode offloads weights."
                                if self.compile_mode() == "off" else
                                "Settings applied; the next image compiles the model first (tens of seconds), "
                                "later ones run faster.")
                return "Settings applied."
            self.device, self.dtype = device, dtype
            if self.base is None:
                return "Settings applied; they take effect when a checkpoint loads."
            name = self.base.checkpoint.name
            self._unload_all()
            try:
                self._ensure_base(name)
            except UserError:
                self.options, self.device, self.dtype = previous
                self._ensure_base(name)
                raise
            return f"Settings applied; {name} was reloaded for the new device, precision, memory mode or VAE."

    def _denoise(self, params, base, refiner, batch, refiner_batch, sampler, schedule, seeds, job):
        generators, noise = [], []
        height, width = params.height // 8, params.width // 8
        channels = base.pipe.unet.config.in_channels
        for seed in seeds:
            # Noise is drawn on the CPU from the seed: the same picture on any GPU, and on the CPU.
            generator = torch.Generator("cpu").manual_seed(seed)
            noise.append(torch.randn((channels, height, width), generator=generator, dtype=torch.float32))
            generators.append(generator)
        latents = torch.stack(noise).to(self.device, self.dtype)
        switch = params.refiner_switch_at if refiner else None
        base.pipe.scheduler = samplers.make_scheduler(base.scheduler_config, sampler, schedule, seeds[0])
        latents = base.pipe(
            prompt_embeds=batch.embeds, pooled_prompt_embeds=batch.pooled,
            negative_prompt_embeds=batch.negative_embeds, negative_pooled_prompt_embeds=batch.negative_pooled,
            num_inference_steps=params.steps, guidance_scale=params.cfg_scale,
            width=params.width, height=params.height, latents=latents, generator=generators,
            denoising_end=switch, output_type="latent",
            callback_on_step_end=self._progress_callback(job, params, 0.0, switch or 1.0),
        ).images
        if refiner is None or job.interrupted or job.skipped:
            return latents
        refiner.pipe.scheduler = samplers.make_scheduler(refiner.scheduler_config, sampler, schedule, seeds[0])
        self._note_compiling(job)
        return refiner.pipe(
            image=latents, prompt_embeds=refiner_batch.embeds, pooled_prompt_embeds=refiner_batch.pooled,
            negative_prompt_embeds=refiner_batch.negative_embeds,
            negative_pooled_prompt_embeds=refiner_batch.negative_pooled,
            num_inference_steps=params.steps, guidance_scale=params.cfg_scale, denoising_start=switch,
            generator=generators, output_type="latent",
            callback_on_step_end=self._progress_callback(job, params, switch, 1.0),
        ).images

    def _progress_callback(self, job: Job, params: GenerationParams, start: float, end: float):
        every = self.options.preview_every

        def callback(pipe, step_index, timestep, kwargs):
            job.note = None
            total = max(1, getattr(pipe, "num_timesteps", 0) or params.steps)
            stage = start + (end - start) * (step_index + 1) / total
            job.sampling_steps = params.steps
            job.sampling_step = min(params.steps, round(stage * params.steps))
            job.progress = min(1.0, (job.job_no + stage) / job.job_count)
            if every and (step_index % every == 0 or step_index + 1 == total):
                job.preview = latent_preview(kwargs["latents"][0])
                job.preview_step = job.sampling_step
            if job.interrupted or job.skipped:
                pipe._interrupt = True  # diffusers skips the remaining steps and returns the latents
            return kwargs

        return callback

    def infotext(self, params, sampler, schedule, seed, base: LoadedModel, refiner: LoadedModel | None,
                 lora_hashes: str | None = None) -> str:
        fields = {
            "Steps": params.steps,
            "Sampler": sampler.name,
            "Schedule type": schedule.name,
            "CFG scale": params.cfg_scale,
            "Seed": seed,
            "Size": f"{params.width}x{params.height}",
            "Model hash": base.short_hash or None,
            "Model": base.checkpoint.short_name,
            "VAE hash": self.vae_file[1] if self.vae_file else None,
            "VAE": self.vae_file[0] if self.vae_file else None,
            "Refiner": refiner.title if refiner else None,
            "Refiner switch at": params.refiner_switch_at if refiner else None,
            "Lora hashes": lora_hashes,
            "Version": f"Homegrown {__version__}",
        }
        return infotext.build(params.prompt, params.negative_prompt, fields)


def decode_latents(vae, latents: torch.Tensor) -> list[Image.Image]:
    """Latents -> images. SDXL's VAE overflows in fp16 (NaN, black images): it decodes in fp32 when its
    config says so (`force_upcast`), and any NaN from a half-precision decode is redone in fp32, as A1111 does."""
    wanted = torch.float32 if vae.dtype == torch.float16 and vae.config.force_upcast else vae.dtype
    pixels = _decode_as(vae, latents, wanted)
    if not torch.isfinite(pixels).all() and wanted != torch.float32:
        pixels = _decode_as(vae, latents, torch.float32)
    pixels = (pixels / 2 + 0.5).clamp(0, 1).nan_to_num(0.0)
    array = (pixels.permute(0, 2, 3, 1).float().cpu().numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in array]


@torch.no_grad()
def _decode_as(vae, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    original = vae.dtype
    if original != dtype:
        vae.to(dtype=dtype)
    try:
        return vae.decode(latents.to(dtype) / vae.config.scaling_factor).sample
    finally:
        if original != dtype:
            vae.to(dtype=original)


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N", field="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for, but PyTorch sees no CUDA GPU", field="device")
    return device


def _pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}", field="dtype")
    if device.type == "cpu" and DTYPES[name] == torch.float16:
        raise UserError("float16 is not supported on the CPU; use float32 or bfloat16", field="dtype")
    return DTYPES[name]


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

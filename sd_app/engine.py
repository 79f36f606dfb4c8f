"""The engine: `generate(params) -> images`, the denoise step and its progress.

Models are held by `pipelines.Pipelines`; saving is a step after the run (`outputs.py`, called by the
studio). Nothing here knows about Gradio or HTTP. A request runs as a plan of passes over one schedule
(`plan.py`; txt2img: the base from noise, then the refiner from the base's latents), so the other modes
(img2img, the hires pass) add a starting point or a pass, never a second copy of the denoise loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from . import __version__, hires, img2img_run, infotext, loop, nonfinite, plan, rng, samplers
from .denoiser import Stage
from .embedding_library import EmbeddingLibrary
from .errors import UserError
from .jobs import GenerationResult, Job
from .lora_library import LoraLibrary, resolve_tags
from .nonfinite import NotFinite
from .params import GenerationParams, Limits, RunDefaults
from .pipelines import LoadedModel, Pipelines, free_memory
from .preview import latent_preview
from .prompts import extract_lora_tags
from .styles import StyleLibrary
from .tiling import seamless


class Engine:
    def __init__(self, pipelines: Pipelines, loras: LoraLibrary | None = None, preview_every: int = 3,
                 limits: Limits | None = None, styles: StyleLibrary | None = None, defaults: RunDefaults | None = None):
        self.pipelines = pipelines
        self.loras = loras
        self.styles = styles
        self.preview_every = preview_every  # steps between live previews; 0 turns them off
        self.limits = limits or Limits()  # what one request may ask for (Settings → Limits)
        self.defaults = defaults or RunDefaults()  # the noise source and such, unless a request says
        self.embeddings: EmbeddingLibrary | None = None  # textual inversion embeddings named in prompts
        self.upscalers = None  # an upscalers.Upscalers: model upscalers for the hires pass (None: built-ins only)

    def use_libraries(self, loras: LoraLibrary | None, upscalers=None) -> None:
        """A new LoRA folder (from Settings): tags resolve there from the next job on. `upscalers` (an
        `upscalers.Upscalers`, given by the Studio) replaces the hires pass's image upscalers when given."""
        self.loras = loras
        if upscalers is not None:
            self.upscalers = upscalers

    def upscaler_names(self) -> list[str] | None:
        """The image upscalers `hr_upscaler` may name (None: the built-in ones)."""
        return self.upscalers.names() if self.upscalers is not None else None

    def configure(self, preview_every: int, limits: Limits | None = None, defaults: RunDefaults | None = None) -> None:
        self.preview_every = preview_every
        self.limits = limits or self.limits
        self.defaults = defaults or self.defaults

    # ---- generation -------------------------------------------------------------------------

    def generate(self, params: GenerationParams, job: Job | None = None) -> GenerationResult:
        """Run one request and return its images with their infotexts (saving them is the caller's step).
        `params.img2img` starts each batch from images (img2img, inpainting); `params.hires` adds a hires pass."""
        params.check(self.limits, self.upscaler_names())
        if params.styles:
            # The prompts as encoded (and as the infotext shows them), the styles still listed for the infotext.
            if self.styles is None:
                raise UserError("this Homegrown has no styles", field="styles")
            params = self.styles.apply(params).check(self.limits, self.upscaler_names())
        prompt, tags = extract_lora_tags(params.prompt)
        if tags and self.loras is None:
            raise UserError("this Homegrown has no LoRA folder configured", field="prompt")
        active = resolve_tags(self.loras, tags) if tags else []
        sampler, schedule = samplers.resolve(params.sampler_name, params.scheduler)
        params = params.with_defaults(self.defaults)
        job = job or Job(params)
        job.params = params
        with self.pipelines.lock:
            job.started = job.started or time.time()  # a job of several requests started with its first
            job.job_count = params.n_iter
            if job.interrupted:  # stopped while it waited (its client went away): nothing to load or encode
                job.finished = time.time()
                return GenerationResult([], [], [], params, interrupted=True)
            try:
                with seamless(self.pipelines, on=params.tiling):  # circular padding for this job only
                    return self._run(params, prompt, active, sampler, schedule, job)
            except (torch.OutOfMemoryError, MemoryError):
                free_memory()
                raise UserError("out of memory: lower the size or batch size, or choose a memory-saving mode in "
                                "Settings", status=507) from None
            except NotFinite as err:  # never a silent black image: fail, naming the likely cause
                base = self.pipelines.base
                err.model = err.model or base
                raise nonfinite.explain(err, params, active, base.loras.weights if base.loras else None,
                                        self.pipelines.vae_file) from None
            finally:
                job.finished = time.time()

    def _run(self, params, prompt, active, sampler, schedule, job: Job) -> GenerationResult:
        pipes = self.pipelines
        timings = {"load": 0.0, "lora": 0.0, "encode": 0.0, "denoise": 0.0, "decode": 0.0}
        mark = time.perf_counter()
        self._note_loading(job, params.checkpoint, pipes.base, "checkpoint")
        base = pipes.ensure_base(params.checkpoint)
        refiner = None
        if params.refined:
            self._note_loading(job, params.refiner_checkpoint, pipes.refiner, "refiner")
            refiner = pipes.ensure_refiner(params.refiner_checkpoint)
        timings["load"] = time.perf_counter() - mark

        mark = time.perf_counter()
        if active:
            job.note = f"Applying LoRA{'s' if len(active) > 1 else ''}…"
        base.loras.apply(active)  # exactly this job's LoRAs, before the text encoders run
        timings["lora"] = time.perf_counter() - mark

        mark = time.perf_counter()
        job.note = "Encoding the prompt…"
        passes = plan.passes(pipes.encoder, params, prompt, base, refiner, self.embeddings,
                             self.limits.max_prompt_schedules)
        # A hires checkpoint of its own is loaded after the first passes, and its conditioning encoded then.
        hires_plan = self._hires_plan(params, prompt, base, refiner, active) \
            if params.hires and not plan.other_hires_checkpoint(params, base, pipes.checkpoints) else None
        hires_loras = plan.hires_loras(params, active, self.loras) if params.hires else []
        used = {a.info.path: a for a in [*active, *hires_loras]}  # both passes'
        lora_hashes = ", ".join(f"{a.info.stem}: {self.loras.short_hash(a.info)}" for a in used.values()) or None
        prepared = img2img_run.prepare_images(params) if params.img2img else None
        timings["encode"] = time.perf_counter() - mark
        job.note, job.sampling_steps = None, params.steps  # "Step 0/N" from here: the first step is running
        ti_hashes, ran = passes[0].cond.ti_hashes, ModelsRan.of(base, refiner)

        def text(seed: int) -> str:
            return image_infotext(params, sampler, schedule, seed, ran, pipes.vae_file, lora_hashes, ti_hashes)

        vae_name, vae_hash = pipes.vae_file or (None, None)
        result = GenerationResult([], [], [], params, sampler=sampler.name, schedule=schedule.name,
                                  model_name=base.checkpoint.short_name, model_hash=base.short_hash or None,
                                  vae_name=vae_name, vae_hash=vae_hash, timings=timings,
                                  warnings=[*base.warnings, *passes[0].cond.notes,  # what the file lacks, each time
                                            *(prepared[0].notes if prepared else [])])
        elsewhere = []  # a hires checkpoint of its own: (batch, seeds, latents, upscaled latents, init) waiting
        for batch_no in range(params.n_iter):
            if job.interrupted:
                break
            job.job_no = batch_no
            job.clear_skip()
            seeds = [params.seed + batch_no * params.batch_size + i for i in range(params.batch_size)]
            mark = time.perf_counter()
            self._note_compiling(job)
            latents, init = pipes.eager_if_compile_fails(
                lambda: self._first_pass(params, passes, sampler, schedule, seeds, job, prepared, active),
                result.warnings)
            if params.hires is not None and not (job.interrupted or job.skipped):
                upscaled = self._upscale_for_hires(params, latents, base.pipe.vae, job)
                if hires_plan is None:
                    elsewhere.append((batch_no, seeds, latents, upscaled, init))
                    continue
                latents = pipes.eager_if_compile_fails(
                    lambda: self._hires_denoise(hires_plan, params, upscaled, seeds, job), result.warnings)
            timings["denoise"] += time.perf_counter() - mark
            self._add_images(result, latents, init, seeds, base.pipe.vae, job, text)
        if elsewhere and job.interrupted:  # stopped before the hires checkpoint: the first passes' images
            for _, seeds, latents, _, init in elsewhere:
                self._add_images(result, latents, init, seeds, base.pipe.vae, job, text)
        elif elsewhere:
            del base, refiner, passes  # nothing here may keep the first checkpoint in memory beside the other
            self._hires_elsewhere(params, prompt, active, elsewhere, job, result, text)
        result.in_seed_order()  # a batch skipped before its hires pass on another checkpoint was decoded first
        result.interrupted = job.interrupted
        job.set_progress(1.0)
        return result

    def _add_images(self, result: GenerationResult, latents, init, seeds: list[int], vae, job: Job,
                    text: Callable[[int], str]) -> None:
        """Decode a batch's latents (inpainting: pasted back through the blurred mask) into `result`."""
        mark = time.perf_counter()
        job.note = "Decoding the image…" if len(seeds) == 1 else "Decoding the images…"
        self._note_compiling(job)
        images = self.pipelines.eager_if_compile_fails(lambda: decode_latents(vae, latents), result.warnings)
        images = img2img_run.finish(images, init)
        job.note = None
        result.timings["decode"] += time.perf_counter() - mark
        for image, seed in zip(images, seeds):
            image.info[infotext.PNG_KEY] = text(seed)  # kept by anything that saves the image as PNG
            result.images.append(image)
            result.infotexts.append(image.info[infotext.PNG_KEY])
            result.seeds.append(seed)

    def _hires_elsewhere(self, params, prompt: str, active: list, batches: list, job: Job,
                         result: GenerationResult, text: Callable[[int], str]) -> None:
        """A1111's hr_checkpoint_name: every batch's first pass is done (and upscaled); the hires checkpoint is
        loaded once for all of their hires passes, which decode with its VAE, and the first checkpoint is loaded
        back after (the next job finds the checkpoint it was chosen with)."""
        pipes = self.pipelines
        first = pipes.base.checkpoint.name
        self._note_loading(job, params.hires.checkpoint, pipes.base, "hires checkpoint")
        try:
            self._hires_passes_on(params.hires.checkpoint, params, prompt, active, batches, job, result, text)
        finally:
            job.note = f"Loading the checkpoint {first} back…"
            pipes.ensure_base(first)
            job.note = None

    def _hires_passes_on(self, name: str, params, prompt: str, active: list, batches: list, job: Job,
                         result: GenerationResult, text: Callable[[int], str]) -> None:
        other = self.pipelines.ensure_base(name)
        hires_plan = None
        try:
            result.warnings.extend(w for w in other.warnings if w not in result.warnings)
            refiner = None
            if params.refined and params.hires.refiner_in(second=True):
                refiner = self.pipelines.ensure_refiner(params.refiner_checkpoint)  # loading the other unloaded it
            hires_plan = self._hires_plan(params, prompt, other, refiner, active)
            for batch_no, seeds, latents, upscaled, init in batches:
                job.job_no = batch_no
                job.clear_skip()  # a Skip ends one image's pass, as in the first passes
                if not job.interrupted:  # interrupted: the first pass's image, as the other batches end
                    mark = time.perf_counter()
                    latents = self.pipelines.eager_if_compile_fails(
                        lambda: self._hires_denoise(hires_plan, params, upscaled, seeds, job), result.warnings)
                    result.timings["denoise"] += time.perf_counter() - mark
                self._add_images(result, latents, init, seeds, other.pipe.vae, job, text)
        finally:
            other = refiner = hires_plan = None  # noqa: F841 -- the first checkpoint loads next: free these

    def _hires_plan(self, params, prompt: str, base: LoadedModel, refiner: LoadedModel | None,
                    active: list) -> plan.HiresPlan:
        return plan.hires(self.pipelines.encoder, params, prompt, base, refiner, active, self.loras, self.embeddings,
                          self.limits.max_prompt_schedules)

    def _first_pass(self, params, passes: list[plan.Pass], sampler, schedule, seeds: list[int], job: Job,
                    prepared, active: list):
        """The first pass, from noise or from the init images (img2img, inpainting), with the LoRAs `active`.
        Returns the latents and the Init."""
        base = passes[0].model
        device, dtype, vae = self.pipelines.device, self.pipelines.dtype, base.pipe.vae
        unet_channels = base.pipe.unet.config.in_channels
        init = None
        if prepared is not None:
            init = img2img_run.make_init(params, prepared, vae, unet_channels, seeds, device, dtype)
        elif unet_channels == 9:  # txt2img on an inpainting base: a grey image, all of it masked
            init = img2img_run.txt2img_init(params, vae, seeds, device, dtype)
        base.loras.apply(active)  # a no-op unless the batch before ran a hires pass with other LoRAs
        if init is not None and loop.img2img_steps(params.steps, init.strength) < 1:
            return init.latents, init  # A1111: int(strength * steps) steps run; none here gives the image back
        # txt2img on an inpainting base starts from noise, the grey image only its conditioning (A1111)
        start = plan.Start(init.latents, init.strength, init.latent_mask, init.image_cond,
                           from_noise=prepared is None) if init else None
        return self._denoise(params, passes, sampler, schedule, seeds, job, start,
                             init.noise_multiplier if init else 1.0), init

    def _upscale_for_hires(self, params, latents, vae, job: Job):
        """The first pass's latents at the hires size (an image upscaler decodes and encodes with `vae`)."""
        job.note = "Upscaling for the hires pass…"
        target = params.hires.target(params.width, params.height)
        return img2img_run.upscale(latents, params.hires, target, vae, decode_latents, self.pipelines.device,
                                   self.pipelines.dtype, img2img_run.model_upscaler(self.upscalers, job, self.limits))

    def _hires_denoise(self, hires_plan: plan.HiresPlan, params, latents, seeds: list[int], job: Job):
        """The hires pass over upscaled latents, with its own LoRAs, from the hires denoising strength; then the
        rows and columns A1111 cuts off for another aspect ratio."""
        hr_params, (hr_sampler, hr_schedule) = hires_plan.params, hires_plan.sampling
        strength = params.hires.denoising_strength
        if loop.img2img_steps(hr_params.steps, strength) >= 1:
            hires_plan.passes[0].model.loras.apply(hires_plan.loras)
            latents = self._denoise(hr_params, hires_plan.passes, hr_sampler, hr_schedule, seeds, job,
                                    plan.Start(latents, strength))
        return hires.truncate(latents, hires_plan.target)

    def _denoise(self, params, passes: list[plan.Pass], sampler, schedule, seeds: list[int], job: Job,
                 start: plan.Start | None = None, noise_multiplier: float = 1.0):
        """The one denoise loop (`loop.denoise`) over the plan's passes: the base model from noise or from
        `start`, the refiner taking over where A1111 switches. Returns the final latents in the model's dtype."""
        base = passes[0].model
        shape = (base.pipe.vae.config.latent_channels, params.height // 8, params.width // 8)
        noise = image_rng(shape, seeds, params, self.pipelines.device)
        stages = [step.stage(params, self.pipelines.device) for step in passes]
        refined = []

        def switch(stage: Stage, last_denoised) -> None:
            """The base's share ends here: a NaN so far is the base model's (A1111 checks every UNet output)."""
            if last_denoised is not None:
                self._check_latents(last_denoised, passes[0])
            refined.append(stage)
            self._note_compiling(job)

        request = loop.Request(
            sampler, schedule, params.steps, params.cfg_scale, stages, noise.next() * noise_multiplier, noise.next,
            seeds, init=start.inpainting() if start else None,
            strength=start.strength if start else 1.0, from_noise=start is None or start.from_noise,
            cfg_rescale=float(base.scheduler_config.get("cfg_rescale", 0.0)),
            should_stop=lambda: job.interrupted or job.skipped, on_switch=switch)
        latents = loop.denoise(request, self._progress_callback(job, params))
        self._check_latents(latents, passes[-1] if refined else passes[0])
        return latents.to(self.pipelines.dtype)

    @staticmethod
    def _check_latents(latents, step: plan.Pass) -> None:
        refining = step.start > 0
        nonfinite.check([latents], "the refiner's pass" if refining else "the base model's denoising", step.model,
                        ("unet",), "refiner_checkpoint" if refining else "checkpoint", step.cond.largest_weight)

    def _note_loading(self, job: Job, name: str | None, loaded: LoadedModel | None, what: str) -> None:
        """Loading a checkpoint takes seconds to minutes before any step: say so, unless it is loaded already."""
        try:
            needed = loaded is None or (name is not None and self.pipelines.checkpoints.get(name).path
                                        != loaded.checkpoint.path)
        except UserError:
            return  # loading it fails at once, with this message
        if needed and name:
            job.note = f"Loading the {what} {name}…"

    def _note_compiling(self, job: Job) -> None:
        """Compiling shows no steps: say why the bar waits (the next step callback clears it)."""
        if self.pipelines.compiled():
            job.note = "Fast path: compiling first if the image size or model is new here (tens of seconds)…"

    def _progress_callback(self, job: Job, params: GenerationParams):
        every = self.preview_every

        def callback(info: dict) -> None:
            job.note = None
            total = max(1, info["total"])
            done = min(total, info["i"] + 1)
            job.sampling_steps = total
            job.sampling_step = done
            job.set_progress((job.job_no + done / total) / job.job_count)
            if every and (info["i"] % every == 0 or done == total):
                shown = info["denoised"] if info["denoised"] is not None else info["x"]
                job.preview = latent_preview(shown[0])
                job.preview_step = job.sampling_step

        return callback


def image_rng(shape: tuple[int, ...], seeds: list[int], params: GenerationParams, device) -> rng.ImageRNG:
    """The batch's noise as A1111 draws it (rng.py: its source, variation seed and seed resize): the starting
    noise is its first `next()`, each later call the noise an ancestral or SDE step adds."""
    subseeds = [params.subseed + (seed - params.seed) for seed in seeds]
    return rng.ImageRNG(shape, seeds, subseeds=subseeds, subseed_strength=params.subseed_strength,
                        seed_resize_from_h=params.seed_resize_from_h, seed_resize_from_w=params.seed_resize_from_w,
                        source=params.randn_source, device=device)


@dataclass(frozen=True)
class ModelsRan:
    """What an image's infotext says of the models that made it: plain values, so that a job's texts hold no
    model (one kept alive would stay in memory beside the next checkpoint loaded)."""

    model_hash: str | None
    model_name: str
    refiner_title: str | None
    fields: dict  # the checkpoint's own keys (v-prediction, zero terminal SNR)

    @classmethod
    def of(cls, base: LoadedModel, refiner: LoadedModel | None) -> "ModelsRan":
        return cls(base.short_hash or None, base.checkpoint.short_name, refiner.title if refiner else None,
                   base.infotext_fields())


def image_infotext(params, sampler, schedule, seed: int, ran: ModelsRan, vae: tuple[str, str] | None,
                   lora_hashes: str | None = None, ti_hashes: str | None = None) -> str:
    """One image's A1111 infotext: the request's fields in A1111's order, with what ran (models, VAE, hashes)."""
    fields = {
        "Steps": params.steps,
        "Sampler": sampler.name,
        "Schedule type": schedule.name,
        "CFG scale": params.cfg_scale,
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": ran.model_hash,
        "Model": ran.model_name,
        "VAE hash": vae[1] if vae else None,
        "VAE": vae[0] if vae else None,
        **img2img_run.infotext_fields(params),
        "Variation seed": params.subseed + (seed - params.seed) if params.subseed_strength else None,
        "Variation seed strength": params.subseed_strength or None,
        "Seed resize from": (f"{params.seed_resize_from_w}x{params.seed_resize_from_h}"
                             if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0 else None),
        "Clip skip": params.clip_skip if params.clip_skip != 1 else None,  # written when not 1, as A1111
        "Clip skip SDXL": True if params.sdxl_clip_l_skip else None,
        "Tiling": True if params.tiling else None,
        "Refiner": ran.refiner_title,
        "Refiner switch at": params.refiner_switch_at if ran.refiner_title else None,
        "Lora hashes": lora_hashes,
        "TI hashes": ti_hashes,
        "RNG": params.randn_source if params.randn_source != rng.DEFAULT_SOURCE else None,  # A1111 writes no GPU
        "Styles": ", ".join(params.styles) or None,  # already in the prompts; a paste takes them out again
        **ran.fields,  # v-prediction and zero terminal SNR, when the checkpoint has them
        "Version": f"Homegrown {__version__}",
    }
    return infotext.build(params.prompt, params.negative_prompt, fields)


def decode_latents(vae, latents: torch.Tensor) -> list[Image.Image]:
    """Latents -> images. SDXL's VAE overflows in fp16 (NaN, black images): it decodes in fp32 when its
    config says so (`force_upcast`), and any NaN from a half-precision decode is redone in fp32, as A1111 does.
    A NaN that remains raises nonfinite.NotFinite (the engine names the VAE) rather than a black image."""
    wanted = torch.float32 if vae.dtype == torch.float16 and vae.config.force_upcast else vae.dtype
    pixels = _decode_as(vae, latents, wanted)
    if not torch.isfinite(pixels).all() and wanted != torch.float32:
        pixels = _decode_as(vae, latents, torch.float32)
    nonfinite.check([pixels], "decoding the image", None, ("vae",))  # finite latents, yet a NaN decode
    pixels = (pixels / 2 + 0.5).clamp(0, 1)
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

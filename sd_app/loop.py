"""One denoise loop for every mode: A1111's KDiffusionSampler.sample / sample_img2img (and the timestep and
LCM samplers' versions) on our own sampler code.

`denoise(request, callback)` takes the starting noise and the per-step noise source, builds the sigmas (or
timesteps) of the chosen schedule type, starts from noise (txt2img) or from given latents at a denoising
strength (img2img, inpainting), and runs the sampler over a `denoiser.Denoiser` whose stages are the base model
and, from A1111's switch point, the refiner. It knows nothing of jobs or pipelines: the engine builds the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import sampling, sigmas as sigma_schedules
from .denoiser import Denoiser, Inpainting, Interrupted, Stage
from .samplers import Sampler, Schedule


@dataclass
class Request:
    sampler: Sampler
    schedule: Schedule
    steps: int
    cfg_scale: float
    stages: list[Stage]
    noise: torch.Tensor  # the starting noise, unit variance (ImageRNG.first())
    next_noise: Callable[[], torch.Tensor]  # per-step noise (ImageRNG.next)
    seeds: list[int]  # the images' seeds: the SDE samplers' Brownian trees
    is_sdxl: bool = True
    init: Inpainting | None = None  # img2img / inpainting: start from init.init_latent ...
    strength: float = 1.0  # ... at this denoising strength
    cfg_rescale: float = 0.0
    should_stop: Callable[[], bool] = lambda: False
    on_switch: Callable[[Stage], None] | None = None
    options: dict = field(default_factory=dict)  # extra sampler options (eta, s_noise) at A1111's defaults if absent


def img2img_steps(steps: int, strength: float) -> int:
    """A1111's t_enc (setup_img2img_steps without "img2img_fix_steps"): the schedule is the full `steps`; the
    run starts t_enc + 1 steps before its end."""
    return int(min(strength, 0.999) * steps)


def denoise(request: Request, callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Run the sampler; returns the final latents (float32), or the last prediction when stopped early."""
    kind = request.sampler.kind
    if kind == "timesteps":
        return _run_timesteps(request, callback)
    model = request.stages[0].schedule
    if kind == "lcm":
        model = sigma_schedules.LcmSchedule(model.alphas_cumprod)
        for stage in request.stages:
            stage.schedule = model
    sigmas = sigma_schedules.schedule_sigmas(request.schedule.api_name, request.steps, model, request.is_sdxl,
                                             request.sampler.discard_penultimate).to(request.noise.device)
    init = request.init
    if init is None:
        x = request.noise * sigmas[0]
        run_sigmas = sigmas
        fast_range = (model.sigma_min, model.sigma_max, request.steps)
    else:
        t_enc = img2img_steps(request.steps, request.strength)
        run_sigmas = sigmas[request.steps - t_enc - 1:]
        x = init.init_latent.float() + request.noise * run_sigmas[0]
        fast_range = (run_sigmas[-2], run_sigmas[0], len(run_sigmas) - 1)
    denoiser = _denoiser(request)
    noise = sampling.Noise(request.next_noise)
    if request.sampler.brownian:
        noise.brownian = sampling.brownian_noise(x, sigmas, request.seeds)
    total = sampling.dpm_steps_for(request.sampler.function, request.steps, run_sigmas)
    step = _stepper(callback, total)
    function = sampling.SAMPLE_FUNCTIONS[request.sampler.function]
    options = _options(request.sampler, request.options)
    try:
        if request.sampler.function in ("dpm_fast", "dpm_adaptive"):
            sigma_min, sigma_max, n = fast_range
            result = function(denoiser, x, sigma_min, sigma_max, n, noise, step, **options)
        else:
            result = function(denoiser, x, run_sigmas, noise, step, **options)
    except Interrupted:
        result = denoiser.last_denoised if denoiser.last_denoised is not None else x
    return _final_blend(request, result)


def _run_timesteps(request: Request, callback) -> torch.Tensor:
    """A1111's sd_samplers_timesteps: DDIM, PLMS, UniPC over fixed timesteps with an eps model."""
    timesteps = sampling.a1111_timesteps(request.steps).to(request.noise.device)
    alphas_cumprod = request.stages[0].schedule.alphas_cumprod.to(request.noise.device)
    init = request.init
    if init is None:
        x, run = request.noise, timesteps
    else:
        t_enc = img2img_steps(request.steps, request.strength)
        run = timesteps[:t_enc]
        alpha = alphas_cumprod[run[-1]]
        x = init.init_latent.float() * alpha.sqrt() + request.noise * (1 - alpha).sqrt()
    denoiser = _denoiser(request)
    noise = sampling.Noise(request.next_noise)
    step = _stepper(callback, len(run) if request.sampler.function == "unipc" else len(run) - 1)
    function = sampling.SAMPLE_FUNCTIONS[request.sampler.function]
    try:
        result = function(denoiser.eps_at_timestep, x, run, noise, step, alphas_cumprod=alphas_cumprod,
                          **({"is_img2img": init is not None} if request.sampler.function == "unipc" else {}))
    except Interrupted:
        result = denoiser.last_denoised if denoiser.last_denoised is not None else x
    return _final_blend(request, result)


def _denoiser(request: Request) -> Denoiser:
    return Denoiser(request.stages, request.cfg_scale, request.init, request.cfg_rescale, request.should_stop,
                    on_switch=request.on_switch)


def _options(sampler: Sampler, given: dict) -> dict:
    """A1111 passes eta (eta_ancestral, 1.0) to every sampler that takes one, s_noise 1.0."""
    import inspect

    parameters = inspect.signature(sampling.SAMPLE_FUNCTIONS[sampler.function]).parameters
    return {key: value for key, value in given.items() if key in parameters}


def _stepper(callback, total: int):
    if callback is None:
        return None

    def step(info: dict) -> None:
        callback({**info, "total": total})

    return step


def _final_blend(request: Request, latents: torch.Tensor) -> torch.Tensor:
    """A1111 puts the kept area back after sampling (processing.py: samples * nmask + init_latent * mask)."""
    init = request.init
    if init is None or init.mask is None:
        return latents
    mask = init.mask.to(latents)
    return latents * mask + init.init_latent.to(latents) * (1 - mask)

"""A request's plan: which model runs which stretch of the schedule with which conditioning, where a pass starts
other than from noise, and the hires fix's second pass (its request, conditioning and LoRAs).

The engine runs the plan (one denoise loop for every pass); this module only decides it, and encodes each
distinct prompt once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import nonfinite, samplers
from .denoiser import Inpainting, Stage, size_time_ids
from .encoding import Conditioning
from .errors import UserError
from .hires import Target
from .loading import check_kind
from .lora_library import ActiveLora, LoraLibrary, resolve_tags
from .params import GenerationParams
from .pipelines import LoadedModel
from .prompts import extract_lora_tags
from .sigmas import ModelSchedule


@dataclass(frozen=True)
class Pass:
    """One model's stretch of the run: from `start` to `end`, as A1111's completed ratio of the schedule
    (the refiner takes over from `refiner_switch_at`)."""

    model: LoadedModel
    cond: Conditioning  # already repeated for the batch
    start: float
    end: float
    # Conditioning that changes during sampling (prompt editing): the n-th denoiser call's conditioning,
    # batch-sized. None: `cond` throughout.
    cond_at: Callable[[int], Conditioning] | None = None

    def stage(self, params: GenerationParams, device) -> Stage:
        """This pass as the denoiser runs it, for images of `params`' size."""
        model, cond = self.model, self.cond
        batch = cond.embeds.shape[0]
        if getattr(model.pipe.config, "requires_aesthetics_score", False):  # the refiner: A1111's 6.0 and 2.5
            ids = size_time_ids(batch, params.height, params.width, device, 6.0)
            negative = size_time_ids(batch, params.height, params.width, device, 2.5)
        else:
            ids = negative = size_time_ids(batch, params.height, params.width, device)
        return Stage(model.pipe.unet, self.cond_at or (lambda _call: cond), ids, negative,
                     ModelSchedule.from_config(model.scheduler_config),
                     v_prediction=model.scheduler_config.get("prediction_type") == "v_prediction",
                     start=self.start, name=model.checkpoint.short_name)


@dataclass(frozen=True)
class Start:
    """Where a pass starts other than from noise (img2img, inpainting): the clean latents (scaled as the UNet
    sees them, batch-sized), the denoising strength, and for inpainting the latent mask (1: repaint, 0: keep)
    and a 9-channel inpainting UNet's extra input (cat of mask and masked-image latents, (batch, 5, h, w))."""

    init_latent: torch.Tensor
    strength: float
    mask: torch.Tensor | None = None
    image_cond: torch.Tensor | None = None
    from_noise: bool = False  # txt2img on an inpainting UNet: only image_cond is used

    def inpainting(self) -> Inpainting:
        return Inpainting(self.init_latent, self.mask, self.image_cond)


@dataclass(frozen=True)
class HiresPlan:
    """A1111's hires fix: the second pass's request (size, steps, sampler), its pass, its sampler and schedule,
    the size the first pass is upscaled to, and the LoRAs it runs with."""

    params: GenerationParams
    passes: list[Pass]
    sampling: tuple[samplers.Sampler, samplers.Schedule]
    target: Target
    # A1111 activates the hires prompt's own extra networks for the hires pass: its LoRA tags when it has a
    # prompt of its own (none when that prompt has no tags), else the prompt's.
    loras: list[ActiveLora]


def passes(encoder, params: GenerationParams, prompt: str, base: LoadedModel, refiner: LoadedModel | None,
           embeddings, max_schedules: int) -> list[Pass]:
    """The passes this request runs, with their conditioning: each distinct prompt that prompt editing makes
    is encoded once, and a pass whose conditioning changes during sampling gets the schedule's `cond_at`."""
    schedule = _schedule(encoder, params, prompt, params.negative_prompt, params.steps, base, embeddings,
                         max_schedules)
    if params.hires is not None and not params.hires.refiner_in(second=False):
        refiner = None  # A1111's default with a hires fix: the refiner runs in the hires pass only
    return _with_refiner(schedule, base, refiner, params.refiner_switch_at)


def _with_refiner(schedule, base: LoadedModel, refiner: LoadedModel | None, switch: float) -> list[Pass]:
    """The base's pass over `schedule`, or the base's then the refiner's from `switch` of the pass's steps."""
    cond = schedule.cond_at(0)
    if refiner is None:
        return [Pass(base, cond, 0.0, 1.0, schedule.cond_at if schedule.changes else None)]
    refined = schedule.for_refiner()
    return [Pass(base, cond, 0.0, switch, schedule.cond_at if schedule.changes else None),
            Pass(refiner, refined.cond_at(0), switch, 1.0, refined.cond_at if schedule.changes else None)]


def _schedule(encoder, params: GenerationParams, prompt: str, negative: str, steps: int, base: LoadedModel,
              embeddings, max_schedules: int):
    """The batch-sized conditioning of every step of a pass of `steps` steps, each distinct prompt checked."""
    schedule = encoder.encode_schedule(prompt, negative, steps, embeddings, max_schedules,
                                       clip_l_layer=params.clip_skip if params.sdxl_clip_l_skip else None)
    for cond in schedule.conds:
        nonfinite.check(cond.tensors(), "the prompt's conditioning", base, ("text_encoder", "text_encoder_2"),
                        largest_weight=cond.largest_weight)
    return schedule.repeat(params.batch_size)


def other_hires_checkpoint(params: GenerationParams, base: LoadedModel, checkpoints) -> str | None:
    """The hires pass's own checkpoint (A1111's hr_checkpoint_name) when it is not `base`: checked now, before any
    first pass runs (a name that is not here, or not an SDXL base, is refused naming the field); else None."""
    name = params.hires.checkpoint if params.hires else None
    if name in (None, "", params.checkpoint, base.checkpoint.name):
        return None
    try:
        checkpoint = checkpoints.get(name)
        if checkpoint.path == base.checkpoint.path:
            return None
        check_kind(checkpoint, "sdxl-base")
    except UserError as err:
        raise UserError(err.message, field="hr_checkpoint_name", status=err.status) from None
    return checkpoint.name


def hires_loras(params: GenerationParams, active: list[ActiveLora], loras: LoraLibrary | None) -> list[ActiveLora]:
    """The LoRAs of the hires pass. A1111 activates the hires prompt's own extra networks for it: its LoRA tags
    when it has a prompt of its own (none when that prompt has no tags), else the prompt's (`active`)."""
    spec = params.hires
    if not spec.prompt or spec.prompt == params.prompt:
        return active
    tags = extract_lora_tags(spec.prompt)[1]
    if tags and loras is None:
        raise UserError("this Homegrown has no LoRA folder configured", field="hr_prompt")
    return resolve_tags(loras, tags) if tags else []


def hires(encoder, params: GenerationParams, prompt: str, base: LoadedModel, refiner: LoadedModel | None,
          active: list[ActiveLora], loras: LoraLibrary | None, embeddings, max_schedules: int) -> HiresPlan:
    """The hires pass of `params` on `base` (then `refiner`, when the hires fix's refiner pass says so), whose
    first pass runs `prompt` with the LoRAs `active`. As in A1111 its conditioning is the hires prompt's (or the
    prompt's) schedule over the hires steps, so prompt editing goes on in the second pass; it is encoded with
    the hires pass's LoRAs in place, and `active` put back."""
    spec = params.hires
    hr_prompt = extract_lora_tags(spec.prompt)[0] if spec.prompt and spec.prompt != params.prompt else prompt
    hr_active = hires_loras(params, active, loras)
    target = spec.target(params.width, params.height)
    hr_params = params.replace(width=target.width, height=target.height, steps=spec.steps(params.steps),
                               sampler_name=spec.sampler_name or params.sampler_name,
                               scheduler=spec.scheduler or params.scheduler, hires=None, img2img=None)
    base.loras.apply(hr_active)  # the text encoders' LoRAs shape the hires conditioning too
    try:
        schedule = _schedule(encoder, params, hr_prompt, spec.negative_prompt or params.negative_prompt,
                             hr_params.steps, base, embeddings, max_schedules)
    finally:
        base.loras.apply(active)
    sampling = samplers.resolve(hr_params.sampler_name, hr_params.scheduler)
    refiner = refiner if spec.refiner_in(second=True) else None
    return HiresPlan(hr_params, _with_refiner(schedule, base, refiner, params.refiner_switch_at), sampling, target,
                     hr_active)

"""The model as the samplers see it: A1111's CFGDenoiser around k-diffusion's discrete DDPM wrappers.

`Denoiser(x, sigma) -> denoised`: the UNet on the batch and its negative (cond first, uncond after, in one
UNet call as A1111 batches them), scaled as k-diffusion's DiscreteEpsDDPMDenoiser (eps prediction) or
DiscreteVDDPMDenoiser (v prediction) with t from sigma by log-sigma interpolation, then classifier-free
guidance `uncond + (cond - uncond) * scale`. Around that, A1111's hooks:
- conditioning that changes during sampling: `Stage.cond_at(call_index)`, called on every model evaluation as
  A1111's `reconstruct_cond_batch(cond, self.step)` (prompt editing counts denoiser calls, not sampler steps);
- the refiner: stages switch when A1111's `apply_refiner` would, by the sigma about to be denoised;
- inpainting: `denoised = denoised * nmask + init_latent * (1 - nmask)` after CFG (before the model for the
  timestep samplers, as A1111's CFGDenoiserTimesteps), and a 9-channel UNet's extra input (`image_cond`);
- interrupt and skip: checked before each UNet call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .encoding import Conditioning
from .sigmas import LcmSchedule, ModelSchedule


class Interrupted(Exception):
    """The job was interrupted or skipped: the sampler stops and the last prediction is kept (as A1111)."""


@dataclass
class Stage:
    """One model's share of a run: its UNet and conditioning, from `start` (A1111's completed ratio, 0..1)."""

    unet: torch.nn.Module
    cond_at: Callable[[int], Conditioning]  # conditioning for the n-th denoiser call of the run (batch-sized)
    time_ids: torch.Tensor  # SDXL's size conditioning, (batch, 5 or 6), for the prompt
    negative_time_ids: torch.Tensor  # and for the negative prompt (the refiner's aesthetic score differs)
    schedule: ModelSchedule
    v_prediction: bool = False
    start: float = 0.0
    name: str = "base"


@dataclass
class Inpainting:
    """What an img2img/inpaint pass adds: the clean starting latents, where to repaint (1) and keep (0), and
    for 9-channel inpainting UNets the extra input (mask and masked-image latents)."""

    init_latent: torch.Tensor
    mask: torch.Tensor | None = None  # A1111's nmask: 1 where the image is repainted
    image_cond: torch.Tensor | None = None  # (batch, 5, h, w): cat(mask, masked-image latents)


@dataclass
class Denoiser:
    stages: list[Stage]
    cfg_scale: float
    inpainting: Inpainting | None = None
    cfg_rescale: float = 0.0  # Lin et al.'s guidance rescale (phi); A1111 1.10 has none, so 0 by default
    should_stop: Callable[[], bool] = lambda: False
    step: int = 0  # denoiser calls so far (A1111's CFGDenoiser.step)
    active: int = 0  # index of the stage in use
    last_denoised: torch.Tensor | None = field(default=None, repr=False)
    on_switch: Callable[[Stage], None] | None = None

    @property
    def stage(self) -> Stage:
        return self.stages[self.active]

    @property
    def schedule(self) -> ModelSchedule:
        return self.stages[0].schedule

    # ---- the k-diffusion samplers' model ---------------------------------------------------------------------

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self._before_call(self.stage.schedule.sigmas, sigma)
        stage = self.stage
        c_in = (1 / (sigma ** 2 + 1) ** 0.5)[:, None, None, None]
        out_cond, out_uncond = self._unet(stage, x * c_in, stage.schedule.sigma_to_t(sigma))
        x2 = torch.cat([x, x])
        sigma2 = torch.cat([sigma, sigma])[:, None, None, None]
        if self.cfg_rescale:
            out = self._rescaled_cfg(out_cond, out_uncond)
            denoised = self._scale(stage, x, sigma[:, None, None, None], out)
        else:
            both = self._scale(stage, x2, sigma2, torch.cat([out_cond, out_uncond]))
            cond, uncond = both.chunk(2)
            denoised = uncond + (cond - uncond) * self.cfg_scale
        if self.inpainting is not None and self.inpainting.mask is not None:
            denoised = self._blend(denoised)
        return self._after_call(denoised)

    @staticmethod
    def _scale(stage: Stage, x, sigma, out):
        if isinstance(stage.schedule, LcmSchedule):  # A1111's LCMCompVisDenoiser: LCM's boundary condition
            x0 = x + out * -sigma
            scaled_t = stage.schedule.sigma_to_t(sigma.flatten()).view(sigma.shape) * 10.0
            c_skip = 0.5 ** 2 / (scaled_t ** 2 + 0.5 ** 2)
            c_out = scaled_t / (scaled_t ** 2 + 0.5 ** 2) ** 0.5
            return c_out * x0 + c_skip * x
        if stage.v_prediction:  # DiscreteVDDPMDenoiser, sigma_data = 1
            return out * (-sigma / (sigma ** 2 + 1) ** 0.5) + x * (1 / (sigma ** 2 + 1))
        return x + out * -sigma  # DiscreteEpsDDPMDenoiser

    # ---- A1111's timestep samplers' model (DDIM, PLMS): eps at integer timesteps -----------------------------

    def eps_at_timestep(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.inpainting is not None and self.inpainting.mask is not None:
            x = self._blend(x)  # A1111's CFGDenoiserTimesteps blends before denoising
        self._before_call(None, t)
        stage = self.stage
        out_cond, out_uncond = self._unet(stage, x, t)
        if stage.v_prediction:  # CompVisTimestepsVDenoiser: v -> eps
            a_t = stage.schedule.alphas_cumprod[t.to(torch.int)][:, None, None, None]
            out_cond = torch.sqrt(a_t) * out_cond + torch.sqrt(1 - a_t) * x
            out_uncond = torch.sqrt(a_t) * out_uncond + torch.sqrt(1 - a_t) * x
        eps = self._rescaled_cfg(out_cond, out_uncond) if self.cfg_rescale else \
            out_uncond + (out_cond - out_uncond) * self.cfg_scale
        a_t = stage.schedule.alphas_cumprod[t.to(torch.int)][:, None, None, None]
        self.last_denoised = (x - (1 - a_t).sqrt() * out_cond) / a_t.sqrt()
        self.step += 1
        return eps

    # ---- shared -----------------------------------------------------------------------------------------------

    def _before_call(self, model_sigmas: torch.Tensor | None, sigma: torch.Tensor) -> None:
        if self.should_stop():
            raise Interrupted
        nxt = self.active + 1
        if nxt < len(self.stages):
            if model_sigmas is None:  # the timestep samplers pass the timestep itself
                timestep = torch.max(sigma).to(dtype=torch.int)
            else:
                timestep = torch.argmin(torch.abs(model_sigmas - torch.max(sigma).to(model_sigmas)))
            if (999 - int(timestep)) / 1000 >= self.stages[nxt].start:
                self.active = nxt
                if self.on_switch is not None:
                    self.on_switch(self.stages[nxt])

    def _after_call(self, denoised: torch.Tensor) -> torch.Tensor:
        self.last_denoised = denoised
        self.step += 1
        return denoised

    def _blend(self, latent: torch.Tensor) -> torch.Tensor:
        mask = self.inpainting.mask.to(latent)
        return latent * mask + self.inpainting.init_latent.to(latent) * (1 - mask)

    def _rescaled_cfg(self, out_cond, out_uncond):
        guided = out_uncond + (out_cond - out_uncond) * self.cfg_scale
        dims = list(range(1, out_cond.ndim))
        rescaled = guided * (out_cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
        return self.cfg_rescale * rescaled + (1 - self.cfg_rescale) * guided

    def _unet(self, stage: Stage, x_in: torch.Tensor, t: torch.Tensor):
        """The UNet's raw output for the prompt and the negative prompt: one batch of both when their token
        lengths agree (A1111's batch_cond_uncond), else two calls."""
        cond = stage.cond_at(self.step)
        unet = stage.unet
        dtype = next(unet.parameters()).dtype
        if self.inpainting is not None and self.inpainting.image_cond is not None:
            x_in = torch.cat([x_in, self.inpainting.image_cond.to(x_in)], dim=1)
        if cond.embeds.shape[1] == cond.negative_embeds.shape[1]:
            out = unet(torch.cat([x_in, x_in]).to(dtype), torch.cat([t, t]),
                       encoder_hidden_states=torch.cat([cond.embeds, cond.negative_embeds]).to(dtype),
                       added_cond_kwargs={"text_embeds": torch.cat([cond.pooled, cond.negative_pooled]).to(dtype),
                                          "time_ids": torch.cat([stage.time_ids, stage.negative_time_ids])},
                       return_dict=False)[0]
            return out.float().chunk(2)
        outs = []
        for embeds, pooled, ids in ((cond.embeds, cond.pooled, stage.time_ids),
                                    (cond.negative_embeds, cond.negative_pooled, stage.negative_time_ids)):
            outs.append(unet(x_in.to(dtype), t, encoder_hidden_states=embeds.to(dtype),
                             added_cond_kwargs={"text_embeds": pooled.to(dtype), "time_ids": ids},
                             return_dict=False)[0].float())
        return outs


def size_time_ids(batch: int, height: int, width: int, device, aesthetic: float | None = None) -> torch.Tensor:
    """SDXL's micro-conditioning, as A1111 and diffusers give it: original size = target size = the image's,
    crop (0, 0); the refiner takes an aesthetic score in place of the target size."""
    values = [height, width, 0, 0] + ([aesthetic] if aesthetic is not None else [height, width])
    return torch.tensor([values] * batch, dtype=torch.float32, device=device)

"""Noise levels: the model's discrete schedule and A1111 v1.10's schedule types over it.

A1111 samples over sigmas, sigma = sqrt((1 - alpha_bar) / alpha_bar) of the 1000 training timesteps. Each
schedule type picks `steps` of them (plus a final 0) with A1111's own formula (modules/sd_schedulers.py) and
k-diffusion's (get_sigmas_karras, _exponential, _polyexponential); the arithmetic below keeps their dtypes and
order of operations so the numbers agree to the last float bit where they can.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

# A1111's "Beta" schedule options (beta_dist_alpha, beta_dist_beta) at their defaults.
BETA_ALPHA = 0.6
BETA_BETA = 0.6

# NVIDIA's Align Your Steps sigmas for 10 steps, as A1111 has them.
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)
AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)

# alpha_bar of the last timestep after A1111's zero-terminal-SNR rescale: exactly 0 would make sigma infinite.
ZTSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def alphas_cumprod(config: dict) -> torch.Tensor:
    """The training schedule's alpha_bar from a diffusers scheduler config, computed in float64 and stored as
    float32 as A1111 (ldm / sgm's LegacyDDPMDiscretization) does. `rescale_betas_zero_snr` applies A1111's
    "Zero Terminal SNR" noise schedule."""
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    kind = config.get("beta_schedule", "scaled_linear")
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], dtype=np.float64)
    elif kind == "scaled_linear":
        betas = np.linspace(start ** 0.5, end ** 0.5, n, dtype=np.float64) ** 2
    elif kind == "linear":
        betas = np.linspace(start, end, n, dtype=np.float64)
    else:
        raise ValueError(f"unsupported beta_schedule {kind!r}")
    result = torch.tensor(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)
    if config.get("rescale_betas_zero_snr"):
        result = rescale_zero_terminal_snr(result)
    return result


def rescale_zero_terminal_snr(alphas_bar: torch.Tensor) -> torch.Tensor:
    """A1111's rescale_zero_terminal_snr_abar: shift sqrt(alpha_bar) so the last step is pure noise."""
    root = alphas_bar.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    result = root ** 2
    result[-1] = ZTSNR_LAST_ALPHA_BAR
    return result


class ModelSchedule:
    """k-diffusion's DiscreteSchedule: the model's sigmas (ascending, index = timestep) and the continuous
    sigma <-> t mapping by interpolation of log sigma, as A1111 uses it (no quantisation)."""

    def __init__(self, alphas_bar: torch.Tensor):
        self.alphas_cumprod = alphas_bar.float()
        self.sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @classmethod
    def from_config(cls, config: dict) -> "ModelSchedule":
        return cls(alphas_cumprod(config))

    @property
    def sigma_min(self) -> float:
        return self.sigmas[0].item()

    @property
    def sigma_max(self) -> float:
        return self.sigmas[-1].item()

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()

    def get_sigmas(self, n: int) -> torch.Tensor:
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return _append_zero(self.t_to_sigma(t))


class LcmSchedule(ModelSchedule):
    """A1111's LCMCompVisDenoiser schedule: 50 of the 1000 timesteps (LCM's original schedule), sigma <-> t
    snapped to them."""

    ORIGINAL_STEPS = 50

    def __init__(self, alphas_bar: torch.Tensor):
        total = len(alphas_bar)
        self.skip_steps = total // self.ORIGINAL_STEPS
        valid = torch.zeros(self.ORIGINAL_STEPS, dtype=torch.float32)
        for x in range(self.ORIGINAL_STEPS):
            valid[self.ORIGINAL_STEPS - 1 - x] = alphas_bar[total - 1 - x * self.skip_steps]
        super().__init__(valid)

    def get_sigmas(self, n: int) -> torch.Tensor:
        start = self.sigma_to_t(self.sigmas[-1])
        end = self.sigma_to_t(self.sigmas[0])
        return _append_zero(self.t_to_sigma(torch.linspace(start, end, n)))

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(((t - (self.skip_steps - 1)) / self.skip_steps).float(), min=0, max=len(self.sigmas) - 1)
        return super().t_to_sigma(t)


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


# ---- A1111's schedule types: f(n, sigma_min, sigma_max, model, is_sdxl) -> n + 1 sigmas ----------------------

def uniform(n, sigma_min, sigma_max, model: ModelSchedule, is_sdxl=True):
    return model.get_sigmas(n)


def karras(n, sigma_min, sigma_max, model=None, is_sdxl=True, rho=7.0):
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n, sigma_min, sigma_max, model=None, is_sdxl=True):
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n, sigma_min, sigma_max, model=None, is_sdxl=True, rho=1.0):
    ramp = torch.linspace(1, 0, n) ** rho
    return _append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def sgm_uniform(n, sigma_min, sigma_max, model: ModelSchedule, is_sdxl=True):
    start = model.sigma_to_t(torch.tensor(sigma_max))
    end = model.sigma_to_t(torch.tensor(sigma_min))
    sigs = [model.t_to_sigma(ts) for ts in torch.linspace(start, end, n + 1)[:-1]]
    return torch.FloatTensor(sigs + [0.0])


def align_your_steps(n, sigma_min, sigma_max, model=None, is_sdxl=True):
    sigmas = list(AYS_SDXL if is_sdxl else AYS_SD15)
    if n != len(sigmas):
        xs = np.linspace(0, 1, len(sigmas))
        ys = np.log(sigmas[::-1])
        interpolated = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
        sigmas = np.append(interpolated, [0.0])
    else:
        sigmas.append(0.0)
    return torch.FloatTensor(sigmas)


def kl_optimal(n, sigma_min, sigma_max, model=None, is_sdxl=True):
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    step_indices = torch.arange(n + 1)
    return torch.tan(step_indices / n * alpha_min + (1.0 - step_indices / n) * alpha_max)


def simple(n, sigma_min, sigma_max, model: ModelSchedule, is_sdxl=True):
    ss = len(model.sigmas) / n
    sigs = [float(model.sigmas[-(1 + int(x * ss))]) for x in range(n)]
    return torch.FloatTensor(sigs + [0.0])


def normal(n, sigma_min, sigma_max, model: ModelSchedule, is_sdxl=True):
    start = model.sigma_to_t(torch.tensor(sigma_max))
    end = model.sigma_to_t(torch.tensor(sigma_min))
    sigs = [model.t_to_sigma(ts) for ts in torch.linspace(start, end, n)]
    return torch.FloatTensor(sigs + [0.0])


def ddim(n, sigma_min, sigma_max, model: ModelSchedule, is_sdxl=True):
    sigs = []
    ss = max(len(model.sigmas) // n, 1)
    x = 1
    while x < len(model.sigmas):
        sigs.append(float(model.sigmas[x]))
        x += ss
    return torch.FloatTensor(sigs[::-1] + [0.0])


def beta(n, sigma_min, sigma_max, model=None, is_sdxl=True):
    from scipy import stats  # scipy is heavy to import; only this schedule needs it

    timesteps = 1 - np.linspace(0, 1, n)
    timesteps = [stats.beta.ppf(x, BETA_ALPHA, BETA_BETA) for x in timesteps]
    return torch.FloatTensor([sigma_min + (x * (sigma_max - sigma_min)) for x in timesteps] + [0.0])


def turbo(n, sigma_min, sigma_max, model: ModelSchedule, is_sdxl=True):
    """Forge's "Turbo" (SD-Turbo's schedule, not in A1111 1.10): n evenly spaced timesteps ending at 999."""
    timesteps = torch.flip(torch.arange(1, n + 1) * float(1000.0 / n) - 1, (0,)).round().long().clip(0, 999)
    return _append_zero(model.sigmas[timesteps])


SCHEDULE_FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
    "uniform": uniform, "karras": karras, "exponential": exponential, "polyexponential": polyexponential,
    "sgm_uniform": sgm_uniform, "kl_optimal": kl_optimal, "align_your_steps": align_your_steps,
    "simple": simple, "normal": normal, "ddim": ddim, "beta": beta, "turbo": turbo,
}


def schedule_sigmas(api_name: str, steps: int, model: ModelSchedule, is_sdxl: bool = True,
                    discard_penultimate: bool = False) -> torch.Tensor:
    """A1111's KDiffusionSampler.get_sigmas: `steps` sigmas and a final 0 (one more and the next-to-last dropped
    for the samplers that discard it). "automatic" here means the sampler has no schedule of its own: the model's
    own spacing (Uniform)."""
    n = steps + 1 if discard_penultimate else steps
    function = SCHEDULE_FUNCTIONS.get(api_name, uniform)
    sigmas = function(n, model.sigma_min, model.sigma_max, model, is_sdxl)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.float()

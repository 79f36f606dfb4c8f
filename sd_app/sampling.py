"""The sampler algorithms, as A1111 v1.10 runs them: k-diffusion's `sample_*` functions (Karras et al.,
DPM-Solver, DPM-Solver++), A1111's Restart and LCM, and its timestep samplers DDIM and PLMS.

Every sampler has the same shape, `sample(model, x, sigmas, noise, callback, **options) -> x`:
- `model(x, sigma) -> denoised` (sigma a 1-d tensor, one per image): `denoiser.Denoiser` for the k-diffusion
  samplers; for the timestep samplers `model(x, t) -> eps` (`denoiser.Denoiser.eps_at_timestep`).
- `noise` (a `Noise`): `noise.next()` is A1111's per-step draw (it replaces k-diffusion's `torch.randn_like`
  with `p.rng.next()`); `noise.sampler(sigma, sigma_next)` is what the samplers that take a noise sampler
  draw from (the Brownian tree of the image seeds for the SDE samplers, else `next()`).
- `callback({'x', 'i', 'sigma', 'denoised'})` once per step, as k-diffusion calls it.
The arithmetic keeps k-diffusion's order of operations: the tests compare against it to float precision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

NoiseSampler = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Noise:
    next: Callable[[], torch.Tensor]  # the batch's next per-step noise, as A1111's p.rng.next()
    brownian: NoiseSampler | None = None  # for the SDE samplers: BrownianTreeNoiseSampler of the image seeds

    def sampler(self, sigma, sigma_next) -> torch.Tensor:
        return self.next()


class BrownianNoise:
    """k-diffusion's BrownianTreeNoiseSampler: one torchsde Brownian tree per image seed over [sigma_min,
    sigma_max], so an image's noise does not depend on its batch (A1111's create_noise_sampler)."""

    def __init__(self, x: torch.Tensor, sigma_min, sigma_max, seeds: list[int]):
        import torchsde  # only the SDE samplers need it

        t0, t1 = torch.as_tensor(sigma_min), torch.as_tensor(sigma_max)
        self.sign = 1 if t0 < t1 else -1
        t0, t1 = (t0, t1) if t0 < t1 else (t1, t0)
        w0 = torch.zeros_like(x)[0]
        self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=seed) for seed in seeds]

    def __call__(self, sigma, sigma_next) -> torch.Tensor:
        t0, t1 = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        sign = 1 if t0 < t1 else -1
        low, high = (t0, t1) if t0 < t1 else (t1, t0)
        w = torch.stack([tree(low, high) for tree in self.trees]) * (self.sign * sign)
        return w / (t1 - t0).abs().sqrt()


def brownian_noise(x: torch.Tensor, sigmas: torch.Tensor, seeds: list[int]) -> BrownianNoise:
    """A1111's noise sampler for the SDE samplers: over the whole schedule's positive sigmas."""
    return BrownianNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), seeds)


def _noise_sampler(noise: Noise) -> NoiseSampler:
    return noise.brownian or noise.sampler


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma


def ancestral_step(sigma_from, sigma_to, eta=1.0):
    """How far down to step deterministically, and how much noise to add back (k-diffusion's get_ancestral_step)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _step(callback, x, i, sigma, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


def _sigma_fn(t):
    return t.neg().exp()


def _t_fn(sigma):
    return sigma.log().neg()


# ---- first and second order ----------------------------------------------------------------------------------
# Euler, Heun and DPM2 draw churn noise only when s_churn > 0, which A1111 leaves at 0: the draw k-diffusion makes
# every step regardless is left out (it is never used, and the sequence of later draws is the sampler's alone).

@torch.no_grad()
def euler(model, x, sigmas, noise: Noise, callback=None):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        _step(callback, x, i, sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def euler_ancestral(model, x, sigmas, noise: Noise, callback=None, eta=1.0, s_noise=1.0):
    sample_noise = _noise_sampler(noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _step(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + sample_noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def heun(model, x, sigmas, noise: Noise, callback=None):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        _step(callback, x, i, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def dpm_2(model, x, sigmas, noise: Noise, callback=None):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        d = to_d(x, sigmas[i], denoised)
        _step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = model(x_2, sigma_mid * s_in)
            x = x + to_d(x_2, sigma_mid, denoised_2) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def dpm_2_ancestral(model, x, sigmas, noise: Noise, callback=None, eta=1.0, s_noise=1.0):
    sample_noise = _noise_sampler(noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _step(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            denoised_2 = model(x_2, sigma_mid * s_in)
            x = x + to_d(x_2, sigma_mid, denoised_2) * (sigma_down - sigmas[i])
            x = x + sample_noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _lms_coefficient(order, t, i, j):
    from scipy import integrate  # as k-diffusion: the Adams coefficients by quadrature

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def lms(model, x, sigmas, noise: Noise, callback=None, order=4):
    s_in = x.new_ones([x.shape[0]])
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _step(callback, x, i, sigmas[i], denoised)
        current = min(i + 1, order)
        coefficients = [_lms_coefficient(current, sigmas_cpu, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(ds)))
    return x


# ---- DPM-Solver++ --------------------------------------------------------------------------------------------

@torch.no_grad()
def dpmpp_2s_ancestral(model, x, sigmas, noise: Noise, callback=None, eta=1.0, s_noise=1.0):
    sample_noise = _noise_sampler(noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _step(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, _sigma_fn(s) * s_in)
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + sample_noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def dpmpp_sde(model, x, sigmas, noise: Noise, callback=None, eta=1.0, s_noise=1.0, r=1 / 2):
    sample_noise = _noise_sampler(noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
        s_ = _t_fn(sd)
        x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + sample_noise(_sigma_fn(t), _sigma_fn(s)) * s_noise * su
        denoised_2 = model(x_2, _sigma_fn(s) * s_in)
        sd, su = ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
        t_next_ = _t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + sample_noise(_sigma_fn(t), _sigma_fn(t_next)) * s_noise * su
    return x


@torch.no_grad()
def dpmpp_2m(model, x, sigmas, noise: Noise, callback=None):
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _step(callback, x, i, sigmas[i], denoised)
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t_fn(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def dpmpp_2m_sde(model, x, sigmas, noise: Noise, callback=None, eta=1.0, s_noise=1.0, solver_type="midpoint"):
    sample_noise = _noise_sampler(noise)
    s_in = x.new_ones([x.shape[0]])
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + sample_noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() \
                    * s_noise
        old_denoised = denoised
        h_last = h
    return x


def dpmpp_2m_sde_heun(model, x, sigmas, noise: Noise, callback=None, eta=1.0, s_noise=1.0):
    return dpmpp_2m_sde(model, x, sigmas, noise, callback, eta, s_noise, solver_type="heun")


@torch.no_grad()
def dpmpp_3m_sde(model, x, sigmas, noise: Noise, callback=None, eta=1.0, s_noise=1.0):
    sample_noise = _noise_sampler(noise)
    s_in = x.new_ones([x.shape[0]])
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _step(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if eta:
                x = x + sample_noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() \
                    * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


# ---- DPM-Solver (Lu et al. 2022): DPM fast (fixed steps), DPM adaptive ------------------------------------------

class _DpmSolver:
    """k-diffusion's DPMSolver, over t = -log(sigma)."""

    def __init__(self, model, callback):
        self.model = model
        self.callback = callback

    @staticmethod
    def t(sigma):
        return -sigma.log()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, cache, key, x, t):
        if key in cache:
            return cache[key], cache
        sigma = self.sigma(t) * x.new_ones([x.shape[0]])
        eps = (x - self.model(x, sigma)) / self.sigma(t)
        return eps, {key: eps, **cache}

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * eps, cache

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, cache = self.eps(cache, "eps_r1", u1, s1)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps), \
            cache

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, cache = self.eps(cache, "eps_r1", u1, s1)
        u2 = x - self.sigma(s2) * (r2 * h).expm1() * eps - self.sigma(s2) * (r2 / r1) * (
            (r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        eps_r2, cache = self.eps(cache, "eps_r2", u2, s2)
        return x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (
            eps_r2 - eps), cache

    def ancestral(self, s, t, t_end, eta):
        if not eta:
            return t, 0.0
        sd, su = ancestral_step(self.sigma(s), self.sigma(t), eta)
        t_ = torch.minimum(t_end, self.t(sd))
        return t_, (self.sigma(t) ** 2 - self.sigma(t_) ** 2) ** 0.5


@torch.no_grad()
def dpm_fast(model, x, sigma_min, sigma_max, n, noise: Noise, callback=None, eta=1.0, s_noise=1.0):
    solver = _DpmSolver(model, callback)
    sample_noise = _noise_sampler(noise)
    t_start, t_end = solver.t(torch.tensor(sigma_max)), solver.t(torch.tensor(sigma_min))
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = solver.ancestral(t, t_next, t_end, eta)
        cache = {}
        eps, cache = solver.eps(cache, "eps", x, t)
        _step(callback, x, i, solver.sigma(t), x - solver.sigma(t) * eps)
        x, cache = (solver.step_1, solver.step_2, solver.step_3)[order - 1](x, t, t_next_, cache)
        x = x + su * s_noise * sample_noise(solver.sigma(t), solver.sigma(t_next))
    return x


@torch.no_grad()
def dpm_adaptive(model, x, sigma_min, sigma_max, n, noise: Noise, callback=None, eta=1.0, s_noise=1.0, order=3,
                 rtol=0.05, atol=0.0078, h_init=0.05, accept_safety=0.81):
    """Steps chosen by a PID controller on the error between orders 2 and 3 (integral term only, as k-diffusion's
    defaults); `n` is unused, as in k-diffusion."""
    solver = _DpmSolver(model, callback)
    sample_noise = _noise_sampler(noise)
    t_start, t_end = solver.t(torch.tensor(sigma_max)), solver.t(torch.tensor(sigma_min))
    atol, rtol = torch.tensor(atol), torch.tensor(rtol)
    s, x_prev, h = t_start, x, abs(h_init)
    exponent = 1 / (1.5 if eta else order)
    errors = []
    steps = 0
    while s < t_end - 1e-5:
        cache = {}
        t = torch.minimum(t_end, s + h)
        t_, su = solver.ancestral(s, t, t_end, eta)
        eps, cache = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        x_low, cache = solver.step_2(x, s, t_, cache, r1=1 / 3)
        x_high, cache = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol, rtol * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        inverse = 1 / (float(error) + 1e-8)
        if not errors:
            errors = [inverse, inverse, inverse]
        errors[0] = inverse
        factor = errors[0] ** exponent * errors[1] ** -0.0 * errors[2] ** 0.0
        factor = 1 + math.atan(factor - 1)
        if factor >= accept_safety:
            errors[2], errors[1] = errors[1], errors[0]
            x_prev = x_low
            x = x_high + su * s_noise * sample_noise(solver.sigma(s), solver.sigma(t))
            s = t
        h *= factor
        steps += 1
        _step(callback, x, steps - 1, solver.sigma(s), denoised)
    return x


# ---- A1111's own: Restart, LCM ---------------------------------------------------------------------------------

def restart_steps(sigmas: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A1111's Restart plan (Xu et al. 2023): from 20 steps on, the schedule is rebuilt as Karras with fewer steps
    and a stretch near sigma 0.1 is run again (twice from 36 steps) after re-noising to sigma 2."""
    from .sigmas import karras

    steps = sigmas.shape[0] - 1
    restart_list = {}
    if steps >= 20:
        restart_count, restart_times = 9, 1
        if steps >= 36:
            restart_count, restart_times = steps // 4, 2
        sigmas = karras(steps - restart_count * restart_times, sigmas[-2].item(), sigmas[0].item())
        restart_list = {0.1: [restart_count + 1, restart_times, 2]}
    restart_list = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    plan = []
    for i in range(len(sigmas) - 1):
        plan.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_list:
            count, times, restart_max = restart_list[i + 1]
            min_idx = i + 1
            max_idx = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = karras(count, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                for _ in range(times):
                    plan.extend(zip(sigma_restart[:-1], sigma_restart[1:]))
    return plan


@torch.no_grad()
def restart(model, x, sigmas, noise: Noise, callback=None, s_noise=1.0):
    s_in = x.new_ones([x.shape[0]])
    last_sigma = None
    for step, (old_sigma, new_sigma) in enumerate(restart_steps(sigmas)):
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + noise.next() * s_noise * (old_sigma ** 2 - last_sigma ** 2) ** 0.5
        denoised = model(x, old_sigma * s_in)
        d = to_d(x, old_sigma, denoised)
        _step(callback, x, step, new_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, new_sigma * s_in)
            x = x + (d + to_d(x_2, new_sigma, denoised_2)) / 2 * dt
        last_sigma = new_sigma
    return x


@torch.no_grad()
def lcm(model, x, sigmas, noise: Noise, callback=None):
    sample_noise = _noise_sampler(noise)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in)
        _step(callback, x, i, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * sample_noise(sigmas[i], sigmas[i + 1])
    return x


# ---- A1111's timestep samplers (modules/sd_samplers_timesteps_impl.py): model(x, t) -> eps ---------------------

def a1111_timesteps(steps: int) -> torch.Tensor:
    """A1111's timesteps for DDIM, PLMS and UniPC: evenly spaced from 1 ("leading" spacing, offset 1)."""
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


def _alphas(alphas_cumprod, timesteps, x):
    alphas = alphas_cumprod[timesteps]
    previous = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))]
    return alphas, previous.to(torch.float64 if x.device.type not in ("mps", "xpu") else torch.float32)


@torch.no_grad()
def ddim(model, x, timesteps, noise: Noise, callback=None, alphas_cumprod=None, eta=0.0):
    alphas, alphas_prev = _alphas(alphas_cumprod, timesteps, x)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    a_prev_cpu, a_cpu = alphas_prev.cpu().double(), alphas.cpu().double()
    sigmas = eta * torch.sqrt((1 - a_prev_cpu) / (1 - a_cpu) * (1 - a_cpu / a_prev_cpu))
    s_in = x.new_ones((x.shape[0]))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * s_in)
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * e_t
        x = a_prev.sqrt() * pred_x0 + dir_xt + (sigma_t * noise.next() if eta else 0)
        _step(callback, x, i, 0, pred_x0)
    return x


@torch.no_grad()
def plms(model, x, timesteps, noise: Noise, callback=None, alphas_cumprod=None):
    alphas, alphas_prev = _alphas(alphas_cumprod, timesteps, x)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    s_in = x.new_ones([x.shape[0]])
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    old_eps = []

    def x_prev_and_pred_x0(e_t, index):
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        ts = timesteps[index].item() * s_in
        t_next = timesteps[max(index - 1, 0)].item() * s_in
        e_t = model(x, ts)
        if not old_eps:  # pseudo improved Euler (2nd order)
            x_prev, _ = x_prev_and_pred_x0(e_t, index)
            e_t_prime = (e_t + model(x_prev, t_next)) / 2
        elif len(old_eps) == 1:  # Adams-Bashforth, 2nd to 4th order
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_prev, pred_x0 = x_prev_and_pred_x0(e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_prev
        _step(callback, x, i, 0, pred_x0)
    return x


# ---- UniPC (Zhao et al. 2023), as A1111 runs it: multistep, B(h) = h ("bh1"), order 3, data prediction --------

class _VpSchedule:
    """The discrete VP schedule UniPC works on: t in (0, 1], log alpha_t interpolated linearly between the
    1000 training steps (t_i = (i + 1) / N)."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        log_alphas = 0.5 * torch.log(alphas_cumprod)
        self.total_n = len(log_alphas)
        self.t_array = torch.linspace(0.0, 1.0, self.total_n + 1)[1:].reshape((1, -1))
        self.log_alpha_array = log_alphas.reshape((1, -1))

    def log_alpha(self, t):
        return _interpolate(t.reshape((-1, 1)), self.t_array.to(t.device),
                            self.log_alpha_array.to(t.device)).reshape((-1))

    def alpha(self, t):
        return torch.exp(self.log_alpha(t))

    def std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lam(self, t):
        log_mean = self.log_alpha(t)
        return log_mean - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean))


def _interpolate(x, xp, yp):
    """Piecewise linear y(x) through (xp, yp), extended linearly beyond the ends (DPM-Solver's interpolate_fn)."""
    n, k = x.shape[0], xp.shape[1]
    all_x = torch.cat([x.unsqueeze(2), xp.unsqueeze(0).repeat((n, 1, 1))], dim=2)
    sorted_all_x, x_indices = torch.sort(all_x, dim=2)
    x_idx = torch.argmin(x_indices, dim=2)
    cand_start_idx = x_idx - 1
    start_idx = torch.where(torch.eq(x_idx, 0), torch.tensor(1, device=x.device),
                            torch.where(torch.eq(x_idx, k), torch.tensor(k - 2, device=x.device), cand_start_idx))
    end_idx = torch.where(torch.eq(start_idx, cand_start_idx), start_idx + 2, start_idx + 1)
    start_x = torch.gather(sorted_all_x, dim=2, index=start_idx.unsqueeze(2)).squeeze(2)
    end_x = torch.gather(sorted_all_x, dim=2, index=end_idx.unsqueeze(2)).squeeze(2)
    start_idx2 = torch.where(torch.eq(x_idx, 0), torch.tensor(0, device=x.device),
                             torch.where(torch.eq(x_idx, k), torch.tensor(k - 2, device=x.device), cand_start_idx))
    y = yp.unsqueeze(0).expand(n, -1, -1)
    start_y = torch.gather(y, dim=2, index=start_idx2.unsqueeze(2)).squeeze(2)
    end_y = torch.gather(y, dim=2, index=(start_idx2 + 1).unsqueeze(2)).squeeze(2)
    return start_y + (x - start_x) * (end_y - start_y) / (end_x - start_x)


class _UniPC:
    def __init__(self, eps_model, schedule: _VpSchedule, variant="bh1"):
        self.eps_model = eps_model
        self.ns = schedule
        self.variant = variant

    def data_prediction(self, x, t):
        t_input = (t - 1.0 / self.ns.total_n) * 1000.0  # A1111's UniPCCFG.get_model_input_time
        noise = self.eps_model(x, t_input)
        return (x - self.ns.std(t)[:, None, None, None] * noise) / self.ns.alpha(t)[:, None, None, None]

    def update(self, x, model_prev_list, t_prev_list, t, order, use_corrector=True):
        """One predictor(-corrector) step of the B(h) variant."""
        ns = self.ns
        t_prev_0 = t_prev_list[-1]
        lambda_prev_0, lambda_t = ns.lam(t_prev_0), ns.lam(t)
        model_prev_0 = model_prev_list[-1]
        sigma_prev_0, sigma_t = ns.std(t_prev_0), ns.std(t)
        alpha_t = torch.exp(ns.log_alpha(t))
        h = lambda_t - lambda_prev_0
        rks, d1s = [], []
        for i in range(1, order):
            rk = ((ns.lam(t_prev_list[-(i + 1)]) - lambda_prev_0) / h)[0]
            rks.append(rk)
            d1s.append((model_prev_list[-(i + 1)] - model_prev_0) / rk)
        rks.append(1.0)
        rks = torch.tensor(rks, device=x.device)
        hh = -h[0]
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial = 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        r_rows, b = [], []
        for i in range(1, order + 1):
            r_rows.append(torch.pow(rks, i - 1))
            b.append(h_phi_k * factorial / b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        r_matrix = torch.stack(r_rows)
        b = torch.tensor(b, device=x.device)
        if d1s:
            d1s = torch.stack(d1s, dim=1)
            rhos_p = torch.tensor([0.5], device=b.device) if order == 2 else torch.linalg.solve(
                r_matrix[:-1, :-1], b[:-1])
        else:
            d1s = None
        if use_corrector:
            rhos_c = torch.tensor([0.5], device=b.device) if order == 1 else torch.linalg.solve(r_matrix, b)
        x_t_ = (sigma_t / sigma_prev_0)[:, None, None, None] * x \
            - (alpha_t * h_phi_1)[:, None, None, None] * model_prev_0
        pred_res = torch.einsum("k,bkchw->bchw", rhos_p, d1s) if d1s is not None else 0
        x_t = x_t_ - (alpha_t * b_h)[:, None, None, None] * pred_res
        model_t = None
        if use_corrector:
            model_t = self.data_prediction(x_t, t)
            corr_res = torch.einsum("k,bkchw->bchw", rhos_c[:-1], d1s) if d1s is not None else 0
            x_t = x_t_ - (alpha_t * b_h)[:, None, None, None] * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
        return x_t, model_t


@torch.no_grad()
def unipc(model, x, timesteps, noise: Noise, callback=None, alphas_cumprod=None, is_img2img=False, order=3,
          variant="bh1", lower_order_final=True):
    """A1111's UniPC (its options' defaults: bh1, time_uniform, order 3, lower order at the end). A1111 stops
    with an assertion when steps < order; here the order drops to the step count."""
    solver = _UniPC(model, _VpSchedule(alphas_cumprod), variant)
    steps = len(timesteps)
    order = min(order, steps)
    t_start = float(timesteps[-1].cpu() / 1000 + 1 / 1000) if is_img2img else 1.0
    ts = torch.linspace(t_start, 1.0 / solver.ns.total_n, steps + 1).to(x.device)
    index = 0

    def after_update(x, model_x):
        nonlocal index
        _step(callback, x, index, 0, model_x)
        index += 1

    vec_t = ts[0].expand((x.shape[0]))
    model_prev_list, t_prev_list = [solver.data_prediction(x, vec_t)], [vec_t]
    for init_order in range(1, order):
        vec_t = ts[init_order].expand(x.shape[0])
        x, model_x = solver.update(x, model_prev_list, t_prev_list, vec_t, init_order)
        if model_x is None:
            model_x = solver.data_prediction(x, vec_t)
        after_update(x, model_x)
        model_prev_list.append(model_x)
        t_prev_list.append(vec_t)
    for step in range(order, steps + 1):
        vec_t = ts[step].expand(x.shape[0])
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = solver.update(x, model_prev_list, t_prev_list, vec_t, step_order, use_corrector=step != steps)
        after_update(x, model_x)
        for i in range(order - 1):
            t_prev_list[i] = t_prev_list[i + 1]
            model_prev_list[i] = model_prev_list[i + 1]
        t_prev_list[-1] = vec_t
        if step < steps:
            model_prev_list[-1] = model_x if model_x is not None else solver.data_prediction(x, vec_t)
    return x


def dpm_steps_for(name: str, steps: int, sigmas: torch.Tensor) -> int:
    """How many callbacks a run makes, for the progress bar (Restart runs extra steps; the others one per sigma)."""
    if name == "restart":
        return len(restart_steps(sigmas))
    if name == "dpm_fast":  # one callback per solver step of order 3 (2, 1 at the end)
        return (len(sigmas) - 1) // 3 + 1
    return len(sigmas) - 1


SAMPLE_FUNCTIONS: dict[str, Callable] = {
    "euler": euler, "euler_ancestral": euler_ancestral, "heun": heun, "dpm_2": dpm_2,
    "dpm_2_ancestral": dpm_2_ancestral, "lms": lms, "dpmpp_2s_ancestral": dpmpp_2s_ancestral,
    "dpmpp_sde": dpmpp_sde, "dpmpp_2m": dpmpp_2m, "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_2m_sde_heun": dpmpp_2m_sde_heun, "dpmpp_3m_sde": dpmpp_3m_sde, "restart": restart, "lcm": lcm,
    "ddim": ddim, "plms": plms, "dpm_fast": dpm_fast, "dpm_adaptive": dpm_adaptive,
    "unipc": unipc,
}

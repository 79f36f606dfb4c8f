"""Parity with A1111 v1.10's sampling: our samplers and schedules against k-diffusion 0.1.1.post1's own code
(tests/reference/k_diffusion, MIT), with the same starting noise and the same per-step noise on both sides.

A1111 runs k-diffusion's sample_* functions with its CFGDenoiser around k-diffusion's DiscreteEpsDDPMDenoiser;
the reference side here is exactly that (the CFG wrapper written out as A1111 has it). Every sampler x schedule
pair runs on a cheap deterministic stand-in model (the sampler arithmetic is the same whatever the model); the
denoiser itself (CFG, eps / v scaling, t from sigma) and one whole run are compared on the demo model's UNet.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reference.k_diffusion import external as KE
from reference.k_diffusion import sampling as K
from sd_app import denoiser as denoiser_module, loop, samplers, sampling, sigmas as S

CONFIG = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
TOLERANCE = 1e-4

KDIFFUSION = {  # our sampler -> k-diffusion's function (and its extra arguments, as A1111 passes them)
    "Euler": ("sample_euler", {}), "Euler a": ("sample_euler_ancestral", {}), "LMS": ("sample_lms", {}),
    "Heun": ("sample_heun", {}), "DPM2": ("sample_dpm_2", {}), "DPM2 a": ("sample_dpm_2_ancestral", {}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", {}), "DPM++ 2M": ("sample_dpmpp_2m", {}),
    "DPM++ SDE": ("sample_dpmpp_sde", {}), "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", {}),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", {}),
}
SCHEDULES = [s for s in samplers.SCHEDULES if s.name != "Automatic"]


@pytest.fixture(scope="module")
def model():
    return S.ModelSchedule.from_config(CONFIG)


@pytest.fixture(scope="module")
def reference(model):
    """k-diffusion's discrete schedule over the same alphas_cumprod (A1111's CompVisDenoiser)."""
    return KE.DiscreteEpsDDPMDenoiser(_Inner(), model.alphas_cumprod, quantize=False)


class _Inner(torch.nn.Module):
    """A stand-in eps model: smooth, nonlinear in x and t, cheap."""

    def forward(self, x, t):
        return torch.sin(x * 0.7 + t[:, None, None, None] / 300.0) * 0.9


def _ours(model):
    def denoise(x, sigma):
        c_in = (1 / (sigma ** 2 + 1) ** 0.5)[:, None, None, None]
        return x + _Inner()(x * c_in, model.sigma_to_t(sigma)) * -sigma[:, None, None, None]
    return denoise


class _RandnLike:
    """A1111's TorchHijack: k-diffusion's torch.randn_like draws from the image RNG's next()."""

    def __init__(self, next_noise):
        self.next_noise = next_noise

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x):
        return self.next_noise()


def _rng(shape, seed=9):
    generator = torch.Generator().manual_seed(seed)
    return lambda: torch.randn(shape, generator=generator)


def _run_reference(function, denoise, x, sigmas, seeds, brownian, **options):
    if brownian:
        options["noise_sampler"] = K.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seeds)
    K.torch = _RandnLike(_rng(x.shape))
    try:
        return getattr(K, function)(denoise, x, sigmas, disable=True, **options)
    finally:
        K.torch = torch


def _run_ours(sampler, denoise, x, sigmas, seeds):
    noise = sampling.Noise(_rng(x.shape))
    if sampler.brownian:
        noise.brownian = sampling.brownian_noise(x, sigmas, seeds)
    return sampling.SAMPLE_FUNCTIONS[sampler.function](denoise, x, sigmas, noise)


# ---- schedules ---------------------------------------------------------------------------------------------------

def test_model_sigmas_and_t_mapping_are_k_diffusions(model, reference):
    assert torch.equal(model.sigmas, reference.sigmas)
    assert model.sigma_min == pytest.approx(0.0291675, abs=1e-6) and model.sigma_max == pytest.approx(14.614642, 1e-6)
    sigma = torch.tensor([14.6, 3.3, 0.5, 0.03])
    assert torch.equal(model.sigma_to_t(sigma), reference.sigma_to_t(sigma))
    t = torch.tensor([999.0, 500.25, 0.5, 0.0])
    assert torch.equal(model.t_to_sigma(t), reference.t_to_sigma(t))
    for n in (4, 20):
        assert torch.equal(S.uniform(n, 0, 0, model), reference.get_sigmas(n))


@pytest.mark.parametrize("steps", [4, 10, 25])
def test_k_diffusion_schedules_match(model, steps):
    lo, hi = model.sigma_min, model.sigma_max
    assert torch.equal(S.karras(steps, lo, hi), K.get_sigmas_karras(steps, lo, hi))
    assert torch.equal(S.exponential(steps, lo, hi), K.get_sigmas_exponential(steps, lo, hi))
    assert torch.equal(S.polyexponential(steps, lo, hi), K.get_sigmas_polyexponential(steps, lo, hi))


def test_a1111_schedules_by_their_formulas(model, reference):
    """A1111's own schedule types (sd_schedulers.py), from their definitions on k-diffusion's discrete schedule."""
    n, lo, hi = 6, model.sigma_min, model.sigma_max
    t_hi, t_lo = reference.sigma_to_t(torch.tensor(hi)), reference.sigma_to_t(torch.tensor(lo))
    sgm = [reference.t_to_sigma(t).item() for t in torch.linspace(t_hi, t_lo, n + 1)[:-1]] + [0.0]
    assert torch.equal(S.sgm_uniform(n, lo, hi, model), torch.FloatTensor(sgm))
    normal = [reference.t_to_sigma(t).item() for t in torch.linspace(t_hi, t_lo, n)] + [0.0]
    assert torch.equal(S.normal(n, lo, hi, model), torch.FloatTensor(normal))
    step = 1000 / n
    simple = [reference.sigmas[-(1 + int(x * step))].item() for x in range(n)] + [0.0]
    assert torch.equal(S.simple(n, lo, hi, model), torch.FloatTensor(simple))
    ddim = [reference.sigmas[x].item() for x in range(1, 1000, 1000 // n)][::-1] + [0.0]
    assert torch.equal(S.ddim(n, lo, hi, model), torch.FloatTensor(ddim))
    kl = [math.tan(i / n * math.atan(lo) + (1 - i / n) * math.atan(hi)) for i in range(n + 1)]
    assert np.allclose(S.kl_optimal(n, lo, hi).numpy(), kl, rtol=1e-6)
    from scipy import stats
    beta = [lo + stats.beta.ppf(1 - i / (n - 1), 0.6, 0.6) * (hi - lo) for i in range(n)] + [0.0]
    assert np.allclose(S.beta(n, lo, hi).numpy(), beta, rtol=1e-6)
    turbo = [reference.sigmas[t].item() for t in (999, 832, 666, 499, 332, 166)] + [0.0]
    assert torch.equal(S.turbo(n, lo, hi, model), torch.FloatTensor(turbo))


def test_align_your_steps_is_nvidias_table_and_its_log_linear_interpolation():
    # A1111 uses the 11 values as they are only when asked for 11 sigmas (11 steps), else interpolates.
    eleven = S.align_your_steps(11, 0, 0)
    assert torch.equal(eleven, torch.FloatTensor(list(S.AYS_SDXL) + [0.0]))
    five = S.align_your_steps(5, 0, 0).tolist()
    assert len(five) == 6 and five[0] == pytest.approx(14.615) and five[-2] == pytest.approx(0.029)
    assert five[-1] == 0.0 and five[2] == pytest.approx(0.862, rel=1e-5)
    # Log-linear: between two table values, their geometric mean.
    assert five[1] == pytest.approx(math.sqrt(2.181 * 3.771), rel=1e-5)
    assert S.align_your_steps(11, 0, 0, is_sdxl=False)[1].item() == pytest.approx(6.475)


def test_discard_penultimate_sigma_as_dpm2_and_3m_sde(model):
    full = S.schedule_sigmas("karras", 6, model)
    dropped = S.schedule_sigmas("karras", 6, model, discard_penultimate=True)
    assert len(full) == len(dropped) == 7
    assert torch.equal(dropped, torch.cat([K.get_sigmas_karras(7, model.sigma_min, model.sigma_max)[:-2],
                                           torch.zeros(1)]))


def test_zero_terminal_snr_as_a1111(model):
    zt = S.ModelSchedule.from_config({**CONFIG, "rescale_betas_zero_snr": True})
    assert zt.alphas_cumprod[-1].item() == pytest.approx(4.8973451890853435e-08)
    assert zt.sigma_max == pytest.approx(4518.76, rel=1e-3)
    assert zt.alphas_cumprod[0].item() == pytest.approx(model.alphas_cumprod[0].item(), rel=1e-6)


# ---- samplers x schedules on a stand-in model ---------------------------------------------------------------------

@pytest.mark.parametrize("name", list(KDIFFUSION))
def test_k_diffusion_samplers_on_every_schedule(model, reference, name):
    sampler = samplers.find_sampler(name)
    function, options = KDIFFUSION[name]
    worst = 0.0
    for schedule in SCHEDULES:
        sigmas = S.schedule_sigmas(schedule.api_name, 7, model, True, sampler.discard_penultimate)
        x = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(1)) * sigmas[0]
        expected = _run_reference(function, reference, x, sigmas, [5, 6], sampler.brownian, **options)
        got = _run_ours(sampler, _ours(model), x, sigmas, [5, 6])
        difference = (expected - got).abs().max().item()
        assert difference < TOLERANCE, (name, schedule.name, difference)
        worst = max(worst, difference)
    print(f"{name}: largest difference over all schedules {worst:.3g}")


@pytest.mark.parametrize("name, function", [("DPM fast", "sample_dpm_fast"), ("DPM adaptive", "sample_dpm_adaptive")])
def test_dpm_fast_and_adaptive(model, reference, name, function):
    """A1111 passes eta = 1 (eta_ancestral) and the model's own sigma range; the schedule type does not enter."""
    sampler = samplers.find_sampler(name)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(2)) * model.sigma_max
    K.torch = _RandnLike(_rng(x.shape))
    try:
        args = (model.sigma_min, model.sigma_max) + ((9,) if name == "DPM fast" else ())
        expected = getattr(K, function)(reference, x, *args, disable=True, eta=1.0)
    finally:
        K.torch = torch
    got = sampling.SAMPLE_FUNCTIONS[sampler.function](_ours(model), x, model.sigma_min, model.sigma_max, 9,
                                                      sampling.Noise(_rng(x.shape)), eta=1.0)
    assert (expected - got).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("steps, plan_length", [(8, 8), (20, 20), (36, 36)])
def test_restart_is_heun_over_a1111s_plan_with_renoising(model, reference, steps, plan_length):
    """A1111's Restart: Heun steps over its plan (Karras with a restart segment near sigma 0.1 from 20 steps),
    re-noised with the per-step noise where the plan jumps back up."""
    sigmas = S.schedule_sigmas("karras", steps, model)
    plan = sampling.restart_steps(sigmas)
    assert len(plan) == plan_length
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3)) * sigmas[0]
    next_noise, expected, last = _rng(x.shape), x, None
    for old, new in plan:
        if last is not None and last < old:
            expected = expected + next_noise() * (old ** 2 - last ** 2) ** 0.5
        expected = K.sample_heun(reference, expected, torch.stack([old, new]), disable=True)
        last = new
    got = sampling.restart(_ours(model), x, sigmas, sampling.Noise(_rng(x.shape)))
    assert (expected - got).abs().max().item() < TOLERANCE


def test_lcm_schedule_is_lcms_50_original_steps(model):
    lcm = S.LcmSchedule(model.alphas_cumprod)
    assert torch.equal(lcm.sigmas, model.sigmas[19::20])
    sigmas = S.schedule_sigmas("uniform", 4, lcm)
    assert sigmas[0].item() == pytest.approx(model.sigmas[999].item(), rel=1e-6)  # exp(log(sigma))
    assert sigmas[-2].item() == pytest.approx(model.sigmas[19].item(), rel=1e-6) and sigmas[-1] == 0
    assert lcm.sigma_to_t(sigmas[:-1]).tolist() == [999, 679, 339, 19]


# ---- the real UNet: our Denoiser against A1111's CFGDenoiser around k-diffusion's wrapper ----------------------

class _ReferenceCFG:
    """A1111's CFGDenoiser (cond first, uncond last, one batch) around k-diffusion's DiscreteEpsDDPMDenoiser."""

    def __init__(self, unet, alphas_cumprod, cond, time_ids, scale):
        self.scale = scale
        self.cond = cond
        self.time_ids = time_ids

        def apply(x, t):
            return unet(x, t, encoder_hidden_states=torch.cat([cond.embeds, cond.negative_embeds]),
                        added_cond_kwargs={"text_embeds": torch.cat([cond.pooled, cond.negative_pooled]),
                                           "time_ids": torch.cat([time_ids, time_ids])}).sample

        self.inner = KE.DiscreteEpsDDPMDenoiser(apply, alphas_cumprod, quantize=False)

    def __call__(self, x, sigma):
        out = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]))
        cond, uncond = out.chunk(2)
        return uncond + (cond - uncond) * self.scale


@pytest.fixture(scope="module")
def unet_setup(engine):
    base = engine.pipelines.base
    cond = engine.pipelines.encoder.encode("a photo of a cat", "blurry")
    schedule = S.ModelSchedule.from_config(base.scheduler_config)
    time_ids = denoiser_module.size_time_ids(1, 64, 64, "cpu")
    stage = denoiser_module.Stage(base.pipe.unet, lambda _: cond, time_ids, time_ids, schedule)
    return base.pipe.unet, cond, schedule, time_ids, stage


def test_our_denoiser_on_the_demo_unet_is_a1111s(unet_setup):
    """One call each (the UNet is slow on a busy CPU): a batch of two images at two noise levels."""
    unet, cond, schedule, time_ids, _ = unet_setup
    cond2 = cond.repeat(2)
    ids2 = time_ids.repeat(2, 1)
    stage = denoiser_module.Stage(unet, lambda _: cond2, ids2, ids2, schedule)
    x = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(4)) * 3
    sigma = torch.tensor([14.6, 0.7])
    with torch.no_grad():
        expected = _ReferenceCFG(unet, schedule.alphas_cumprod, cond2, ids2, 7.0)(x, sigma)
        got = denoiser_module.Denoiser([stage], 7.0)(x, sigma)
    assert (expected - got).abs().max().item() < TOLERANCE


def test_a_whole_run_on_the_demo_unet_matches(unet_setup):
    """DPM++ 2M SDE on its own schedule (Exponential): CFG, eps scaling and the Brownian noise together."""
    unet, cond, schedule, time_ids, stage = unet_setup
    sampler, plan = samplers.resolve("DPM++ 2M SDE")
    sigmas = S.schedule_sigmas(plan.api_name, 3, schedule, True, sampler.discard_penultimate)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4)) * sigmas[0]
    with torch.no_grad():
        expected = _run_reference("sample_dpmpp_2m_sde", _ReferenceCFG(unet, schedule.alphas_cumprod, cond, time_ids,
                                                                       7.0), x, sigmas, [4], True)
        got = _run_ours(sampler, denoiser_module.Denoiser([stage], 7.0), x, sigmas, [4])
    assert (expected - got).abs().max().item() < TOLERANCE


def test_v_prediction_scaling_is_k_diffusions(unet_setup):
    unet, cond, schedule, time_ids, stage = unet_setup
    v_stage = denoiser_module.Stage(unet, lambda _: cond, time_ids, time_ids, schedule, v_prediction=True)
    x = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5)) * 3
    sigma = torch.tensor([2.5])

    def apply(x_in, t):
        return unet(x_in, t, encoder_hidden_states=torch.cat([cond.embeds, cond.negative_embeds]),
                    added_cond_kwargs={"text_embeds": torch.cat([cond.pooled, cond.negative_pooled]),
                                       "time_ids": torch.cat([time_ids, time_ids])}).sample

    reference = KE.DiscreteVDDPMDenoiser(apply, schedule.alphas_cumprod, quantize=False)
    with torch.no_grad():
        out = reference(torch.cat([x, x]), torch.cat([sigma, sigma]))
        expected = out[1:] + (out[:1] - out[1:]) * 5.0
        got = denoiser_module.Denoiser([v_stage], 5.0)(x, sigma)
    assert (expected - got).abs().max().item() < TOLERANCE


# ---- the hooks: img2img start, inpainting blend, conditioning per call, interrupt -------------------------------

def _stand_in_request(model, sampler_name="Euler", **kwargs):
    """A loop.Request whose 'UNet' is the stand-in (through a Denoiser-compatible stage)."""
    sampler, schedule = samplers.resolve(sampler_name)
    x_shape = (1, 4, 8, 8)
    start = torch.randn(x_shape, generator=torch.Generator().manual_seed(6))
    return loop.Request(sampler, schedule, 10, 1.0, [], start, _rng(x_shape), [6], **kwargs)


def test_img2img_starts_at_a1111s_index(monkeypatch, model):
    seen = {}

    def fake_euler(denoise, x, sigmas, noise, callback=None):
        seen["x"], seen["sigmas"] = x, sigmas
        return x

    monkeypatch.setitem(sampling.SAMPLE_FUNCTIONS, "euler", fake_euler)
    init = torch.ones((1, 4, 8, 8))
    request = _stand_in_request(model, init=denoiser_module.Inpainting(init), strength=0.5)
    request.stages = [denoiser_module.Stage(None, None, None, None, model)]
    loop.denoise(request)
    full = S.schedule_sigmas("uniform", 10, model)
    assert loop.img2img_steps(10, 0.5) == 5 and loop.img2img_steps(10, 1.0) == 9
    assert torch.equal(seen["sigmas"], full[10 - 5 - 1:]) and len(seen["sigmas"]) == 7  # t_enc + 1 steps
    assert torch.equal(seen["x"], init + request.noise * full[4])


def test_inpainting_keeps_the_unmasked_area_and_conditioning_is_asked_per_call(model):
    calls = []

    class Unet(torch.nn.Module):
        config = type("C", (), {"in_channels": 4})()

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x, t, encoder_hidden_states, added_cond_kwargs, return_dict=False):
            return (torch.sin(x) * self.w,)

    cond = type("Cond", (), {})()
    cond.embeds = cond.negative_embeds = torch.zeros((1, 2, 3))
    cond.pooled = cond.negative_pooled = torch.zeros((1, 3))

    def cond_at(call):
        calls.append(call)
        return cond

    ids = torch.zeros((1, 6))
    init = torch.full((1, 4, 8, 8), 0.25)
    mask = torch.zeros((1, 1, 8, 8))
    mask[..., :4] = 1  # repaint the left half
    request = _stand_in_request(model, "Heun", init=denoiser_module.Inpainting(init, mask), strength=0.75)
    request.stages = [denoiser_module.Stage(Unet(), cond_at, ids, ids, model)]
    out = loop.denoise(request)
    assert torch.equal(out[..., 4:], init[..., 4:].expand_as(out[..., 4:]))
    assert not torch.equal(out[..., :4], init[..., :4].expand_as(out[..., :4]))
    t_enc = loop.img2img_steps(10, 0.75)
    assert calls == list(range(len(calls))) and len(calls) == 2 * (t_enc + 1) - 1  # Heun: 2 calls a step, 1 last


def test_a_stop_before_the_first_model_call_returns_the_starting_latents(model):
    request = _stand_in_request(model, should_stop=lambda: True)
    request.stages = [denoiser_module.Stage(None, None, None, None, model)]
    out = loop.denoise(request)
    assert torch.equal(out, request.noise * S.schedule_sigmas("uniform", 10, model)[0])

"""A1111's sampler and schedule-type names, mapped to diffusers schedulers. The one place for that mapping.

A1111 (k-diffusion) samples over sigmas spaced evenly in timestep ("linspace") and, since 1.9, splits the
old combined names ("DPM++ 2M Karras") into a sampler and a schedule type. "Automatic" picks the
sampler's own default schedule, as A1111 does.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class Sampler:
    name: str  # A1111's display name
    aliases: tuple[str, ...]
    scheduler_class: str  # a diffusers scheduler class name
    options: dict[str, Any] = field(default_factory=dict)  # extra scheduler config
    default_schedule: str = "Uniform"  # what "Automatic" means for this sampler
    note: str = ""
    # Schedule options the diffusers class does not take: the schedule types that need them do not work with it.
    # Written here so names can be checked without importing diffusers (the page is up before it loads);
    # tests/test_samplers.py reads them from diffusers' signatures to keep this true.
    lacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schedule:
    name: str  # A1111's label, as written in infotext ("Schedule type: Karras")
    api_name: str  # A1111's API name (/sdapi/v1/schedulers)
    options: dict[str, Any]


# k-diffusion samplers space their steps evenly from the last training timestep to the first.
_KDIFF = {"timestep_spacing": "linspace"}
_SIGMA_SCHEDULE_KEYS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")

SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), "DPMSolverMultistepScheduler",
            {**_KDIFF, "algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}, "Karras"),
    Sampler("DPM++ SDE", ("k_dpmpp_sde",), "DPMSolverSDEScheduler", dict(_KDIFF), "Karras"),
    Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "DPMSolverMultistepScheduler",
            {**_KDIFF, "algorithm_type": "sde-dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}, "Karras"),
    Sampler("DPM++ 2S a", ("k_dpmpp_2s_a",), "DPMSolverSinglestepScheduler",
            {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}, "Karras",
            note="diffusers has no ancestral single-step solver: this one adds no noise per step",
            lacks=("timestep_spacing",)),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), "EulerAncestralDiscreteScheduler", dict(_KDIFF),
            lacks=_SIGMA_SCHEDULE_KEYS),
    Sampler("Euler", ("k_euler",), "EulerDiscreteScheduler", dict(_KDIFF)),
    Sampler("LMS", ("k_lms",), "LMSDiscreteScheduler", dict(_KDIFF)),
    Sampler("Heun", ("k_heun",), "HeunDiscreteScheduler", dict(_KDIFF)),
    Sampler("DPM2", ("k_dpm_2",), "KDPM2DiscreteScheduler", dict(_KDIFF), "Karras"),
    Sampler("DPM2 a", ("k_dpm_2_a",), "KDPM2AncestralDiscreteScheduler", dict(_KDIFF), "Karras"),
    Sampler("DDIM", ("ddim",), "DDIMScheduler", {"timestep_spacing": "leading"}, "Uniform",
            lacks=_SIGMA_SCHEDULE_KEYS),
    Sampler("UniPC", ("unipc",), "UniPCMultistepScheduler", dict(_KDIFF)),
    Sampler("LCM", ("k_lcm", "lcm"), "LCMScheduler", {"timestep_spacing": "leading"}, "Uniform",
            note="for LCM models and LoRAs: use 4-8 steps and CFG 1-2", lacks=_SIGMA_SCHEDULE_KEYS),
)

SCHEDULES: tuple[Schedule, ...] = (
    Schedule("Automatic", "automatic", {}),
    Schedule("Uniform", "uniform", {}),
    Schedule("Karras", "karras", {"use_karras_sigmas": True}),
    Schedule("Exponential", "exponential", {"use_exponential_sigmas": True}),
    Schedule("Beta", "beta", {"use_beta_sigmas": True}),
    Schedule("SGM Uniform", "sgm_uniform", {"timestep_spacing": "trailing"}),
)


def _key(name: str) -> str:
    return " ".join(name.strip().lower().split())


def find_schedule(name: str | None) -> Schedule:
    wanted = _key(name or "Automatic")
    for schedule in SCHEDULES:
        if wanted in (_key(schedule.name), schedule.api_name):
            return schedule
    raise UserError(f"unknown schedule type {name!r}; choose one of: {', '.join(s.name for s in SCHEDULES)}",
                    field="scheduler")


def _find_sampler(name: str) -> Sampler | None:
    wanted = _key(name)
    for sampler in SAMPLERS:
        if wanted == _key(sampler.name) or wanted in sampler.aliases:
            return sampler
    return None


def resolve(sampler_name: str, schedule_name: str | None = "Automatic") -> tuple[Sampler, Schedule]:
    """The sampler and the concrete schedule (never "Automatic") for A1111 names.

    Old combined names ("DPM++ 2M Karras", "DPM++ 2M SDE Exponential") are split as A1111 does; an
    explicit schedule type other than Automatic wins over the one in the name.
    """
    sampler = _find_sampler(sampler_name or "")
    schedule = find_schedule(schedule_name)
    if sampler is None:
        for candidate in SCHEDULES[2:]:
            suffix = " " + _key(candidate.name)
            if _key(sampler_name or "").endswith(suffix):
                sampler = _find_sampler(_key(sampler_name)[: -len(suffix)])
                if sampler is not None and schedule.name == "Automatic":
                    schedule = candidate
                break
    if sampler is None:
        raise UserError(f"unknown sampler {sampler_name!r}; choose one of: {', '.join(s.name for s in SAMPLERS)}",
                        field="sampler_name")
    if schedule.name == "Automatic":
        schedule = find_schedule(sampler.default_schedule)
    if not _supports(sampler, schedule):
        allowed = [s.name for s in SCHEDULES if _supports(sampler, s)]
        raise UserError(f"schedule type {schedule.name!r} does not work with sampler {sampler.name!r}; "
                        f"choose one of: {', '.join(allowed)}", field="scheduler")
    return sampler, schedule


def _supports(sampler: Sampler, schedule: Schedule) -> bool:
    return not any(key in sampler.lacks for key in schedule.options)


def make_scheduler(base_config: dict, sampler: Sampler, schedule: Schedule, seed: int | None = None):
    """A fresh diffusers scheduler for one job, built on the checkpoint's own scheduler config."""
    import diffusers  # here, not at the top: names are checked before the model stack imports

    cls = getattr(diffusers, sampler.scheduler_class)
    config = {k: v for k, v in dict(base_config).items() if not k.startswith("_")}
    for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        config.pop(flag, None)
    config.update(sampler.options)
    config.update(schedule.options)
    if "noise_sampler_seed" in inspect.signature(cls.__init__).parameters and seed is not None:
        config["noise_sampler_seed"] = seed  # the SDE sampler's Brownian noise must follow the seed too
    return cls.from_config(config)

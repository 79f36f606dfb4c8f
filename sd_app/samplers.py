"""A1111 v1.10's samplers and schedule types: names, aliases, each sampler's own schedule. The one table.

The algorithms live in `sampling.py`, the schedules in `sigmas.py`; this table says which is which, as A1111's
modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py, sd_samplers_lcm.py and sd_schedulers.py list them.
Since 1.9 A1111 splits the old combined names ("DPM++ 2M Karras") into a sampler and a schedule type.
"Automatic" picks the sampler's own schedule; a sampler without one (Euler, LMS ...) samples over the model's
own spacing and A1111's infotext then says "Schedule type: Automatic". The timestep samplers (DDIM, PLMS,
UniPC) run on A1111's fixed timesteps whatever schedule type is chosen, as in A1111.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class Sampler:
    name: str  # A1111's display name
    aliases: tuple[str, ...]
    function: str  # a key of sampling.SAMPLE_FUNCTIONS
    default_schedule: str = "Automatic"  # what "Automatic" means for this sampler ("Automatic": the model's own)
    options: dict[str, Any] = field(default_factory=dict)  # A1111's sampler options, as /sdapi/v1/samplers lists
    kind: str = "k-diffusion"  # "k-diffusion" (over sigmas), "timesteps" (DDIM, PLMS, UniPC), "lcm"
    note: str = ""

    @property
    def discard_penultimate(self) -> bool:
        return bool(self.options.get("discard_next_to_last_sigma"))

    @property
    def brownian(self) -> bool:
        """The SDE samplers draw their noise from a Brownian tree of the image seeds, not the per-step RNG."""
        return bool(self.options.get("brownian_noise"))

    @property
    def uses_schedule(self) -> bool:
        return self.kind != "timesteps"


@dataclass(frozen=True)
class Schedule:
    name: str  # A1111's label, as written in infotext ("Schedule type: Karras")
    api_name: str  # A1111's API name (/sdapi/v1/schedulers), and the sigmas.SCHEDULE_FUNCTIONS key
    aliases: tuple[str, ...] = ()
    default_rho: float = -1
    need_inner_model: bool = False
    note: str = ""


_KARRAS = {"scheduler": "karras"}
_EXPONENTIAL = {"scheduler": "exponential"}

SAMPLERS: tuple[Sampler, ...] = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), "dpmpp_2m", "Karras", dict(_KARRAS)),
    Sampler("DPM++ SDE", ("k_dpmpp_sde",), "dpmpp_sde", "Karras",
            {**_KARRAS, "second_order": True, "brownian_noise": True}),
    Sampler("DPM++ 2M SDE", ("k_dpmpp_2m_sde",), "dpmpp_2m_sde", "Exponential",
            {**_EXPONENTIAL, "brownian_noise": True}),
    Sampler("DPM++ 2M SDE Heun", ("k_dpmpp_2m_sde_heun",), "dpmpp_2m_sde_heun", "Exponential",
            {**_EXPONENTIAL, "brownian_noise": True, "solver_type": "heun"}),
    Sampler("DPM++ 2S a", ("k_dpmpp_2s_a",), "dpmpp_2s_ancestral", "Karras",
            {**_KARRAS, "uses_ensd": True, "second_order": True}),
    Sampler("DPM++ 3M SDE", ("k_dpmpp_3m_sde",), "dpmpp_3m_sde", "Exponential",
            {**_EXPONENTIAL, "discard_next_to_last_sigma": True, "brownian_noise": True}),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), "euler_ancestral", options={"uses_ensd": True}),
    Sampler("Euler", ("k_euler",), "euler"),
    Sampler("LMS", ("k_lms",), "lms"),
    Sampler("Heun", ("k_heun",), "heun", options={"second_order": True}),
    Sampler("DPM2", ("k_dpm_2",), "dpm_2", "Karras",
            {**_KARRAS, "discard_next_to_last_sigma": True, "second_order": True}),
    Sampler("DPM2 a", ("k_dpm_2_a",), "dpm_2_ancestral", "Karras",
            {**_KARRAS, "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True}),
    Sampler("DPM fast", ("k_dpm_fast",), "dpm_fast", options={"uses_ensd": True},
            note="samples between the model's smallest and largest sigma: the schedule type only scales the start"),
    Sampler("DPM adaptive", ("k_dpm_ad",), "dpm_adaptive", options={"uses_ensd": True},
            note="chooses its own steps: the step count only scales the start"),
    Sampler("Restart", ("restart",), "restart", "Karras", {**_KARRAS, "second_order": True}),
    Sampler("DDIM", ("ddim",), "ddim", kind="timesteps"),
    Sampler("PLMS", ("plms",), "plms", kind="timesteps"),
    Sampler("UniPC", ("unipc",), "unipc", kind="timesteps"),
    Sampler("LCM", ("k_lcm", "lcm"), "lcm", kind="lcm", note="for LCM models and LoRAs: use 4-8 steps and CFG 1-2"),
)

SCHEDULES: tuple[Schedule, ...] = (
    Schedule("Automatic", "automatic"),
    Schedule("Uniform", "uniform", need_inner_model=True),
    Schedule("Karras", "karras", default_rho=7.0),
    Schedule("Exponential", "exponential"),
    Schedule("Polyexponential", "polyexponential", default_rho=1.0),
    Schedule("SGM Uniform", "sgm_uniform", ("SGMUniform",), need_inner_model=True),
    Schedule("KL Optimal", "kl_optimal"),
    Schedule("Align Your Steps", "align_your_steps"),
    Schedule("Simple", "simple", need_inner_model=True),
    Schedule("Normal", "normal", need_inner_model=True),
    Schedule("DDIM", "ddim", need_inner_model=True),
    Schedule("Beta", "beta", need_inner_model=True),
    Schedule("Turbo", "turbo", need_inner_model=True, note="Forge's; not in A1111 1.10"),
)


def _key(name: str) -> str:
    return " ".join(name.strip().lower().split())


def find_schedule(name: str | None) -> Schedule:
    wanted = _key(name or "Automatic")
    for schedule in SCHEDULES:
        if wanted in (_key(schedule.name), schedule.api_name, *(_key(a) for a in schedule.aliases)):
            return schedule
    raise UserError(f"unknown schedule type {name!r}; choose one of: {', '.join(s.name for s in SCHEDULES)}",
                    field="scheduler")


def find_sampler(name: str) -> Sampler | None:
    wanted = _key(name)
    for sampler in SAMPLERS:
        if wanted == _key(sampler.name) or wanted in sampler.aliases:
            return sampler
    return None


def resolve(sampler_name: str, schedule_name: str | None = "Automatic") -> tuple[Sampler, Schedule]:
    """The sampler and the schedule it runs on for A1111 names: "Automatic" becomes the sampler's own schedule
    (which stays "Automatic" for samplers without one, as A1111 writes it).

    Old combined names ("DPM++ 2M Karras", "DPM++ 2M SDE Exponential") are split as A1111 does; an
    explicit schedule type other than Automatic wins over the one in the name.
    """
    sampler = find_sampler(sampler_name or "")
    schedule = find_schedule(schedule_name)
    if sampler is None:
        for candidate in sorted(SCHEDULES[1:], key=lambda s: -len(s.name)):
            for label in (candidate.name, candidate.api_name, *candidate.aliases):
                suffix = " " + _key(label)
                if _key(sampler_name or "").endswith(suffix):
                    sampler = find_sampler(_key(sampler_name)[: -len(suffix)])
                    if sampler is not None and schedule.name == "Automatic":
                        schedule = candidate
                    break
            if sampler is not None:
                break
    if sampler is None:
        raise UserError(f"unknown sampler {sampler_name!r}; choose one of: {', '.join(s.name for s in SAMPLERS)}",
                        field="sampler_name")
    if schedule.name == "Automatic":
        schedule = find_schedule(sampler.default_schedule)
    return sampler, schedule


def api_options(sampler: Sampler) -> dict[str, Any]:
    """A sampler's options as A1111's /sdapi/v1/samplers lists them."""
    return dict(sampler.options)

"""A1111's request bodies (`modules/api/models.py`): the same fields, types and defaults, and which of them
Homegrown does not run.

Fields for features Homegrown lacks (hires fix, face restoration, scripts other than X/Y/Z plot...) are accepted
while they hold A1111's default or an empty value, and refused with a 422 naming the field when they ask for
the feature.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..params import text_problem


class _Request(BaseModel):
    @field_validator("*", mode="before")
    @classmethod
    def _valid_text(cls, value):  # a lone surrogate in any field is a 422 naming it, never a crash later
        if (problem := text_problem(value)) is not None:
            raise ValueError(problem)
        return value


class Txt2ImgRequest(_Request):
    """A1111's StableDiffusionTxt2ImgProcessingAPI: every field, with A1111's defaults."""

    model_config = ConfigDict(extra="ignore")  # A1111 ignores fields it does not know; so do we

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


# Fields for features Homegrown does not have, with the values that mean "not used" in A1111.
UNSUPPORTED = {
    "enable_hr": ((False,), "hires fix is not supported; generate at the final size (SDXL works at ~1 megapixel)"),
    "restore_faces": ((None, False), "face restoration is not supported"),
    "tiling": ((None, False), "tiling is not supported"),
    "script_name": ((None, ""), "the one script Homegrown has is \"x/y/z plot\""),
    "script_args": (([],), "script_args belong to a script: send script_name \"x/y/z plot\""),
    "alwayson_scripts": (({},), "extensions (alwayson_scripts) are not supported"),
    "firstpass_image": ((None, ""), "a first-pass image needs hires fix, which is not supported"),
    "s_churn": ((None, 0, 0.0), "sampler noise settings (s_churn) are not supported"),
    "s_noise": ((None, 1, 1.0), "sampler noise settings (s_noise) are not supported"),
    "s_tmin": ((None, 0, 0.0), "sampler noise settings (s_tmin) are not supported"),
    "s_tmax": ((None, 0, 0.0, float("inf")), "sampler noise settings (s_tmax) are not supported"),
    "s_min_uncond": ((None, 0, 0.0), "NGMS (s_min_uncond) is not supported"),
    "eta": ((None, 0, 0.0, 1, 1.0), "eta is not supported"),
    "disable_extra_networks": ((False,), "disable_extra_networks is not supported; remove <lora:...> tags instead"),
}
OPTION_KEYS = ("sd_model_checkpoint", "sd_vae", "CLIP_stop_at_last_layers", "samples_format")


class OptionsRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _valid_text(cls, data):  # every key is an extra field here, which field validators do not see
        for key, value in data.items() if isinstance(data, dict) else ():
            if (problem := text_problem(key) or text_problem(value)) is not None:
                raise ValueError(f"{key!r}: {problem}")
        return data


class PngInfoRequest(_Request):
    image: str = ""

"""Hires fix (A1111's txt2img second pass): its request fields, target size, infotext and the upscale between
the passes. Pure: no model is loaded here; `upscale_latents` / `upscale_image` are the one place an upscaler
runs (sd_app/upscalers.py's model upscalers plug in through `upscale_image`'s `models`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from . import samplers
from .errors import UserError

# A1111's shared.latent_upscale_modes: the interpolation of the latents, and antialiasing.
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
IMAGE_UPSCALERS = ("None", "Lanczos", "Nearest")  # decode, scale the image, encode again
DEFAULT_UPSCALER = "Latent"  # A1111's latent_upscale_default_mode, used when hr_upscaler is None
REFINER_PASSES = ("first pass", "second pass", "both passes")  # A1111's hires_fix_refiner_pass choices
SCALE_RANGE = (1.0, 4.0)  # A1111's slider
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class HiresParams:
    """A1111's hires fix fields (`enable_hr` on): the second pass after txt2img."""

    scale: float = 2.0  # hr_scale, used when resize_x and resize_y are both 0
    resize_x: int = 0  # hr_resize_x / hr_resize_y: a size instead of a scale (0 = from the other side)
    resize_y: int = 0
    upscaler: str = DEFAULT_UPSCALER  # hr_upscaler
    second_pass_steps: int = 0  # hr_second_pass_steps: 0 = the first pass's steps
    denoising_strength: float = 0.7
    sampler_name: str | None = None  # hr_sampler_name: None = the first pass's
    scheduler: str | None = None  # hr_scheduler
    prompt: str = ""  # hr_prompt: "" = the first pass's
    negative_prompt: str = ""
    checkpoint: str | None = None  # hr_checkpoint_name: None = the same checkpoint
    # A1111's option "Hires fix: which pass to enable refiner for" (infotext `Hires refiner`): with a refiner,
    # by default it runs in the hires pass only, at the same switch point of that pass's steps. None: the
    # setting's (`params.RunDefaults`).
    refiner_pass: str | None = None

    def replace(self, **changes) -> "HiresParams":
        return dataclasses.replace(self, **changes)

    def check(self, width: int, height: int, steps_limit: int, max_pixels: int,
              upscalers: tuple[str, ...] | list[str] | None = None) -> "HiresParams":
        """Raise UserError naming the A1111 field at fault. `upscalers`: the image upscalers there are (as
        /sdapi/v1/upscalers lists them, model files included); None = the built-in ones only."""
        _number("hr_scale", self.scale, *SCALE_RANGE)
        for name, value in (("hr_resize_x", self.resize_x), ("hr_resize_y", self.resize_y)):
            _whole(name, value, 0, 4096)
        _whole("hr_second_pass_steps", self.second_pass_steps, 0, steps_limit)
        _number("denoising_strength", self.denoising_strength, 0.0, 1.0)
        known = tuple(LATENT_MODES) + tuple(IMAGE_UPSCALERS if upscalers is None else upscalers)
        if self.upscaler not in known:
            raise UserError(f"must be one of {', '.join(known)}; got {self.upscaler!r}", field="hr_upscaler")
        for name, value in (("hr_prompt", self.prompt), ("hr_negative_prompt", self.negative_prompt)):
            if not isinstance(value, str):
                raise UserError(f"must be text, got {type(value).__name__}", field=name)
        if self.sampler_name is not None or self.scheduler is not None:
            try:
                samplers.resolve(self.sampler_name or "Euler", self.scheduler or "Automatic")
            except UserError as err:
                raise UserError(err.message, field="hr_sampler_name" if err.field == "sampler_name"
                                else "hr_scheduler") from None
        if self.checkpoint is not None and not isinstance(self.checkpoint, str):
            raise UserError("must be a checkpoint name", field="hr_checkpoint_name")
        if self.refiner_pass is not None and self.refiner_pass not in REFINER_PASSES:
            raise UserError(f"must be one of {', '.join(REFINER_PASSES)}; got {self.refiner_pass!r}",
                            field="hires_fix_refiner_pass")
        target = self.target(width, height)
        if target.width * target.height > max_pixels:
            field = "hr_scale" if not (self.resize_x or self.resize_y) else "hr_resize_x"
            raise UserError(f"upscales {width}x{height} to {target.width}x{target.height}, {target.width * target.height:,} "
                            f"pixels; at most {max_pixels:,} per image are allowed (Settings → Limits)", field=field)
        return self

    def target(self, width: int, height: int) -> "Target":
        """A1111's calculate_target_resolution: the size the first pass is upscaled to, and the latent rows and
        columns cut off afterwards when hr_resize_x and hr_resize_y ask for another aspect ratio. Sizes are
        floored to a multiple of 8 (the latents' grid; A1111 does the same by interpolating to size // 8)."""
        truncate_x = truncate_y = 0
        if not self.resize_x and not self.resize_y:
            to_x, to_y = int(width * self.scale), int(height * self.scale)
        elif not self.resize_y:
            to_x, to_y = self.resize_x, self.resize_x * height // width
        elif not self.resize_x:
            to_x, to_y = self.resize_y * width // height, self.resize_y
        else:
            if width / height < self.resize_x / self.resize_y:
                to_x, to_y = self.resize_x, self.resize_x * height // width
            else:
                to_x, to_y = self.resize_y * width // height, self.resize_y
            truncate_x, truncate_y = (to_x - self.resize_x) // 8, (to_y - self.resize_y) // 8
        to_x, to_y = max(8, to_x // 8 * 8), max(8, to_y // 8 * 8)
        return Target(to_x, to_y, truncate_x, truncate_y)

    def steps(self, first_pass_steps: int) -> int:
        return self.second_pass_steps or first_pass_steps

    def is_latent(self) -> bool:
        return self.upscaler in LATENT_MODES

    def refiner_in(self, second: bool) -> bool:
        """Whether a refiner runs in the first pass (second=False) or in the hires pass."""
        chosen = self.refiner_pass or REFINER_PASSES[1]  # None: A1111's default, when no setting filled it in
        return chosen == "both passes" or chosen == ("second pass" if second else "first pass")

    def infotext_fields(self, prompt: str, negative_prompt: str, sampler_name: str, scheduler: str,
                        refined: bool = False) -> dict:
        """A1111's hires keys, in its order (after `Denoising strength`, which goes with the common fields).
        `refined`: a refiner runs (A1111 writes `Hires refiner` only then)."""
        return {
            "Hires checkpoint": self.checkpoint,
            "Hires sampler": self.sampler_name if self.sampler_name and self.sampler_name != sampler_name else None,
            "Hires prompt": self.prompt if self.prompt and self.prompt != prompt else None,
            "Hires negative prompt": self.negative_prompt if self.negative_prompt and
            self.negative_prompt != negative_prompt else None,
            "Hires schedule type": self.scheduler if self.scheduler and self.scheduler != scheduler else None,
            "Hires upscale": self.scale if not (self.resize_x or self.resize_y) else None,
            "Hires resize": f"{self.resize_x}x{self.resize_y}" if self.resize_x or self.resize_y else None,
            "Hires steps": self.second_pass_steps or None,
            "Hires upscaler": self.upscaler,
            "Hires refiner": self.refiner_pass if refined and self.refiner_pass not in (None, "second pass") else None,
        }


@dataclass(frozen=True)
class Target:
    width: int
    height: int
    truncate_x: int = 0  # latent columns / rows cut off (half each side) after the pass
    truncate_y: int = 0


def from_infotext(fields: dict[str, str]) -> tuple[HiresParams | None, list[str], list[tuple[str, str]]]:
    """The hires fix an infotext describes (or None without `Hires` keys), the keys read and those refused."""
    keys = [key for key in fields if key.startswith("Hires ")]
    if not keys:
        return None, [], []
    hires, applied, refused = HiresParams(), [], []
    readers = {
        "Hires upscale": ("scale", float), "Hires steps": ("second_pass_steps", int),
        "Hires upscaler": ("upscaler", str), "Hires sampler": ("sampler_name", str),
        "Hires schedule type": ("scheduler", str), "Hires prompt": ("prompt", str),
        "Hires negative prompt": ("negative_prompt", str), "Hires checkpoint": ("checkpoint", str),
        "Hires refiner": ("refiner_pass", str),
        "Denoising strength": ("denoising_strength", float),
    }
    for key in keys + (["Denoising strength"] if "Denoising strength" in fields else []):
        value = fields[key]
        try:
            if key == "Hires resize":
                x, _, y = value.partition("x")
                hires = hires.replace(resize_x=int(x), resize_y=int(y))
            elif key in readers:
                name, kind = readers[key]
                hires = hires.replace(**{name: kind(float(value)) if kind is int else kind(value)})
            else:
                refused.append((f"{key}: {value}", "not a hires fix setting Homegrown has"))
                continue
        except ValueError:
            refused.append((f"{key}: {value}", "not a number" if key != "Hires resize" else "not WIDTHxHEIGHT"))
            continue
        applied.append(f"{key}: {value}")
    return hires, applied, refused


def upscale_latents(latents, mode: str, width: int, height: int):
    """A1111's latent upscale: interpolate to the target size // 8 with the mode's filter."""
    import torch.nn.functional as F

    interpolation, antialias = LATENT_MODES[mode]
    size = (height // SIZE_MULTIPLE, width // SIZE_MULTIPLE)
    if interpolation in ("nearest", "nearest-exact"):
        return F.interpolate(latents.float(), size=size, mode=interpolation).to(latents.dtype)
    return F.interpolate(latents.float(), size=size, mode=interpolation, antialias=antialias).to(latents.dtype)


def upscale_image(image, name: str, width: int, height: int, models=None):
    """Scale a decoded first pass with an image upscaler: Lanczos, Nearest, None (A1111: Lanczos to the size),
    or a model upscaler through `models(image, name, width, height)` (sd_app/upscalers.py)."""
    from PIL import Image

    if name in ("Lanczos", "None"):
        return image.resize((width, height), Image.LANCZOS)
    if name == "Nearest":
        return image.resize((width, height), Image.NEAREST)
    if models is None:
        raise UserError(f"the upscaler {name!r} is not available here; use one of "
                        f"{', '.join(tuple(LATENT_MODES) + IMAGE_UPSCALERS)}", field="hr_upscaler")
    return models(image, name, width, height)


def truncate(latents, target: Target):
    """Cut the latent rows and columns A1111 cuts when hr_resize_x/y ask for another aspect ratio."""
    if not target.truncate_x and not target.truncate_y:
        return latents
    h, w = latents.shape[-2:]
    return latents[..., target.truncate_y // 2: h - (target.truncate_y + 1) // 2,
                   target.truncate_x // 2: w - (target.truncate_x + 1) // 2]


def _number(name: str, value, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"must be a number, got {value!r}", field=name)
    if not low <= value <= high:
        raise UserError(f"must be between {low:g} and {high:g}, got {value}", field=name)


def _whole(name: str, value, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"must be a whole number, got {value!r}", field=name)
    if not low <= value <= high:
        raise UserError(f"must be between {low} and {high}, got {value}", field=name)

"""The generation request: one plain dataclass with A1111's field names, and its checks.

Every front end (UI, API, notebook) builds a `GenerationParams` and calls `check()` (the engine calls
it too), so a bad value gets the same message everywhere: the field, what it got, what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from . import samplers
from .errors import UserError

# Limits: A1111's slider ranges where they exist, wide enough for API clients, small enough that a
# typo (width=10240, batch_size=500) is refused instead of taking the GPU down.
LIMITS = {
    "steps": (1, 150),
    "cfg_scale": (1.0, 30.0),
    "width": (64, 4096),
    "height": (64, 4096),
    "batch_size": (1, 8),
    "n_iter": (1, 100),
    "seed": (-1, 2**32 - 1),
    "refiner_switch_at": (0.01, 1.0),
}
MAX_PIXELS_PER_BATCH = 4 * 2048 * 2048  # width * height * batch_size
SIZE_MULTIPLE = 8  # the VAE downscales by 8
MAX_PROMPT_CHARS = 20_000

# SDXL was trained on ~1 megapixel buckets; these are the sizes it draws best (width, height).
SDXL_SIZES = (
    (1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216),
    (1344, 768), (768, 1344), (1536, 640), (640, 1536),
)


@dataclass
class GenerationParams:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 1024
    height: int = 1024
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"  # A1111's "Schedule type"
    seed: int = -1
    batch_size: int = 1
    n_iter: int = 1  # A1111's "Batch count"
    checkpoint: str | None = None  # None: the loaded one (A1111's override_settings.sd_model_checkpoint)
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8
    styles: tuple[str, ...] = ()  # applied to the prompts when the image is made (styles.py), in this order

    def replace(self, **changes) -> "GenerationParams":
        return dataclasses.replace(self, **changes)

    def check(self) -> "GenerationParams":
        """Raise UserError naming the first bad field; return self so calls chain."""
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise UserError(f"must be text, got {type(value).__name__}", field=name)
            if len(value) > MAX_PROMPT_CHARS:
                raise UserError(f"is {len(value)} characters long; at most {MAX_PROMPT_CHARS} are allowed",
                                field=name)
        for name in ("steps", "width", "height", "batch_size", "n_iter", "seed"):
            _check_int(name, getattr(self, name))
        for name in ("cfg_scale", "refiner_switch_at"):
            _check_number(name, getattr(self, name))
        for name in ("width", "height"):
            if getattr(self, name) % SIZE_MULTIPLE:
                raise UserError(f"must be a multiple of {SIZE_MULTIPLE}, got {getattr(self, name)} "
                                f"(nearest: {round(getattr(self, name) / SIZE_MULTIPLE) * SIZE_MULTIPLE})",
                                field=name)
        if self.width * self.height * self.batch_size > MAX_PIXELS_PER_BATCH:
            raise UserError(f"{self.batch_size} images of {self.width}x{self.height} are too many pixels for one "
                            f"batch (at most {MAX_PIXELS_PER_BATCH // (1024 * 1024)} megapixels): "
                            "lower batch_size and raise n_iter instead", field="batch_size")
        for name in ("sampler_name", "scheduler"):
            if not isinstance(getattr(self, name), str):
                raise UserError(f"must be text, got {type(getattr(self, name)).__name__}", field=name)
        samplers.resolve(self.sampler_name, self.scheduler)
        for name in ("checkpoint", "refiner_checkpoint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise UserError(f"must be a checkpoint name, got {type(value).__name__}", field=name)
        _check_styles(self.styles)
        return self


def _check_styles(value) -> None:
    if not isinstance(value, (tuple, list)) or not all(isinstance(name, str) and name.strip() for name in value):
        raise UserError(f"must be a list of style names, got {value!r}", field="styles")
    if len(set(value)) != len(value):
        raise UserError(f"lists a style twice: {', '.join(value)}", field="styles")


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            raise UserError(f"must be a whole number, got {value!r} (write {int(value)})", field=name)
        raise UserError(f"must be a whole number, got {value!r}", field=name)
    low, high = LIMITS[name]
    if not low <= value <= high:
        raise UserError(f"must be between {low} and {high}, got {value}", field=name)


def _check_number(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"must be a number, got {value!r}", field=name)
    low, high = LIMITS[name]
    if not low <= value <= high:
        raise UserError(f"must be between {low} and {high}, got {value}", field=name)

"""The generation request: one plain dataclass with A1111's field names, and its checks.

Every front end (UI, API, notebook) builds a `GenerationParams` and calls `check()` (the engine calls
it too), so a bad value gets the same message everywhere: the field, what it got, what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field

from . import rng, samplers
from .errors import UserError
from .hires import REFINER_PASSES, HiresParams
from .img2img import Img2ImgParams
from .prompts import prompt_chunks, prompt_nesting

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
    "subseed": (-1, 2**32 - 1),
    "subseed_strength": (0.0, 1.0),
    "seed_resize_from_w": (-1, 4096),  # 0 or -1: off (A1111 sends -1)
    "seed_resize_from_h": (-1, 4096),
    "clip_skip": (1, 12),  # A1111's CLIP_stop_at_last_layers slider; the encoder's layer count may allow fewer
}
MAX_PIXELS_PER_BATCH = 4 * 2048 * 2048  # width * height * batch_size
SIZE_MULTIPLE = 8  # the VAE downscales by 8


def _limit(default: int, most: int, label: str, help: str = ""):
    return field(default=default, metadata={"most": most, "label": label, "help": help})


@dataclass(frozen=True)
class Limits:
    """How big one request may be: the table of limits (Settings → Limits has one entry per field, same name).

    Generous defaults, so that no ordinary request meets them, yet a small request cannot hold the GPU for
    minutes: a 20 KB prompt of 3300 BREAKs took 400 s to encode, 4096x4096 or 100 images are one click
    away in the API. `most` is the highest a setting accepts. Every check is a linear scan of the request,
    done before anything is parsed or encoded, so a refusal takes milliseconds."""

    max_prompt_chars: int = _limit(20_000, 200_000, "Prompt length (characters)")
    max_prompt_chunks: int = _limit(
        32, 1000, "Prompt chunks (75 tokens each; every BREAK starts one)",
        "Counted from the words before encoding (at least one token each); each chunk is a text-encoder pass "
        "and widens every cross-attention")
    max_prompt_nesting: int = _limit(50, 10_000, "Bracket nesting depth in a prompt", "A1111 prompts rarely go past 5")
    max_steps: int = _limit(100, LIMITS["steps"][1], "Steps", "SDXL's samplers settle in 20-40 steps; up to 150 "
                            "(A1111's slider) can be allowed here")
    max_pixels: int = _limit(2048 * 2048, 4096 * 4096, "Pixels per image (width x height)",
                             "2048x2048 = 4194304; SDXL draws best near 1024x1024")
    max_images: int = _limit(32, LIMITS["batch_size"][1] * LIMITS["n_iter"][1],
                             "Images per job (batch size x batch count)")
    max_upscale_pixels: int = _limit(
        8192 * 8192, 16384 * 16384, "Upscaled image pixels (width x height)",
        "8192x8192 = 67108864: a 4x upscale of 2048x2048. Upscalers run in tiles; the result itself takes 3 bytes "
        "a pixel in memory, and again to encode it")
    max_prompt_schedules: int = _limit(
        32, LIMITS["steps"][1], "Prompt variants per prompt ([from:to:when], [a|b])",
        "The different prompts that prompt editing and alternation make over the steps; each one is encoded "
        "(nested alternations multiply)")

    @classmethod
    def table(cls) -> list[tuple[str, int, int, str, str]]:
        """(name, default, most, label, help) of each limit, for the settings table."""
        return [(f.name, f.default, f.metadata["most"], f.metadata["label"], f.metadata["help"])
                for f in dataclasses.fields(cls)]


# SDXL was trained on ~1 megapixel buckets; these are the sizes it draws best (width, height).
SDXL_SIZES = (
    (1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216),
    (1344, 768), (768, 1344), (1536, 640), (640, 1536),
)



@dataclass(frozen=True)
class RunDefaults:
    """A1111's options that apply to every job and that one request may set for itself (None there): they are
    the settings' (Settings → Defaults) unless the request says, and are named in the infotext either way."""

    randn_source: str = rng.DEFAULT_SOURCE  # "Random number generator source"
    hires_refiner_pass: str = REFINER_PASSES[1]  # "Hires fix: which pass to enable refiner for"

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
    tiling: bool = False  # seamless: circular padding in the UNet and VAE (tiling.py), A1111's `tiling`
    img2img: Img2ImgParams | None = None  # img2img / inpainting: the init image(s) and mask (img2img.py)
    hires: HiresParams | None = None  # txt2img's hires fix second pass (hires.py); A1111's enable_hr
    # Noise, as A1111 draws it (rng.py): a variation seed slerped in, the noise of another size, the source.
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    randn_source: str | None = None  # None: the setting's ("Random number generator source")
    # A1111's "Clip skip" (CLIP_stop_at_last_layers). On SDXL A1111 applies it only with its "Clip skip SDXL"
    # option (sdxl_clip_l_skip), and then to CLIP-L alone (hidden_states[-clip_skip]); encoding.py does the same.
    clip_skip: int = 1
    sdxl_clip_l_skip: bool = False

    def replace(self, **changes) -> "GenerationParams":
        return dataclasses.replace(self, **changes)

    @property
    def refined(self) -> bool:
        """Whether a refiner takes over during the run (switching at 1.0 leaves it nothing to do)."""
        return bool(self.refiner_checkpoint) and self.refiner_switch_at < 1.0

    def with_defaults(self, defaults: "RunDefaults") -> "GenerationParams":
        """The request with its random seeds drawn (-1), and what it leaves to the settings (`defaults`: its noise
        source, its hires fix's refiner pass) named, as the infotext will say: done once, where a request enters
        the engine or the pool (which splits it over workers)."""
        last = 2**32 - self.batch_size * self.n_iter  # every image's seed + index stays a valid seed
        seed = self.seed if self.seed != -1 else random.randrange(last)
        subseed = self.subseed if self.subseed != -1 else random.randrange(last)
        hires = self.hires
        if hires is not None and hires.refiner_pass is None:
            hires = hires.replace(refiner_pass=defaults.hires_refiner_pass)
        return self.replace(seed=seed, subseed=subseed, hires=hires,
                            randn_source=rng.check_source(self.randn_source or defaults.randn_source))

    def check(self, limits: Limits | None = None, upscalers: list[str] | None = None) -> "GenerationParams":
        """Raise UserError naming the first bad field; return self so calls chain. `limits` are Settings →
        Limits (the table's defaults without them); `upscalers` the image upscalers' names for `hr_upscaler`
        (None: the built-in ones)."""
        limits = limits or Limits()
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise UserError(f"must be text, got {type(value).__name__}", field=name)
            check_prompt_size(name, value, limits)
            if (problem := text_problem(value)) is not None:
                raise UserError(problem, field=name)
        for name in ("steps", "width", "height", "batch_size", "n_iter", "seed", "subseed", "seed_resize_from_w",
                     "seed_resize_from_h", "clip_skip"):
            _check_int(name, getattr(self, name))
        for name in ("cfg_scale", "refiner_switch_at", "subseed_strength"):
            _check_number(name, getattr(self, name))
        if self.randn_source is not None:
            rng.check_source(self.randn_source)
        if self.steps > limits.max_steps:
            raise UserError(f"must be between {LIMITS['steps'][0]} and {limits.max_steps}, got {self.steps}"
                            f"{_SETTING}", field="steps")
        for name in ("width", "height"):
            if getattr(self, name) % SIZE_MULTIPLE:
                raise UserError(f"must be a multiple of {SIZE_MULTIPLE}, got {getattr(self, name)} "
                                f"(nearest: {round(getattr(self, name) / SIZE_MULTIPLE) * SIZE_MULTIPLE})",
                                field=name)
        if self.width * self.height * self.batch_size > MAX_PIXELS_PER_BATCH:
            raise UserError(f"{self.batch_size} images of {self.width}x{self.height} are too many pixels for one "
                            f"batch (at most {MAX_PIXELS_PER_BATCH // (1024 * 1024)} megapixels): "
                            "lower batch_size and raise n_iter instead", field="batch_size")
        self._check_job_size(limits)
        for name in ("sampler_name", "scheduler"):
            if not isinstance(getattr(self, name), str):
                raise UserError(f"must be text, got {type(getattr(self, name)).__name__}", field=name)
        samplers.resolve(self.sampler_name, self.scheduler)
        for name in ("checkpoint", "refiner_checkpoint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise UserError(f"must be a checkpoint name, got {type(value).__name__}", field=name)
        _check_styles(self.styles)
        for name in ("sdxl_clip_l_skip", "tiling"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"must be true or false, got {getattr(self, name)!r}", field=name)
        if self.img2img is not None:
            if self.hires is not None:
                raise UserError("hires fix is a txt2img option; img2img upscales with its own size", field="enable_hr")
            self.img2img.check(self.batch_size)
        if self.hires is not None:
            self.hires.check(self.width, self.height, limits.max_steps, limits.max_pixels, upscalers)
        return self

    def _check_job_size(self, limits: Limits) -> None:
        pixels = self.width * self.height
        if pixels > limits.max_pixels:
            raise UserError(f"{self.width}x{self.height} is {pixels:,} pixels; at most {limits.max_pixels:,} per "
                            f"image are allowed{_SETTING}", field="width")
        images = self.batch_size * self.n_iter
        if images > limits.max_images:
            which = "batch_size" if self.batch_size > limits.max_images else "n_iter"
            raise UserError(f"{self.n_iter} batches of {self.batch_size} make {images} images; at most "
                            f"{limits.max_images} per job are allowed{_SETTING}", field=which)


_SETTING = " (Settings → Limits)"


def check_prompt_size(name: str, text: str, limits: Limits) -> None:
    """Refuse a prompt too long, too deeply nested or of too many chunks, by linear scans of its text (no
    parsing, no tokenizer): milliseconds for any prompt the length limit lets through."""
    if len(text) > limits.max_prompt_chars:
        raise UserError(f"is {len(text)} characters long; at most {limits.max_prompt_chars} are allowed{_SETTING}",
                        field=name)
    depth = prompt_nesting(text)
    if depth > limits.max_prompt_nesting:
        raise UserError(f"has brackets nested {depth} deep; at most {limits.max_prompt_nesting} levels are "
                        f"allowed{_SETTING}", field=name)
    chunks, breaks = prompt_chunks(text)
    if chunks > limits.max_prompt_chunks:
        made = f" ({breaks} BREAKs each start one)" if breaks else ""
        raise UserError(f"needs at least {chunks} chunks of 75 tokens{made}; at most "
                        f"{limits.max_prompt_chunks} are allowed{_SETTING}", field=name)


def text_problem(value) -> str | None:
    """What makes `value` (a string, or lists and dicts of them) invalid text, or None. JSON can carry half of
    a UTF-16 surrogate pair (`"\\ud800"`), which is no character at all: the tokenizer and every UTF-8 writer
    fail on it."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return (f"contains {value[err.start]!r} at character {err.start + 1}: half of a UTF-16 surrogate pair, "
                    "not valid Unicode text")
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        if (problem := text_problem(key) or text_problem(item)) is not None:
            return problem
    return None


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

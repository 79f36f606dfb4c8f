"""Extras: A1111's postprocessing upscale of finished images (its "Extras" tab and `/sdapi/v1/extra-*-image*`).

The request has A1111's field names and meaning (scripts/postprocessing_upscale.py): scale by `upscaling_resize`
or to `upscaling_resize_w` x `upscaling_resize_h` (optionally cropped to exactly that), with `upscaler_1` and,
blended over it at `extras_upscaler_2_visibility`, `upscaler_2`. The result keeps the source image's infotext and
gains A1111's postprocessing text (`Postprocess upscale by: 4, Postprocess upscaler: ...`) in the PNG chunks where
A1111 puts it (`postprocessing` and `extras`). Nothing here knows the page or HTTP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from . import infotext
from .errors import UserError
from .jobs import Job
from .params import Limits
from .upscalers import NONE, Upscalers, check_size, target_size

RESIZE_MODES = {0: "scale by", 1: "scale to"}
MAX_SCALE = 16.0
MAX_SIDE = 16384
CHUNKS = ("postprocessing", "extras")  # the PNG text chunks A1111 writes the postprocessing text to


@dataclass
class ExtrasRequest:
    """A1111's ExtrasBaseRequest upscale fields, with its API defaults."""

    resize_mode: int = 0  # 0: by upscaling_resize; 1: to upscaling_resize_w x upscaling_resize_h
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True  # with resize_mode 1: crop to exactly that size (A1111's "Crop to fit")
    upscaler_1: str = NONE
    upscaler_2: str = NONE
    extras_upscaler_2_visibility: float = 0.0

    def check(self, names: list[str] | None = None) -> "ExtrasRequest":
        """Raise UserError naming the first bad field; `names` are the upscalers there are."""
        if self.resize_mode not in RESIZE_MODES or isinstance(self.resize_mode, bool):
            raise UserError(f"must be 0 (scale by upscaling_resize) or 1 (scale to upscaling_resize_w x _h), got "
                            f"{self.resize_mode!r}", field="resize_mode")
        _number("upscaling_resize", self.upscaling_resize, 0.0, MAX_SCALE, low_open=True)
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
                raise UserError(f"must be a whole number from 1 to {MAX_SIDE}, got {value!r}", field=name)
        _number("extras_upscaler_2_visibility", self.extras_upscaler_2_visibility, 0.0, 1.0)
        if not isinstance(self.upscaling_crop, bool):
            raise UserError(f"must be true or false, got {self.upscaling_crop!r}", field="upscaling_crop")
        for name in ("upscaler_1", "upscaler_2"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, NONE)
            elif not isinstance(value, str):
                raise UserError(f"must be an upscaler name, got {value!r}", field=name)
            elif names is not None and value not in names:
                raise UserError(f"unknown upscaler {value!r}; known: {', '.join(names)}", field=name, status=404)
        return self

    def scale_for(self, image: Image.Image) -> float:
        if self.resize_mode == 1:
            return max(self.upscaling_resize_w / image.width, self.upscaling_resize_h / image.height)
        return float(self.upscaling_resize)

    def final_size(self, image: Image.Image) -> tuple[int, int]:
        if self.resize_mode == 1 and self.upscaling_crop:
            return self.upscaling_resize_w, self.upscaling_resize_h
        return target_size(image, self.scale_for(image))


@dataclass
class ExtrasResult:
    images: list[Image.Image]
    infotexts: list[str]  # the postprocessing text of each image (A1111's html_info is the last one's)
    sources: list[str | None]  # the source images' own infotexts, kept in the results
    paths: list[Path] = field(default_factory=list)
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)


def check_images(images: list[Image.Image], request: ExtrasRequest, limits: Limits | None) -> None:
    """Refuse, before any work, a result over the pixel limit."""
    for image in images:
        if request.upscaler_1 != NONE:
            width, height = request.final_size(image)
            check_size(width, height, limits, "upscaling_resize" if request.resize_mode == 0 else "upscaling_resize_w")


def postprocess(image: Image.Image, request: ExtrasRequest, upscalers: Upscalers, job: Job | None = None,
                limits: Limits | None = None) -> tuple[Image.Image | None, dict[str, object]]:
    """One image through A1111's Upscale postprocessing; (image, info) with A1111's keys in its order. The image
    is None when the job was interrupted."""
    info: dict[str, object] = {}
    source = image.convert("RGB")
    if request.upscaler_1 == NONE:
        return source, info  # A1111: no upscaler 1, no upscale (and no keys)
    result = _upscale(source, request, request.upscaler_1, upscalers, job, limits, info)
    if result is None:
        return None, info
    info["Postprocess upscaler"] = request.upscaler_1
    if request.upscaler_2 != NONE and request.extras_upscaler_2_visibility > 0:
        second = _upscale(source, request, request.upscaler_2, upscalers, job, limits, info)
        if second is None:
            return None, info
        if second.size != result.size:  # a 4x and a 2x model both end at A1111's target size; resize anyway
            second = second.resize(result.size, Image.Resampling.LANCZOS)
        result = Image.blend(result, second, request.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = request.upscaler_2
    return result, info


def _upscale(image, request: ExtrasRequest, name: str, upscalers: Upscalers, job, limits, info) -> Image.Image | None:
    if request.resize_mode == 1:
        info["Postprocess upscale to"] = f"{request.upscaling_resize_w}x{request.upscaling_resize_h}"
    else:
        info["Postprocess upscale by"] = request.upscaling_resize
    field_name = "upscaler_1" if name == request.upscaler_1 else "upscaler_2"
    result = upscalers.upscale(image, name, scale=request.scale_for(image), job=job, limits=limits, field=field_name)
    if result is not None and request.resize_mode == 1 and request.upscaling_crop:
        width, height = request.upscaling_resize_w, request.upscaling_resize_h
        cropped = Image.new("RGB", (width, height))
        cropped.paste(result, box=(width // 2 - result.width // 2, height // 2 - result.height // 2))
        result = cropped
        info["Postprocess crop to"] = f"{width}x{height}"
    return result


def info_text(info: dict[str, object]) -> str:
    """A1111's postprocessing text: `Key: value, ...`, a key alone where its value is itself."""
    return ", ".join(key if key == value else f"{key}: {infotext.quote(value)}"
                     for key, value in info.items() if value is not None)


def run(images: list[Image.Image], request: ExtrasRequest, upscalers: Upscalers, job: Job | None = None,
        limits: Limits | None = None) -> ExtrasResult:
    """Every image through `postprocess`; each result carries the source's infotext (`parameters`) and the
    postprocessing text in `image.info`, so saving it as PNG keeps both."""
    request.check(upscalers.names())
    check_images(images, request, limits)
    result = ExtrasResult([], [], [])
    for number, image in enumerate(images):
        if job is not None:
            job.job_count, job.job_no = len(images), number
        source_text = infotext.read_image(image)
        done, info = postprocess(image, request, upscalers, job, limits)
        if done is None:
            result.interrupted = True
            break
        text = info_text(info)
        if source_text:
            done.info[infotext.PNG_KEY] = source_text
        for chunk in CHUNKS:
            done.info[chunk] = text
        result.images.append(done)
        result.infotexts.append(text)
        result.sources.append(source_text)
    return result


def _number(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not (low < value if low_open else low <= value) or value > high:
        allowed = f"above {low:g} and at most {high:g}" if low_open else f"from {low:g} to {high:g}"
        raise UserError(f"must be a number {allowed}, got {value!r}", field=name)

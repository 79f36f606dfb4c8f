"""Upscalers with A1111's names: None, Lanczos, Nearest, the Latent modes (applied to latents by a hires pass),
and model upscalers from the upscaler folders (`upscaler_library.py`), run in tiles.

A model runs tile by tile: each tile is read with a margin of context around it (so a pixel sees what it would
see in one pass), the tiles overlap and are blended with linear ramps, and finished rows leave the float
buffers at once: a 4x upscale of 1024x1024 holds the 4096x4096 result and a strip, never the whole image as
float tensors. Progress goes to the job (`Tile 3/36`); Interrupt stops between tiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from .errors import UserError
from .hires import LATENT_MODES  # A1111's latent modes: the one table, beside the hires fix that uses them
from .jobs import Job
from .params import Limits
from .upscaler_library import UpscalerLibrary

NONE, LANCZOS, NEAREST = "None", "Lanczos", "Nearest"
RESAMPLERS = {LANCZOS: Image.Resampling.LANCZOS, NEAREST: Image.Resampling.NEAREST}
BUILTIN = (NONE, LANCZOS, NEAREST)  # A1111 lists these first, then the models by name
TILE = 192  # input pixels per tile side (A1111's ESRGAN_tile default)
OVERLAP = 16  # input pixels shared by neighbouring tiles, blended
CONTEXT = 16  # input pixels read around each tile and cut away from its output
MODEL_PASSES = 3  # as A1111: a 4x model reaches 8x in two passes, at most three


@dataclass(frozen=True)
class Tiling:
    tile: int = TILE
    overlap: int = OVERLAP
    context: int = CONTEXT


def upscaler_names(library: UpscalerLibrary | None) -> list[str]:
    """The image upscalers in A1111's order: None, Lanczos, Nearest, then the model files by name."""
    return [*BUILTIN, *(f.name for f in (library.list() if library is not None else []))]


def is_latent(name: str) -> bool:
    return name in LATENT_MODES


def upscale_latents(latents, mode: str, scale: float | None = None, latent_size: tuple[int, int] | None = None):
    """Latents (N, C, H, W) resized by `scale` or to `latent_size` (height, width, in latent cells: pixels / 8),
    with the interpolation A1111's latent upscale mode `mode` names. Same dtype and device as given."""
    import torch

    if mode not in LATENT_MODES:
        raise UserError(f"must be one of {', '.join(LATENT_MODES)}, got {mode!r}", field="hr_upscaler")
    if (scale is None) == (latent_size is None):
        raise ValueError("give either scale or latent_size")
    height, width = latent_size or (int(latents.shape[-2] * scale), int(latents.shape[-1] * scale))
    interpolation, antialias = LATENT_MODES[mode]
    original = latents.dtype
    # bicubic and antialiased interpolation have no half-precision kernels on every device
    work = latents.float() if original in (torch.float16, torch.bfloat16) else latents
    out = torch.nn.functional.interpolate(work, size=(height, width), mode=interpolation, antialias=antialias)
    return out.to(original)


def target_size(image: Image.Image, scale: float | None = None, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) of the result: by `scale` A1111 rounds down to a multiple of 8; `size` is exact."""
    if size is not None:
        return int(size[0]), int(size[1])
    return int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8)


def check_size(width: int, height: int, limits: Limits | None, field: str = "upscaling_resize") -> None:
    limits = limits or Limits()
    if width < 1 or height < 1:
        raise UserError(f"gives an image of {width}x{height}; it must be at least 1x1", field=field)
    if width * height > limits.max_upscale_pixels:
        raise UserError(f"gives {width}x{height} = {width * height:,} pixels; at most {limits.max_upscale_pixels:,} "
                        "are allowed (Settings → Limits → Upscaled image pixels)", field=field)


class Upscalers:
    """Runs image upscalers by name on one device (the pipelines'), with the library's models."""

    def __init__(self, library: UpscalerLibrary | None, device="cpu", dtype=None, tiling: Tiling | None = None):
        self.library = library
        self.device = device
        self.dtype = dtype
        self.tiling = tiling or Tiling()

    def names(self) -> list[str]:
        return upscaler_names(self.library)

    def upscale(self, image: Image.Image, name: str, scale: float | None = None, size: tuple[int, int] | None = None,
                job: Job | None = None, limits: Limits | None = None, field: str = "upscaler") -> Image.Image | None:
        """`image` made `scale` times larger (A1111's size: rounded down to a multiple of 8) or exactly `size`
        (width, height), as A1111's upscaler `name` does it: a model upscales in passes until the image is at
        least that large, then Lanczos makes it the exact size. None when the job was interrupted."""
        if (scale is None) == (size is None):
            raise ValueError("give either scale or size")
        if scale is not None and (not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0):
            raise UserError(f"must be a number above 0, got {scale!r}", field="upscaling_resize")
        width, height = target_size(image, scale, size)
        check_size(width, height, limits)
        if is_latent(name):
            raise UserError(f"{name} works on latents, in the hires pass; for an image choose one of "
                            f"{', '.join(self.names())}", field=field)
        image = image.convert("RGB")
        want = max(width / image.width, height / image.height)
        if name == NONE or name in RESAMPLERS:
            passes = (lambda im: im.resize((int(im.width * want), int(im.height * want)), RESAMPLERS[name])) \
                if name in RESAMPLERS else None
        else:
            if self.library is None:
                raise UserError(f"unknown upscaler {name!r}; known: {', '.join(BUILTIN)}", field=field)
            try:
                model = self.library.load(name, self.device, self.dtype)
            except UserError as err:
                if err.status == 404:
                    raise UserError(f"unknown upscaler {name!r}; known: {', '.join(self.names())}", field=field,
                                    status=404) from None
                raise

            def passes(im: Image.Image) -> Image.Image | None:
                check_size(im.width * model.scale, im.height * model.scale, limits)  # the model's own output
                return run_tiled(model.model, im, model.scale, self.tiling, job)
        for number in range(MODEL_PASSES):
            if passes is None or (image.width >= width and image.height >= height and (number or want != 1)):
                break
            before = image.size
            image = passes(image)
            if image is None:
                return None
            if image.size == before:
                break
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of tiles of `tile` pixels covering `length`, neighbours sharing at least `overlap` pixels."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _ramp(length: int, before: int, after: int) -> np.ndarray:
    """Blend weights along one side of a tile: rising over the `before` pixels shared with the previous tile,
    falling over the `after` pixels shared with the next (never 0, so every pixel has weight)."""
    weights = np.ones(length, dtype=np.float32)
    if before:
        weights[:before] = np.minimum(weights[:before], (np.arange(before) + 0.5) / before)
    if after:
        weights[length - after:] = np.minimum(weights[length - after:], (np.arange(after)[::-1] + 0.5) / after)
    return weights


def run_tiled(model: Callable, image: Image.Image, scale: int, tiling: Tiling, job: Job | None = None,
              progress: Callable[[int, int], None] | None = None) -> Image.Image | None:
    """`image` through `model` (a spandrel descriptor: (1, 3, h, w) in 0..1 -> (1, 3, h*scale, w*scale)) in
    overlapping tiles; None if the job was interrupted. Rows of tiles are finished into the uint8 result as
    soon as no later tile touches them."""
    import torch

    pixels = np.array(image.convert("RGB"), dtype=np.uint8)  # writable: torch shares its memory
    height, width = pixels.shape[:2]
    tile = max(tiling.tile, 2 * tiling.overlap + 1)
    ys, xs = tile_starts(height, tile, tiling.overlap), tile_starts(width, tile, tiling.overlap)
    total, done = len(ys) * len(xs), 0
    out = np.empty((height * scale, width * scale, 3), dtype=np.uint8)
    strip_top = 0  # the output row where the float strip begins
    strip = np.zeros((min(tile, height) * scale, width * scale, 3), dtype=np.float32)
    strip_weight = np.zeros((min(tile, height) * scale, width * scale, 1), dtype=np.float32)
    device, dtype = getattr(model, "device", torch.device("cpu")), getattr(model, "dtype", torch.float32)
    for row, y0 in enumerate(ys):
        y1 = min(y0 + tile, height)
        shared_above = (ys[row - 1] + tile - y0) if row else 0
        shared_below = (y1 - ys[row + 1]) if row + 1 < len(ys) else 0
        # Rows above this tile row's start are final: no later tile reaches them.
        strip, strip_weight, strip_top = _flush(out, strip, strip_weight, strip_top, y0 * scale)
        for col, x0 in enumerate(xs):
            if job is not None and job.interrupted:
                return None
            x1 = min(x0 + tile, width)
            cy0, cy1 = max(0, y0 - tiling.context), min(height, y1 + tiling.context)
            cx0, cx1 = max(0, x0 - tiling.context), min(width, x1 + tiling.context)
            tensor = torch.from_numpy(pixels[cy0:cy1, cx0:cx1]).permute(2, 0, 1).unsqueeze(0)
            tensor = tensor.to(device=device, dtype=dtype) / 255.0
            with torch.inference_mode():
                result = model(tensor)
            result = result[0, :, (y0 - cy0) * scale:(y1 - cy0) * scale, (x0 - cx0) * scale:(x1 - cx0) * scale]
            result = result.float().permute(1, 2, 0).cpu().numpy()
            shared_left = (xs[col - 1] + tile - x0) if col else 0
            shared_right = (x1 - xs[col + 1]) if col + 1 < len(xs) else 0
            weight = (_ramp((y1 - y0) * scale, shared_above * scale, shared_below * scale)[:, None] *
                      _ramp((x1 - x0) * scale, shared_left * scale, shared_right * scale)[None, :])[..., None]
            top_row = y0 * scale - strip_top
            strip[top_row:top_row + result.shape[0], x0 * scale:x1 * scale] += result * weight
            strip_weight[top_row:top_row + result.shape[0], x0 * scale:x1 * scale] += weight
            done += 1
            if job is not None:
                job.note = f"Upscaling: tile {done}/{total}"
                job.set_progress(done / total)
            if progress is not None:
                progress(done, total)
    _flush(out, strip, strip_weight, strip_top, height * scale)
    return Image.fromarray(out)


def _flush(out: np.ndarray, strip: np.ndarray, weight: np.ndarray, strip_top: int, until: int):
    """Write the strip's rows above output row `until` into `out` and move the strip down to start there."""
    rows = until - strip_top
    if rows <= 0:
        return strip, weight, strip_top
    values = strip[:rows] / np.maximum(weight[:rows], 1e-8)
    out[strip_top:until] = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    for buffer in (strip, weight):
        if rows < len(buffer):
            buffer[:-rows] = buffer[rows:].copy()
            buffer[-rows:] = 0
        else:
            buffer[:] = 0
    return strip, weight, until

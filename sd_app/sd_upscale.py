"""A1111's "SD upscale" img2img script: upscale the image, then img2img it tile by tile (tiles of the request's
width x height, overlapping), and blend the tiles back with linear ramps over the overlap.

`split_grid` / `combine_grid` are A1111's images.split_grid / combine_grid; `Studio.sd_upscale` runs the tiles as
one job through the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .errors import UserError
from .hires import IMAGE_UPSCALERS, upscale_image

TITLE = "SD upscale"
SCALE_RANGE = (1.0, 4.0)
OVERLAP_RANGE = (0, 256)
MAX_TILES = 64


@dataclass(frozen=True)
class SdUpscale:
    overlap: int = 64
    upscaler: str = "Lanczos"
    scale: float = 2.0

    def check(self, width: int, height: int, image: Image.Image, max_pixels: int,
              upscalers: list[str] | None = None) -> "SdUpscale":
        """`upscalers`: the image upscalers' names there are (model files included); None = the built-in ones."""
        known = tuple(IMAGE_UPSCALERS if upscalers is None else upscalers)
        if isinstance(self.overlap, bool) or not isinstance(self.overlap, int) or \
                not OVERLAP_RANGE[0] <= self.overlap < min(width, height, OVERLAP_RANGE[1] + 1):
            raise UserError(f"the tile overlap must be a whole number from 0 to {min(width, height, 257) - 1} "
                            f"(below the tile size), got {self.overlap!r}", field="script_args")
        if self.upscaler not in known:
            raise UserError(f"the upscaler must be one of {', '.join(known)}, got {self.upscaler!r}",
                            field="script_args")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or \
                not SCALE_RANGE[0] <= self.scale <= SCALE_RANGE[1]:
            raise UserError(f"the scale must be between {SCALE_RANGE[0]:g} and {SCALE_RANGE[1]:g}, got {self.scale!r}",
                            field="script_args")
        w, h = self.size(image)
        if w * h > max_pixels:
            raise UserError(f"{image.width}x{image.height} x {self.scale:g} is {w}x{h}, {w * h:,} pixels; at most "
                            f"{max_pixels:,} are allowed (Settings → Limits)", field="script_args")
        if w < width or h < height:
            raise UserError(f"the upscaled image ({w}x{h}) is smaller than one tile ({width}x{height}): lower width "
                            "and height or raise the scale", field="width")
        tiles = len(split_grid(Image.new("L", (w, h)), width, height, self.overlap).all_tiles())
        if tiles > MAX_TILES:
            raise UserError(f"makes {tiles} tiles of {width}x{height}; at most {MAX_TILES}: raise width and height",
                            field="width")
        return self

    def size(self, image: Image.Image) -> tuple[int, int]:
        return int(image.width * self.scale), int(image.height * self.scale)

    def upscale(self, image: Image.Image, upscalers=None, job=None) -> Image.Image | None:
        """The image at the script's scale; a model upscaler runs through `upscalers` (an `upscalers.Upscalers`).
        None when the job was interrupted while a model upscaled."""
        models = None if upscalers is None else \
            (lambda im, name, w, h: upscalers.upscale(im, name, size=(w, h), job=job, field="script_args"))
        return upscale_image(image.convert("RGB"), self.upscaler, *self.size(image), models)


@dataclass
class Grid:
    tiles: list = field(default_factory=list)  # [y, h, [[x, w, tile], ...]] per row
    tile_w: int = 512
    tile_h: int = 512
    image_w: int = 0
    image_h: int = 0
    overlap: int = 0

    def all_tiles(self) -> list[Image.Image]:
        return [tile for _, _, row in self.tiles for _, _, tile in row]

    def replace_tiles(self, images: list[Image.Image]) -> None:
        it = iter(images)
        for _, _, row in self.tiles:
            for entry in row:
                entry[2] = next(it)


def split_grid(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> Grid:
    """A1111's images.split_grid: tiles spread evenly, the last ones flush with the right and bottom edges."""
    w, h = image.size
    cols = max(1, math.ceil((w - overlap) / (tile_w - overlap)))
    rows = max(1, math.ceil((h - overlap) / (tile_h - overlap)))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    grid = Grid([], tile_w, tile_h, w, h, overlap)
    for row in range(rows):
        y = min(int(row * dy), h - tile_h)
        row_images = []
        for col in range(cols):
            x = min(int(col * dx), w - tile_w)
            row_images.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        grid.tiles.append([y, tile_h, row_images])
    return grid


def combine_grid(grid: Grid) -> Image.Image:
    """A1111's images.combine_grid: each tile over the previous one, blended by a linear ramp over the overlap."""
    def ramp(r):
        return Image.fromarray((r * 255 / max(1, grid.overlap)).astype(np.uint8), "L")

    overlap = grid.overlap
    mask_w = ramp(np.arange(overlap, dtype=np.float32).reshape((1, overlap)).repeat(grid.tile_h, axis=0))
    mask_h = ramp(np.arange(overlap, dtype=np.float32).reshape((overlap, 1)).repeat(grid.image_w, axis=1))
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.tiles:
        line = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0 or not overlap:
                line.paste(tile, (x, 0))
                continue
            line.paste(tile.crop((0, 0, overlap, h)), (x, 0), mask=mask_w)
            line.paste(tile.crop((overlap, 0, w, h)), (x + overlap, 0))
        if y == 0 or not overlap:
            combined.paste(line, (0, y))
            continue
        combined.paste(line.crop((0, 0, line.width, overlap)), (0, y), mask=mask_h)
        combined.paste(line.crop((0, overlap, line.width, h)), (0, y + overlap))
    return combined


def from_script_args(args, upscalers: list[str] | None = None) -> SdUpscale:
    """A1111's script_args for "sd upscale": [info (ignored), overlap, upscaler index or name, scale factor]. An
    index counts in `upscalers` (GET /sdapi/v1/upscalers' order, model files included; None: the built-ins)."""
    if not isinstance(args, list):
        raise UserError("must be a list: [_, overlap, upscaler, scale]", field="script_args")
    values = list(args) + [None] * (4 - len(args))
    overlap, upscaler, scale = values[1:4]
    if isinstance(upscaler, int) and not isinstance(upscaler, bool):
        known = list(IMAGE_UPSCALERS if upscalers is None else upscalers)
        if not 0 <= upscaler < len(known):
            raise UserError(f"upscaler index {upscaler} is not one Homegrown has: 0 to {len(known) - 1} "
                            f"({', '.join(known)})", field="script_args")
        upscaler = known[upscaler]
    return SdUpscale(64 if overlap is None else overlap, "Lanczos" if upscaler in (None, "") else upscaler,
                     2.0 if scale is None else scale)


def run(studio, params, script: SdUpscale, owner: str, job, save: bool | None = None, output_format: str | None = None):
    """The script as one job: each tile through `studio.generate` (progress, interrupt and LoRAs as for any image,
    one seed for every tile as A1111), then the blended image with the first tile's infotext and the script's keys."""
    import random
    import time

    from . import infotext
    from .img2img import flatten
    from .jobs import GenerationResult

    params = params.replace(seed=params.seed if params.seed != -1 else random.randrange(2**32 - 1), n_iter=1,
                            batch_size=1)
    image = flatten(params.img2img.init_images[0])
    script.check(params.width, params.height, image, studio.limits().max_pixels, studio.upscaler_names())
    upscaled = script.upscale(image, studio.upscalers(), job)
    if upscaled is None:  # Interrupt while a model upscaler ran
        return GenerationResult([], [], [], params, interrupted=True)
    grid = split_grid(upscaled, params.width, params.height, script.overlap)
    tiles = grid.all_tiles()
    job.part_count, done = len(tiles), []
    studio.jobs.add(job)
    try:
        for number, tile in enumerate(tiles):
            if job.interrupted:
                break
            job.part_no, job.finished = number, None
            spec = params.img2img.replace(init_images=(tile,), mask=None)
            done.append(studio.generate(params.replace(img2img=spec), owner, job, save=False))
    finally:
        job.finished = time.time()
        studio.jobs.remove(job)
    first = done[0] if done else None
    if first is None or len(done) < len(tiles):
        return GenerationResult([], [], [], params, interrupted=True)
    grid.replace_tiles([result.images[0] for result in done])
    prompt, negative, fields = infotext.parse(first.infotexts[0])
    version = fields.pop("Version", None)
    fields.update({"SD upscale overlap": script.overlap, "SD upscale upscaler": script.upscaler, "Version": version})
    text = infotext.build(prompt, negative, fields)
    combined = combine_grid(grid)
    combined.info[infotext.PNG_KEY] = text
    result = GenerationResult([combined], [text], [params.seed], params, sampler=first.sampler,
                              schedule=first.schedule, model_name=first.model_name, model_hash=first.model_hash,
                              vae_name=first.vae_name, vae_hash=first.vae_hash,
                              warnings=[w for r in done for w in r.warnings])
    if studio.outputs.options.save_images if save is None else save:
        studio.outputs.save(result, output_format)
    return result

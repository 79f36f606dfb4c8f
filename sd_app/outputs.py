"""Saving finished images: the outputs folder, file names, formats, atomic writes.

A step after the run, never inside it: the engine returns images with their infotext, and the studio
hands them here. A front end may also send images without saving them (the API's `save_images`).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image

from .errors import UserError
from .infotext import write_image
from .jobs import GenerationResult

# The image formats, defined here where files are written; the Settings table and the API read them.
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}  # format -> file extension
OUTPUT_FORMATS = tuple(EXTENSIONS)
FORMAT_ALIASES = {"jpg": "jpeg"}  # A1111's samples_format says "jpg"


@dataclass(frozen=True)
class OutputOptions:
    save_images: bool = True
    outputs_dir: Path = Path("outputs")
    output_format: str = "png"  # OUTPUT_FORMATS
    filename_pattern: str = "[seed]"  # after the file's number; see file_name
    embed_metadata: bool = True


def output_format(value: Any, field: str = "output_format") -> str:
    """A format name as a user or client writes it ("PNG", "jpg") -> one of OUTPUT_FORMATS."""
    name = value.lower() if isinstance(value, str) else value
    name = FORMAT_ALIASES.get(name, name)
    if name not in OUTPUT_FORMATS:
        allowed = ", ".join([*OUTPUT_FORMATS, *FORMAT_ALIASES])
        raise UserError(f"must be one of {allowed}, got {value!r}", field=field)
    return name


class OutputWriter:
    """Writes a result's images into `outputs/txt2img-images/YYYY-MM-DD/NNNNN-NAME.EXT`."""

    def __init__(self, options: OutputOptions | None = None):
        self.options = options or OutputOptions()

    def configure(self, options: OutputOptions) -> None:
        output_format(options.output_format)
        self.options = options

    def save(self, result: GenerationResult, fmt: str | None = None) -> list[Path]:
        """Save every image of `result` (in `fmt`, else the option's format); adds the paths to it.

        A folder that cannot be written (read-only, full, not a folder) loses no image: the result keeps them
        all, with a warning saying which were not saved, where, and why."""
        fmt = output_format(fmt or self.options.output_format)
        params = result.params
        folder = Path(self.options.outputs_dir) / "txt2img-images"
        for index, (image, text, seed) in enumerate(zip(result.images, result.infotexts, result.seeds)):
            values = {"seed": seed, "model": result.model_name or "", "width": params.width, "height": params.height,
                      "steps": params.steps, "sampler": params.sampler_name, "date": time.strftime("%Y-%m-%d")}
            try:
                result.paths.append(save_image(image, text if self.options.embed_metadata else None, folder,
                                               file_name(self.options.filename_pattern, values), fmt))
            except OSError as err:  # the next image would meet the same folder: stop here
                unsaved = len(result.images) - index
                which = "the image was" if len(result.images) == 1 else (
                    f"{unsaved} of {len(result.images)} images were")
                reason = f"{err.strerror}: {err.filename}" if err.strerror and err.filename else (err.strerror or err)
                result.warnings.append(f"{which} not saved: {folder.absolute()} cannot be written ({reason}). "
                                       "The images are only in this result: download them, or fix the outputs "
                                       "folder in Settings.")
                break
        return result.paths

    def save_grid(self, image: Image.Image, text: str, fmt: str | None = None) -> Path:
        """Save a grid (an X/Y/Z plot) into `outputs/txt2img-grids/YYYY-MM-DD/`, where A1111 puts grids."""
        folder = Path(self.options.outputs_dir) / "txt2img-grids"
        return save_image(image, text if self.options.embed_metadata else None, folder, "xyz_grid",
                          output_format(fmt or self.options.output_format))

    def save_extras(self, images: list[Image.Image], fmt: str | None = None) -> list[Path]:
        """Save upscaled images into `outputs/extras-images/YYYY-MM-DD/`, where A1111 puts them, each with the
        PNG chunks it carries (the source's `parameters`, A1111's `postprocessing` and `extras`). In JPEG and WebP
        the one comment holds the source's infotext, else the postprocessing text."""
        folder = Path(self.options.outputs_dir) / "extras-images"
        paths = []
        fmt = output_format(fmt or self.options.output_format)
        keep = self.options.embed_metadata
        for image in images:
            chunks = {k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)}
            text = chunks.get("parameters") or (chunks.get("postprocessing") if fmt != "png" else None)
            paths.append(save_image(image, text if keep else None, folder, "extras", fmt,
                                    chunks=chunks if keep else None))
        return paths


def save_image(image: Image.Image, infotext: str | None, folder: str | Path, name: str, fmt: str = "png",
               now: datetime | None = None, chunks: dict[str, str] | None = None) -> Path:
    """Save as `folder/YYYY-MM-DD/NNNNN-NAME.EXT`, atomically: a crash leaves no half-written file, and
    two savers never take the same number. The infotext goes where A1111 puts it: the PNG `parameters`
    chunk, or EXIF UserComment for JPEG and WebP."""
    fmt = fmt.lower()
    if fmt not in EXTENSIONS:
        raise ValueError(f"unknown image format {fmt!r}")
    day = Path(folder) / (now or datetime.now()).strftime("%Y-%m-%d")
    day.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".saving-", suffix="." + EXTENSIONS[fmt], dir=day)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write_image(image, infotext, f, fmt, **({"chunks": chunks} if chunks else {}))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        number = _next_number(day)
        while True:
            target = day / f"{number:05d}-{name}.{EXTENSIONS[fmt]}"
            try:
                os.link(tmp, target)  # fails if the name is taken: no overwrite, no race
                return target
            except FileExistsError:
                number += 1
            except OSError:  # filesystems without hard links
                if not target.exists():
                    os.replace(tmp, target)
                    return target
                number += 1
    finally:
        tmp.unlink(missing_ok=True)


def file_name(pattern: str, values: dict[str, Any]) -> str:
    """The part of a file name after its number, from a pattern like "[seed]-[model]"; safe on every OS."""
    name = re.sub(r"\[(\w+)\]", lambda m: str(values.get(m.group(1), m.group(0))), pattern or "[seed]")
    name = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", name).strip(" .")
    return name[:120] or str(values.get("seed", "image"))


def _next_number(folder: Path) -> int:
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := re.match(r"^(\d{5,})-", p.name))]
    return max(numbers, default=-1) + 1

"""The outputs browser's core: the images in the outputs folder, newest first, searchable by prompt, and a
delete that moves a file into a trash folder (and back), never losing one by a slip.

Paths from a front end are relative to the outputs folder (`txt2img-images/2026-11-20/00012-1234.png`);
anything that resolves outside the folder, into the trash, or to a file that is not an image is refused.
Infotexts and thumbnails are read only when asked for and cached per file version (path, size, mtime).
Nothing here knows Gradio or HTTP.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from . import infotext
from .errors import UserError

TRASH = ".trash"  # below the outputs folder; a dot folder, so listings and file browsers skip it
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # what outputs.py writes
READ_ERRORS = (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError, SyntaxError)
THUMBNAIL_SIDE = 256  # px, the longer side of a gallery thumbnail
THUMBNAILS_KEPT = 300  # about 200 KB each: a few pages of the gallery stay in memory


@dataclass(frozen=True)
class SavedImage:
    relative: str  # below the outputs folder, with "/" on every OS: what the page sends back
    path: Path
    modified: float  # seconds since the epoch
    size: int  # bytes

    @property
    def version(self) -> tuple:
        """Changes when the file does: the key of the cached infotext and thumbnail."""
        return self.relative, self.size, self.modified


@dataclass(frozen=True)
class HistoryPage:
    images: list[SavedImage]
    page: int  # 0-based, clamped to the pages there are
    pages: int  # at least 1, even when nothing matched
    total: int  # images that matched the search


class History:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._texts: dict[tuple, str | None] = {}
        self._thumbnails: OrderedDict[tuple, Image.Image] = OrderedDict()
        self._lock = threading.Lock()  # the page's handlers run in threads of their own

    # ---- listing ------------------------------------------------------------------------------

    def list(self) -> list[SavedImage]:
        """Every image below the folder (not the trash, not half-written `.saving-` files), newest first."""
        found = []
        if not self.folder.is_dir():
            return found
        for root, dirs, files in os.walk(self.folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
                    continue
                path = Path(root) / name
                if path.is_symlink():  # may lead outside the folder: `find` refuses those, so none are listed
                    continue
                try:
                    stat = path.stat()
                except OSError:  # deleted while we looked
                    continue
                found.append(SavedImage(path.relative_to(self.folder).as_posix(), path, stat.st_mtime, stat.st_size))
        # Newest first; within one second, the higher file number (a later image of the same batch) first.
        found.sort(key=lambda image: (image.modified, image.relative), reverse=True)
        return found

    def page(self, query: str = "", page: int = 0, per_page: int = 36) -> HistoryPage:
        """One page of the images whose prompt holds every word of `query` (any case), newest first."""
        if not isinstance(per_page, int) or per_page < 1:
            raise UserError(f"must be a whole number of at least 1, got {per_page!r}", field="per_page")
        images = everything = self.list()
        words = (query or "").lower().split()
        if words:
            images = [image for image in images if all(word in self.prompt(image).lower() for word in words)]
        self._forget_missing(everything)
        pages = max(1, math.ceil(len(images) / per_page))
        page = min(max(0, int(page or 0)), pages - 1)
        return HistoryPage(images[page * per_page:(page + 1) * per_page], page, pages, len(images))

    # ---- one image ----------------------------------------------------------------------------

    def find(self, relative: str) -> SavedImage:
        """The image at `relative`, checked: inside the folder, outside the trash, an image file that exists."""
        path = self._inside(relative)
        parts = path.relative_to(self.folder.resolve()).parts
        if parts and parts[0] == TRASH:
            raise UserError("this image is in the trash", field="image", status=404)
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            raise UserError(f"no image {relative!r} in the outputs folder", field="image", status=404)
        stat = path.stat()
        return SavedImage(path.relative_to(self.folder.resolve()).as_posix(), path, stat.st_mtime, stat.st_size)

    def infotext(self, image: SavedImage) -> str | None:
        """The parameters stored in the image (PNG chunk or EXIF), read once per file version."""
        with self._lock:
            if image.version in self._texts:
                return self._texts[image.version]
        try:
            with Image.open(image.path) as opened:  # reads the header and text chunks, not the pixels
                text = infotext.read_image(opened)
        except READ_ERRORS:  # a broken file has no parameters
            text = None
        with self._lock:
            self._texts[image.version] = text
        return text

    def prompt(self, image: SavedImage) -> str:
        text = self.infotext(image)
        return infotext.parse(text)[0] if text else ""

    def thumbnail(self, image: SavedImage) -> Image.Image:
        """A small copy for the gallery (a full page of 1024 px PNGs is tens of MB to send)."""
        with self._lock:
            if image.version in self._thumbnails:
                self._thumbnails.move_to_end(image.version)
                return self._thumbnails[image.version]
        small = self.open(image, with_infotext=False)
        small.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        with self._lock:
            self._thumbnails[image.version] = small
            while len(self._thumbnails) > THUMBNAILS_KEPT:
                self._thumbnails.popitem(last=False)
        return small

    def thumbnails(self, images: list[SavedImage]) -> list[Image.Image]:
        """Thumbnails of a page, made in parallel (Pillow decodes and resizes without the GIL): the first view
        of a page of 1024 px PNGs costs one decode each."""
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
            return list(pool.map(self.thumbnail, images))

    def open(self, image: SavedImage, with_infotext: bool = True) -> Image.Image:
        """The full image, in RGB; with its infotext under the PNG key, so a PNG copy of a JPEG keeps it."""
        try:
            with Image.open(image.path) as opened:
                loaded = opened.convert("RGB")
        except READ_ERRORS as err:
            raise UserError(f"cannot read {image.relative}: {err}", field="image", status=415) from None
        text = self.infotext(image) if with_infotext else None
        if text:
            loaded.info[infotext.PNG_KEY] = text
        return loaded

    # ---- trash --------------------------------------------------------------------------------

    def trash(self, relative: str) -> str:
        """Move an image into `<outputs>/.trash/<the same relative path>` (a free name there if it is taken);
        returns where it went, relative to the outputs folder."""
        image = self.find(relative)
        target = _move(image.path, self.folder.resolve() / TRASH / image.relative)
        return target.relative_to(self.folder.resolve()).as_posix()

    def restore(self, trashed: str) -> str:
        """Move an image from the trash (`.trash/...`, as `trash` returned it) back where it was, or to a free
        name beside it if that one was taken since; returns where it went."""
        path = self._inside(trashed)
        parts = path.relative_to(self.folder.resolve()).parts
        if len(parts) < 2 or parts[0] != TRASH or not path.is_file():
            raise UserError(f"no image {trashed!r} in the trash", field="image", status=404)
        original = Path(*parts[1:])
        target = _move(path, self.folder.resolve() / original)
        return target.relative_to(self.folder.resolve()).as_posix()

    # ---- helpers ------------------------------------------------------------------------------

    def _inside(self, relative: str) -> Path:
        if not isinstance(relative, str) or not relative.strip():
            raise UserError("no image chosen", field="image")
        root = self.folder.resolve()
        path = (root / relative).resolve()  # resolves "..", absolute paths and links before the check
        if not path.is_relative_to(root) or path == root:
            raise UserError(f"{relative!r} is not inside the outputs folder", field="image", status=403)
        return path

    def _forget_missing(self, listed: list[SavedImage]) -> None:
        """Drop cached infotexts of files that changed or went (a long-running app sees many)."""
        with self._lock:
            if len(self._texts) <= len(listed):
                return
            live = {image.version for image in listed}
            self._texts = {key: value for key, value in self._texts.items() if key in live}


def _move(source: Path, target: Path) -> Path:
    """Move `source` to `target`, or to `name (2).ext`, `name (3).ext`... when taken: never over a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    number = 1
    while True:
        candidate = target if number == 1 else target.with_name(f"{target.stem} ({number}){target.suffix}")
        try:
            os.link(source, candidate)  # fails if the name is taken: no overwrite, no race
        except FileExistsError:
            number += 1
            continue
        except OSError:  # filesystems without hard links, or the trash on another device
            if candidate.exists():
                number += 1
                continue
            shutil.move(str(source), str(candidate))
            return candidate
        source.unlink()
        return candidate

"""The training images: a folder (or kohya's `N_name` folders), captions, repeats, and the files to skip.

kohya's convention: a subfolder named `10_name` is seen 10 times an epoch; images right in the dataset
folder once. A caption is the image's same-name `.txt`; an image without one gets the caption template with
the trigger word (the run's, else the folder's name part). A file that cannot train well (unreadable, tiny,
CMYK, with transparency) is reported by name with the reason and left out; it never stops the run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from .buckets import bucket_sizes, choose_bucket

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REPEATS_FOLDER = re.compile(r"^(\d+)_(.*)$")


@dataclass(frozen=True)
class Item:
    path: Path
    caption: str
    folder: str  # the kohya folder's name ("10_dog"), or "" for the dataset folder itself
    bucket: tuple[int, int]  # (width, height)
    sha256: str  # of the file's bytes: the latent cache's key


@dataclass
class Dataset:
    items: list[Item]  # each image once
    repeats: dict[str, int]  # folder -> repeats
    skipped: list[str] = field(default_factory=list)  # "name.png: why", for the user

    def epoch(self) -> list[int]:
        """Item indexes of one epoch: each image as often as its folder's repeats."""
        return [i for i, item in enumerate(self.items) for _ in range(self.repeats[item.folder])]

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        """kohya's ss_tag_frequency: per folder, how often each comma-separated tag appears in the captions."""
        counts: dict[str, Counter] = {}
        for item in self.items:
            tags = [t.strip() for t in item.caption.split(",") if t.strip()]
            counts.setdefault(item.folder or "1_dataset", Counter()).update(tags)
        return {folder: dict(counter) for folder, counter in counts.items()}

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """kohya's ss_dataset_dirs: per folder, its repeats and image count."""
        counts = Counter(item.folder for item in self.items)
        return {folder or "1_dataset": {"n_repeats": self.repeats[folder], "img_count": n}
                for folder, n in counts.items()}

    def fingerprint(self) -> str:
        """One hash over the files, captions and buckets (the text cache is keyed by the captions alone)."""
        data = [(item.sha256, item.caption, item.bucket, self.repeats[item.folder]) for item in self.items]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def scan(folder: str | Path, resolution: int, trigger_word: str = "",
         caption_template: str = "a photo of {trigger}") -> Dataset:
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"no folder {folder}", field="dataset_dir")
    sizes = bucket_sizes(resolution)
    groups: list[tuple[str, int, Path]] = [("", 1, folder)]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        match = REPEATS_FOLDER.match(sub.name)
        if match and int(match.group(1)) > 0:
            groups.append((sub.name, int(match.group(1)), sub))
    items, skipped, repeats = [], [], {}
    for name, count, path in groups:
        for image_path in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
            shown = image_path.relative_to(folder).as_posix()
            problem, size = image_problem(image_path, resolution)
            if problem:
                skipped.append(f"{shown}: {problem}")
                continue
            trigger = trigger_word or (REPEATS_FOLDER.match(name).group(2).strip() if name else "")
            caption = read_caption(image_path) or caption_template.replace("{trigger}", trigger).strip(" ,")
            items.append(Item(image_path, caption, name, choose_bucket(*size, sizes),
                              hashlib.sha256(image_path.read_bytes()).hexdigest()))
            repeats[name] = count
    if not items:
        why = f"; skipped: {'; '.join(skipped)}" if skipped else ""
        raise UserError(f"{folder} holds no usable images ({', '.join(IMAGE_SUFFIXES)}){why}", field="dataset_dir")
    return Dataset(items, repeats, skipped)


def read_caption(image_path: Path) -> str:
    caption = image_path.with_suffix(".txt")
    try:
        return " ".join(caption.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return ""


def image_problem(path: Path, resolution: int) -> tuple[str | None, tuple[int, int]]:
    """Why the image cannot train (None if it can), and its (width, height)."""
    smallest = max(16, resolution // 4)
    try:
        with Image.open(path) as image:
            image.load()  # a truncated file fails here, not in the middle of the run
            mode, size, info = image.mode, image.size, image.info
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        return f"cannot be read as an image ({type(err).__name__}: {err})", (0, 0)
    if mode == "CMYK":
        return "CMYK colours (a print file): save it as RGB", size
    if mode in ("RGBA", "LA", "PA") or "transparency" in info:
        return "has transparency (an alpha channel): flatten it onto a background first", size
    if mode not in ("RGB", "L", "P", "I;16", "I", "YCbCr"):
        return f"unsupported colour mode {mode}", size
    if min(size) < smallest:
        return f"too small ({size[0]}x{size[1]}; at least {smallest} px a side at resolution {resolution})", size
    return None, size


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")

"""Aspect-ratio buckets at SDXL's sizes: each image trains at the size whose shape is closest to its own.

SDXL was trained on ~1 megapixel sizes of many shapes (the list below, from its paper and the sizes A1111 and
Fooocus offer). Scaled to the run's resolution, an image is resized to cover its bucket and only the sliver
that does not fit is cut away, so a portrait stays a portrait: no square centre crop that cuts off heads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PIL import Image

SDXL_SIZES = ((1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344),
              (1536, 640), (640, 1536))


@dataclass(frozen=True)
class Fitted:
    image: Image.Image  # exactly the bucket's size
    original_size: tuple[int, int]  # (height, width) as SDXL's micro-conditioning takes them
    crop_top_left: tuple[int, int]  # (top, left) of the cut, in the resized image


def bucket_sizes(resolution: int) -> list[tuple[int, int]]:
    """SDXL's shapes at the area resolution², as (width, height), multiples of 32 (of 64 from 512 up)."""
    step = 64 if resolution >= 512 else 32
    sizes = []
    for width, height in SDXL_SIZES:
        scale = resolution / 1024
        size = (max(step, round(width * scale / step) * step), max(step, round(height * scale / step) * step))
        if size not in sizes:
            sizes.append(size)
    return sizes


def choose_bucket(width: int, height: int, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's (in log space: 2:1 is as far as 1:2)."""
    ratio = math.log(width / height)
    return min(sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


def fit(image: Image.Image, bucket: tuple[int, int]) -> Fitted:
    """Resize to cover the bucket, then cut the excess evenly from both sides of the longer direction."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    resized_w, resized_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    resized = image.resize((resized_w, resized_h), Image.Resampling.LANCZOS)
    left, top = (resized_w - width) // 2, (resized_h - height) // 2
    return Fitted(resized.crop((left, top, left + width, top + height)), (image.height, image.width), (top, left))

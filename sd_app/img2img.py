"""img2img and inpainting on the image side, as A1111 does it: pure functions on PIL images, no model.

A1111's `processing.StableDiffusionProcessingImg2Img.init`, `images.resize_image`, `masking.py` and
`apply_overlay`, rewritten here: the four resize modes, the mask (binary, inverted, blurred in x and y),
"Only masked" (crop around the mask with padding, widened to the working size's aspect, upscaled, pasted
back through the blurred mask), masked content (fill / original / latent noise / latent nothing) and the
latent mask. The engine turns a `Prepared` into latents; `finish` puts each result back into the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from .errors import UserError

RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
LATENT_RESIZE = 3  # the mode that resizes the encoded latents instead of the image
MASKED_CONTENT = ("fill", "original", "latent noise", "latent nothing")  # A1111's inpainting_fill 0..3
INPAINT_AREAS = ("Whole picture", "Only masked")  # A1111's inpaint_full_res False / True
MASK_MODES = ("Inpaint masked", "Inpaint not masked")  # A1111's inpainting_mask_invert 0 / 1
BACKGROUND = (255, 255, 255)  # A1111's img2img_background_color: what transparent pixels become

# How an image is scaled to a size: Lanczos unless given another (an upscaler from sd_app/upscalers.py).
Resizer = Callable[[Image.Image, int, int], Image.Image]


def lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    return image if image.size == (width, height) else image.resize((width, height), Image.LANCZOS)


def flatten(image: Image.Image, background=BACKGROUND) -> Image.Image:
    """RGB, transparent pixels on the background colour (A1111's images.flatten)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def resize_image(mode: int, image: Image.Image, width: int, height: int, resize: Resizer = lanczos) -> Image.Image:
    """A1111's images.resize_image: 0 just resize, 1 crop and resize (centred, the overflow cut off),
    2 resize and fill (centred, the empty border filled by stretching the image's edge rows or columns).
    Mode 3 (latent upscale) resizes the latents, not the image: here it is mode 0."""
    if mode in (0, LATENT_RESIZE):
        return resize(image, width, height)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        src_w = width if ratio > src_ratio else image.width * height // image.height
        src_h = height if ratio <= src_ratio else image.height * width // image.width
    elif mode == 2:
        src_w = width if ratio < src_ratio else image.width * height // image.height
        src_h = height if ratio >= src_ratio else image.height * width // image.width
    else:
        raise ValueError(f"resize mode {mode}")
    resized = resize(image, src_w, src_h)
    canvas = Image.new(image.mode if image.mode in ("L", "RGB", "RGBA") else "RGB", (width, height))
    canvas.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2:
        _fill_border(canvas, resized, ratio, src_ratio, width, height, src_w, src_h)
    return canvas


def _fill_border(canvas, resized, ratio, src_ratio, width, height, src_w, src_h) -> None:
    if ratio < src_ratio:  # bands above and below: the first and last row, stretched
        fill = height // 2 - src_h // 2
        if fill > 0:
            canvas.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            canvas.paste(resized.resize((width, fill), box=(0, resized.height, width, resized.height)),
                         box=(0, fill + src_h))
    elif ratio > src_ratio:  # bands left and right: the first and last column, stretched
        fill = width // 2 - src_w // 2
        if fill > 0:
            canvas.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            canvas.paste(resized.resize((fill, height), box=(resized.width, 0, resized.width, height)),
                         box=(fill + src_w, 0))


# ---- masks ----------------------------------------------------------------------------------


def binary_mask(mask: Image.Image) -> Image.Image:
    """A1111's create_binary_mask (mask_round on): a drawn RGBA mask by its alpha, else its grey level,
    each pixel 255 above 128 and 0 otherwise."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        grey = mask.split()[-1]
    else:
        grey = mask.convert("L")
    return grey.point(lambda x: 255 if x > 128 else 0)


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float) -> Image.Image:
    """A1111's mask blur: a Gaussian of sigma blur_x across and blur_y down, kernel 2*int(2.5*sigma+0.5)+1
    wide, edges mirrored (OpenCV's default border), as its cv2.GaussianBlur calls."""
    array = np.asarray(mask.convert("L"), dtype=np.float64)
    if blur_x > 0:
        array = _blur_axis(array, blur_x, axis=1)
    if blur_y > 0:
        array = _blur_axis(array, blur_y, axis=0)
    return Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), "L")


def _blur_axis(array: np.ndarray, sigma: float, axis: int) -> np.ndarray:
    size = 2 * int(2.5 * sigma + 0.5) + 1
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(offsets ** 2) / (2 * sigma * sigma))
    kernel /= kernel.sum()
    radius = size // 2
    widths = [(0, 0), (0, 0)]
    widths[axis] = (radius, radius)
    padded = np.pad(array, widths, mode="reflect") if array.shape[axis] > 1 else np.pad(array, widths, mode="edge")
    length = array.shape[axis]
    out = np.zeros_like(array)
    for i, weight in enumerate(kernel):
        out += weight * np.take(padded, np.arange(i, i + length), axis=axis)
    return out


def crop_region(mask: Image.Image, pad: int = 0) -> tuple[int, int, int, int] | None:
    """A1111's masking.get_crop_region_v2: the box around the mask's non-zero pixels, `pad` pixels wider on
    each side within the image; None for an empty mask."""
    box = mask.convert("L").getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    if not pad:
        return box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def expand_crop_region(region, width: int, height: int, image_width: int, image_height: int):
    """A1111's masking.expand_crop_region: widen the box to the working size's aspect ratio, moved back inside
    the image where it overflows (and cut at its edge when the image is too small)."""
    x1, y1, x2, y2 = region
    ratio_crop, ratio_work = (x2 - x1) / (y2 - y1), width / height
    if ratio_crop > ratio_work:
        diff = int((x2 - x1) / ratio_work - (y2 - y1))
        y1, y2 = _shift(y1 - diff // 2, y2 + diff - diff // 2, image_height)
    else:
        diff = int((y2 - y1) * ratio_work - (x2 - x1))
        x1, x2 = _shift(x1 - diff // 2, x2 + diff - diff // 2, image_width)
    return x1, y1, x2, y2


def _shift(low: int, high: int, limit: int) -> tuple[int, int]:
    if high >= limit:
        low, high = low - (high - limit), limit
    if low < 0:
        high, low = high - low, 0
    return low, min(high, limit)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's masking.fill ("Masked content: fill"): the masked area painted with the colours around it,
    by ever sharper blurs of the unmasked pixels laid over each other."""
    result = Image.new("RGBA", image.size)
    masked = Image.new("RGBa", image.size)
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def latent_mask(mask: Image.Image, latent_width: int, latent_height: int) -> np.ndarray:
    """The mask at latent size, 1 where the image is redrawn (A1111: resized with PIL's default filter, then
    rounded to 0 or 1, as its mask_round)."""
    small = mask.convert("RGB").resize((latent_width, latent_height))
    return np.around(np.asarray(small, dtype=np.float32)[..., 0] / 255)


# ---- the whole preparation ------------------------------------------------------------------


@dataclass(frozen=True)
class InpaintOptions:
    mask_blur_x: float = 4
    mask_blur_y: float = 4
    inpainting_fill: int = 1  # index into MASKED_CONTENT
    inpaint_full_res: bool = False  # "Only masked"
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False


@dataclass
class Prepared:
    """The init image at the working size (filled where asked), the mask the latents use, and what puts the
    results back: the overlay (the original outside the blurred mask) and where the working box goes."""

    image: Image.Image  # RGB, width x height (or the source's own size for the latent resize mode)
    mask: Image.Image | None  # L, the image's size: 255 where it is redrawn
    overlay: Image.Image | None  # RGBA at the original size (whole picture: the working size)
    paste_to: tuple[int, int, int, int] | None  # x, y, w, h of the working box in the original, or None
    notes: list[str]


def prepare(init: Image.Image, mask: Image.Image | None, width: int, height: int, resize_mode: int = 0,
            options: InpaintOptions = InpaintOptions(), resize: Resizer = lanczos) -> Prepared:
    """A1111's img2img init for one image: resize (or crop around the mask), mask blur, overlay, fill."""
    image = flatten(init)
    notes: list[str] = []
    if mask is None:
        if resize_mode != LATENT_RESIZE:
            image = resize_image(resize_mode, image, width, height, resize)
        else:
            image = lanczos(image, max(8, image.width // 8 * 8), max(8, image.height // 8 * 8))
        return Prepared(image, None, None, None, notes)
    mask = binary_mask(mask)
    if mask.size != image.size:  # a mask of another size covers the same picture: stretch it onto the image
        mask = mask.resize(image.size, Image.NEAREST)
    if options.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    mask = blur_mask(mask, options.mask_blur_x, options.mask_blur_y)
    region = crop_region(mask, options.inpaint_full_res_padding) if options.inpaint_full_res else None
    if options.inpaint_full_res and region is None:
        notes.append('the mask is empty: "Only masked" needs a masked area, so the whole picture was used')
    if region is not None:
        overlay_mask = mask
        region = expand_crop_region(region, width, height, mask.width, mask.height)
        x1, y1, x2, y2 = region
        work_mask = resize_image(2, mask.crop(region), width, height)
        paste_to = (x1, y1, x2 - x1, y2 - y1)
    else:
        mode = 0 if resize_mode == LATENT_RESIZE else resize_mode
        work_mask = resize_image(mode, mask, width, height)
        # Whole picture: the overlay's mask is the blurred mask doubled (A1111), so the edge is kept sharper.
        overlay_mask = Image.fromarray(np.clip(np.asarray(work_mask, np.float32) * 2, 0, 255).astype(np.uint8))
        image = resize_image(mode, image, width, height, resize)
        paste_to = None
    overlay = Image.new("RGBa", image.size)
    overlay.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask))
    overlay = overlay.convert("RGBA")
    if region is not None:
        image = resize_image(2, image.crop(region), width, height, resize)
    if options.inpainting_fill != 1:  # A1111 fills for the latent modes too (their latents are then replaced)
        image = fill(image, work_mask)
    return Prepared(image, work_mask, overlay, paste_to, notes)


def apply_overlay(result: Image.Image, prepared: Prepared) -> Image.Image:
    """A1111's apply_overlay: the result scaled into its box of the original ("Only masked"), then the
    original laid over it outside the (blurred) mask."""
    if prepared.overlay is None:
        return result
    image = result
    if prepared.paste_to is not None:
        x, y, w, h = prepared.paste_to
        canvas = Image.new("RGBA", prepared.overlay.size)
        canvas.paste(resize_image(1, result, w, h), (x, y))
        image = canvas
    image = image.convert("RGBA")
    image.alpha_composite(prepared.overlay)
    return image.convert("RGB")


# ---- the request ----------------------------------------------------------------------------

MAX_INIT_PIXELS = 4096 * 4096  # an init image or mask larger than this is refused before any work
NOISE_MULTIPLIER_RANGE = (0.0, 1.5)  # A1111's slider for initial_noise_multiplier


@dataclass(frozen=True)
class Img2ImgParams:
    """A1111's img2img fields; the rest of the request (prompt, size, sampler...) is the GenerationParams
    that holds this one. Without a mask it is img2img; with one, inpainting."""

    init_images: tuple = ()  # PIL images: one (repeated for the batch) or one per image of the batch
    mask: Image.Image | None = None
    resize_mode: int = 0  # index into RESIZE_MODES
    denoising_strength: float = 0.75
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_fill: int = 1  # index into MASKED_CONTENT (the page's default, "original")
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    initial_noise_multiplier: float = 1.0

    def replace(self, **changes) -> "Img2ImgParams":
        import dataclasses

        return dataclasses.replace(self, **changes)

    @property
    def options(self) -> InpaintOptions:
        return InpaintOptions(self.mask_blur_x, self.mask_blur_y, self.inpainting_fill, self.inpaint_full_res,
                              self.inpaint_full_res_padding, self.inpainting_mask_invert)

    def check(self, batch_size: int) -> "Img2ImgParams":
        from .hires import _number, _whole

        images = self.init_images
        if not isinstance(images, (tuple, list)) or not images:
            raise UserError("send at least one image", field="init_images")
        for image in list(images) + ([self.mask] if self.mask is not None else []):
            name = "mask" if image is self.mask else "init_images"
            if not isinstance(image, Image.Image):
                raise UserError(f"must be an image, got {type(image).__name__}", field=name)
            if image.width * image.height > MAX_INIT_PIXELS or min(image.size) < 1:
                raise UserError(f"is {image.width}x{image.height}; at most {MAX_INIT_PIXELS:,} pixels are allowed",
                                field=name)
        if len(images) not in (1, batch_size):
            raise UserError(f"has {len(images)} images: send one (used for the whole batch) or batch_size "
                            f"({batch_size})", field="init_images")
        _whole("resize_mode", self.resize_mode, 0, len(RESIZE_MODES) - 1)
        _number("denoising_strength", self.denoising_strength, 0.0, 1.0)
        _whole("mask_blur_x", self.mask_blur_x, 0, 64)
        _whole("mask_blur_y", self.mask_blur_y, 0, 64)
        _whole("inpainting_fill", self.inpainting_fill, 0, len(MASKED_CONTENT) - 1)
        _whole("inpaint_full_res_padding", self.inpaint_full_res_padding, 0, 256)
        for name in ("inpaint_full_res", "inpainting_mask_invert"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"must be true or false, got {getattr(self, name)!r}", field=name)
        _number("initial_noise_multiplier", self.initial_noise_multiplier, *NOISE_MULTIPLIER_RANGE)
        return self

    def infotext_fields(self) -> dict:
        """A1111's img2img keys after `Denoising strength`, in the order its init writes them."""
        if self.mask is None:
            return {"Noise multiplier": self.initial_noise_multiplier if self.initial_noise_multiplier != 1 else None}
        return {
            "Mask mode": "Inpaint not masked" if self.inpainting_mask_invert else None,
            "Mask blur": self.mask_blur_x if self.mask_blur_x == self.mask_blur_y and self.mask_blur_x else None,
            "Mask blur x": self.mask_blur_x if self.mask_blur_x != self.mask_blur_y else None,
            "Mask blur y": self.mask_blur_y if self.mask_blur_x != self.mask_blur_y else None,
            "Inpaint area": "Only masked" if self.inpaint_full_res else None,
            "Masked area padding": self.inpaint_full_res_padding if self.inpaint_full_res else None,
            "Masked content": MASKED_CONTENT[self.inpainting_fill] if self.inpainting_fill != 1 else None,
            "Noise multiplier": self.initial_noise_multiplier if self.initial_noise_multiplier != 1 else None,
        }


def from_infotext(fields: dict[str, str], current: Img2ImgParams) -> tuple[Img2ImgParams, list[str], list]:
    """The img2img settings an infotext holds (its `Mask ...` keys and `Denoising strength`) on `current`."""
    readers = {
        "Denoising strength": ("denoising_strength", float), "Mask blur": ("mask_blur_x", int),
        "Mask blur x": ("mask_blur_x", int), "Mask blur y": ("mask_blur_y", int),
        "Masked area padding": ("inpaint_full_res_padding", int), "Noise multiplier": ("initial_noise_multiplier", float),
    }
    choices = {"Inpaint area": ("inpaint_full_res", {"Only masked": True, "Whole picture": False}),
               "Mask mode": ("inpainting_mask_invert", {"Inpaint masked": False, "Inpaint not masked": True}),
               "Masked content": ("inpainting_fill", {name: i for i, name in enumerate(MASKED_CONTENT)})}
    params, applied, refused = current, [], []
    for key, value in fields.items():
        if key in readers:
            name, kind = readers[key]
            try:
                number = kind(float(value)) if kind is int else kind(value)
            except ValueError:
                refused.append((f"{key}: {value}", "not a number"))
                continue
            params = params.replace(**{name: number}, **({"mask_blur_y": number} if key == "Mask blur" else {}))
        elif key in choices:
            name, table = choices[key]
            if value not in table:
                refused.append((f"{key}: {value}", f"must be one of {', '.join(table)}"))
                continue
            params = params.replace(**{name: table[value]})
        else:
            continue
        applied.append(f"{key}: {value}")
    return params, applied, refused

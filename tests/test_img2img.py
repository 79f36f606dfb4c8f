"""The image side of img2img and inpainting (sd_app/img2img.py): A1111's resize modes, masks, crop, paste-back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sd_app import img2img
from sd_app.img2img import InpaintOptions


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def box_mask(width, height, box, mode="L") -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask.convert(mode) if mode != "L" else mask


def test_just_resize_stretches():
    out = img2img.resize_image(0, gradient(100, 50), 64, 64)
    assert out.size == (64, 64)


def test_crop_and_resize_cuts_the_overflow_centred():
    wide = Image.new("RGB", (200, 100), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 50, 100))  # the left quarter is blue: cut off to fill a square
    wide.paste((0, 0, 255), (150, 0, 200, 100))
    out = np.asarray(img2img.resize_image(1, wide, 64, 64))
    assert out.shape == (64, 64, 3)
    assert out[32, 2, 0] > 200 and out[32, 61, 0] > 200  # only the red middle is left


def test_resize_and_fill_stretches_the_edge_into_the_border():
    wide = Image.new("RGB", (128, 64), (0, 255, 0))
    wide.paste((255, 0, 0), (0, 0, 128, 8))  # top rows red, bottom rows blue
    wide.paste((0, 0, 255), (0, 56, 128, 64))
    out = np.asarray(img2img.resize_image(2, wide, 64, 64))
    assert out.shape == (64, 64, 3)
    # The image fits the width: 64x32 in the middle; the 16-pixel bands above and below repeat its edge rows.
    assert out[4, 32, 0] > 150 and out[4, 32, 2] < 100
    assert out[60, 32, 2] > 150 and out[60, 32, 0] < 100
    assert out[32, 32, 1] > 200  # the middle is the picture


def test_resize_and_fill_tall_image_fills_left_and_right():
    tall = Image.new("RGB", (32, 64), (0, 255, 0))
    tall.paste((255, 0, 0), (0, 0, 4, 64))
    out = np.asarray(img2img.resize_image(2, tall, 64, 64))
    assert out[32, 3, 0] > 150  # the left band repeats the first (red) column


def test_binary_mask_reads_a_drawn_alpha_mask_and_a_grey_one():
    drawn = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    drawn.paste((255, 255, 255, 255), (4, 4, 8, 8))
    assert img2img.binary_mask(drawn).getbbox() == (4, 4, 8, 8)
    grey = Image.new("L", (16, 16), 100)  # 100 <= 128: not masked
    grey.paste(200, (0, 0, 2, 2))
    assert np.asarray(img2img.binary_mask(grey)).sum() == 4 * 255


def test_blur_spreads_in_x_and_y_separately():
    mask = box_mask(64, 64, (24, 24, 40, 40))
    only_x = np.asarray(img2img.blur_mask(mask, 4, 0))
    assert only_x[32, 20] > 0 and only_x[20, 32] == 0  # across, not down
    only_y = np.asarray(img2img.blur_mask(mask, 0, 4))
    assert only_y[20, 32] > 0 and only_y[32, 20] == 0
    assert np.array_equal(np.asarray(img2img.blur_mask(mask, 0, 0)), np.asarray(mask))
    # A1111's kernel: 2*int(2.5*4+0.5)+1 = 21 taps, so nothing reaches further than 10 pixels.
    assert only_x[32, 24 - 11] == 0 and only_x[32, 24 - 3] > 0


def test_crop_region_pads_and_stays_inside():
    mask = box_mask(100, 80, (10, 20, 30, 40))
    assert img2img.crop_region(mask) == (10, 20, 30, 40)
    assert img2img.crop_region(mask, 32) == (0, 0, 62, 72)
    assert img2img.crop_region(Image.new("L", (10, 10)), 8) is None


def test_expand_crop_region_takes_the_working_aspect():
    # A 20x40 box widened to 1:1 (working 64x64) inside a 100x100 image.
    assert img2img.expand_crop_region((40, 30, 60, 70), 64, 64, 100, 100) == (30, 30, 70, 70)
    # Pushed back inside at the right edge.
    assert img2img.expand_crop_region((90, 30, 100, 70), 64, 64, 100, 100) == (60, 30, 100, 70)
    # A wide box grows in height, to 2:1 working.
    x1, y1, x2, y2 = img2img.expand_crop_region((0, 40, 80, 50), 128, 64, 100, 100)
    assert (x2 - x1) / (y2 - y1) == 2


def test_fill_paints_the_hole_with_the_surroundings():
    image = Image.new("RGB", (64, 64), (0, 200, 0))
    image.paste((255, 0, 255), (16, 16, 48, 48))
    filled = np.asarray(img2img.fill(image, box_mask(64, 64, (16, 16, 48, 48))))
    assert filled[32, 32, 1] > 150 and filled[32, 32, 0] < 60  # green, not the magenta that was there
    assert tuple(filled[2, 2]) == (0, 200, 0)


def test_latent_mask_is_rounded_at_latent_size():
    lat = img2img.latent_mask(box_mask(64, 64, (0, 0, 32, 64)), 8, 8)
    assert lat.shape == (8, 8) and set(np.unique(lat)) == {0.0, 1.0}
    assert lat[:, :4].all() and not lat[:, 4:].any()


def test_whole_picture_prepare_with_a_mask_of_another_size():
    image = gradient(128, 128)
    mask = box_mask(32, 32, (8, 8, 16, 16))  # a quarter of the image's size: same picture, stretched
    prepared = img2img.prepare(image, mask, 64, 64, options=InpaintOptions(mask_blur_x=0, mask_blur_y=0))
    assert prepared.image.size == (64, 64) and prepared.mask.size == (64, 64)
    assert prepared.mask.point(lambda v: 255 if v > 128 else 0).getbbox() == (16, 16, 32, 32)
    assert prepared.paste_to is None


def test_invert_swaps_the_mask():
    mask = box_mask(64, 64, (0, 0, 32, 64))
    prepared = img2img.prepare(gradient(64, 64), mask, 64, 64,
                               options=InpaintOptions(0, 0, inpainting_mask_invert=True))
    assert prepared.mask.getbbox() == (32, 0, 64, 64)


@pytest.mark.parametrize("full_res", [False, True])
def test_paste_back_with_original_changes_nothing_outside_the_blurred_mask(full_res):
    original = gradient(96, 80)
    mask = box_mask(96, 80, (40, 30, 56, 46))
    options = InpaintOptions(mask_blur_x=4, mask_blur_y=4, inpainting_fill=1, inpaint_full_res=full_res,
                             inpaint_full_res_padding=8)
    width, height = (64, 64) if full_res else (96, 80)
    prepared = img2img.prepare(original, mask, width, height, options=options)
    if full_res:
        x, y, w, h = prepared.paste_to
        assert x <= 32 and y <= 22 and x + w >= 64 and y + h >= 54  # the padded box, widened to 1:1
        assert w == h
    result = Image.new("RGB", (width, height), (255, 0, 255))  # whatever the model drew
    pasted = np.asarray(img2img.apply_overlay(result, prepared)).astype(int)
    assert pasted.shape == (80, 96, 3)
    blurred = np.asarray(img2img.blur_mask(img2img.binary_mask(mask), 4, 4))
    outside = blurred == 0
    assert np.array_equal(pasted[outside], np.asarray(original).astype(int)[outside])
    # The middle of the mask is (mostly: "Only masked" lays the blurred mask over it) the new picture.
    assert pasted[38, 48, 0] > 200 and pasted[38, 48, 1] < 60


def test_only_masked_with_an_empty_mask_falls_back_to_whole_picture():
    prepared = img2img.prepare(gradient(64, 64), Image.new("L", (64, 64)), 64, 64,
                               options=InpaintOptions(inpaint_full_res=True))
    assert prepared.paste_to is None and prepared.notes


def test_fill_content_changes_the_masked_area_of_the_init_image():
    image = Image.new("RGB", (64, 64), (0, 200, 0))
    image.paste((255, 0, 255), (16, 16, 48, 48))
    mask = box_mask(64, 64, (16, 16, 48, 48))
    kept = img2img.prepare(image, mask, 64, 64, options=InpaintOptions(0, 0, inpainting_fill=1))
    filled = img2img.prepare(image, mask, 64, 64, options=InpaintOptions(0, 0, inpainting_fill=0))
    assert tuple(np.asarray(kept.image)[32, 32]) == (255, 0, 255)
    assert np.asarray(filled.image)[32, 32, 1] > 150


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (8, 8), (10, 20, 30, 0))
    assert img2img.flatten(image).getpixel((0, 0)) == (255, 255, 255)

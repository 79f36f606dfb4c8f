"""The img2img tab's handlers (sd_app/ui/img2img_tab.py): form values -> request, the painted mask, Send to."""

import pytest
from PIL import Image

from sd_app.errors import UserError
from sd_app.ui.img2img_tab import mask_from_editor, send_image, values_to_request

IMAGE = Image.new("RGB", (70, 90), (10, 200, 30))


def values(mode="img2img", image=IMAGE, editor=None, mask=None, **changes):
    form = dict(prompt="a cat", negative="", sampler="Euler", scheduler="Automatic", steps=3, width=64, height=64,
                cfg=7.0, seed=1, batch=1, strength=0.5, resize_mode=1, blur=4, mask_mode=0, content=1, area=0,
                padding=32)
    form.update(changes)
    return [mode, image, editor, mask, *form.values()]


def test_img2img_values_make_a_checked_request():
    params = values_to_request(values(strength=0.3))
    assert params.img2img.init_images == (IMAGE,) and params.img2img.mask is None
    assert params.img2img.denoising_strength == 0.3 and params.img2img.resize_mode == 1
    with pytest.raises(UserError) as err:
        values_to_request(values(image=None))
    assert err.value.field == "init_images"
    with pytest.raises(UserError) as err:
        values_to_request(values(strength=1.5))
    assert err.value.field == "denoising_strength"


def test_inpaint_reads_the_painted_strokes_or_an_uploaded_mask():
    layer = Image.new("RGBA", IMAGE.size)
    layer.paste((255, 255, 255, 255), (10, 10, 30, 30))
    editor = {"background": IMAGE, "layers": [layer], "composite": IMAGE}
    params = values_to_request(values("inpaint", None, editor, area=1, mask_mode=1, content=3))
    spec = params.img2img
    assert spec.mask.getbbox() == (10, 10, 30, 30) and spec.inpaint_full_res and spec.inpainting_mask_invert
    assert spec.inpainting_fill == 3
    uploaded = Image.new("L", (8, 8), 255)
    assert mask_from_editor(editor, uploaded) is uploaded
    with pytest.raises(UserError) as err:  # nothing painted
        values_to_request(values("inpaint", None, {"background": IMAGE, "layers": [], "composite": IMAGE}))
    assert err.value.field == "mask"


def test_send_to_inpaint_takes_the_image_and_its_parameters():
    sent = send_image((IMAGE, "seed 3"), "a fox\nSteps: 5, Sampler: Euler, CFG scale: 6, Seed: 3, Size: 64x64", "inpaint")
    mode, _, editor, prompt, _, steps, width, height, cfg, seed = sent[:10]
    assert mode == "inpaint" and editor["background"] is IMAGE
    assert (prompt, steps, width, height, cfg, seed) == ("a fox", 5, 64, 88, 6.0, 3)
    with pytest.raises(UserError):
        send_image(None, "", "img2img")

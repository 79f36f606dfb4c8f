"""POST /sdapi/v1/img2img and txt2img's hires fix over real HTTP against `python app.py --demo`."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from sd_app.img2img import binary_mask, blur_mask

API = "/sdapi/v1"
SMALL = {"prompt": "a cat", "steps": 3, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def client(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def init_b64(client):
    r = client.post(f"{API}/txt2img", json={**SMALL, "seed": 1})
    assert r.status_code == 200, r.text
    return r.json()["images"][0]


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(data: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")).astype(int)


def test_img2img_is_deterministic_and_says_its_strength(client, init_b64):
    payload = {**SMALL, "init_images": [init_b64], "denoising_strength": 0.5}
    a, b = (client.post(f"{API}/img2img", json=payload) for _ in range(2))
    assert a.status_code == 200, a.text
    assert a.json()["images"] == b.json()["images"]  # same seed, same pixels
    info = json.loads(a.json()["info"])
    assert "Denoising strength: 0.5" in info["infotexts"][0] and info["denoising_strength"] == 0.5
    assert pixels(a.json()["images"][0]).shape == (64, 64, 3)
    assert a.json()["parameters"]["init_images"] is None  # A1111 echoes them only with include_init_images
    other = client.post(f"{API}/img2img", json={**payload, "seed": 6}).json()["images"][0]
    assert other != a.json()["images"][0]


def test_inpaint_keeps_every_pixel_outside_the_blurred_mask(client, init_b64):
    mask = Image.new("L", (32, 32), 0)  # half the image's size: it covers the same picture
    mask.paste(255, (8, 8, 20, 20))
    payload = {**SMALL, "init_images": [init_b64], "mask": b64(mask), "denoising_strength": 0.9,
               "inpainting_fill": 1, "inpaint_full_res": False, "mask_blur": 4}
    r = client.post(f"{API}/img2img", json=payload)
    assert r.status_code == 200, r.text
    out, original = pixels(r.json()["images"][0]), pixels(init_b64)
    blurred = np.asarray(blur_mask(binary_mask(mask.resize((64, 64), Image.NEAREST)), 4, 4))
    outside = blurred == 0
    assert outside.sum() > 1000 and np.array_equal(out[outside], original[outside])
    assert np.abs(out[28, 28] - original[28, 28]).sum() > 0  # inside, the model drew
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Mask blur: 4" in text and "Inpaint area" not in text


def test_inpaint_only_masked_with_latent_noise(client, init_b64):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (40, 40, 56, 56))
    r = client.post(f"{API}/img2img", json={**SMALL, "init_images": [init_b64], "mask": b64(mask),
                                             "inpainting_fill": 2, "inpaint_full_res_padding": 8})
    assert r.status_code == 200, r.text
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Inpaint area: Only masked, Masked area padding: 8, Masked content: latent noise" in text
    out, original = pixels(r.json()["images"][0]), pixels(init_b64)
    assert np.array_equal(out[:20], original[:20])  # far from the mask: untouched


def test_hires_fix_upscales_and_writes_a1111_keys(client):
    r = client.post(f"{API}/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 2,
                                             "denoising_strength": 0.6, "hr_upscaler": "Latent (nearest)"})
    assert r.status_code == 200, r.text
    assert pixels(r.json()["images"][0]).shape == (128, 128, 3)
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Size: 64x64" in text  # the first pass's size, as A1111 writes it
    assert "Denoising strength: 0.6, Hires upscale: 2.0, Hires steps: 2, Hires upscaler: Latent (nearest)" in text
    resized = client.post(f"{API}/txt2img", json={**SMALL, "enable_hr": True, "hr_resize_x": 96, "hr_resize_y": 96,
                                                   "hr_upscaler": "Lanczos"})
    assert resized.status_code == 200, resized.text
    assert pixels(resized.json()["images"][0]).shape == (96, 96, 3)
    assert "Hires resize: 96x96" in json.loads(resized.json()["info"])["infotexts"][0]


def test_lora_changes_img2img_and_removing_it_restores_it(client, init_b64):
    payload = {**SMALL, "init_images": [init_b64], "denoising_strength": 0.7}
    plain = client.post(f"{API}/img2img", json=payload).json()["images"][0]
    styled = client.post(f"{API}/img2img", json={**payload, "prompt": "a cat <lora:demo-style:1>"}).json()["images"][0]
    again = client.post(f"{API}/img2img", json=payload).json()["images"][0]
    assert styled != plain and again == plain


@pytest.mark.parametrize("change, field", [
    ({"init_images": ["not base64!"]}, "init_images"),
    ({"init_images": [base64.b64encode(b"hello, not an image").decode()]}, "init_images"),
    ({"mask": base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()}, "mask"),  # a PNG cut short
    ({"init_images": []}, "init_images"),
    ({"latent_mask": "abc"}, "latent_mask"),
    ({"restore_faces": True}, "restore_faces"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"inpainting_fill": 7}, "inpainting_fill"),
    ({"resize_mode": 4}, "resize_mode"),
    ({"batch_size": 3, "init_images": None}, "init_images"),
    ({"script_name": "prompt matrix"}, "script_name"),
    ({"script_name": "sd upscale", "script_args": ["", 64, "4x-Nope", 2]}, "script_args"),
])
def test_bad_requests_are_refused_naming_the_field(client, init_b64, change, field):
    payload = {**SMALL, "init_images": [init_b64], **change}
    if change.get("init_images", 1) is None:
        payload["init_images"] = [init_b64, init_b64]
    r = client.post(f"{API}/img2img", json=payload)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    if field == "restore_faces":
        assert "not available" in r.json()["detail"]


def test_truncated_init_image_is_refused(client, init_b64):
    cut = base64.b64encode(base64.b64decode(init_b64)[:200]).decode()
    r = client.post(f"{API}/img2img", json={**SMALL, "init_images": [cut]})
    assert r.status_code == 422 and r.json()["field"] == "init_images"


def test_sd_upscale_script_tiles_and_blends(client, init_b64):
    payload = {**SMALL, "init_images": [init_b64], "denoising_strength": 0.3, "script_name": "SD upscale",
               "script_args": ["", 16, 1, 2]}  # Lanczos x2: 128x128 in 64x64 tiles overlapping by 16
    r = client.post(f"{API}/img2img", json=payload)
    assert r.status_code == 200, r.text
    assert pixels(r.json()["images"][0]).shape == (128, 128, 3)
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "SD upscale overlap: 16, SD upscale upscaler: Lanczos" in text
    again = client.post(f"{API}/img2img", json=payload).json()["images"][0]
    assert again == r.json()["images"][0]

"""A1111's Extras API over real HTTP against `python app.py --demo`: upscalers listed, images upscaled with their
infotext kept and A1111's postprocessing keys added, bad images and oversized requests refused naming the field."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

API = "/sdapi/v1"
DEMO = "homegrown-demo-4x"
SOURCE_TEXT = "a red fox\nNegative prompt: blurry\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 42, Size: 64x48"


@pytest.fixture(scope="module")
def client(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=120) as c:
        yield c


def png_b64(width=64, height=48, text: str | None = SOURCE_TEXT, colour=(200, 80, 30)) -> str:
    image = Image.new("RGB", (width, height), colour)
    image.paste((20, 90, 200), (width // 4, height // 4, width // 2, height // 2))
    meta = PngInfo()
    if text:
        meta.add_text("parameters", text)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=meta)
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def test_upscalers_are_listed_in_a1111s_shape(client):
    listed = client.get(f"{API}/upscalers").json()
    assert [u["name"] for u in listed] == ["None", "Lanczos", "Nearest", DEMO]
    demo = listed[-1]
    assert set(demo) >= {"name", "model_name", "model_path", "model_url", "scale"}
    assert demo["scale"] == 4 and demo["model_path"].endswith("models/ESRGAN/homegrown-demo-4x.safetensors")
    modes = client.get(f"{API}/latent-upscale-modes").json()
    assert [m["name"] for m in modes] == ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                                          "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"]


def test_single_image_keeps_its_infotext_and_gains_the_postprocess_keys(client):
    answer = client.post(f"{API}/extra-single-image", json={
        "image": png_b64(), "upscaler_1": DEMO, "upscaling_resize": 4})
    assert answer.status_code == 200, answer.text
    image = decode(answer.json()["image"])
    assert image.size == (256, 192)
    assert image.info["parameters"] == SOURCE_TEXT
    assert image.info["postprocessing"] == f"Postprocess upscale by: 4.0, Postprocess upscaler: {DEMO}"
    assert image.info["extras"] == image.info["postprocessing"]
    assert answer.json()["html_info"] == f"<p>Postprocess upscale by: 4.0, Postprocess upscaler: {DEMO}</p>"
    # the demo model keeps the picture: the blue square is still there, four times larger
    assert image.getpixel((96, 72))[2] > 120 and image.getpixel((10, 10))[0] > 120


def test_scale_to_with_crop_and_a_second_upscaler(client):
    answer = client.post(f"{API}/extra-single-image", json={
        "image": png_b64(text=None), "resize_mode": 1, "upscaling_resize_w": 100, "upscaling_resize_h": 60,
        "upscaling_crop": True, "upscaler_1": "Lanczos", "upscaler_2": "Nearest", "extras_upscaler_2_visibility": 0.5})
    assert answer.status_code == 200, answer.text
    image = decode(answer.json()["image"])
    assert image.size == (100, 60)
    assert "parameters" not in image.info
    assert image.info["postprocessing"] == ("Postprocess upscale to: 100x60, Postprocess crop to: 100x60, "
                                            "Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest")


def test_upscaler_none_returns_the_image_as_it_was(client):
    source = png_b64()
    answer = client.post(f"{API}/extra-single-image", json={"image": source})
    image = decode(answer.json()["image"])
    assert image.size == (64, 48) and image.tobytes() == decode(source).convert("RGB").tobytes()


def test_batch_images(client):
    answer = client.post(f"{API}/extra-batch-images", json={
        "imageList": [{"data": png_b64(), "name": "a.png"}, {"data": png_b64(32, 32, "x"), "name": "b.png"}],
        "upscaler_1": "Nearest", "upscaling_resize": 2})
    assert answer.status_code == 200, answer.text
    images = [decode(b64) for b64 in answer.json()["images"]]
    assert [i.size for i in images] == [(128, 96), (64, 64)]
    assert images[1].info["parameters"] == "x"


@pytest.mark.parametrize("data, why", [
    ("bm90IGFuIGltYWdl", "is not an image"),  # base64 of "not an image"
    (png_b64()[:202], "not valid base64"),  # cut short mid-way, between base64 quads
    (png_b64()[:200], "is not an image"),  # cut short on a quad: valid base64, a truncated PNG
    (png_b64()[:400] + "====", "not valid base64"),
])
def test_bad_images_are_refused_naming_the_field(client, data, why):
    answer = client.post(f"{API}/extra-single-image", json={"image": data, "upscaler_1": "Lanczos"})
    assert answer.status_code == 422 and answer.json()["field"] == "image" and why in answer.json()["detail"]
    batch = client.post(f"{API}/extra-batch-images", json={
        "imageList": [{"data": png_b64(), "name": "a.png"}, {"data": data, "name": "b.png"}], "upscaler_1": "Lanczos"})
    assert batch.status_code == 422 and batch.json()["field"] == "imageList.1.data"


def test_a_truncated_png_is_refused(client):
    whole = base64.b64decode(png_b64(256, 256))
    cut = base64.b64encode(whole[: len(whole) // 2]).decode()
    answer = client.post(f"{API}/extra-single-image", json={"image": cut, "upscaler_1": "Lanczos"})
    assert answer.status_code == 422 and answer.json()["field"] == "image"


def test_an_upscale_over_the_limit_is_refused_with_the_limit_named(client):
    answer = client.post(f"{API}/extra-single-image", json={
        "image": png_b64(1100, 1100), "upscaler_1": DEMO, "upscaling_resize": 8})
    assert answer.status_code == 422
    body = answer.json()
    assert body["field"] == "upscaling_resize"
    assert "8800x8800 = 77,440,000 pixels; at most 67,108,864" in body["detail"]
    assert "Upscaled image pixels" in body["detail"]


def test_unknown_upscaler_face_restoration_and_bad_values(client):
    unknown = client.post(f"{API}/extra-single-image", json={"image": png_b64(), "upscaler_1": "R-ESRGAN 4x+"})
    assert unknown.status_code == 404 and unknown.json()["field"] == "upscaler_1"
    assert f"known: None, Lanczos, Nearest, {DEMO}" in unknown.json()["detail"]
    faces = client.post(f"{API}/extra-single-image", json={"image": png_b64(), "gfpgan_visibility": 0.5})
    assert faces.status_code == 422 and faces.json()["field"] == "gfpgan_visibility"
    for field, value in (("resize_mode", 3), ("upscaling_resize", 0), ("extras_upscaler_2_visibility", 2)):
        bad = client.post(f"{API}/extra-single-image", json={"image": png_b64(), "upscaler_1": "Lanczos", field: value})
        assert bad.status_code == 422 and bad.json()["field"] == field, bad.text
    assert client.post(f"{API}/extra-single-image", json={}).json()["field"] == "image"


def test_save_images_writes_into_extras_images_with_the_chunks(client, demo_server):
    answer = client.post(f"{API}/extra-single-image", json={
        "image": png_b64(), "upscaler_1": "Lanczos", "upscaling_resize": 2, "save_images": True})
    assert answer.status_code == 200
    saved = sorted((demo_server.outputs / "extras-images").rglob("*.png"))
    assert saved, "nothing saved"
    image = Image.open(saved[-1])
    assert image.size == (128, 96)
    assert image.info["parameters"] == SOURCE_TEXT
    assert image.info["postprocessing"] == "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"

"""Issue 16's path in a real browser, as a new user takes it: txt2img with hires fix → Send to inpaint → paint
the area to redraw → Generate → Send to extras → upscale ×4; and img2img from an uploaded file."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from browser import browser_page, require_browser

require_browser()


@pytest.fixture(scope="module")
def page(demo_server):
    with browser_page(demo_server.url) as page:
        yield page


def wait_text(page, selector: str, text: str, timeout: int = 180_000) -> str:
    """The value (or text) of `selector` once it contains `text`."""
    page.wait_for_function(
        "([s, t]) => { const e = document.querySelector(s); return e && (e.value ?? e.innerText).includes(t); }",
        arg=[selector, text], timeout=timeout)
    element = page.locator(selector)
    return element.input_value() if selector.endswith(("textarea", "input")) else element.inner_text()


def shown_image(page, selector: str) -> Image.Image:
    """The picture an <img> of the page shows, as the server sent it (PNG)."""
    page.wait_for_selector(selector, timeout=60_000)
    src = page.locator(selector).first.get_attribute("src")
    response = page.request.get(src if src.startswith("http") else page.url.rstrip("/") + "/" + src.lstrip("/"))
    assert response.ok, src
    return Image.open(io.BytesIO(response.body())).convert("RGB")


def paint(page, editor: str, to_y: float) -> None:
    """A brush stroke across the top of the picture in the image editor, down to `to_y` of its height."""
    page.locator(f"{editor} button[aria-label='Brush']").click()
    zoom = float(re.search(r"(\d+)%", page.inner_text(editor)).group(1)) / 100  # the editor shows its zoom
    canvas = page.locator(f"{editor} canvas").last.bounding_box()
    side = 128 * zoom  # the picture is 128² and centred in the canvas
    left = canvas["x"] + (canvas["width"] - side) / 2
    top = canvas["y"] + (canvas["height"] - side) / 2
    page.mouse.move(left + side * 0.2, top + side * 0.05)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(left + side * (0.2 + 0.06 * step), top + side * (0.05 + (to_y - 0.05) * step / 10))
    page.mouse.up()


def test_txt2img_hires_then_inpaint_a_region_then_upscale_4x_in_extras(page, tmp_path):
    page.fill("#prompt textarea", "a small red boat on a lake")
    for name, value in (("steps", "2"), ("width", "64"), ("height", "64"), ("seed", "808")):
        page.fill(f"#{name} input", value)
    page.get_by_text("Hires fix", exact=True).click()
    page.locator("#hires-enable input").check()
    page.fill("#hires-scale input[type=number]", "2")
    page.fill("#hires-steps input[type=number]", "2")
    page.click("#generate")
    info = wait_text(page, "#infotext textarea", "Hires upscale: 2")
    assert "Size: 64x64" in info and "Seed: 808," in info  # A1111 writes the first pass's size
    first = shown_image(page, "#gallery img")
    assert first.size == (128, 128)

    page.click("#send-to-inpaint")
    page.wait_for_selector("#inpaint-editor canvas", state="visible", timeout=30_000)
    assert page.input_value("#img2img-prompt textarea") == "a small red boat on a lake"
    assert page.input_value("#img2img-width input[type=number]") == "128"
    page.wait_for_timeout(500)  # the picture is drawn on the canvas
    paint(page, "#inpaint-editor", to_y=0.35)
    page.click("#img2img-generate")
    info = wait_text(page, "#img2img-infotext textarea", "Mask blur: 4")
    assert "Denoising strength: 0.75" in info and "Size: 128x128" in info and "Seed: 808," in info
    inpainted = np.asarray(shown_image(page, "#img2img-gallery img"), dtype=np.int16)
    before = np.asarray(first, dtype=np.int16)
    # "original" content, whole picture: the painted top is redrawn, the bottom half keeps every pixel.
    assert np.abs(inpainted[:40] - before[:40]).max() > 0
    assert np.array_equal(inpainted[80:], before[80:])

    page.click("#img2img-to-extras")
    page.wait_for_selector("#extras-go", state="visible", timeout=30_000)
    assert "homegrown-demo-4x" in page.input_value("#extras-upscaler-1 input")
    assert "Mask blur: 4" in wait_text(page, "#extras-source-info textarea", "Mask blur")  # the infotext goes along
    page.click("#extras-go")
    wait_text(page, "#extras-info textarea", "homegrown-demo-4x")
    upscaled = shown_image(page, "#extras-result img")
    assert upscaled.size == (512, 512)


def test_img2img_from_an_uploaded_file_takes_its_size(page, tmp_path):
    upload = tmp_path / "photo.png"
    pixels = np.random.default_rng(3).integers(0, 255, (72, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(upload)
    page.get_by_role("tab", name="img2img", exact=True).first.click()
    page.locator("#img2img-generate").wait_for(state="visible")
    page.get_by_role("tab", name="img2img", exact=True).last.click()  # the sub-tab, not the Inpaint one
    page.set_input_files("#img2img-image input[type=file]", str(upload))
    page.wait_for_function("document.querySelector('#img2img-width input[type=number]').value === '96'",
                           timeout=30_000)
    assert page.input_value("#img2img-height input[type=number]") == "72"
    page.fill("#img2img-seed input", "91")
    page.click("#img2img-generate")
    info = wait_text(page, "#img2img-infotext textarea", "Seed: 91,")
    assert "Size: 96x72" in info and "Denoising strength: 0.75" in info and "Mask blur" not in info
    assert shown_image(page, "#img2img-gallery img").size == (96, 72)

"""A real browser (Debian's chromium, driven by playwright) uses the demo app as a person would."""

import os
import shutil
from pathlib import Path

import pytest

from server import ROOT

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
OUTPUT = Path(os.environ.get("TEST_OUTPUT", ROOT / "test-output"))

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright for browser tests")
if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def page(demo_server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(demo_server.url)
        page.wait_for_selector("body[data-hg-loaded]", timeout=60_000)  # the page-load events filled the form
        yield page
        browser.close()


def test_generate_from_the_browser(page):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.fill("#prompt textarea", "a red fox in the snow, (masterpiece:1.2)")
    page.fill("#seed input", "1234")
    page.click("#generate")
    page.wait_for_selector("#gallery img", timeout=120_000)
    page.wait_for_function("document.querySelector('#infotext textarea').value.includes('Seed:')", timeout=30_000)
    info = page.input_value("#infotext textarea")
    assert info.startswith("a red fox in the snow, (masterpiece:1.2)")
    assert "Seed: 1234," in info and "Model: homegrown-demo-base" in info
    assert "8/75" in page.inner_text("#prompt-tokens") or "/75" in page.inner_text("#prompt-tokens")
    page.screenshot(path=str(OUTPUT / "txt2img.png"), full_page=True)


def test_lora_card_inserts_its_tag_once(page):
    page.fill("#prompt textarea", "a castle")
    page.get_by_role("tab", name="LoRA").click()
    card = page.locator("#lora-cards button").filter(has_text="demo-detail").first
    card.wait_for(timeout=30_000)
    card.click()
    page.wait_for_function("document.querySelector('#prompt textarea').value.includes('<lora:demo-detail:0.8>')",
                           timeout=30_000)
    card.click()
    page.wait_for_timeout(1000)
    prompt = page.input_value("#prompt textarea")
    assert prompt.count("<lora:demo-detail") == 1 and "a castle" in prompt
    page.screenshot(path=str(OUTPUT / "lora-tab.png"), full_page=True)
    page.get_by_role("tab", name="txt2img").click()


def test_xyz_plot_from_the_browser(page):
    page.get_by_role("tab", name="txt2img").click()
    page.fill("#prompt textarea", "a lighthouse")
    page.fill("#seed input", "77")
    page.get_by_text("X/Y/Z plot", exact=True).click()
    page.fill("#xyz-x-values textarea, #xyz-x-values input", "1, 2")  # X type starts as Seed, as in A1111
    y_type = page.locator("#xyz-y-type input")
    y_type.click()
    y_type.fill("Steps")
    page.get_by_role("option", name="Steps", exact=True).click()
    page.fill("#xyz-y-values textarea, #xyz-y-values input", "2, 3")
    page.click("#xyz-generate")
    page.wait_for_function("document.querySelector('#infotext textarea').value.includes('X/Y/Z plot')",
                           timeout=180_000)
    info = page.input_value("#infotext textarea")
    assert info.startswith("a lighthouse") and "X Type: Seed" in info and 'Y Values: "2, 3"' in info
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 5", timeout=30_000)
    page.screenshot(path=str(OUTPUT / "xyz-plot.png"), full_page=True)


def test_history_finds_a_saved_image_after_a_reload_sends_it_and_deletes_it_to_the_trash(page, demo_server):
    page.get_by_role("tab", name="txt2img").click()
    page.fill("#prompt textarea", "a grey heron by the history pond")
    page.fill("#seed input", "4321")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#infotext textarea').value.includes('Seed: 4321,')",
                           timeout=120_000)
    page.reload()
    page.wait_for_selector("#generate", timeout=60_000)
    page.get_by_role("tab", name="History").click()
    page.wait_for_selector("#history-gallery img", timeout=30_000)
    assert "Page 1 of" in page.inner_text("#history-page")
    page.fill("#history-search textarea", "HERON pond")
    page.press("#history-search textarea", "Enter")
    wait_for_label(page, "· 1 image")
    assert page.locator("#history-gallery button.thumbnail-item").count() == 1
    page.locator("#history-gallery button.thumbnail-item").first.click()
    page.wait_for_function("document.querySelector('#history-infotext textarea').value.includes('Seed: 4321,')",
                           timeout=30_000)
    assert page.input_value("#history-infotext textarea").startswith("a grey heron by the history pond\n")
    relative = page.inner_text("#history-file").split(" · ")[0].strip()
    saved = demo_server.outputs / relative
    assert saved.is_file() and relative.startswith("txt2img-images/")
    assert all(page.locator(f"#history-to-{target}").is_enabled() for target in ("img2img", "inpaint", "extras"))
    page.screenshot(path=str(OUTPUT / "history-tab.png"), full_page=True)

    page.click("#history-to-txt2img")
    page.wait_for_function("document.querySelector('#prompt textarea').value.startsWith('a grey heron')",
                           timeout=30_000)
    page.locator("#prompt textarea").wait_for(state="visible", timeout=30_000)  # the txt2img tab is shown
    assert page.input_value("#seed input") == "4321"

    page.get_by_role("tab", name="History").click()
    page.click("#history-to-img2img")
    page.wait_for_function("(document.querySelector('#img2img-prompt textarea')?.value ?? '')"
                           ".startsWith('a grey heron')", timeout=30_000)  # the tab is drawn when first shown
    page.locator("#img2img-image img").wait_for(state="visible", timeout=30_000)  # the image is in img2img
    assert page.input_value("#img2img-seed input") == "4321"

    page.get_by_role("tab", name="History").click()
    wait_for_label(page, "· 1 image")
    page.click("#history-delete")
    page.wait_for_function("document.querySelector('#history-status').innerText.includes('Moved')", timeout=30_000)
    page.wait_for_function("document.querySelector('#history-page').innerText.includes('No saved image matches')",
                           timeout=30_000)
    assert not saved.exists() and (demo_server.outputs / ".trash" / relative).is_file()
    page.click("#history-undo")
    page.wait_for_function("document.querySelector('#history-status').innerText.includes('Restored')",
                           timeout=30_000)
    wait_for_label(page, "· 1 image")
    assert saved.is_file() and not (demo_server.outputs / ".trash" / relative).exists()
    page.get_by_role("tab", name="txt2img").click()


def wait_for_label(page, text):
    """Until the History page label ends with `text` ("· 1 image" is not "· 12 images")."""
    page.wait_for_function(f"document.querySelector('#history-page').innerText.trim().endsWith({text!r})",
                           timeout=30_000)


def test_a_queued_user_sees_their_place_and_the_preview_is_shown_at_the_image_size(page):
    def set_number(target, elem_id, value):
        box = target.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")

    other = page.context.browser.new_page(viewport={"width": 1400, "height": 1100})
    try:
        other.goto(page.url)
        other.wait_for_selector("#generate", timeout=60_000)
        for elem_id, value in (("steps", 100), ("width", 256), ("height", 256)):  # long enough to queue behind (100: the Steps limit)
            set_number(page, elem_id, value)
        page.click("#generate")
        page.wait_for_function("document.querySelector('#progress').innerText.includes('Step')", timeout=120_000)
        other.click("#generate")
        other.wait_for_function("document.querySelector('#progress').innerText.includes('Waiting for the GPU: 1 job"
                                " ahead')", timeout=30_000)
        bar, text = (other.locator(f"#progress .hg-progress{inner}").bounding_box() for inner in ("", " span"))
        assert bar["y"] <= text["y"] and text["y"] + text["height"] <= bar["y"] + bar["height"] + 0.5  # not clipped
        page.wait_for_function("document.querySelector('#preview img')?.naturalWidth === 256", timeout=60_000)
        other.screenshot(path=str(OUTPUT / "queued.png"))
        page.screenshot(path=str(OUTPUT / "preview.png"))
        page.click("#interrupt")  # no need to wait for the rest of its steps
        page.wait_for_function("document.querySelector('#progress').innerText.includes('Done')", timeout=120_000)
        other.wait_for_function("document.querySelector('#progress').innerText.includes('Done')", timeout=120_000)
    finally:
        other.close()
        page.reload()  # the form's defaults again for whatever runs next
        page.wait_for_selector("#generate", timeout=60_000)

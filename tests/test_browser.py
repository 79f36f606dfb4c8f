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

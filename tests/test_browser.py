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
        page.wait_for_selector("#generate", timeout=60_000)
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


def test_the_page_comes_first_and_turns_generate_on_when_the_model_is_ready(tmp_path):
    """A first --demo start: the page opens while the demo models are written and the model stack imports."""
    from server import Server

    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # before the app: opening is quick
        server = Server(tmp_path / "data", "--demo").start(wait_for_model=False)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(server.url)
            page.wait_for_selector("#startup-status", timeout=60_000)
            assert "Loading model" in page.inner_text("#startup-status")
            assert page.locator("#generate").is_disabled() and "\nModel: " not in server.log()
            page.wait_for_function("!document.querySelector('#generate').disabled", timeout=180_000)
            assert "\nModel: homegrown-demo-base" in server.log()
            page.wait_for_selector("#startup-status", state="hidden", timeout=10_000)
            assert page.input_value("#checkpoint input") == "homegrown-demo-base"  # the lists are filled
        finally:
            server.stop()
            browser.close()

"""The txt2img form in a real browser: styles as chips and presets that can be undone, pasted parameters that say
what they did, and LoRA cards under the prompt."""

import pytest

from test_browser import CHROMIUM, FLAGS, OUTPUT, playwright_api

FOX = "a red fox"
A1111_TEXT = """masterpiece, a red fox in the snow <lora:missing:0.5>
Negative prompt: lowres, blurry
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3890114117, Size: 832x1216, \
Variation seed: 99, Variation seed strength: 0.3, Seed resize from: 640x960, Model hash: 31e35c80fc, Model: unknown_model, Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2, \
Hires steps: 10, Hires upscaler: Latent, Version: v1.10.1"""


@pytest.fixture(scope="module")
def page(demo_server):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(demo_server.url)
        page.wait_for_selector("#generate", timeout=60_000)
        page.wait_for_selector("body[data-hg-loaded]", timeout=60_000)  # the page-load events filled the form
        OUTPUT.mkdir(parents=True, exist_ok=True)
        yield page
        browser.close()


def choose(page, elem_id: str, *names: str) -> None:
    page.click(f"#{elem_id} input")
    for name in names:
        page.get_by_role("option", name=name, exact=True).click()
    page.keyboard.press("Escape")


def wait_value(page, selector: str, value: str) -> None:
    page.wait_for_function("([s, v]) => document.querySelector(s).value === v", arg=[selector, value], timeout=30_000)


def chips(page) -> list[str]:
    return [t.strip() for t in page.locator("#styles .token").all_inner_texts()]


def test_presets_choose_styles_as_chips_and_can_be_undone(page):
    page.fill("#prompt textarea", FOX)
    choose(page, "preset", "Photo")
    wait_value(page, "#width input", "1216")
    choose(page, "preset", "Cinematic")
    wait_value(page, "#width input", "1344")
    # The second preset's style replaces the first's, as a chip: the prompt box keeps the user's words.
    assert page.input_value("#prompt textarea") == FOX and chips(page) == ["Cinematic"]
    assert "Wide-screen film still" in page.inner_text("#preset-about")
    page.screenshot(path=str(OUTPUT / "presets-styles.png"), full_page=True)
    page.click("#undo-preset")
    wait_value(page, "#width input", "1216")
    assert chips(page) == ["Photo"] and page.input_value("#preset input") == "Photo"
    page.fill("#steps input[type=number]", "14")  # changed by hand: Undo leaves it alone
    page.keyboard.press("Enter")
    page.click("#undo-preset")
    wait_value(page, "#width input", "256")
    assert chips(page) == [] and page.input_value("#preset input") == "Demo (tiny models)"
    assert page.input_value("#steps input[type=number]") == "14" and page.input_value("#prompt textarea") == FOX
    assert not page.is_enabled("#undo-preset")


def test_several_styles_apply_at_generation_and_come_back_from_the_infotext(page):
    page.fill("#prompt textarea", FOX)
    page.fill("#seed input", "7")
    choose(page, "styles", "Photo", "Cinematic")
    assert chips(page) == ["Photo", "Cinematic"]
    page.click("#generate")
    page.wait_for_function("document.querySelector('#infotext textarea').value.includes('Seed: 7,')",
                           timeout=120_000)
    info = page.input_value("#infotext textarea")
    # The infotext holds the prompt as encoded (A1111 and civitai read it) and names the styles.
    assert info.startswith("cinematic film still of cinematic photo of a red fox, 35mm photograph")
    assert 'Styles: "Photo, Cinematic"' in info
    assert page.input_value("#prompt textarea") == FOX
    choose(page, "preset", "Anime")
    wait_value(page, "#width input", "832")
    assert chips(page) == ["Anime"]
    page.click("#use-parameters")
    wait_value(page, "#width input", "256")
    # Pasted back: the user's prompt and the two chips, not the styles' text applied a second time.
    assert page.input_value("#prompt textarea") == FOX and chips(page) == ["Photo", "Cinematic"]


def test_paste_says_what_it_applied_and_leaves_the_form_alone_for_plain_text(page):
    page.fill("#prompt textarea", "my own prompt")
    page.get_by_text("Paste parameters (A1111 infotext)").click()
    page.fill("#paste-box textarea", "just some words, with: a colon")
    page.click("#paste-apply")
    page.wait_for_function("document.querySelector('#paste-report').innerText.includes('Not an A1111 infotext')",
                           timeout=30_000)
    assert page.input_value("#prompt textarea") == "my own prompt"
    steps = page.input_value("#steps input[type=number]")
    page.fill("#paste-box textarea", A1111_TEXT)
    page.click("#paste-apply")
    wait_value(page, "#steps input[type=number]", "28")
    assert page.input_value("#prompt textarea").startswith("masterpiece, a red fox in the snow <lora:missing:0.5>")
    assert steps != "28" and page.input_value("#width input") == "832"
    assert page.input_value("#checkpoint input") == "homegrown-demo-base"
    assert page.input_value("#clip-skip input") == "2"  # applied: A1111's field (on SDXL, its meaning)
    page.get_by_text("Variation seed (A1111's Extra)", exact=True).click()  # drawn when first opened
    assert [page.input_value(f"#{name} input") for name in ("subseed", "subseed-strength", "seed-resize-w",
                                                            "seed-resize-h")] == ["99", "0.3", "640", "960"]
    report = page.inner_text("#paste-report")
    for words in ("Applied:", "Steps: 28", "Sampler: DPM++ 2M, Schedule type: Karras", "Not applied:",
                  "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Denoising strength: 0.45",
                  "Clip skip: 2", "Model: unknown_model",
                  "not in your checkpoint folder", "<lora:missing:0.5>", "no LoRA named 'missing'"):
        assert words in report, words
    page.screenshot(path=str(OUTPUT / "paste-report.png"), full_page=True)


def test_lora_cards_under_the_prompt_put_trigger_words_after_the_tag(page):
    page.fill("#prompt textarea", "a castle")
    page.get_by_text("Extra networks: LoRA").click()
    card = page.locator("#txt2img-lora-cards button").filter(has_text="demo-style").first
    card.wait_for(timeout=30_000)
    card.click()
    wait_value(page, "#prompt textarea", "a castle, <lora:demo-style:0.8> demostyle, painting, bold colors")
    # A negative weight takes the concept out: its trigger words go with it.
    page.fill("#txt2img-lora-weight input[type=number]", "-0.5")
    page.keyboard.press("Enter")
    card.click()
    wait_value(page, "#prompt textarea", "a castle, <lora:demo-style:-0.5>")
    page.fill("#txt2img-lora-search textarea", "hyperdetailed")
    page.wait_for_function("document.querySelectorAll('#txt2img-lora-cards button img').length === 1",
                           timeout=30_000)
    assert "demo-detail" in page.inner_text("#txt2img-lora-cards")
    page.screenshot(path=str(OUTPUT / "lora-cards-txt2img.png"), full_page=True)

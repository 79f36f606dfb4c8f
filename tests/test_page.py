"""The page in a real browser (issue 12): settings that survive a reload and a restart, refused values shown
beside the form without losing the last results, and A1111's habits (Ctrl+Enter, size limits, big buttons)."""

import json
import re
import shutil

import pytest

from browser import browser_page, chromium, fill_kept, new_app_page, open_app, require_browser
from server import Server
from sd_app.params import LIMITS

require_browser()


@pytest.fixture(scope="module")
def page(demo_server):
    with browser_page(demo_server.url) as page:
        yield page


def settings_tab(page):
    page.get_by_role("tab", name="Settings").click()
    page.wait_for_selector("#save-settings", state="visible")


def txt2img_tab(page):
    page.get_by_role("tab", name="txt2img").click()
    page.wait_for_selector("#generate", state="visible")


def open_section(page, name):
    """Open a closed accordion of the Settings tab."""
    page.get_by_text(name, exact=True).click()


def choose(page, elem_id, option):
    page.click(f"#{elem_id} input")
    page.get_by_role("option", name=option, exact=True).click()


def field(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first


def save_settings(page):
    page.click("#save-settings")
    page.wait_for_function("document.querySelector('#settings-status').innerText.includes('applied')",
                           timeout=60_000)


def test_settings_come_back_after_reload_and_restart(tmp_path, demo_root):
    """The issue's scenario: Steps 22, a default prompt and preview every 1, Save; reload; change only the image
    format, Save: the file holds all four. Then a new server on the same data folder shows them too."""
    shutil.copytree(demo_root, tmp_path / "data" / "demo")
    server = Server(tmp_path / "data", "--demo").start()
    settings_file = tmp_path / "data" / "demo" / "settings.json"
    try:
        with browser_page(server.url) as page:
            settings_tab(page)
            field(page, "setting-steps").fill("22")
            field(page, "setting-prompt").fill("a lighthouse at dusk")
            open_section(page, "Previews")
            fill_kept(field(page, "setting-preview_every"), "1")
            typed = [field(page, f"setting-{name}").input_value() for name in ("steps", "prompt", "preview_every")]
            assert typed == ["22", "a lighthouse at dusk", "1"]
            save_settings(page)
            saved = json.loads(settings_file.read_text())
            assert (saved["steps"], saved["prompt"], saved["preview_every"]) == (22, "a lighthouse at dusk", 1), (
                page.inner_text("#settings-status"), saved)

            open_app(page)
            settings_tab(page)
            assert field(page, "setting-steps").input_value() == "22"
            assert field(page, "setting-prompt").input_value() == "a lighthouse at dusk"
            open_section(page, "Previews")
            assert field(page, "setting-preview_every").input_value() == "1"
            open_section(page, "Saving")
            choose(page, "setting-output_format", "webp")
            save_settings(page)
            saved = json.loads(settings_file.read_text())
            assert (saved["steps"], saved["prompt"], saved["preview_every"], saved["output_format"]) == (
                22, "a lighthouse at dusk", 1, "webp")
            # The form starts from the new defaults too (the demo preset adds its LoRA and sets its own steps).
            txt2img_tab(page)
            assert field(page, "prompt").input_value().startswith("a lighthouse at dusk")
        server.stop()

        server = Server(tmp_path / "data", "--demo").start()
        with browser_page(server.url) as page:
            settings_tab(page)
            assert field(page, "setting-steps").input_value() == "22"
            assert field(page, "setting-prompt").input_value() == "a lighthouse at dusk"
            open_section(page, "Previews")
            assert field(page, "setting-preview_every").input_value() == "1"
            open_section(page, "Saving")
            assert field(page, "setting-output_format").input_value() == "webp"
    finally:
        server.stop()


def test_a_page_open_before_another_save_does_not_write_old_values_back(tmp_path, demo_root):
    shutil.copytree(demo_root, tmp_path / "data" / "demo")
    server = Server(tmp_path / "data", "--demo").start()
    try:
        with chromium() as browser:
            old, new = new_app_page(browser, server.url), new_app_page(browser, server.url)
            settings_tab(new)
            field(new, "setting-steps").fill("44")
            save_settings(new)
            settings_tab(old)  # still shows the steps of before
            field(old, "setting-cfg_scale").fill("5.5")
            save_settings(old)
        saved = json.loads((tmp_path / "data" / "demo" / "settings.json").read_text())
        assert (saved["steps"], saved["cfg_scale"]) == (44, 5.5)
    finally:
        server.stop()


def generate_small(page, seed):
    """A cheap image from the page: 64x64, 2 steps; returns its infotext."""
    txt2img_tab(page)
    field(page, "prompt").fill("a small boat")
    field(page, "steps").fill("2")
    field(page, "width").fill("64")
    field(page, "height").fill("64")
    field(page, "seed").fill(str(seed))
    page.click("#generate")
    page.wait_for_function(f"document.querySelector('#infotext textarea').value.includes('Seed: {seed},')",
                           timeout=120_000)
    return page.input_value("#infotext textarea")


@pytest.mark.parametrize("name, typed, message", [
    ("steps", "0", f"steps: must be between {LIMITS['steps'][0]} and {LIMITS['steps'][1]}, got 0"),
    ("width", "13", f"width: must be between {LIMITS['width'][0]} and {LIMITS['width'][1]}, got 13"),
    ("seed", "1.5", "seed: must be a whole number, got 1.5"),
    ("cfg_scale", "0.5", "cfg_scale: must be between 1.0 and 30.0, got 0.5"),
])
def test_a_value_the_engine_refuses_is_shown_beside_the_form_and_the_results_stay(page, demo_server, name, typed,
                                                                                  message):
    info = generate_small(page, seed=321)
    progress = page.inner_text("#progress")
    saved = sorted(demo_server.outputs.rglob("*.png"))
    box = field(page, name if name != "cfg_scale" else "cfg-scale")
    box.fill(typed)
    page.click("#generate")
    page.wait_for_selector("#error .hg-error", timeout=30_000)
    assert message in page.inner_text("#error")
    assert box.input_value() == typed  # not changed to fit the slider
    # No job ran, and the last results are there as they were, not covered by an error.
    page.wait_for_timeout(1000)
    assert sorted(demo_server.outputs.rglob("*.png")) == saved
    assert page.input_value("#infotext textarea") == info and page.inner_text("#progress") == progress
    assert page.locator("#gallery img").first.is_visible()
    assert not page.locator("#gallery .error, #infotext .error, #progress .error").count()
    # The next good request runs and clears the message.
    box.fill({"steps": "2", "width": "64", "seed": "322", "cfg_scale": "7"}[name])
    field(page, "seed").fill("322")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#infotext textarea').value.includes('Seed: 322,')",
                           timeout=120_000)
    assert not page.locator("#error .hg-error").count()


def test_ctrl_enter_generates(page):
    generate_small(page, seed=400)
    field(page, "seed").fill("401")
    field(page, "prompt").click()
    page.keyboard.press("Control+Enter")
    page.wait_for_function("document.querySelector('#infotext textarea').value.includes('Seed: 401,')",
                           timeout=120_000)
    assert "\n" not in field(page, "prompt").input_value()  # the key made no new line in the prompt


def test_ctrl_enter_does_nothing_on_another_tab(page, demo_server):
    txt2img_tab(page)
    settings_tab(page)
    saved = sorted(demo_server.outputs.rglob("*.png"))
    field(page, "setting-prompt").click()
    page.keyboard.press("Control+Enter")
    page.wait_for_timeout(2000)
    assert sorted(demo_server.outputs.rglob("*.png")) == saved
    txt2img_tab(page)


def test_checkpoint_at_start_is_a_dropdown_of_sdxl_bases(page):
    settings_tab(page)
    page.click("#setting-default_checkpoint input")
    options = page.get_by_role("option").all_inner_texts()
    page.keyboard.press("Escape")
    assert "homegrown-demo-base" in options
    assert "homegrown-demo-refiner" not in options  # a refiner cannot be the base loaded at start
    txt2img_tab(page)


def test_size_limits_match_settings(page):
    txt2img_tab(page)
    for name in ("width", "height"):
        slider = page.locator(f"#{name} input[type=range]")
        assert (slider.get_attribute("min"), slider.get_attribute("max")) == tuple(map(str, LIMITS[name]))
    settings_tab(page)
    hint = page.inner_text("#setting-width")
    assert f"{LIMITS['width'][0]} to {LIMITS['width'][1]}" in hint
    txt2img_tab(page)


def test_interrupt_and_skip_are_as_big_as_generate(page):
    txt2img_tab(page)
    generate = page.locator("#generate").bounding_box()
    for name in ("interrupt", "skip"):
        box = page.locator(f"#{name}").bounding_box()
        assert abs(box["height"] - generate["height"]) <= 2, (name, box, generate)
        assert re.fullmatch(r"Interrupt|Skip", page.inner_text(f"#{name}").strip())

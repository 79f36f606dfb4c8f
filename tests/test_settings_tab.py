"""The Settings tab's logic without a browser: what a page load shows, and what Save writes."""

from sd_app.settings import SETTINGS
from sd_app.ui import settings_tab

from conftest import BASE, make_studio


def form_of(values: dict) -> list:
    return [values[s.name] for s in SETTINGS]


def test_a_page_load_shows_the_settings_of_now(ckpt_dir, tmp_path):
    studio = make_studio(ckpt_dir, tmp_path)
    studio.apply_settings({"steps": 22, "prompt": "a lighthouse"})
    *updates, shown = settings_tab.current_values(studio)
    by_name = {s.name: u for s, u in zip(SETTINGS, updates)}
    assert by_name["steps"]["value"] == 22 and by_name["prompt"]["value"] == "a lighthouse"
    assert shown == studio.settings.all()
    assert by_name["default_checkpoint"]["choices"] == ["", BASE, "homegrown-demo-inpaint"]  # the bases only, and "" for the first found


def test_save_writes_only_what_the_page_changed(ckpt_dir, tmp_path):
    studio = make_studio(ckpt_dir, tmp_path)
    shown = studio.settings.all()  # what a page loaded now shows
    studio.apply_settings({"steps": 44})  # another page saves meanwhile
    sent = form_of({**shown, "cfg_scale": 5.5})
    assert settings_tab.changes_made(shown, sent) == {"cfg_scale": 5.5}
    # An API client has no page record: all it sends counts.
    assert settings_tab.changes_made(None, sent)["steps"] == shown["steps"]


def test_an_emptied_dropdown_is_the_empty_setting(ckpt_dir, tmp_path):
    studio = make_studio(ckpt_dir, tmp_path)
    shown = studio.settings.all()
    assert settings_tab.changes_made(shown, form_of({**shown, "default_checkpoint": None})) == {}


def test_a_saved_checkpoint_that_is_gone_still_shows(ckpt_dir, tmp_path):
    studio = make_studio(ckpt_dir, tmp_path)
    assert settings_tab.checkpoint_choices(studio, "old-model") == ["", BASE, "homegrown-demo-inpaint",
                                                                  "old-model"]

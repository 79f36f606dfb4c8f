import json

import pytest

from sd_app.errors import UserError
from sd_app.settings import SETTINGS, SettingsStore


def test_defaults_without_a_file(tmp_path):
    store = SettingsStore(tmp_path / "settings.json")
    assert store.get("steps") == 30 and store.problems == []
    assert store.folder("ckpt").as_posix() == "models/Stable-diffusion"
    assert store.generation_defaults().check().steps == 30


def test_every_default_passes_its_own_check():
    store = SettingsStore(None)
    store.update({s.name: s.default for s in SETTINGS})


def test_saved_atomically_and_read_back(tmp_path):
    path = tmp_path / "settings.json"
    store = SettingsStore(path)
    assert store.update({"steps": 25, "sampler_name": "Euler a", "lora_dir": "/x/Lora"}) == ["steps", "sampler_name",
                                                                                          "lora_dir"]
    assert json.loads(path.read_text())["steps"] == 25
    assert not list(tmp_path.glob("*.tmp"))
    again = SettingsStore(path)
    assert again.get("sampler_name") == "Euler a" and str(again.folder("lora")) == "/x/Lora"


@pytest.mark.parametrize("changes, field", [
    ({"steps": 0}, "steps"), ({"steps": "many"}, "steps"), ({"sampler_name": "Nope"}, "sampler_name"),
    ({"memory_mode": "huge"}, "memory_mode"), ({"compile": "turbo"}, "compile"), ({"save_images": "yes"}, "save_images"),
    ({"nope": 1}, "nope"),
])
def test_bad_values_are_refused_with_the_field(tmp_path, changes, field):
    store = SettingsStore(tmp_path / "s.json")
    with pytest.raises(UserError) as err:
        store.update({"steps": 10, **changes})
    assert err.value.field == field
    assert store.get("steps") == 30  # nothing stored when any value is bad


def test_broken_file_falls_back_and_is_kept(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text("{ this is not json")
    store = SettingsStore(path)
    assert store.get("steps") == 30 and "could not be read" in store.problems[0]
    assert path.read_text() == "{ this is not json"  # not deleted, not overwritten by reading
    store.update({"steps": 12})
    assert json.loads(path.read_text())["steps"] == 12
    assert [p.read_text() for p in tmp_path.glob("settings.json.broken-*")] == ["{ this is not json"]


def test_bad_values_in_the_file_are_reported_and_skipped(tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"steps": -5, "cfg_scale": 6, "whatever": 1}))
    store = SettingsStore(path)
    assert store.get("steps") == 30 and store.get("cfg_scale") == 6.0
    assert any("steps" in p for p in store.problems) and any("whatever" in p for p in store.problems)


def test_overrides_from_flags_win_but_are_not_saved(tmp_path):
    path = tmp_path / "s.json"
    store = SettingsStore(path, overrides={"outputs_dir": "/tmp/o"})
    assert store.get("outputs_dir") == "/tmp/o"
    store.update({"steps": 9})
    assert json.loads(path.read_text())["outputs_dir"] == "outputs"


@pytest.mark.parametrize("text, name", [
    ('{"steps": NaN}', "steps"), ('{"steps": 1e999}', "steps"), ('{"steps": Infinity}', "steps"),
    ('{"steps": -Infinity}', "steps"), ('{"cfg_scale": NaN}', "cfg_scale"), ('{"cfg_scale": 1e999}', "cfg_scale"),
    ('{"steps": 1' + "0" * 400 + "}", "steps"), ('{"cfg_scale": 1' + "0" * 400 + "}", "cfg_scale"),
    ('{"steps": 20.5}', "steps"), ('{"steps": [20]}', "steps"), ('{"width": "1024"}', "width"),
    ('{"save_images": 1}', "save_images"), ('{"outputs_dir": 5}', "outputs_dir"),
    ('{"sampler_name": {"a": 1}}', "sampler_name"), ('{"refiner_switch_at": true}', "refiner_switch_at"),
])
def test_non_finite_and_wrong_typed_values_in_the_file_fall_back_to_the_default(tmp_path, text, name):
    path = tmp_path / "settings.json"
    path.write_text(text[:-1] + ', "height": 768}')  # the exact value, with a good one after it
    store = SettingsStore(path)
    default = next(s.default for s in SETTINGS if s.name == name)
    assert store.get(name) == default and store.get("height") == 768  # the good value next to it is kept
    problem, = store.problems
    assert f"{name}: must be" in problem and f"using the default {default!r}" in problem and len(problem) < 300
    store.update({"steps": 12})  # saving writes plain JSON that reads back without problems
    assert json.loads(path.read_text())["steps"] == 12 and SettingsStore(path).problems == []


@pytest.mark.parametrize("content", [b"[1, 2]", b"NaN", b'"steps"', b"\xff\xfe{\"steps\": 5}",
                                     b"[" * 100_000])
def test_a_file_that_is_not_a_json_object_of_text_falls_back_to_defaults(tmp_path, content):
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    store = SettingsStore(path)
    assert store.get("steps") == 30 and "could not be read" in store.problems[0]
    assert path.read_bytes() == content


def test_a_flag_value_sent_back_by_the_page_stays_unsaved(tmp_path):
    """The Settings page sends every field, the flags' values too: those are not the user's choices."""
    path = tmp_path / "s.json"
    store = SettingsStore(path, overrides={"models_dir": "/demo/models", "outputs_dir": "/tmp/o"})
    assert store.update({"models_dir": "/demo/models", "outputs_dir": "/elsewhere", "steps": 9}) == ["outputs_dir",
                                                                                                 "steps"]
    saved = json.loads(path.read_text())
    assert saved["models_dir"] == "models" and saved["outputs_dir"] == "/elsewhere" and saved["steps"] == 9
    assert store.get("models_dir") == "/demo/models" and store.get("outputs_dir") == "/elsewhere"


def test_a_settings_file_that_cannot_be_written_changes_nothing(tmp_path, monkeypatch):
    path = tmp_path / "settings.json"
    store = SettingsStore(path)
    store.update({"steps": 25})

    def read_only(*args):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("sd_app.settings.os.replace", read_only)
    with pytest.raises(UserError) as err:
        store.update({"steps": 40})
    assert "could not write" in err.value.message and "Read-only" in err.value.message and err.value.status == 507
    assert store.get("steps") == 25
    monkeypatch.undo()
    assert SettingsStore(path).get("steps") == 25

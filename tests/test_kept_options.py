from sd_app.kept_options import KeptOptions


def test_kept_options_survive_a_restart_and_a_damaged_file_is_set_aside(tmp_path):
    path = tmp_path / "a1111-options.json"
    KeptOptions(path).update({"eta_noise_seed_delta": 31337, "hide_samplers": ["DDIM"]})
    again = KeptOptions(path)  # a restart
    assert again.all() == {"eta_noise_seed_delta": 31337, "hide_samplers": ["DDIM"]}
    again.update({"eta_noise_seed_delta": 0})
    assert KeptOptions(path).get("eta_noise_seed_delta") == 0
    path.write_text("{not json")
    broken = KeptOptions(path)
    assert broken.all() == {} and list(tmp_path.glob("a1111-options.json.broken-*"))
    assert KeptOptions(None).all() == {}

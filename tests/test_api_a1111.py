"""What A1111 clients read and send besides txt2img: options, the listing endpoints, PNG Info, hashes and names,
over real HTTP against `python app.py --demo`. The server is shared by the run: every test puts back what it
changes."""

import base64
import io
import json
import re
import shutil

import httpx
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sd_app.kept_options import KeptOptions

API = "/sdapi/v1"
SMALL = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def client(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=300) as c:
        yield c


def get(client, path):
    r = client.get(path if path.startswith("/internal") else f"{API}{path}")
    assert r.status_code == 200, (path, r.text)
    return r.json()


def post_options(client, body):
    r = client.post(f"{API}/options", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def txt2img(client, **fields):
    r = client.post(f"{API}/txt2img", json={**SMALL, **fields})
    assert r.status_code == 200, r.text
    return r.json(), json.loads(r.json()["info"])


def test_options_hold_every_a1111_key_with_what_is_loaded(client):
    options = get(client, "/options")
    assert len(options) > 250  # A1111 v1.10's table, not a handful of keys
    for key, default in (("randn_source", "GPU"), ("eta_noise_seed_delta", 0), ("CLIP_stop_at_last_layers", 1),
                         ("sdxl_clip_l_skip", False), ("jpeg_quality", 80), ("sd_hypernetwork", "None"),
                         ("quicksettings_list", ["sd_model_checkpoint"]), ("samples_format", "png")):
        assert options[key] == default, key
    models = {m["title"]: m for m in get(client, "/sd-models")}
    loaded = models[options["sd_model_checkpoint"]]
    assert options["sd_checkpoint_hash"] == loaded["sha256"] and re.fullmatch(r"[0-9a-f]{64}", loaded["sha256"])
    assert loaded["hash"] == loaded["sha256"][:10]
    assert options["sd_vae"] in ["Automatic", "None"] + [v["model_name"] for v in get(client, "/sd-vae")]


def test_options_post_applies_keeps_and_says_what_had_no_effect(client, demo_server):
    answer = post_options(client, {"CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337,
                                   "control_net_unit_count": 3, "samples_format": "jpg",
                                   "sd_checkpoint_hash": "0" * 64})
    try:
        assert answer["applied"] == ["samples_format", "CLIP_stop_at_last_layers"]
        assert answer["stored"] == ["eta_noise_seed_delta"] and answer["unknown"] == ["control_net_unit_count"]
        assert set(answer["no_effect"]) == {"eta_noise_seed_delta", "sd_checkpoint_hash"}
        options = get(client, "/options")
        assert (options["CLIP_stop_at_last_layers"], options["eta_noise_seed_delta"], options["samples_format"]) == \
            (2, 31337, "jpg")
        assert "control_net_unit_count" not in options and options["sd_checkpoint_hash"] != "0" * 64
        # kept in a file beside --demo's settings: a restart reads them back
        kept = KeptOptions(demo_server.log_path.parent / "demo" / "a1111-options.json").all()
        assert kept["eta_noise_seed_delta"] == 31337 and kept["CLIP_stop_at_last_layers"] == 2
        body, info = txt2img(client)
        assert info["clip_skip"] == 2 and "Clip skip: 2," in info["infotexts"][0]
        assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).format == "JPEG"
    finally:
        post_options(client, {"CLIP_stop_at_last_layers": 1, "eta_noise_seed_delta": 0, "samples_format": "png"})
    assert get(client, "/options")["CLIP_stop_at_last_layers"] == 1


@pytest.mark.parametrize("body, field", [
    ({"CLIP_stop_at_last_layers": 0}, "CLIP_stop_at_last_layers"),
    ({"CLIP_stop_at_last_layers": "two"}, "CLIP_stop_at_last_layers"),
    ({"sdxl_clip_l_skip": "yes"}, "sdxl_clip_l_skip"),
    ({"samples_format": "bmp"}, "samples_format"),
    ({"samples_save": "no"}, "samples_save"),
    ({"randn_source": "AMD"}, "randn_source"),
    ({"hires_fix_refiner_pass": "third pass"}, "hires_fix_refiner_pass"),
])
def test_a_wrong_value_of_an_option_homegrown_uses_is_a_422_and_nothing_changes(client, body, field):
    r = client.post(f"{API}/options", json={"eta_noise_seed_delta": 7, **body})
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert get(client, "/options")["eta_noise_seed_delta"] == 0


def test_override_settings_apply_for_one_request_and_warn_about_the_rest(client):
    _, info = txt2img(client, override_settings={"CLIP_stop_at_last_layers": 3, "eta_noise_seed_delta": 31337,
                                                 "randn_source": "GPU", "my_extension_option": True})
    assert "Clip skip: 3," in info["infotexts"][0] and info["clip_skip"] == 3
    warnings = " | ".join(info["warnings"])
    assert "override_settings.eta_noise_seed_delta had no effect" in warnings
    assert "my_extension_option: not an option A1111 knows" in warnings and "randn_source" not in warnings
    assert get(client, "/options")["CLIP_stop_at_last_layers"] == 1  # for that request only
    r = client.post(f"{API}/txt2img", json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 99}})
    assert r.status_code == 422 and r.json()["field"] == "CLIP_stop_at_last_layers"


def test_listing_endpoints_answer_in_a1111s_shape(client):
    embeddings = get(client, "/embeddings")  # the demo's: an SDXL one, and an SD 1.x one that is skipped
    assert set(embeddings) == {"loaded", "skipped"} and embeddings["loaded"]["demo-negative"]["vectors"] == 2
    assert set(embeddings["loaded"]["demo-negative"]) == {"step", "sd_checkpoint", "sd_checkpoint_name", "shape",
                                                          "vectors"} and "demo-sd1" in embeddings["skipped"]
    for path in ("/hypernetworks", "/face-restorers", "/realesrgan-models", "/sd-modules", "/extensions"):
        assert get(client, path) == [], path
    styles = get(client, "/prompt-styles")
    assert any(s["name"] == "Photo" and "{prompt}" in s["prompt"] for s in styles)
    assert all(set(s) == {"name", "prompt", "negative_prompt"} for s in styles)
    memory = get(client, "/memory")
    ram = memory["ram"]
    assert 0 < ram["used"] < ram["total"] and ram["free"] == ram["total"] - ram["used"]
    assert "error" in memory["cuda"] or "system" in memory["cuda"]
    assert get(client, "/internal/ping") == {}


A1111_WRITTEN = """masterpiece, a red fox, (snow:1.2)
Negative prompt: lowres
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 3890114117, Size: 832x1216, \
Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, Clip skip: 2, \
Lora hashes: "fox: 0123456789ab", Refiner: sd_xl_refiner_1.0 [7440042bbd], Refiner switch at: 0.8, Version: v1.7.0"""


def png_with(text: str) -> str:
    buffer, meta = io.BytesIO(), PngInfo()
    meta.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=meta)
    return base64.b64encode(buffer.getvalue()).decode()


def test_png_info_parameters_as_a1111s_parser_returns_them(client):
    r = client.post(f"{API}/png-info", json={"image": png_with(A1111_WRITTEN)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["info"] == A1111_WRITTEN and body["items"] == {}  # the parameters chunk is not an item, as in A1111
    p = body["parameters"]
    assert (p["Size-1"], p["Size-2"], p["Steps"], p["CFG scale"], p["Clip skip"]) == ("832", "1216", "28", "6.5", "2")
    assert "Size" not in p and p["Prompt"] == "masterpiece, a red fox, (snow:1.2)" and p["Negative prompt"] == "lowres"
    assert p["Lora hashes"] == "fox: 0123456789ab" and p["Refiner"] == "sd_xl_refiner_1.0 [7440042bbd]"
    for key, value in (("Hires resize-1", 0), ("Hires sampler", "Use same sampler"), ("RNG", "GPU"),
                       ("Schedule max sigma", 0), ("VAE Decoder", "Full"), ("FP8 weight", "Disable"),
                       ("Emphasis", "Original"),
                       # made by A1111 v1.7.0: the back-compatibility flags A1111 sets for such images
                       ("Downcast alphas_cumprod", True), ("Refiner switch by sampling steps", True)):
        assert p[key] == value, key
    assert list(p).index("Prompt") > list(p).index("Version")  # A1111 adds the prompts after the fields
    body, _ = txt2img(client)
    r = client.post(f"{API}/png-info", json={"image": body["images"][0]})
    p = r.json()["parameters"]
    assert p["Clip skip"] == "1" and p["CFG scale"] == "7.0" and (p["Size-1"], p["Size-2"]) == ("64", "64")


def test_randn_source_is_homegrowns_setting(client):
    try:
        assert post_options(client, {"randn_source": "CPU"})["applied"] == ["randn_source"]
        assert get(client, "/options")["randn_source"] == "CPU"
        _, info = txt2img(client)
        assert "RNG: CPU" in info["infotexts"][0]
    finally:
        post_options(client, {"randn_source": "GPU"})
    _, info = txt2img(client, override_settings={"randn_source": "NV"})
    assert "RNG: NV" in info["infotexts"][0] and get(client, "/options")["randn_source"] == "GPU"


def test_hires_refiner_pass_is_homegrowns_setting_and_said_in_the_infotext(client):
    hires = {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 1, "denoising_strength": 0.5,
             "refiner_checkpoint": "homegrown-demo-refiner", "refiner_switch_at": 0.5}
    try:
        assert post_options(client, {"hires_fix_refiner_pass": "both passes"})["applied"] == ["hires_fix_refiner_pass"]
        assert get(client, "/options")["hires_fix_refiner_pass"] == "both passes"
        _, info = txt2img(client, **hires)
        assert "Hires refiner: both passes" in info["infotexts"][0]
    finally:
        post_options(client, {"hires_fix_refiner_pass": "second pass"})
    _, info = txt2img(client, override_settings={"hires_fix_refiner_pass": "first pass"}, **hires)
    assert "Hires refiner: first pass" in info["infotexts"][0]
    _, info = txt2img(client, **hires)
    assert "Hires refiner" not in info["infotexts"][0]  # A1111's default goes unsaid
    _, info = txt2img(client, override_settings={"hires_fix_refiner_pass": "first pass"},
                      **{**hires, "refiner_checkpoint": None})
    assert "Hires refiner" not in info["infotexts"][0]  # no refiner ran: A1111 says nothing of it either


def test_sd_vae_reads_back_as_sd_vae_lists_it(client):
    listed = [v["model_name"] for v in get(client, "/sd-vae")]
    try:
        post_options(client, {"sd_vae": listed[0]})
        assert get(client, "/options")["sd_vae"] == listed[0]
    finally:
        post_options(client, {"sd_vae": "Automatic"})
    assert get(client, "/options")["sd_vae"] == "Automatic"


def test_checkpoints_by_a1111_names_and_hashes(client):
    flags = get(client, "/cmd-flags")
    options = get(client, "/options")
    loaded = next(m for m in get(client, "/sd-models") if m["title"] == options["sd_model_checkpoint"])
    for name in (loaded["sha256"], loaded["hash"], loaded["model_name"], loaded["title"]):
        post_options(client, {"sd_model_checkpoint": name})
        assert get(client, "/options")["sd_model_checkpoint"] == loaded["title"], name
    sub = flags["ckpt_dir"] + "/sub"
    shutil.os.makedirs(sub, exist_ok=True)
    copy = shutil.copy(loaded["filename"], sub + "/copy.safetensors")
    try:
        listed = {m["model_name"]: m for m in get(client, "/sd-models")}
        assert "sub_copy" in listed and listed["sub_copy"]["title"].startswith("sub/copy.safetensors")
        _, info = txt2img(client, override_settings={"sd_model_checkpoint": "sub_copy"})
        assert "Model: copy," in info["infotexts"][0]
    finally:
        shutil.os.remove(copy)
        shutil.os.rmdir(sub)
    assert get(client, "/options")["sd_model_checkpoint"] == loaded["title"]  # loaded back after the request

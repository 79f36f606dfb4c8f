"""Issue 13's faults against a running `python app.py --demo`: damaged model files, a settings file with NaN and
1e999, and an outputs "folder" that is a regular file (read-only folders do not stop root; this stops everyone)."""

import json

import httpx
import pytest
from gradio_client import Client

from conftest import BASE, _server_dir
from damaged import metadata_as_list, short_data_offsets
from server import Server
from test_app import FORM

API = "/sdapi/v1"
SMALL = {"steps": 2, "width": 64, "height": 64, "seed": 3}


@pytest.fixture(scope="module")
def faults_server(tmp_path_factory, demo_root):
    from sd_app import demo

    data = _server_dir(tmp_path_factory, demo_root, "faults-server")
    models = data / "demo" / "models"
    metadata_as_list(models / "Stable-diffusion" / demo.BASE_FILE, models / "Stable-diffusion" / "a-damaged.safetensors")
    short_data_offsets(models / "Lora" / "demo-style.safetensors", models / "Lora" / "bad-offsets.safetensors")
    metadata_as_list(models / "VAE" / demo.VAE_FILE, models / "VAE" / "bad-vae.safetensors")
    (data / "demo" / "settings.json").write_text('{"steps": NaN, "width": 1e999, "sampler_name": "Euler a"}')
    (data / "outputs").write_text("a file where the outputs folder should be")
    server = Server(data, "--demo", "--ckpt", BASE).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(faults_server):
    with httpx.Client(base_url=faults_server.url, timeout=120) as c:
        yield c


def test_the_app_starts_and_says_what_was_wrong_with_the_settings(faults_server, client):
    log = faults_server.log()
    assert "steps: must be a finite number, got nan; using the default 30" in log
    assert "width: must be a finite number, got inf; using the default 1024" in log
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"].startswith(f"{BASE}.safetensors [")
    config = client.get("/config").text  # the Settings tab shows the same lines, and the form the defaults
    assert "steps: must be a finite number" in config and "width: must be a finite number" in config


def test_listings_answer_with_every_file_and_the_damaged_ones_say_why(client):
    models = {m["model_name"]: m for m in client.get(f"{API}/sd-models").json()}
    assert set(models) == {BASE, "homegrown-demo-inpaint", "homegrown-demo-refiner", "a-damaged"}
    assert models[BASE]["problem"] is None and models[BASE]["title"].startswith(BASE)
    assert models["a-damaged"]["problem"].startswith("a-damaged.safetensors is not a valid .safetensors file: "
                                                     "its __metadata__ is a list")
    loras = {i["name"]: i for i in client.get(f"{API}/loras").json()}
    assert loras["demo-style"]["problem"] is None
    assert "bad-offsets.safetensors is not a valid .safetensors file: tensor " in loras["bad-offsets"]["problem"]
    assert "data_offsets [" in loras["bad-offsets"]["problem"]
    vaes = {v["model_name"]: v for v in client.get(f"{API}/sd-vae").json()}
    assert vaes["homegrown-demo-vae.safetensors"]["problem"] is None
    assert "__metadata__ is a list" in vaes["bad-vae.safetensors"]["problem"]
    for path in ("refresh-checkpoints", "refresh-loras"):
        assert client.post(f"{API}/{path}").status_code == 200


@pytest.mark.parametrize("request_body, field, words", [
    ({"prompt": "x <lora:demo-style:0.5> <lora:bad-offsets:1>"}, "prompt", ["bad-offsets.safetensors", "data_offsets"]),
    ({"prompt": "x", "override_settings": {"sd_model_checkpoint": "a-damaged"}}, "checkpoint",
     ["a-damaged.safetensors", "__metadata__ is a list"]),
])
def test_using_a_damaged_file_is_a_4xx_naming_it_and_the_rest_works(client, request_body, field, words):
    r = client.post(f"{API}/txt2img", json={**SMALL, **request_body})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and all(w in r.json()["detail"] for w in words), r.json()
    ok = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "x <lora:demo-style:0.5>"})
    assert ok.status_code == 200 and 'Lora hashes: "demo-style: ' in json.loads(ok.json()["info"])["infotexts"][0]
    options = client.get(f"{API}/options").json()
    assert options["sd_model_checkpoint"].startswith(BASE) and options["sd_vae"] == "Automatic"


@pytest.mark.parametrize("option, value, words", [
    ("sd_model_checkpoint", "a-damaged.safetensors", ["a-damaged.safetensors", "__metadata__ is a list"]),
    ("sd_vae", "bad-vae.safetensors", ["bad-vae.safetensors", "__metadata__ is a list"]),
])
def test_options_refuse_a_damaged_checkpoint_or_vae_by_name(client, option, value, words):
    r = client.post(f"{API}/options", json={option: value})
    assert r.status_code == 422 and all(w in r.json()["detail"] for w in words), r.text
    options = client.get(f"{API}/options").json()
    assert options["sd_model_checkpoint"].startswith(BASE) and options["sd_vae"] == "Automatic"


def test_api_images_come_back_when_the_outputs_folder_cannot_be_written(client, faults_server):
    r = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "kept", "batch_size": 2, "save_images": True})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 2 and info["saved_files"] == []
    warning, = info["warnings"]
    assert warning.startswith(f"2 of 2 images were not saved: {faults_server.outputs / 'txt2img-images'} cannot be "
                              "written (Not a directory")


def test_the_page_shows_the_images_and_a_warning_when_they_cannot_be_saved(faults_server):
    client = Client(faults_server.url, verbose=False)
    job = client.submit(*FORM.values(), api_name="/txt2img")  # saving is on in the settings
    progress, _, gallery, info = job.result(timeout=300)[:4]
    assert "Done" in progress and len(gallery) == 2 and "Seed: 11," in info
    updates, pending = [], job.communicator.updates  # every status the page sent, its toasts among them
    while not pending.empty():
        updates.append(pending.get_nowait())
    warnings = [u.log[0] for u in updates if getattr(u, "log", None) and u.log[1] == "warning"]
    assert len(warnings) == 1 and "2 of 2 images were not saved" in warnings[0]
    assert str(faults_server.outputs / "txt2img-images") in warnings[0]


def test_the_lora_tab_marks_a_damaged_lora(faults_server):
    client = Client(faults_server.url, verbose=False)
    gallery, _ = client.predict("", api_name="/refresh_loras")  # the card grid, as the tab shows it
    captions = [card["caption"] for card in gallery]
    assert "⚠ bad-offsets · bad-offsets.safetensors is not a valid .safetensors file: tensor " in " | ".join(captions)
    assert any(c.startswith("demo-style · SDXL") for c in captions) and len(captions) == 3

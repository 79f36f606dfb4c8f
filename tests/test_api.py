"""The A1111-compatible API over real HTTP against `python app.py --demo`."""

import base64
import io
import json
import threading
import time

import httpx
import pytest
from PIL import Image

API = "/sdapi/v1"

# What A1111 clients typically send: every field, most at A1111's defaults.
A1111_PAYLOAD = {
    "prompt": "a cat <lora:demo-style:0.6>", "negative_prompt": "blurry", "styles": [], "seed": 42, "subseed": -1,
    "subseed_strength": 0, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "sampler_name": "DPM++ 2M",
    "scheduler": "Karras", "batch_size": 2, "n_iter": 1, "steps": 4, "cfg_scale": 7, "width": 64, "height": 64,
    "restore_faces": False, "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False, "eta": 0,
    "denoising_strength": 0, "s_min_uncond": 0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
    "override_settings": {}, "override_settings_restore_afterwards": True, "refiner_checkpoint": "",
    "refiner_switch_at": 0.8, "disable_extra_networks": False, "comments": {}, "enable_hr": False,
    "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2, "hr_upscaler": "Latent",
    "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": "",
    "hr_sampler_name": "", "hr_prompt": "", "hr_negative_prompt": "", "sampler_index": "Euler",
    "script_name": None, "script_args": [], "send_images": True, "save_images": False, "alwayson_scripts": {},
}


@pytest.fixture(scope="module")
def client(demo_server):
    with httpx.Client(base_url=demo_server.url, timeout=120) as c:
        yield c


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_with_a_full_a1111_payload(client):
    r = client.post(f"{API}/txt2img", json=A1111_PAYLOAD)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"}
    info = json.loads(body["info"])
    for key in ("prompt", "all_prompts", "negative_prompt", "seed", "all_seeds", "subseed", "width", "height",
                "sampler_name", "steps", "cfg_scale", "sd_model_name", "sd_model_hash", "infotexts", "job_timestamp"):
        assert key in info, key
    assert info["all_seeds"] == [42, 43] and info["sd_model_name"] == "homegrown-demo-base"
    images = [decode(b) for b in body["images"]]
    assert [i.size for i in images] == [(64, 64), (64, 64)]
    assert images[1].info["parameters"] == info["infotexts"][1]
    assert "Schedule type: Karras" in info["infotexts"][0] and 'Lora hashes: "demo-style: ' in info["infotexts"][0]
    assert body["parameters"]["prompt"] == A1111_PAYLOAD["prompt"]


def test_same_request_same_pixels_and_minimal_payload(client):
    payload = {"prompt": "a dog", "steps": 3, "width": 64, "height": 64, "seed": 7}
    a, b = (client.post(f"{API}/txt2img", json=payload).json() for _ in range(2))
    assert a["images"] == b["images"]
    assert "Sampler: Euler," in json.loads(a["info"])["infotexts"][0]  # A1111's API default sampler


def test_override_checkpoint_refiner_and_styles(client):
    payload = {"prompt": "x", "steps": 4, "width": 64, "height": 64, "seed": 3, "styles": ["Photo"],
               "override_settings": {"sd_model_checkpoint": "homegrown-demo-base.safetensors"},
               "refiner_checkpoint": "homegrown-demo-refiner", "refiner_switch_at": 0.5}
    r = client.post(f"{API}/txt2img", json=payload)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["prompt"].startswith("cinematic photo of x") and info["styles"] == ["Photo"]
    assert "Styles: Photo," in info["infotexts"][0]
    assert "Refiner: homegrown-demo-refiner [" in info["infotexts"][0]


@pytest.mark.parametrize("change, status, field", [
    ({"steps": "abc"}, 422, "steps"),
    ({"width": -512}, 422, "width"),
    ({"width": 100}, 422, "width"),
    ({"batch_size": 1000}, 422, "batch_size"),
    ({"sampler_name": "Nope"}, 422, "sampler_name"),
    ({"enable_hr": True, "hr_upscaler": "No such upscaler"}, 422, "hr_upscaler"),
    ({"restore_faces": True}, 422, "restore_faces"),
    ({"alwayson_scripts": {"controlnet": {"args": []}}}, 422, "alwayson_scripts"),
    ({"override_settings": {"sd_model_checkpoint": "missing-model"}}, 404, "checkpoint"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 0}}, 422, "CLIP_stop_at_last_layers"),
    ({"prompt": "x <lora:no-such-lora:1>"}, 404, "prompt"),
    ({"prompt": "x <lora:../../etc/passwd:1>"}, 404, "prompt"),
    ({"styles": ["No such style"]}, 404, "styles"),
    ({"refiner_checkpoint": "homegrown-demo-base"}, 422, "refiner_checkpoint"),
    ({"script_name": "prompt matrix"}, 422, "script_name"),
    ({"script_name": "x/y/z plot", "script_args": [2, "1, 2"]}, 422, "x_type"),  # Var. seed: not in Homegrown
    ({"script_name": "x/y/z plot", "script_args": [4, "1-9", [], 6, "1-9"]}, 422, None),  # 81 cells: over 64
])
def test_bad_requests_get_json_errors_and_the_server_lives(client, demo_server, change, status, field):
    r = client.post(f"{API}/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64, **change})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field and body["detail"]
    assert demo_server.alive()
    assert client.get(f"{API}/samplers").status_code == 200


def test_malformed_json_and_wrong_content(client):
    r = client.post(f"{API}/txt2img", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = client.post(f"{API}/txt2img", json=["a", "list"])
    assert r.status_code == 422


def test_listing_endpoints(client):
    models = client.get(f"{API}/sd-models").json()
    assert {m["model_name"] for m in models} == {"homegrown-demo-base", "homegrown-demo-refiner",
                                                 "homegrown-demo-inpaint"}
    base = next(m for m in models if m["model_name"] == "homegrown-demo-base")
    assert base["title"] == f"homegrown-demo-base.safetensors [{base['hash']}]" and len(base["sha256"]) == 64
    loras = client.get(f"{API}/loras").json()
    assert {"demo-style", "demo-detail"} <= {lora["name"] for lora in loras}
    assert next(x for x in loras if x["name"] == "demo-style")["metadata"]["ss_base_model_version"] == "sdxl_base_v1-0"
    samplers = client.get(f"{API}/samplers").json()
    assert {"DPM++ 2M", "Euler a", "UniPC"} <= {s["name"] for s in samplers}
    assert {"automatic", "karras"} <= {s["name"] for s in client.get(f"{API}/schedulers").json()}
    assert [v["model_name"] for v in client.get(f"{API}/sd-vae").json()] == ["homegrown-demo-vae.safetensors"]
    assert client.get(f"{API}/scripts").json() == {"txt2img": ["x/y/z plot"], "img2img": ["sd upscale"]}
    assert "ram" in client.get(f"{API}/memory").json()
    assert client.get(f"{API}/cmd-flags").json()["demo"] is True
    assert any(s["name"] == "Photo" for s in client.get(f"{API}/prompt-styles").json())
    for path in ("refresh-checkpoints", "refresh-loras"):
        assert client.post(f"{API}/{path}").status_code == 200
    assert client.get("/docs", follow_redirects=True).status_code == 200
    assert client.get(f"{API}/openapi.json").json()["info"]["title"].startswith("Homegrown")


def test_options(client):
    options = client.get(f"{API}/options").json()
    assert options["sd_model_checkpoint"].startswith("homegrown-demo-base.safetensors [")
    assert client.post(f"{API}/options", json={"samples_format": "webp"}).status_code == 200
    assert client.get(f"{API}/options").json()["samples_format"] == "webp"
    assert client.post(f"{API}/options", json={"samples_format": "png"}).status_code == 200
    r = client.post(f"{API}/options", json={"sd_model_checkpoint": "nope"})
    assert r.status_code == 404 and "homegrown-demo-base" in r.json()["detail"]
    assert client.post(f"{API}/options", json={"CLIP_stop_at_last_layers": 13}).status_code == 422


def test_vae_option(client):
    payload = {"prompt": "vae", "steps": 2, "width": 64, "height": 64, "seed": 4}
    plain = client.post(f"{API}/txt2img", json=payload).json()
    assert client.post(f"{API}/options", json={"sd_vae": "homegrown-demo-vae.safetensors"}).status_code == 200
    try:
        assert client.get(f"{API}/options").json()["sd_vae"] == "homegrown-demo-vae.safetensors"  # as /sd-vae lists it
        other = client.post(f"{API}/txt2img", json=payload).json()
        info = json.loads(other["info"])
        assert info["sd_vae_name"] == "homegrown-demo-vae" and "VAE: homegrown-demo-vae" in info["infotexts"][0]
        assert other["images"] != plain["images"]
        r = client.post(f"{API}/txt2img", json={**payload, "override_settings": {"sd_vae": "Automatic"}})
        assert r.status_code == 422 and r.json()["field"] == "sd_vae"
    finally:
        assert client.post(f"{API}/options", json={"sd_vae": "Automatic"}).status_code == 200
    assert client.post(f"{API}/txt2img", json=payload).json()["images"] == plain["images"]
    r = client.post(f"{API}/options", json={"sd_vae": "missing-vae"})
    assert r.status_code == 404 and "homegrown-demo-vae" in r.json()["detail"]


def test_png_info_round_trip(client):
    body = client.post(f"{API}/txt2img", json={"prompt": "round trip, yes", "steps": 2, "width": 64,
                                               "height": 64, "seed": 9}).json()
    r = client.post(f"{API}/png-info", json={"image": "data:image/png;base64," + body["images"][0]})
    assert r.status_code == 200
    assert r.json()["info"] == json.loads(body["info"])["infotexts"][0]
    assert r.json()["parameters"]["Seed"] == "9"
    assert client.post(f"{API}/png-info", json={"image": "!!!"}).status_code == 422


def test_save_images_writes_files(client, demo_server):
    before = set(demo_server.outputs.rglob("*.png"))
    r = client.post(f"{API}/txt2img", json={"prompt": "saved", "steps": 2, "width": 64, "height": 64,
                                            "save_images": True})
    assert r.status_code == 200
    assert len(set(demo_server.outputs.rglob("*.png")) - before) == 1


def test_long_job_interrupted_from_another_connection(demo_server):
    results = {}

    def long_job():
        with httpx.Client(base_url=demo_server.url, timeout=300) as c:
            results["response"] = c.post(f"{API}/txt2img", json={"prompt": "long", "steps": 100, "width": 256,
                                                                  "height": 256, "n_iter": 3})

    worker = threading.Thread(target=long_job)
    worker.start()
    seen = None
    with httpx.Client(base_url=demo_server.url, timeout=30) as c:
        deadline = time.time() + 120
        while time.time() < deadline:
            progress = c.get(f"{API}/progress").json()
            if progress["state"]["sampling_step"] >= 3:
                seen = progress
                break
            time.sleep(0.1)
        assert seen is not None, "the job never reported progress"
        assert seen["state"]["job_count"] == 3 and seen["state"]["sampling_steps"] == 100 and 0 < seen["progress"] < 1
        assert c.post(f"{API}/interrupt").status_code == 200
    worker.join(120)
    info = json.loads(results["response"].json()["info"])
    assert info["interrupted"] is True and len(info["all_seeds"]) == 1


def test_two_clients_at_once(demo_server):
    outcomes = []

    def run(seed):
        with httpx.Client(base_url=demo_server.url, timeout=120) as c:
            outcomes.append(c.post(f"{API}/txt2img", json={"prompt": "two", "steps": 3, "width": 64, "height": 64,
                                                           "seed": seed}))

    threads = [threading.Thread(target=run, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in outcomes] == [200, 200]
    assert outcomes[0].json()["images"] != outcomes[1].json()["images"]


def test_api_auth(auth_server):
    with httpx.Client(base_url=auth_server.url, timeout=60) as c:
        assert c.get(f"{API}/samplers").status_code == 401
        assert c.get(f"{API}/samplers", auth=("alice", "wrong")).status_code == 401
        assert c.get(f"{API}/samplers", auth=("alice", "wonderland")).status_code == 200
        r = c.post(f"{API}/txt2img", auth=("alice", "wonderland"),
                   json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
        assert r.status_code == 200


def test_infotext_field_fills_the_request_and_sent_fields_win(client):
    text = "a fox <lora:demo-style:0.5>\nNegative prompt: ugly\nSteps: 3, Sampler: Euler a, CFG scale: 5, Seed: 77, " \
           "Size: 64x64, Model: homegrown-demo-base"
    r = client.post(f"{API}/txt2img", json={"infotext": text, "seed": 78})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["prompt"] == "a fox <lora:demo-style:0.5>" and info["negative_prompt"] == "ugly"
    assert (info["steps"], info["cfg_scale"], info["seed"], info["width"]) == (3, 5.0, 78, 64)
    assert "Sampler: Euler a," in info["infotexts"][0]


def test_xyz_plot_script_grid_first_then_the_single_images(client, demo_server):
    before = set(demo_server.outputs.rglob("*.png"))
    payload = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 5, "save_images": True,
               "script_name": "X/Y/Z plot", "script_args": [4, "2, 3", [], 9, "", ["Euler a", "DDIM"], 0, "", [],
                                                           True, True]}
    r = client.post(f"{API}/txt2img", json=payload)
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    images = [decode(b) for b in body["images"]]
    assert len(images) == 5 and images[0].width > 128 and images[0].height > 128 and images[1].size == (64, 64)
    assert info["index_of_first_image"] == 1 and len(info["infotexts"]) == 5
    assert 'Script: X/Y/Z plot, X Type: Steps, X Values: "2, 3", Y Type: Sampler' in info["infotexts"][0]
    assert images[0].info["parameters"] == info["infotexts"][0]
    assert "Steps: 3, Sampler: Euler a," in info["infotexts"][2] and "Sampler: DDIM," in info["infotexts"][3]
    assert all("Seed: 5," in text for text in info["infotexts"])  # one seed for every cell
    saved = set(demo_server.outputs.rglob("*.png")) - before
    assert sorted(p.parent.parent.name for p in saved) == ["txt2img-grids"] + ["txt2img-images"] * 4
    only_grid = client.post(f"{API}/txt2img", json={**payload, "save_images": False, "script_args": [4, "2, 3"]})
    assert len(only_grid.json()["images"]) == 1  # A1111's default: the grid without the single images

def test_infotext_with_styles_applies_them_once(client):
    payload = {"prompt": "a fox", "steps": 2, "width": 64, "height": 64, "seed": 5, "styles": ["Photo"]}
    first = json.loads(client.post(f"{API}/txt2img", json=payload).json()["info"])
    again = client.post(f"{API}/txt2img", json={"infotext": first["infotexts"][0]})
    assert again.status_code == 200, again.text
    redone = json.loads(again.json()["info"])
    assert redone["styles"] == ["Photo"] and redone["infotexts"] == first["infotexts"]

"""The Gradio app end to end: launch flags, named endpoints through gradio_client, auth, settings file."""

import json
import subprocess
import sys

import httpx
import pytest
from gradio_client import Client

import app
from server import ROOT, Server

FORM = dict(checkpoint="homegrown-demo-base", prompt="a cat", negative_prompt="", sampler="Euler a",
            scheduler="Automatic", steps=3, width=64, height=64, cfg=7, seed=11, n_iter=1, batch=2,
            refiner="None", switch=0.8)


def test_flags_and_environment(monkeypatch):
    args = app.parse_args(["--demo", "--port", "9000", "--listen"])
    assert (args.demo, args.port, args.listen, args.share) == (True, 9000, True, False)
    monkeypatch.setenv("HOMEGROWN_PORT", "8123")
    monkeypatch.setenv("HOMEGROWN_SHARE", "true")
    monkeypatch.setenv("HOMEGROWN_LORA_DIR", "/x/Lora")
    args = app.parse_args([])
    assert (args.port, args.share, args.lora_dir) == (8123, True, "/x/Lora")
    with pytest.raises(SystemExit):
        app.parse_args(["--port", "99999"])


def test_exposed_without_credentials_gets_a_generated_password():
    from sd_app.auth import credentials

    local = credentials(None, None, exposed=False)
    assert not local.enabled
    exposed = credentials(None, None, exposed=True)
    assert exposed.generated and exposed.enabled
    (user, password), = exposed.users.items()
    assert exposed.check(user, password) and not exposed.check(user, "guess") and len(password) >= 12
    given = credentials("a:b,c:d", None, exposed=True)
    assert not given.generated and given.check("c", "d")


def test_txt2img_through_gradio_client(demo_server):
    client = Client(demo_server.url, verbose=False)
    out = client.predict(*FORM.values(), api_name="/txt2img")
    progress, preview, gallery, info = out[:4]
    assert "Done" in progress and len(gallery) == 2
    assert "Seed: 11," in info and "Sampler: Euler a" in info
    again = client.predict(*FORM.values(), api_name="/txt2img")
    assert again[3] == info


def test_bad_form_values_are_clear_errors(demo_server):
    client = Client(demo_server.url, verbose=False)
    with pytest.raises(Exception) as err:
        client.predict(*{**FORM, "width": 100}.values(), api_name="/txt2img")
    assert "width" in str(err.value) and "multiple of 8" in str(err.value)
    with pytest.raises(Exception) as err:
        client.predict(*{**FORM, "prompt": "x <lora:nope:1>"}.values(), api_name="/txt2img")
    assert "no LoRA named 'nope'" in str(err.value)
    assert demo_server.alive()


def test_paste_parameters_endpoint(demo_server):
    client = Client(demo_server.url, verbose=False)
    text = "a fox\nNegative prompt: ugly\nSteps: 17, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 99, Size: 832x1216"
    form = [*FORM.values(), []]  # the form as it is (the paste fills over it) and its styles
    values = client.predict(text, *form, api_name="/paste_parameters")
    joined = json.dumps(values)
    for expected in ("a fox", "ugly", "17", "DPM++ 2M", "Karras", "5.5", "99", "832", "1216"):
        assert expected in joined
    assert "**Applied:**" in joined and "Everything in the text was applied" in joined
    plain = json.dumps(client.predict("just a prompt", *form, api_name="/paste_parameters"))
    assert "Not an A1111 infotext" in plain and "just a prompt" not in plain  # the form is left alone


def test_ui_and_api_refuse_without_credentials(auth_server):
    with pytest.raises(Exception):
        Client(auth_server.url, verbose=False)
    client = Client(auth_server.url, auth=("alice", "wonderland"), verbose=False)
    out = client.predict(*FORM.values(), api_name="/txt2img")
    assert "Seed: 11," in out[3]


def test_only_outputs_can_be_served(demo_server):
    secrets = [demo_server.outputs.parent / "demo" / "settings.json", demo_server.outputs.parent / "hashes.json",
               demo_server.outputs.parent / "demo" / "models" / "Stable-diffusion" / "homegrown-demo-base.safetensors",
               ROOT / "app.py"]
    with httpx.Client(base_url=demo_server.url, timeout=30) as c:
        for path in secrets:
            for route in (f"/gradio_api/file={path}", f"/file={path}"):
                assert c.get(route).status_code in (403, 404), (route, path)


def test_settings_saved_through_the_ui(demo_server):
    client = Client(demo_server.url, verbose=False)
    info = client.view_api(return_format="dict", print_info=False)
    endpoint = info["named_endpoints"]["/save_settings"]
    values = [p["parameter_default"] for p in endpoint["parameters"]]
    names = [p["label"] for p in endpoint["parameters"]]
    values[names.index("Steps")] = 21
    message = client.predict(*values, api_name="/save_settings")
    assert "applied" in message.lower()
    saved = json.loads((demo_server.outputs.parent / "demo" / "settings.json").read_text())  # the demo's own file
    assert saved["steps"] == 21 and not (demo_server.outputs.parent / "settings.json").exists()
    values[names.index("Steps")] = 0
    with pytest.raises(Exception) as err:
        client.predict(*values, api_name="/save_settings")
    assert "steps" in str(err.value)


def test_app_starts_without_any_checkpoint_and_says_how(tmp_path):
    server = Server(tmp_path / "empty", "--models-dir", str(tmp_path / "no-models"), "--offline").start()
    try:
        assert "No SDXL checkpoint" in server.log()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
            assert r.status_code == 503 and "put SDXL" in r.json()["detail"]
            assert "Stable-diffusion" in c.get("/config").text
    finally:
        server.stop()


def test_unknown_preset_flag_is_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "app.py"), "--preset", "Nope", "--data-dir", str(tmp_path),
                             "--models-dir", str(tmp_path / "m"), "--offline"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no preset 'Nope'" in result.stderr


def test_one_users_interrupt_never_stops_another_users_job(demo_server):
    alice = Client(demo_server.url, verbose=False)
    bob = Client(demo_server.url, verbose=False)
    long_form = {**FORM, "steps": 40, "width": 128, "height": 128, "batch": 1}
    job = alice.submit(*long_form.values(), api_name="/txt2img")
    wait_until_sampling(demo_server)
    bob.predict(api_name="/interrupt")  # Bob has nothing running: nothing of Alice's may stop
    progress, _, gallery, info = job.result(timeout=120)[:4]
    assert "interrupted" not in progress and "Steps: 40," in info
    job = alice.submit(*long_form.values(), api_name="/txt2img")
    wait_until_sampling(demo_server)
    alice.predict(api_name="/interrupt")
    progress = job.result(timeout=120)[0]
    assert "interrupted" in progress


def wait_until_sampling(server, timeout=60):
    import time

    deadline = time.time() + timeout
    with httpx.Client(base_url=server.url, timeout=10) as c:
        while time.time() < deadline:
            if c.get("/sdapi/v1/progress").json()["state"]["sampling_step"] >= 1:
                return
            time.sleep(0.05)
    raise AssertionError("the job did not start sampling")


def test_listen_without_credentials_requires_the_printed_password(tmp_path, demo_root):
    import re
    import shutil

    shutil.copytree(demo_root, tmp_path / "data" / "demo")
    server = Server(tmp_path / "data", "--demo", "--listen").start()
    try:
        match = re.search(r"user '(\w+)' and password '([^']+)'", server.log())
        assert match, server.log()
        assert "Warning: traffic on the network is unencrypted" in server.log()  # and how to fix it (test_security)
        user, password = match.groups()
        with httpx.Client(base_url=server.url, timeout=60) as c:
            assert c.get("/sdapi/v1/samplers").status_code == 401
            assert c.get("/sdapi/v1/samplers", auth=(user, password)).status_code == 200
        with pytest.raises(Exception):
            Client(server.url, verbose=False)
        assert "Seed: 11," in Client(server.url, auth=(user, password), verbose=False).predict(
            *FORM.values(), api_name="/txt2img")[3]
    finally:
        server.stop()

"""Start-up: the page is served before the model stack imports; loading ends with a model, or with none and
the reason (never a dead app); a clean start prints only what the user needs; --demo keeps its own settings."""

import json
import shutil
import struct
import subprocess
import sys

import httpx
import pytest
from gradio_client import Client

import app
from conftest import BASE, REFINER, _server_dir
from server import ROOT, Server
from test_app import FORM

from sd_app.errors import UserError
from sd_app.presets import PresetLibrary
from sd_app.settings import SettingsStore
from sd_app.startup import Startup, load
from sd_app.studio import Studio

MODEL_STACK = ("torch", "diffusers", "transformers", "compel", "peft")


# ---- in process ------------------------------------------------------------------------------


def test_the_page_and_the_api_are_built_without_the_model_stack(tmp_path):
    """What makes the page come first: building it imports no torch, diffusers or transformers."""
    code = ("import sys, app\n"
            "from sd_app import api\n"
            "args = app.parse_args(['--data-dir', sys.argv[1], '--models-dir', sys.argv[2], '--offline'])\n"
            "studio, blocks, startup = app.build(args)\n"
            f"print('stack:', sorted(m for m in {MODEL_STACK!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data"), str(tmp_path / "models")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "stack: []" in result.stdout


def light_studio(ckpt_dir, tmp_path, settings_file=None):
    overrides = {"ckpt_dir": str(ckpt_dir), "lora_dir": str(ckpt_dir.parent / "Lora"),
                 "vae_dir": str(ckpt_dir.parent / "VAE"), "outputs_dir": str(tmp_path / "outputs")}
    return Studio.create(SettingsStore(settings_file, overrides), tmp_path, PresetLibrary(ROOT / "presets"),
                         stack=False)


def test_before_its_stack_a_studio_lists_folders_and_refuses_work_with_503(ckpt_dir, tmp_path, small):
    studio = light_studio(ckpt_dir, tmp_path, tmp_path / "settings.json")
    assert studio.checkpoint_names("sdxl-base") == [BASE, "homegrown-demo-inpaint"] and studio.loaded_model() is None
    assert studio.vae_names() == ["Automatic", "homegrown-demo-vae"]
    for call in (lambda: studio.generate(small), lambda: studio.load_checkpoint(BASE),
                 lambda: studio.apply_settings({"steps": 12})):
        with pytest.raises(UserError) as err:
            call()
        assert err.value.status == 503 and "still loading" in str(err.value)
    assert not (tmp_path / "settings.json").exists()  # nothing saved that could not be applied
    studio.attach_stack()
    assert studio.load_startup_checkpoint() == BASE and studio.generate(small, save=False).images


@pytest.mark.parametrize("wanted, default, expected", [
    ("nope", "", "The checkpoint 'nope' could not be loaded: no checkpoint 'nope'; available: "
                 f"{BASE}, homegrown-demo-inpaint, {REFINER}. Choose another checkpoint on the page."),
    (None, REFINER, f"The checkpoint '{REFINER}' could not be loaded: {REFINER}.safetensors is an SDXL refiner "
                    "checkpoint, but an SDXL base checkpoint is needed here. Choose another checkpoint on the page."),
])
def test_loading_that_fails_says_why_and_never_raises(ckpt_dir, tmp_path, wanted, default, expected):
    studio = light_studio(ckpt_dir, tmp_path)
    studio.settings.update({"default_checkpoint": default})
    model, problem = load(studio, wanted)
    assert model is None and problem == expected
    assert studio.pipelines is not None and studio.loaded_model() is None  # the stack is there: choose another


def test_a_failing_preparation_is_a_message_too(ckpt_dir, tmp_path):
    def broken():
        raise OSError("disk full")

    model, problem = load(light_studio(ckpt_dir, tmp_path), None, broken)
    assert model is None and "OSError: disk full" in problem


def test_the_page_note_follows_the_start_up():
    from sd_app.ui import startup_status

    startup = Startup()
    assert "Loading model" in startup_status.note(startup) and startup.summary().startswith("Model: loading")
    startup.finish(BASE)
    assert startup_status.note(startup) == "" and startup.summary().startswith(f"Model: {BASE} (loaded in ")
    failed = Startup()
    failed.finish(None, "The checkpoint 'x' could not be loaded: <gone>")
    assert startup_status.note(failed) == "⚠️ The checkpoint 'x' could not be loaded: &lt;gone&gt;"
    assert failed.summary() == "Model: none. The checkpoint 'x' could not be loaded: <gone>"


# ---- a fresh demo start ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_demo(tmp_path_factory, demo_root):
    """`python app.py --demo`, seen from its first second: the fixture returns as soon as the page is up."""
    server = Server(_server_dir(tmp_path_factory, demo_root, "fresh-demo"), "--demo")
    server.start(wait_for_model=False)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        server.while_loading = {"config": c.get("/config").status_code, "api": c.get("/sdapi/v1/samplers")}
    yield server.wait_for_model()
    server.stop()


def test_the_page_is_served_while_the_model_loads_and_the_api_says_when_to_retry(fresh_demo):
    assert fresh_demo.while_loading["config"] == 200
    api = fresh_demo.while_loading["api"]
    assert api.status_code == 503 and api.headers["Retry-After"] == "2" and "still loading" in api.json()["detail"]
    assert fresh_demo.ready_seconds > fresh_demo.page_seconds
    with httpx.Client(base_url=fresh_demo.url, timeout=120) as c:
        assert c.get("/sdapi/v1/samplers").status_code == 200
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
        assert r.status_code == 200 and len(r.json()["images"]) == 1


def test_a_clean_start_prints_what_the_user_needs_and_nothing_else(fresh_demo):
    lines = [line for line in fresh_demo.log().splitlines() if line.strip()]
    outputs = fresh_demo.outputs.resolve()
    assert lines[:2] == [f"Homegrown is running at {fresh_demo.url}/", f"Images are saved to {outputs}"]
    assert lines[2].startswith("Ready in ") and lines[3].startswith(f"Model: {BASE} (loaded in ")
    log = fresh_demo.log()
    for noise in ("torchvision", "should be kept in float32", "Loading pipeline components", "it/s]", "%|"):
        assert noise not in log


def test_settings_saved_in_demo_mode_never_reach_a_normal_start(fresh_demo):
    data = fresh_demo.outputs.parent
    client = Client(fresh_demo.url, verbose=False)
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/save_settings"]
    values = [p["parameter_default"] for p in endpoint["parameters"]]  # every field, the demo's folders included
    values[[p["label"] for p in endpoint["parameters"]].index("Steps")] = 9
    client.predict(*values, api_name="/save_settings")
    with httpx.Client(base_url=fresh_demo.url, timeout=60) as c:
        assert c.post("/sdapi/v1/options", json={"samples_format": "jpg"}).status_code == 200
    demo_saved = json.loads((data / "demo" / "settings.json").read_text())
    assert demo_saved["output_format"] == "jpeg" and demo_saved["steps"] == 9
    assert not (data / "settings.json").exists()
    # The next start without --demo: its folders, defaults and checkpoint are the normal ones.
    studio, _, _ = app.build(app.parse_args(["--data-dir", str(data), "--offline"]))
    settings = studio.settings.all()
    assert settings["models_dir"] == "models" and settings["steps"] == 30 and settings["output_format"] == "png"
    assert all("demo" not in str(studio.settings.folder(kind)) for kind in ("ckpt", "lora", "vae"))


# ---- start-up failures against a running server ------------------------------------------------


def odd_metadata_file(path):
    """A safetensors file whose header's __metadata__ is a list (valid JSON, not what the format says)."""
    header = json.dumps({"__metadata__": ["made", "by", "hand"],
                         "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0\0\0")


def models_folder(root, demo_root, case):
    ckpt = root / "models" / "Stable-diffusion"
    ckpt.mkdir(parents=True)
    demo_ckpt = demo_root / "models" / "Stable-diffusion"
    for name in (BASE, REFINER):
        shutil.copy(demo_ckpt / f"{name}.safetensors", ckpt)
    settings = {}
    if case == "corrupt":
        data = (ckpt / f"{BASE}.safetensors").read_bytes()
        (ckpt / "cut-short.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "refiner as default":
        settings["default_checkpoint"] = REFINER
    elif case == "default deleted":
        (ckpt / "old.safetensors").write_bytes((ckpt / f"{BASE}.safetensors").read_bytes())
        settings["default_checkpoint"] = "old"
        (ckpt / "old.safetensors").unlink()
    elif case == "__metadata__ list, --ckpt another":
        odd_metadata_file(ckpt / "odd.safetensors")
    (root / "data").mkdir()
    if settings:
        (root / "data" / "settings.json").write_text(json.dumps(settings))
    return root / "models"


@pytest.mark.parametrize("case, flags, expected", [
    ("missing", ["--ckpt", "nope"], "Model: none. The checkpoint 'nope' could not be loaded: no checkpoint 'nope'"),
    ("corrupt", ["--ckpt", "cut-short"], "Model: none. The checkpoint 'cut-short' could not be loaded: "
                                         "cut-short.safetensors is incomplete"),
    ("refiner as default", [], f"Model: none. The checkpoint '{REFINER}' could not be loaded: "
                               f"{REFINER}.safetensors is an SDXL refiner"),
    ("default deleted", [], "Model: none. The checkpoint 'old' could not be loaded: no checkpoint 'old'"),
    ("__metadata__ list, --ckpt another", ["--ckpt", BASE], f"Model: {BASE} (loaded in "),
])
def test_a_checkpoint_that_cannot_load_at_start_leaves_the_app_up(tmp_path, demo_root, case, flags, expected):
    models = models_folder(tmp_path, demo_root, case)
    server = Server(tmp_path / "data", "--models-dir", str(models), "--offline", *flags).start()
    try:
        assert server.alive() and expected in server.log(), server.log()
        with httpx.Client(base_url=server.url, timeout=120) as c:
            assert c.get("/config").status_code == 200  # the page
            assert c.get("/sdapi/v1/options").status_code == 200  # start-up is over: no more 503
            r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
            if "Model: none." in expected:
                assert r.status_code == 503 and "no checkpoint is loaded" in r.json()["detail"]
                assert "retry-after" not in r.headers  # not a matter of waiting: the page says what to do
            else:
                assert r.status_code == 200 and len(r.json()["images"]) == 1
        # The page's form still works: choosing the good checkpoint loads it and generates.
        info = Client(server.url, verbose=False).predict(*FORM.values(), api_name="/txt2img")[3]
        assert "Seed: 11," in info and f"Model: {BASE}" in info
        assert server.alive()
    finally:
        server.stop()


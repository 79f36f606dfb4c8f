"""Shared fixtures: the tiny demo models are written once per test run; one engine serves read-only tests."""

from __future__ import annotations

import os
import socket
import warnings

# Tests run as a user in the jungle would: no hub, no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")  # as sd_app sets it; here before anything loads torch
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


def pytest_configure(config):
    # diffusers' schedulers trip numpy 2's copy-keyword deprecation on every step: noise, not signal.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore::FutureWarning")

import pytest  # noqa: E402

from sd_app.demo import write_demo  # noqa: E402
from sd_app.engine import Engine  # noqa: E402
from sd_app.lora_library import LoraLibrary  # noqa: E402
from sd_app.models import CheckpointLibrary, HashCache, VaeLibrary  # noqa: E402
from sd_app.params import GenerationParams  # noqa: E402
from sd_app.pipelines import PipelineOptions, Pipelines  # noqa: E402

BASE = "homegrown-demo-base"
REFINER = "homegrown-demo-refiner"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    write_demo(root)
    return root


@pytest.fixture(scope="session")
def ckpt_dir(demo_root):
    return demo_root / "models" / "Stable-diffusion"


def make_engine(ckpt_dir, tmp_path, lora_dir=None, preview_every=3, **options) -> Engine:
    """An engine on the demo folders; `options` are PipelineOptions (device, memory_mode, compile...)."""
    hashes = HashCache(tmp_path / "hashes.json")
    pipelines = Pipelines(CheckpointLibrary(ckpt_dir, hashes), PipelineOptions(**options),
                          vaes=VaeLibrary(ckpt_dir.parent / "VAE", hashes))
    return Engine(pipelines, LoraLibrary(lora_dir or ckpt_dir.parent / "Lora", hashes), preview_every=preview_every)


def make_studio(ckpt_dir, tmp_path, lora_dir=None, **settings):
    """A studio as app.py builds it, on the demo folders, with settings held in memory (no file)."""
    from sd_app.bench import bench_studio

    return bench_studio(tmp_path, ckpt_dir, lora_dir, **settings)


@pytest.fixture(scope="session")
def engine(ckpt_dir, tmp_path_factory):
    """A loaded engine shared by tests that only generate (they must not change what is loaded)."""
    eng = make_engine(ckpt_dir, tmp_path_factory.mktemp("engine"))
    eng.pipelines.load_checkpoint(BASE)
    return eng


@pytest.fixture
def small():
    """A cheap request: 64x64, few steps."""
    return GenerationParams(prompt="a photo of a cat", negative_prompt="blurry", steps=4, width=64, height=64,
                            seed=1234, cfg_scale=7.0)


@pytest.fixture
def no_network(monkeypatch):
    """Fail any connection that leaves this machine, to prove a code path is offline."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("/"):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def _server_dir(tmp_path_factory, demo_root, name):
    import shutil

    data = tmp_path_factory.mktemp(name)
    shutil.copytree(demo_root, data / "demo")  # app.py --demo finds the models made once for this run
    return data


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory, demo_root):
    """`python app.py --demo`, no auth, on a free port, for the whole run."""
    from server import Server

    server = Server(_server_dir(tmp_path_factory, demo_root, "server"), "--demo").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory, demo_root):
    """`python app.py --demo --auth alice:wonderland`."""
    from server import Server

    server = Server(_server_dir(tmp_path_factory, demo_root, "auth-server"), "--demo", "--auth",
                    "alice:wonderland").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lora_engine(ckpt_dir, tmp_path_factory):
    """An engine with its own LoRA folder: the demo LoRAs, a subfolder, and odd files for error tests."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    tmp = tmp_path_factory.mktemp("lora")
    folder = tmp / "Lora"
    shutil.copytree(ckpt_dir.parent / "Lora", folder)
    (folder / "chars").mkdir()
    shutil.copy(folder / "demo-detail.safetensors", folder / "chars" / "hero.safetensors")
    style = load_file(str(folder / "demo-style.safetensors"))
    # SD 1.5 layout: diffusers-style module names and a 768-wide cross-attention.
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 768),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(320, 4)},
              str(folder / "sd15-thing.safetensors"))
    data = (folder / "demo-style.safetensors").read_bytes()
    (folder / "cut-short.safetensors").write_bytes(data[: len(data) // 2])
    wrong = {k: (torch.zeros(v.shape[0], v.shape[1] + 3) if k.endswith("lora_down.weight") else v) for k, v in style.items()}
    save_file(wrong, str(folder / "wrong-shapes.safetensors"), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    (tmp / "outside.safetensors").write_bytes(data)
    eng = make_engine(ckpt_dir, tmp, lora_dir=folder)
    eng.pipelines.load_checkpoint(BASE)
    return eng

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
from sd_app.engine import Engine, EngineOptions  # noqa: E402
from sd_app.lora import LoraLibrary  # noqa: E402
from sd_app.models import CheckpointLibrary, HashCache  # noqa: E402
from sd_app.params import GenerationParams  # noqa: E402

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


def make_engine(ckpt_dir, tmp_path, lora_dir=None, **options) -> Engine:
    hashes = HashCache(tmp_path / "hashes.json")
    library = CheckpointLibrary(ckpt_dir, hashes)
    loras = LoraLibrary(lora_dir or ckpt_dir.parent / "Lora", hashes)
    return Engine(library, EngineOptions(outputs_dir=tmp_path / "outputs", **options), loras=loras)


@pytest.fixture(scope="session")
def engine(ckpt_dir, tmp_path_factory):
    """A loaded engine shared by tests that only generate (they must not change what is loaded)."""
    eng = make_engine(ckpt_dir, tmp_path_factory.mktemp("engine"), save_images=False)
    eng.load_checkpoint(BASE)
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

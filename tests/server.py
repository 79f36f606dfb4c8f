"""Start `python app.py` as a real server for end-to-end tests, and stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, *flags: str, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.outputs = data_dir / "outputs"
        self.args = [sys.executable, str(ROOT / "app.py"), "--port", str(self.port), "--data-dir", str(data_dir),
                     "--outputs-dir", str(self.outputs), *flags]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self.page_seconds: float | None = None  # launch to "Ready in": the page is served
        self.ready_seconds: float | None = None  # launch to "Model:": start-up loading has ended

    def start(self, timeout: float = 120, wait_for_model: bool = True) -> "Server":
        """Start and wait until the page is up and, unless told not to, until the model has loaded (or failed to)."""
        self.began = time.perf_counter()
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(self.args, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        self.page_seconds = self.wait_for("Ready in", timeout)
        if wait_for_model:
            self.wait_for_model(timeout)
        return self

    def wait_for_model(self, timeout: float = 120) -> "Server":
        """Wait for start-up loading to end: the "Model: ..." line."""
        self.ready_seconds = self.wait_for("\nModel: ", timeout)
        return self

    def wait_for(self, text: str, timeout: float) -> float:
        """Seconds from launch until `text` is in the log; stops the server if it never comes."""
        while time.perf_counter() - self.began < timeout:
            if text in self.log():
                return time.perf_counter() - self.began
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server: no {text.strip()!r} after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        if getattr(self, "_log", None):
            self._log.close()

"""A training run's progress and controls, shared between the thread that trains and those that watch it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from PIL import Image

from .config import TrainConfig


class TrainingRun:
    """Steps, losses, ETA, samples and messages of one run; pause, go on, stop. Safe across threads."""

    def __init__(self, config: TrainConfig, owner: str = "local"):
        self.config = config
        self.owner = owner
        self.created = time.time()
        self.started: float | None = None  # the first training step of this session
        self.finished: float | None = None
        self.step = 0
        self.total = config.max_steps
        self.first_step = 0  # where this session began (a resumed run starts past 0)
        self.losses: list[tuple[int, float]] = []  # (step, loss)
        self.note: str | None = None  # what the run does now when it is not stepping
        self.messages: list[str] = []  # for the user: skipped images, fallbacks, saved files
        self.samples: list[tuple[int, list[Image.Image]]] = []  # (step, one image per prompt)
        self.output: Path | None = None  # the finished LoRA file
        self.saved_states: list[Path] = []
        self.error: str | None = None
        self.cause: Exception | None = None
        self._pause = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()

    # ---- controls ------------------------------------------------------------------------------

    def pause(self) -> None:
        """Hold between steps (the GPU is free meanwhile) until `go_on` or `stop`."""
        self._pause.set()

    def go_on(self) -> None:
        self._pause.clear()

    def stop(self) -> None:
        """End after the current step; what was learnt so far is saved (LoRA and state, to resume later)."""
        self._stop.set()
        self._pause.clear()

    @property
    def paused(self) -> bool:
        return self._pause.is_set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    # ---- reports from the training thread ------------------------------------------------------------

    def say(self, message: str) -> None:
        with self._lock:
            self.messages.append(message)

    def record(self, step: int, loss: float) -> None:
        with self._lock:
            if self.started is None:
                self.started, self.first_step = time.time(), step - 1
            self.step = step
            self.losses.append((step, loss))
            self.note = None

    def add_samples(self, step: int, images: list[Image.Image]) -> None:
        with self._lock:
            self.samples.append((step, images))

    def end(self, error: str | None = None, cause: Exception | None = None) -> None:
        self.error, self.cause = error, cause
        self.finished = time.time()
        self.note = None
        self._done.set()

    # ---- reading ------------------------------------------------------------------------------

    def loss_points(self) -> list[tuple[int, float]]:
        with self._lock:
            return list(self.losses)

    def latest_samples(self) -> tuple[int, list[Image.Image]] | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def eta(self) -> float | None:
        """Seconds left, from this session's pace (time spent paused counts: it is an estimate)."""
        if self.started is None or self.step <= self.first_step:
            return None
        pace = (time.time() - self.started) / (self.step - self.first_step)
        return max(0.0, pace * (self.total - self.step))

    def status(self) -> str:
        """One line for the page and the console."""
        if self.error:
            return f"Failed: {self.error}"
        if self.done:
            where = f" → {self.output}" if self.output else ""
            return f"{'Stopped' if self.stopped else 'Finished'} at step {self.step}/{self.total}{where}"
        if self.note:
            return self.note
        if self.paused:
            return f"Paused at step {self.step}/{self.total}"
        loss = f", loss {self.losses[-1][1]:.4f}" if self.losses else ""
        eta = self.eta()
        return f"Step {self.step}/{self.total}{loss}" + (f", ETA {_clock(eta)}" if eta is not None else "")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"

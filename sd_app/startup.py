"""Start-up behind the page: the model stack imports and the start-up checkpoint loads once the page is served.

Importing torch and diffusers takes longer than importing Gradio, so app.py serves the page first (the
server runs in a thread of its own) and then calls `load_at_start` in the main thread. `Startup` says where
that stands; the page shows it (and enables Generate
when it ends) and the API answers 503 with Retry-After until it ends. However loading ends, the app
stays up: a checkpoint that cannot load leaves it with no model and the reason, shown on the page and
printed.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .errors import UserError
from .studio import Studio

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2  # what the API tells clients to wait before asking again


class Startup:
    """Loading, then done: with the name of the model loaded, or none and the reason."""

    def __init__(self):
        self.began = time.perf_counter()  # reset when loading begins: `load_at_start`
        self.model: str | None = None
        self.problem: str | None = None  # why no model was loaded, for the page and the console
        self.seconds: float | None = None  # how long loading took, once done
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def finish(self, model: str | None, problem: str | None = None) -> None:
        self.model, self.problem = model, problem
        self.seconds = time.perf_counter() - self.began
        self._done.set()

    def summary(self) -> str:
        """One line for the console."""
        if not self.done:
            return "Model: loading in the background…"
        if self.model:
            return f"Model: {self.model} (loaded in {self.seconds:.1f}s)"
        return f"Model: none. {self.problem}"


def load_at_start(studio: Studio, startup: Startup, wanted: str | None = None,
                  prepare: Callable[[], None] | None = None) -> Startup:
    """Attach the model stack to the studio and load the start-up checkpoint (`wanted`, else the settings',
    else the first SDXL base found) in the calling thread, `prepare` first (writing the demo models); then
    mark `startup` done.

    app.py calls it from the main thread, never from a thread of its own: on the CPU, with the models loaded
    in a thread that then ended, every later image took about ten times as long (torch's worker threads;
    measured here: the demo's 256x256, 12 steps in 11-30 s instead of 1.8 s)."""
    startup.began = time.perf_counter()
    startup.finish(*load(studio, wanted, prepare))
    return startup


def load(studio: Studio, wanted: str | None = None,
         prepare: Callable[[], None] | None = None) -> tuple[str | None, str | None]:
    """(the checkpoint loaded, None), or (None, why not): never raises, whatever the files hold."""
    try:
        quiet_progress_bars()
        if prepare is not None:
            prepare()
        studio.attach_stack()
    except UserError as err:  # a setting the stack refuses, such as a device this machine does not have
        return None, (f"The model stack could not be started: {err}. Change it in "
                      f"{studio.settings.path or 'the settings'} and start again.")
    except Exception as err:  # a broken install, a full disk: the page stays up and says so
        log.exception("the model stack could not be started")
        return None, f"The model stack could not be started ({type(err).__name__}: {err}); see the console."
    name = wanted or studio.settings.get("default_checkpoint") or None
    try:
        loaded = studio.load_startup_checkpoint(wanted)
    except (UserError, OSError) as err:
        reason = (err.message if isinstance(err, UserError) else str(err)).rstrip(".")
        return None, f"{_which(name)} could not be loaded: {reason}. Choose another checkpoint on the page."
    except Exception as err:  # never a dead app: say what broke, keep the traceback in the log
        log.exception("the start-up checkpoint failed to load")
        return None, (f"{_which(name)} could not be loaded ({type(err).__name__}: {err}). "
                      "Choose another checkpoint on the page.")
    if loaded is None:
        folder = studio.settings.folder("ckpt").resolve()
        return None, f"No SDXL checkpoint in {folder} yet: the page says how to get one."
    return loaded, None


def _which(name: str | None) -> str:
    return f"The checkpoint {name!r}" if name else "The first SDXL checkpoint found"


def quiet_progress_bars() -> None:
    """No tqdm bars while pipelines load (diffusers' own switch; generation progress is shown by the page)."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()

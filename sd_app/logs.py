"""The terminal log: one line per event, a traceback only for a real bug.

On Colab or Vast.ai the terminal is all a user sees of the server, and a 35-line traceback reads as a crash.
A mistake the user can fix (a `UserError`) is logged as one line with `user_error`; an unexpected exception
keeps its traceback (`log.exception`), because that one is ours to fix.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOGGER = "sd_app"  # every module logs below it with logging.getLogger(__name__)
FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup(stream: TextIO | None = None) -> logging.Logger:
    """Send sd_app's log to `stream` (stderr), INFO and up, once: a second call changes nothing.

    Only our own logger is configured: the libraries' loggers keep their own levels, so importing diffusers or
    gradio does not flood the terminal with their INFO lines.
    """
    logger = logging.getLogger(LOGGER)
    if not any(getattr(h, "homegrown", False) for h in logger.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler.homegrown = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # not twice when the host (a notebook, pytest) configured the root logger
    return logger


def user_error(log: logging.Logger, where: str, err: Exception | str) -> None:
    """One line for a request refused with a message for the user: what was refused and why."""
    text = " ".join(str(err).split())  # a message with line breaks still makes one line
    log.info("%s refused: %s", where, text)

"""The terminal log (issue 12, item 7): a user's mistake is one line, a real bug keeps its traceback."""

import io
import logging

import pytest

from sd_app import logs

from conftest import make_studio


@pytest.fixture
def terminal():
    """sd_app's log configured by logs.setup into a buffer, as app.py does into stderr; put back afterwards."""
    logger = logging.getLogger(logs.LOGGER)
    kept = (list(logger.handlers), logger.level, logger.propagate)
    for handler in kept[0]:
        logger.removeHandler(handler)
    stream = io.StringIO()
    logs.setup(stream)
    yield stream
    logger.handlers[:] = kept[0]
    logger.setLevel(kept[1])
    logger.propagate = kept[2]


def test_setup_once_and_a_user_error_is_one_line(terminal):
    logs.setup(terminal)  # a second call adds no second handler: one line stays one line
    logs.user_error(logging.getLogger("sd_app.ui.handlers"), "txt2img", "width: must be\na multiple of 8")
    lines = terminal.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].endswith("INFO txt2img refused: width: must be a multiple of 8")


def test_a_bug_in_a_job_keeps_its_traceback(terminal, ckpt_dir, tmp_path, small, monkeypatch):
    studio = make_studio(ckpt_dir, tmp_path, save_images=False)

    def broken(params, job):
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(studio.engine, "generate", broken)
    job = studio.start(small, owner="tab")
    while not job.done:
        job.wait(0.1)
    assert job.error == "generation failed: ZeroDivisionError: a bug of ours"
    text = terminal.getvalue()
    assert "Traceback (most recent call last)" in text and 'raise ZeroDivisionError("a bug of ours")' in text

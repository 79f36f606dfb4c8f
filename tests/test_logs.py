"""The terminal log (issue 12, item 7): a user's mistake is one line, a real bug keeps its traceback."""

import io
import logging
import time

import httpx
import pytest
from gradio_client import Client

from sd_app import logs

from conftest import BASE, make_studio
from test_app import FORM


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


def new_log(server, before: int, settle: float = 1.0) -> list[str]:
    time.sleep(settle)  # the server writes its line while the client already has its answer
    return [line for line in server.log()[before:].splitlines() if line.strip()]


def test_user_mistakes_are_one_line_in_the_servers_terminal(demo_server):
    client = Client(demo_server.url, verbose=False)
    cases = [
        (lambda: client.predict(*{**FORM, "width": 13}.values(), api_name="/txt2img"),
         "txt2img refused: width: must be between 64 and 4096, got 13"),
        (lambda: client.predict(*{**FORM, "steps": 0}.values(), api_name="/txt2img"),
         "txt2img refused: steps: must be between 1 and 150, got 0"),
        (lambda: client.predict(*{**FORM, "prompt": "x <lora:nope:1>"}.values(), api_name="/txt2img"),
         "txt2img refused: prompt: no LoRA named 'nope'"),
        (lambda: client.predict("", *FORM.values(), [], api_name="/paste_parameters"), "fill_form refused: there are no parameters"),
    ]
    for request, line in cases:
        before = len(demo_server.log())
        with pytest.raises(Exception) as err:
            request()
        assert line.split("refused: ")[1] in str(err.value)
        logged = new_log(demo_server, before)
        assert len(logged) == 1 and line in logged[0], logged

    before = len(demo_server.log())
    with httpx.Client(base_url=demo_server.url, timeout=60) as c:
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 13, "height": 64})
        assert r.status_code == 422
        r = c.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": "many"})
        assert r.status_code == 422
    logged = new_log(demo_server, before)
    assert len(logged) == 2 and "Traceback" not in "".join(logged), logged
    assert "POST /sdapi/v1/txt2img refused: width:" in logged[0] and "steps" in logged[1]
    assert demo_server.alive()


def test_a_good_request_logs_no_error(demo_server):
    client = Client(demo_server.url, verbose=False)
    before = len(demo_server.log())
    out = client.predict(*{**FORM, "batch": 1}.values(), api_name="/txt2img")
    assert "Seed: 11," in out[3]
    assert not any("refused" in line or "Traceback" in line for line in new_log(demo_server, before, settle=0.2))
    assert BASE in out[3]

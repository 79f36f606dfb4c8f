"""Jobs and the board of jobs in flight: what the page and the API find, stop and watch."""

import threading

from sd_app.jobs import Job, JobBoard


def test_board_finds_a_job_by_owner_and_the_running_one():
    board = JobBoard()
    queued, running = Job(owner="tab-a"), Job(owner="api")
    board.add(queued)
    board.add(running)
    assert board.running() is None  # nothing holds the GPU yet
    running.started = 1.0
    assert board.running() is running and board.of("tab-a") is queued and board.of("tab-b") is None
    running.finished = 2.0
    board.remove(running)
    board.remove(running)  # twice is harmless: removal sits in a finally
    assert board.running() is None and len(board) == 1


def test_interrupt_and_skip_are_seen_from_other_threads():
    job = Job()
    threading.Thread(target=job.interrupt).start()
    threading.Thread(target=job.skip).start()
    assert job.wait(0.01) is False
    for _ in range(100):
        if job.interrupted and job.skipped:
            break
        threading.Event().wait(0.01)
    assert job.interrupted and job.skipped
    job.clear_skip()
    assert not job.skipped and job.interrupted  # a skip ends one batch; an interrupt ends the job


def test_end_wakes_the_waiter():
    job = Job()
    threading.Timer(0.05, lambda: job.end(error="boom")).start()
    assert job.wait(5) and job.done and job.error == "boom" and job.result is None

"""Jobs: one request's progress and controls, its result, and the board of jobs in flight.

A `Job` is shared between the thread that runs it and the threads that watch or stop it (the page's
progress poll, `/sdapi/v1/progress`, Interrupt and Skip), so everything here is safe across threads.
Nothing here knows torch, Gradio or HTTP.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from .params import GenerationParams


class Job:
    """One request's progress and controls; safe to read and to interrupt from other threads."""

    def __init__(self, params: GenerationParams | None = None, owner: str = "local"):
        self.params = params
        self.owner = owner  # who may stop it: a browser session, or "api"
        self.created = time.time()
        self.started: float | None = None  # when it got the GPU; None while queued
        self.finished: float | None = None
        self.job_no = 0  # the batch running now (A1111's state.job_no)
        self.job_count = 1  # batches in this job (n_iter)
        self.part_no = 0  # the request running now, when one job runs several (an X/Y/Z plot's cells)
        self.part_count = 1
        self.sampling_step = 0
        self.sampling_steps = 0
        self.progress = 0.0  # 0..1 over the whole job
        self.preview: Image.Image | None = None
        self.preview_step = -1
        self.note: str | None = None  # what the job does while no step is counted (compiling), for the user
        self.result: GenerationResult | None = None  # set when it ends well
        self.error: str | None = None  # set when it ends with a message for the user
        self.cause: Exception | None = None  # the exception behind `error`: the API answers with its status
        self._interrupt = threading.Event()
        self._skip = threading.Event()
        self._done = threading.Event()
        self._on_end: list = []
        self._lock = threading.Lock()

    def interrupt(self) -> None:
        """Stop after the current step; what is done so far is decoded and returned."""
        self._interrupt.set()

    def skip(self) -> None:
        """Finish the current batch early and go on with the next one."""
        self._skip.set()

    def part(self, params: GenerationParams) -> "Job":
        """A job for one part of this one that runs beside others (an X/Y/Z plot's cells on a pool of workers):
        this job's Interrupt and Skip reach it; its progress is its own."""
        part = Job(params, self.owner)
        part._interrupt, part._skip = self._interrupt, self._skip
        return part

    def clear_skip(self) -> None:
        """A skip ends one batch; the next batch runs in full."""
        self._skip.clear()

    @property
    def interrupted(self) -> bool:
        return self._interrupt.is_set()

    @property
    def skipped(self) -> bool:
        return self._skip.is_set()

    @property
    def running(self) -> bool:
        return self.started is not None and self.finished is None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def end(self, result: GenerationResult | None = None, error: str | None = None,
            cause: Exception | None = None) -> None:
        """Record how the job ended and wake whoever waits for it."""
        self.result, self.error, self.cause = result, error, cause
        with self._lock:
            self._done.set()
            callbacks, self._on_end = self._on_end, []
        for callback in callbacks:
            callback()

    def on_end(self, callback) -> None:
        """Call `callback()` when the job ends (from the thread that ends it), or now if it has: lets an
        event loop wait for the job without holding a thread."""
        with self._lock:
            if not self._done.is_set():
                self._on_end.append(callback)
                return
        callback()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the job has ended (or `timeout` seconds); True when it has."""
        return self._done.wait(timeout)

    def set_progress(self, fraction: float) -> None:
        """Progress through the request running now (0..1), kept as a share of the whole job."""
        self.progress = min(1.0, (self.part_no + fraction) / self.part_count)

    def eta(self) -> float | None:
        """Seconds left, from the pace so far."""
        if not self.started or self.progress <= 0:
            return None
        elapsed = time.time() - self.started
        return max(0.0, elapsed / self.progress * (1 - self.progress))


@dataclass
class GenerationResult:
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    params: GenerationParams  # as run: the seed is the real one, never -1
    sampler: str = ""  # the sampler and schedule type that ran (A1111's names, "Automatic" resolved)
    schedule: str = ""
    model_name: str | None = None  # the base checkpoint's short name and A1111 hash, as in the infotext
    model_hash: str | None = None
    vae_name: str | None = None  # a VAE file chosen in Settings (None: the checkpoint's own)
    vae_hash: str | None = None
    paths: list[Path] = field(default_factory=list)  # where the images were saved (after the run)
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)  # for the user: what went other than asked, and why
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase

    def in_seed_order(self) -> None:
        """Images, texts and seeds sorted by seed: a job's images in the order of its batches and places."""
        order = sorted(range(len(self.seeds)), key=self.seeds.__getitem__)
        self.images[:] = [self.images[i] for i in order]
        self.infotexts[:] = [self.infotexts[i] for i in order]
        self.seeds[:] = [self.seeds[i] for i in order]


class JobBoard:
    """The jobs in flight, by owner: the page finds its session's job, the API finds the running one.

    One board serves the page and the API, so `/sdapi/v1/progress` sees a page job and the page's queue
    sees API jobs. A job leaves the board when it ends, whatever way it ends.
    """

    def __init__(self):
        self._jobs: list[Job] = []
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._jobs.append(job)

    def remove(self, job: Job) -> None:
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)

    def of(self, owner: str) -> Job | None:
        """The newest job of this owner still in flight."""
        with self._lock:
            mine = [job for job in self._jobs if job.owner == owner]
        return mine[-1] if mine else None

    def ahead_of(self, job: Job) -> int:
        """Jobs before this one for the GPU: the running one and those queued before it (0 once it runs)."""
        with self._lock:
            if job.running or job not in self._jobs:
                return 0
            earlier = self._jobs[:self._jobs.index(job)]
            later = self._jobs[self._jobs.index(job) + 1:]
        # A later job that got the GPU first (the lock is not first-come, first-served) is ahead too.
        return sum(1 for other in earlier if other.finished is None) + sum(1 for other in later if other.running)

    def waiting(self) -> int:
        """Jobs on the board that wait for the GPU (a training run lets them go first, between its steps)."""
        with self._lock:
            return sum(1 for job in self._jobs if job.started is None and job.finished is None)

    def running(self) -> Job | None:
        """The job that holds the GPU now, if any."""
        with self._lock:
            return next((job for job in self._jobs if job.running), None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

"""One worker of the pool: its own `Pipelines` and `Engine`, built from the studio's settings, in a process of its
own (a Ray actor: `pool.py` wraps this plain class, so it is also usable and testable without Ray).

The worker holds the models and runs requests; the front end (the studio's process) holds none: it routes,
watches progress through `progress`, forwards Interrupt and Skip, and saves the images it gets back. The actor
runs several methods at once (Ray's `max_concurrency`): `progress`, `interrupt` and `status` answer while
`generate` runs. A `UserError` comes back as a value (`Outcome`), with its field and status intact.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..errors import UserError
from ..jobs import GenerationResult, Job
from ..params import GenerationParams, Limits


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker is built from: the studio's folders and settings, as plain values."""

    ckpt_dir: str
    vae_dir: str
    lora_dir: str
    hashes: str  # the studio's hash cache: each worker starts from a copy of its own (no two writers on one file)
    options: object  # pipelines.PipelineOptions (imports torch: not imported here at module level)
    preview_every: int = 3
    limits: Limits = field(default_factory=Limits)
    threads: int = 0  # torch threads in the worker; 0 leaves torch's choice


@dataclass
class Progress:
    """A job's progress on a worker, as the front end copies it onto its own `Job`."""

    started: float | None
    finished: float | None
    job_no: int
    sampling_step: int
    sampling_steps: int
    progress: float
    note: str | None
    preview: Image.Image | None = None  # only when newer than what the front end has (previews are big)
    preview_step: int = -1


@dataclass
class Outcome:
    result: GenerationResult | None = None
    error: tuple[str, str | None, int] | None = None  # a UserError's (message, field, status)

    def unwrap(self) -> GenerationResult:
        if self.error is not None:
            raise UserError(self.error[0], field=self.error[1], status=self.error[2])
        return self.result


class PreApplied:
    """The styles, for a worker: the front end applies them (the style files are where it runs), and sends the
    prompts with them; the names stay in the request for the infotext."""

    def apply(self, params: GenerationParams) -> GenerationParams:
        return params


def _outcome(work) -> Outcome:
    try:
        return Outcome(result=work())
    except UserError as err:
        return Outcome(error=(err.message, err.field, err.status))


class Worker:
    def __init__(self, config: WorkerConfig, number: int):
        import torch

        from ..engine import Engine
        from ..lora_library import LoraLibrary
        from ..models import CheckpointLibrary, HashCache, VaeLibrary
        from ..pipelines import Pipelines
        from ..startup import quiet_progress_bars

        if config.threads:
            torch.set_num_threads(config.threads)
        quiet_progress_bars()
        self.number = number
        self.hashes = HashCache(_own_copy(config.hashes, number))
        self.pipelines = Pipelines(CheckpointLibrary(config.ckpt_dir, self.hashes), config.options,
                                   vaes=VaeLibrary(config.vae_dir, self.hashes))
        self.engine = Engine(self.pipelines, LoraLibrary(config.lora_dir, self.hashes),
                             preview_every=config.preview_every, limits=config.limits, styles=PreApplied())
        self.jobs: dict[str, tuple[Job, str]] = {}  # job id -> (job, owner): what runs or waits here
        self._lock = threading.Lock()

    # ---- jobs ---------------------------------------------------------------------------------

    def generate(self, job_id: str, params: GenerationParams, owner: str = "") -> Outcome:
        job = Job(params, owner)
        with self._lock:
            self.jobs[job_id] = (job, owner)
        try:
            return _outcome(lambda: self.engine.generate(params, job))
        finally:
            with self._lock:
                self.jobs.pop(job_id, None)

    def progress(self, job_id: str, preview_step: int = -1) -> Progress | None:
        with self._lock:
            found = self.jobs.get(job_id)
        if found is None:
            return None
        job = found[0]
        newer = job.preview is not None and job.preview_step != preview_step
        return Progress(job.started, job.finished, job.job_no, job.sampling_step, job.sampling_steps, job.progress,
                        job.note, job.preview if newer else None, job.preview_step)

    def interrupt(self, job_id: str) -> bool:
        return self._control(job_id, Job.interrupt)

    def skip(self, job_id: str) -> bool:
        return self._control(job_id, Job.skip)

    def _control(self, job_id: str, action) -> bool:
        with self._lock:
            found = self.jobs.get(job_id)
        if found is not None:
            action(found[0])
        return found is not None

    # ---- models and settings --------------------------------------------------------------------

    def load_checkpoint(self, name: str) -> Outcome:
        def load():
            loaded = self.pipelines.load_checkpoint(name)
            return loaded.checkpoint.name, loaded.short_hash
        return _outcome(load)

    def configure(self, options) -> Outcome:
        """New pipeline options (device, precision, VAE...): a reload that fails keeps the previous ones."""
        return _outcome(lambda: self.pipelines.configure(options))

    def configure_engine(self, preview_every: int, limits: Limits) -> None:
        self.engine.configure(preview_every=preview_every, limits=limits)

    def use_folders(self, ckpt_dir: str, vae_dir: str, lora_dir: str) -> None:
        from ..lora_library import LoraLibrary
        from ..models import CheckpointLibrary, VaeLibrary

        self.pipelines.use_libraries(CheckpointLibrary(ckpt_dir, self.hashes), VaeLibrary(vae_dir, self.hashes))
        self.engine.use_libraries(LoraLibrary(lora_dir, self.hashes))

    def status(self) -> dict:
        """Where it runs, what it has loaded, what it runs: for the Settings panel and /sdapi/v1/memory."""
        base = self.pipelines.base
        with self._lock:
            running = [owner or job_id for job_id, (job, owner) in self.jobs.items() if job.running]
        return {"worker": self.number, "host": socket.gethostname(), "pid": os.getpid(),
                "device": _device_name(self.pipelines.device), "model": base.title if base else None,
                "job": running[0] if running else None, "time": time.time()}


def _own_copy(hashes: str, number: int) -> Path:
    """This worker's hash cache: a copy of the studio's (hashes known there are not computed again)."""
    shared = Path(hashes)
    own = shared.with_name(f"{shared.stem}-worker{number}{shared.suffix}")
    if shared.exists() and not own.exists():
        try:
            shutil.copyfile(shared, own)
        except OSError:
            pass  # a missing copy only costs hashing again
    return own


def _device_name(device) -> str:
    if device.type == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)

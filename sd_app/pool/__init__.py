"""A pool of GPU workers on Ray: one worker per GPU (or `--workers N` on the CPU), the studio in front.

Ray is optional (`pip install -r requirements-cluster.txt`): this module imports without it, and only
`PoolBackend.start` imports `pool.py` (and Ray). Without `--workers` / `--ray-address` nothing here runs and
Homegrown is one process, as always. `worker.py`: a worker (its own pipelines and engine); `router.py`: which
queued piece goes to which free worker; `pool.py`: the studio's side; `simulate.py`: the queueing simulation
of the bench (`python -m sd_app.bench --cases pool`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError

MAX_WORKERS = 256
INSTALL = "pip install -r requirements-cluster.txt"
ROOT = Path(__file__).resolve().parents[2]  # the folder holding sd_app: workers import it from there


def parse_workers(value: str | int | None) -> int | str:
    """`--workers`: "auto" (one per GPU) or a number from 1 to MAX_WORKERS."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text.isdigit() and 1 <= int(text) <= MAX_WORKERS:
        return int(text)
    raise UserError(f"'auto' or a number of workers from 1 to {MAX_WORKERS}, got {value!r}", field="--workers")


def ray_missing() -> str | None:
    """Why a pool cannot start here (Ray is not installed), or None."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return (f"a pool of workers needs Ray, which is not installed: {INSTALL} (Ray 2.60). Without --workers "
                "and --ray-address Homegrown runs in one process.")
    return None


class PoolBackend:
    """What `--workers` and `--ray-address` ask for; `Studio.attach_stack` calls `start` in place of making its
    own pipelines and engine."""

    def __init__(self, workers: int | str, address: str | None = None, threads: int | None = None):
        self.workers, self.address, self.threads = workers, address, threads

    def start(self, studio):
        """Connect to Ray (or start it on this machine), start the workers; returns (models, engine)."""
        import ray

        from ..studio import limits, pipeline_options, run_defaults
        from .pool import Pool
        from .worker import WorkerConfig

        if not ray.is_initialized():
            connect(self.address, self.workers)
        gpus = int(ray.cluster_resources().get("GPU", 0))
        count = self.workers
        if count == "auto":
            if not gpus:
                raise UserError("Ray finds no GPU: 'auto' starts one worker per GPU; on the CPU give a number, "
                                "e.g. --workers 2", field="--workers")
            count = gpus
        kind = "GPU" if gpus else "CPU"
        have = int(ray.cluster_resources().get(kind, 0))
        if count > have:  # a worker waits for its GPU (or CPU): the pool would wait for ever
            raise UserError(f"{count} workers need {count} {kind}s, and the Ray cluster has {have}", field="--workers")
        threads = self.threads
        if threads is None:  # CPU workers on this machine share its cores; a GPU worker needs few
            threads = 0 if gpus else max(1, (os.cpu_count() or 1) // count)
        settings = studio.settings
        config = WorkerConfig(str(settings.folder("ckpt")), str(settings.folder("vae")), str(settings.folder("lora")),
                              str(studio.checkpoint_library.hashes.path or ""), pipeline_options(settings),
                              settings.get("preview_every"), limits(settings), threads)
        resources = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}
        pool = Pool(count, config, studio.checkpoint_library, studio.vae_library, studio.styles, resources,
                    defaults=run_defaults(settings))
        return pool.models, pool


def connect(address: str | None, workers: int | str) -> None:
    """Join the Ray cluster at `address`, or start one on this machine with room for the workers."""
    import ray

    if address:
        # The cluster's machines get this code (not the models: those live on shared storage, docs/scaling.md).
        ray.init(address=address, log_to_driver=False, runtime_env={
            "working_dir": str(ROOT), "excludes": [".git", ".venv", "data", "outputs", "models", "tests"]})
        return
    cpus = max(os.cpu_count() or 1, workers if isinstance(workers, int) else 1)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})


def backend(workers: str | None, address: str | None) -> PoolBackend | None:
    """The pool asked for by the flags, or None (one process); a clear message when Ray is missing."""
    if not workers and not address:
        return None
    count = parse_workers(workers or "auto")
    missing = ray_missing()
    if missing:
        raise UserError(missing, field="--workers" if workers else "--ray-address")
    return PoolBackend(count, address)

"""The front end's side of the pool: what the studio uses instead of its own engine and pipelines.

`Pool` has the engine's shape (`generate(params, job) -> GenerationResult`, `configure`, `use_libraries`,
`styles`) and `Pool.models` the shape of `Pipelines` that the studio reads (`base`, `load_checkpoint`,
`configure`, `use_libraries`), so the studio, the page and the API run unchanged on it; this process holds no
model. A request's batches (`n_iter`) are split across free workers by whole batches, with the seeds they would
have had on one worker (the image seeds are seed + index), and put back in order: the same pixels as one
worker (batching differently could change them by 1/255 on the CPU, so a batch is never cut).

Workers are plain Ray actors, not Ray Serve replicas: the pool needs a stateful worker per GPU that it
addresses by name (affinity, progress and interrupt of one job, a checkpoint switch on each), which is what
an actor is; Serve adds an HTTP proxy and a controller (about 90 s to two ready replicas on 2 cores) and routes
requests itself.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from ..errors import UserError
from ..jobs import GenerationResult, Job
from ..models import Checkpoint
from ..params import GenerationParams, RunDefaults
from .router import Free, Router, Setup, Waiting
from .worker import Outcome, Progress, Worker, WorkerConfig

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # progress and interrupt reach a worker's job within this
CALL_SECONDS = 30.0  # a status or progress call that takes longer: the worker is taken as gone
MAX_CONCURRENCY = 4  # one generate, plus progress / interrupt / status calls beside it


@dataclass
class WorkerStatus:
    """One worker as the Settings panel and /sdapi/v1/memory show it."""

    number: int
    state: str  # "ready", "busy", "starting", "restarting", or "failed: why"
    device: str | None = None
    host: str | None = None
    model: str | None = None
    job: str | None = None
    restarts: int = 0


@dataclass(eq=False)
class Slot:
    """One place in the pool: its actor (replaced when it dies), what it has loaded and what it runs."""

    number: int
    actor: object = None
    setup: Setup | None = None
    piece: "Piece | None" = None
    starting: bool = True
    problem: str | None = None  # why it takes no work (a checkpoint or settings it could not load)
    restarts: int = 0
    status: dict = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.actor is not None and not self.starting and self.problem is None


@dataclass(eq=False)
class Piece:
    """Whole batches of one request, for one worker."""

    params: GenerationParams
    setup: Setup
    user: str
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    slot: Slot | None = None
    progress: Progress | None = None
    preview_step: int = -1
    skips_sent: int = 0


@dataclass(frozen=True)
class LoadedInfo:
    """The base checkpoint the workers have loaded, as the studio reads `Pipelines.base`."""

    checkpoint: Checkpoint
    short_hash: str


class Pool:
    def __init__(self, count: int, config: WorkerConfig, checkpoints, vaes, styles=None,
                 resources: dict | None = None, router: Router | None = None, defaults: RunDefaults | None = None):
        self.config = config  # the latest: new and restarted workers are built from it
        self.defaults = defaults or RunDefaults()  # the noise source and such, unless a request says
        self.styles = styles
        self.models = PoolModels(self, checkpoints, vaes)
        self.router = router or Router()
        self.current: LoadedInfo | None = None  # the checkpoint a request without one runs on
        self._remote = ray.remote(Worker).options(max_concurrency=MAX_CONCURRENCY, **(resources or {"num_cpus": 1}))
        self._cond = threading.Condition()
        self._waiting: list[Waiting] = []
        self._arrivals = itertools.count()
        self._skips: dict[int, int] = {}  # id(job) -> skips asked for, forwarded to each of its pieces
        self.slots = [Slot(number) for number in range(count)]
        for slot in self.slots:
            slot.actor = self._remote.remote(self.config, slot.number)
        for slot in self.slots:
            self._ready(slot)

    @property
    def limits(self):
        return self.config.limits

    # ---- the engine's shape -----------------------------------------------------------------

    def generate(self, params: GenerationParams, job: Job | None = None) -> GenerationResult:
        """Run one request on the pool: its batches on free workers, back in order as one result."""
        params.check(self.limits)
        if params.styles:
            if self.styles is None:
                raise UserError("this Homegrown has no styles", field="styles")
            params = self.styles.apply(params).check(self.limits)
        params = params.with_defaults(self.defaults)
        job = job or Job(params)
        job.params, job.job_count = params, params.n_iter
        checkpoint = params.checkpoint or (self.current.checkpoint.name if self.current else None)
        if checkpoint is None:
            raise UserError("no checkpoint is loaded; choose one", field="checkpoint", status=503)
        pieces = self._split(params, checkpoint, job.owner)
        watch = _Watch(job, pieces)
        try:
            with ThreadPoolExecutor(len(pieces), thread_name_prefix="pool-piece") as threads:
                futures = [threads.submit(self._run_piece, piece, watch) for piece in pieces]
                outcomes = []
                for future in futures:
                    try:
                        outcomes.append(future.result())
                    except UserError as err:
                        watch.failed = True  # the other pieces stop at their next step: the request failed
                        outcomes.append(err)
            for outcome in outcomes:
                if isinstance(outcome, UserError):
                    raise outcome
            return _assemble(params, [o for o in outcomes if o is not None], job)
        finally:
            job.finished = time.time()

    def run_cells(self, cells: list, job: Job, done: dict, warnings: list[str], run) -> UserError | None:
        """An X/Y/Z plot's cells at once, one per worker as they free up (`run(cell, part_job)` generates and saves
        one through the studio), into `done` by cell index; the plot's job shows their progress together.
        Returns the first cell's UserError (its message is also among the warnings), or None."""
        parts: dict[int, Job] = {}

        def one(cell):
            if job.interrupted:
                return None
            parts[cell.index] = part = job.part(cell.params)
            try:
                done[cell.index] = run(cell, part)
            except UserError as err:
                return err
            return None

        with ThreadPoolExecutor(max(1, min(len(cells), len(self.slots))), thread_name_prefix="pool-cell") as threads:
            futures = [threads.submit(one, cell) for cell in cells]
            while not all(future.done() for future in futures):
                _show_cells(job, list(parts.values()), len(done), len(cells))
                time.sleep(POLL_SECONDS)
        first_error = None
        for cell, future in zip(cells, futures):
            err = future.result()
            if err is not None:
                first_error = first_error or err
                warnings.append(f"{cell.label}: {err}")
                log.warning("X/Y/Z plot cell %s failed: %s", cell.label, err)
        return first_error

    def configure(self, preview_every: int, limits=None, defaults: RunDefaults | None = None) -> None:
        self.defaults = defaults or self.defaults
        self.config = dataclasses.replace(self.config, preview_every=preview_every, limits=limits or self.limits)
        self._on_all(lambda actor: actor.configure_engine.remote(preview_every, self.limits))

    def use_libraries(self, loras) -> None:
        """New folders from Settings (the checkpoint and VAE libraries came first, through `models`)."""
        folders = dict(ckpt_dir=str(self.models.checkpoints.folder), vae_dir=str(self.models.vaes.folder),
                       lora_dir=str(loras.folder))
        self.config = dataclasses.replace(self.config, **folders)
        self._on_all(lambda actor: actor.use_folders.remote(**folders))

    # ---- status -------------------------------------------------------------------------------

    def workers(self) -> list[WorkerStatus]:
        refs = {slot.number: slot.actor.status.remote() for slot in self.slots if slot.actor and not slot.starting}
        shown = []
        for slot in self.slots:
            status = slot.status
            if slot.number in refs:
                try:
                    status = slot.status = ray.get(refs[slot.number], timeout=CALL_SECONDS)
                except (RayActorError, GetTimeoutError):
                    pass  # its job's own call finds out and replaces it
            state = ("restarting" if slot.restarts else "starting") if slot.starting else (
                f"failed: {slot.problem}" if slot.problem else "busy" if slot.piece else "ready")
            shown.append(WorkerStatus(slot.number, state, status.get("device"), status.get("host"),
                                      status.get("model"), status.get("job") if slot.piece else None, slot.restarts))
        return shown

    # ---- pieces: routing, following, faults --------------------------------------------------

    def _split(self, params: GenerationParams, checkpoint: str, user: str) -> list[Piece]:
        """Whole batches per piece, as many pieces as workers can take them, each with its first image's seed."""
        usable = sum(1 for slot in self.slots if slot.usable) or 1
        count = min(params.n_iter, usable)
        setup = Setup.of(params.prompt, checkpoint)
        pieces, first = [], 0
        for number in range(count):
            batches = params.n_iter // count + (number < params.n_iter % count)
            offset = first * params.batch_size  # image i's seeds are seed + i and subseed + i, wherever it runs
            part = params.replace(n_iter=batches, seed=params.seed + offset, subseed=params.subseed + offset,
                                  checkpoint=checkpoint)
            pieces.append(Piece(part, setup, user))
            first += batches
        return pieces

    def _run_piece(self, piece: Piece, watch: "_Watch") -> GenerationResult | None:
        """Run a piece on the worker the router gives it; a worker that dies under it is replaced and the piece
        runs once more (on whichever worker is free first); a second death fails the request."""
        for attempt in (1, 2):
            slot = self._acquire(piece, watch)
            if slot is None:
                return None  # interrupted while it waited: nothing ran
            try:
                outcome = self._follow(slot, piece, watch)
            except RayActorError as err:
                self._lost(slot, err)
                if attempt == 2 or watch.stopped:
                    raise UserError(f"worker {slot.number} stopped while running this request (its process "
                                    "died); it is being restarted. Nothing of this request was saved; "
                                    "generate again.", status=503) from None
                piece.slot, piece.progress = None, None
                continue
            self._release(slot, piece.setup)
            return outcome.unwrap()

    def _acquire(self, piece: Piece, watch: "_Watch") -> Slot | None:
        with self._cond:
            self._waiting.append(Waiting(piece.user, piece.setup, next(self._arrivals), payload=piece))
            self._route()
            while piece.slot is None:
                if watch.stopped or not any(slot.actor is not None for slot in self.slots):
                    self._waiting = [w for w in self._waiting if w.payload is not piece]
                    if watch.stopped:
                        return None
                    raise UserError("no worker of the pool can run jobs now", status=503)
                self._cond.wait(POLL_SECONDS)
            return piece.slot

    def _route(self) -> None:
        """Start what can start (called with the lock held, whenever a piece arrives or a worker frees up)."""
        free = [Free(slot.number, slot.setup, slot) for slot in self.slots if slot.usable and slot.piece is None]
        if not free or not self._waiting:
            return
        running: dict[str, int] = {}
        for slot in self.slots:
            if slot.piece is not None:
                running[slot.piece.user] = running.get(slot.piece.user, 0) + 1
        for waiting, worker in self.router.assign(self._waiting, free, running):
            worker.payload.piece, waiting.payload.slot = waiting.payload, worker.payload
            self._waiting.remove(waiting)
        self._cond.notify_all()

    def _release(self, slot: Slot, setup: Setup) -> None:
        with self._cond:
            slot.piece, slot.setup = None, setup
            self._route()

    def _follow(self, slot: Slot, piece: Piece, watch: "_Watch") -> Outcome:
        """Wait for the piece on its worker, copying its progress to the job and forwarding Interrupt and Skip."""
        actor, job = slot.actor, watch.job
        ref = actor.generate.remote(piece.job_id, piece.params, job.owner)
        interrupted = False
        while True:
            ready, _ = ray.wait([ref], timeout=POLL_SECONDS)
            if ready:
                return ray.get(ref)
            if watch.stopped and not interrupted:
                actor.interrupt.remote(piece.job_id)
                interrupted = True
            if watch.skips_for(piece):
                actor.skip.remote(piece.job_id)
            try:
                progress = ray.get(actor.progress.remote(piece.job_id, piece.preview_step), timeout=CALL_SECONDS)
            except GetTimeoutError:
                continue
            if progress is not None:
                watch.update(piece, progress)

    def _lost(self, slot: Slot, err: Exception) -> None:
        """A worker died: take it out, and start its replacement in the background (the queue goes on)."""
        with self._cond:
            if slot.starting:
                return  # another piece's thread found out first
            log.warning("pool worker %d died (%s); starting a new one", slot.number, type(err).__name__)
            slot.piece, slot.setup, slot.starting, slot.problem = None, None, True, None
            slot.restarts += 1
            slot.actor = self._remote.remote(self.config, slot.number)
        threading.Thread(target=self._ready, args=(slot,), daemon=True, name=f"pool-restart-{slot.number}").start()

    def _ready(self, slot: Slot) -> None:
        """Wait for a new worker and load the pool's checkpoint on it; then it takes work."""
        problem = None
        try:
            slot.status = ray.get(slot.actor.status.remote())
            if self.current is not None:
                loaded = ray.get(slot.actor.load_checkpoint.remote(self.current.checkpoint.name))
                if loaded.error:
                    problem = f"could not load {self.current.checkpoint.name}: {loaded.error[0]}"
                else:
                    slot.setup = Setup(self.current.checkpoint.name)
        except RayActorError as err:
            problem = f"could not start ({err.__class__.__name__})"
            log.warning("pool worker %d could not start: %s", slot.number, err)
        with self._cond:
            slot.starting, slot.problem = False, problem
            self._route()

    # ---- every worker at once -------------------------------------------------------------------

    def _on_all(self, call) -> dict[Slot, object]:
        """`call(actor)` on each worker in parallel; slot -> its answer, or the RayActorError of a dead one."""
        calls = {slot: call(slot.actor) for slot in self.slots if slot.actor is not None and not slot.starting}
        answers = {}
        for slot, ref in calls.items():
            try:
                answers[slot] = ray.get(ref)
            except RayActorError as err:
                self._lost(slot, err)
                answers[slot] = err
        return answers

    def on_every_worker(self, call, what: str) -> list:
        """Apply a change (a checkpoint, settings) to every worker: the answers of those that took it. Those that
        could not are out of work with the reason until the next change they take; when none can, the first
        error is raised and every worker keeps what it had."""
        answers = self._on_all(call)
        taken = {slot: answer for slot, answer in answers.items() if isinstance(answer, Outcome) and not answer.error}
        refused = [(slot, answer) for slot, answer in answers.items() if slot not in taken]
        if not taken:
            errors = [answer for _, answer in refused if isinstance(answer, Outcome)]
            if errors:
                errors[0].unwrap()
            raise UserError("no worker of the pool is running", status=503)
        with self._cond:
            for slot in taken:
                slot.problem = None
            for slot, answer in refused:
                if isinstance(answer, Outcome):
                    slot.problem = f"{what}: {answer.error[0]}"
                    log.warning("pool worker %d %s: %s", slot.number, what, answer.error[0])
            self._route()
        return [answer.result for answer in taken.values()]


    def loaded(self, current: LoadedInfo) -> LoadedInfo:
        """Every worker that took the change has `current` loaded, with no LoRA applied."""
        with self._cond:
            for slot in self.slots:
                if slot.usable:
                    slot.setup = Setup(current.checkpoint.name)
            self.current = current
        return current


class PoolModels:
    """The pipelines' side, as the studio uses it: the checkpoint every worker has, loading and settings."""

    def __init__(self, pool: Pool, checkpoints, vaes):
        self.pool, self.checkpoints, self.vaes = pool, checkpoints, vaes

    @property
    def base(self) -> LoadedInfo | None:
        return self.pool.current

    def load_checkpoint(self, name: str) -> LoadedInfo:
        checkpoint = self.checkpoints.get(name)  # an unknown name is refused here, as by the pipelines
        results = self.pool.on_every_worker(lambda actor: actor.load_checkpoint.remote(checkpoint.name),
                                            f"could not load {checkpoint.name}")
        return self.pool.loaded(LoadedInfo(checkpoint, results[0][1]))

    def configure(self, options) -> str:
        messages = self.pool.on_every_worker(lambda actor: actor.configure.remote(options),
                                             "could not apply the settings")
        self.pool.config = dataclasses.replace(self.pool.config, options=options)
        failed = [slot.number for slot in self.pool.slots if slot.problem]
        return messages[0] + (f" Workers {failed} could not apply them: see Settings → Workers." if failed else "")

    def use_libraries(self, checkpoints, vaes) -> None:
        self.checkpoints, self.vaes = checkpoints, vaes


class _Watch:
    """One request's pieces, seen as one job: the studio's `Job` shows their progress together."""

    def __init__(self, job: Job, pieces: list[Piece]):
        self.job, self.pieces = job, pieces
        self.total = sum(piece.params.n_iter for piece in pieces)
        self.failed = False  # a piece failed: the others stop (the request fails as a whole)
        self._skips_seen = 0
        self._lock = threading.Lock()

    @property
    def stopped(self) -> bool:
        return self.job.interrupted or self.failed

    def skips_for(self, piece: Piece) -> bool:
        """Whether Skip was pressed since this piece last forwarded it (a skip ends each piece's current batch)."""
        with self._lock:
            if self.job.skipped:
                self.job.clear_skip()
                self._skips_seen += 1
            if piece.skips_sent < self._skips_seen:
                piece.skips_sent = self._skips_seen
                return True
            return False

    def update(self, piece: Piece, progress: Progress) -> None:
        with self._lock:
            piece.progress = progress
            job = self.job
            if progress.started and not job.started:
                job.started = progress.started
            if progress.preview is not None:
                piece.preview_step = progress.preview_step
                job.preview, job.preview_step = progress.preview, progress.preview_step
            done = sum(p.params.n_iter * p.progress.progress for p in self.pieces if p.progress)
            lead = next((p.progress for p in self.pieces if p.progress and p.progress.progress < 1), progress)
            job.job_no = min(self.total - 1, int(done))
            job.sampling_step, job.sampling_steps, job.note = lead.sampling_step, lead.sampling_steps, lead.note
            job.set_progress(done / self.total)


def _show_cells(job: Job, parts: list[Job], finished: int, total: int) -> None:
    """A plot's progress from its cells running at once: cells done plus the running ones' share; the steps and
    preview of the first running cell."""
    running = [part for part in parts if part.running]
    started = [part.started for part in parts if part.started]
    if started and not job.started:
        job.started = min(started)
    if running:
        lead = running[0]
        job.sampling_step, job.sampling_steps, job.note = lead.sampling_step, lead.sampling_steps, lead.note
        newest = max((part for part in parts if part.preview is not None), key=lambda p: p.preview_step, default=None)
        if newest is not None:
            job.preview, job.preview_step = newest.preview, newest.preview_step
    job.part_no = min(finished, total - 1)
    job.progress = min(1.0, (finished + sum(part.progress for part in running)) / total)


def _assemble(params: GenerationParams, results: list[GenerationResult], job: Job) -> GenerationResult:
    """The pieces' results as one, in batch order, as one worker would have returned it."""
    if not results:  # interrupted before any piece ran
        return GenerationResult([], [], [], params, interrupted=True)
    first = results[0]
    whole = dataclasses.replace(first, images=[], infotexts=[], seeds=[], params=params, warnings=[], timings={},
                                paths=[], interrupted=job.interrupted or any(r.interrupted for r in results))
    for result in results:
        whole.images += result.images
        whole.infotexts += result.infotexts
        whole.seeds += result.seeds
        whole.warnings += [w for w in result.warnings if w not in whole.warnings]
        for phase, seconds in result.timings.items():
            whole.timings[phase] = whole.timings.get(phase, 0.0) + seconds
    return whole

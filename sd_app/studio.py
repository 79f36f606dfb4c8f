"""The one seam between the front ends (the page, the API, the notebook) and the core.

`app.py` builds one `Studio` and hands it to the page and the API. They submit jobs, find and stop them,
read progress, list and load models and apply settings here, with plain dataclasses; neither reads the
engine's or the pipelines' insides. Nothing here knows Gradio or HTTP.

The model stack (torch, diffusers: seconds to import) is attached by `attach_stack`, which `create` calls
unless told not to: app.py serves the page first and attaches it in the background. Until then the studio
lists folders and presets, and says the model is loading when asked to generate.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import downloads, xyz
from .auth import Credentials
from .errors import UserError
from .history import History
from .embedding_library import EmbeddingLibrary
from .jobs import GenerationResult, Job, JobBoard
from .kept_options import KeptOptions
from .lora_library import LoraLibrary
from .models import AUTOMATIC_VAE, CheckpointLibrary, HashCache, VaeLibrary
from .outputs import OutputOptions, OutputWriter
from .params import GenerationParams, Limits, RunDefaults
from .presets import PresetLibrary
from .settings import SettingsStore
from .styles import StyleLibrary
from .studio_extras import API_OWNER, StudioExtras
from .studio_library import StudioLibrary

if TYPE_CHECKING:  # these import torch and diffusers: `attach_stack` imports them
    from .engine import Engine
    from .pipelines import PipelineOptions, Pipelines

log = logging.getLogger(__name__)


class Studio(StudioLibrary, StudioExtras):
    def __init__(self, settings: SettingsStore, pipelines: Pipelines | None, engine: Engine | None,
                 outputs: OutputWriter, loras: LoraLibrary, presets: PresetLibrary,
                 credentials: Credentials | None = None, offline: bool = False, demo: bool = False,
                 start_preset: str | None = None, styles: StyleLibrary | None = None,
                 checkpoint_library: CheckpointLibrary | None = None, vae_library: VaeLibrary | None = None,
                 kept_options: KeptOptions | None = None):
        self.settings = settings
        self.pipelines = pipelines  # None until `attach_stack`
        self.engine = engine
        # The folders' libraries, there before the stack is: the page lists checkpoints while it imports.
        self.checkpoint_library = pipelines.checkpoints if checkpoint_library is None else checkpoint_library
        self.vae_library = pipelines.vaes if vae_library is None else vae_library
        self.outputs = outputs
        self.loras = loras
        self.presets = presets
        self.styles = styles or (engine.styles if engine is not None else None) or StyleLibrary()
        if engine is not None:
            engine.styles = self.styles  # one library: the styles the page lists are the ones the engine applies
        self.credentials = credentials or Credentials()
        self.offline = offline
        self.demo = demo
        self.start_preset = start_preset
        self.backend = None  # a pool of workers (sd_app.pool.PoolBackend) to run on, in place of a local engine
        self.jobs = JobBoard()  # every job in flight, from the page and the API alike
        self.kept_options = kept_options or KeptOptions()  # other programs' options clients store (A1111's)
        self._tokenizer = None
        self._history: History | None = None
        self.training = None  # the LoRA training run (training.progress.TrainingRun), the last one if it ended
        self._lock = threading.Lock()
        self.embedding_library = EmbeddingLibrary(settings.folder("embeddings"),
                                                  self.checkpoint_library.hashes)
        if engine is not None:
            engine.embeddings = self.embedding_library

    @classmethod
    def create(cls, settings: SettingsStore, data_dir: str | Path, presets: PresetLibrary,
               credentials: Credentials | None = None, offline: bool = False, demo: bool = False,
               styles: StyleLibrary | None = None, stack: bool = True) -> "Studio":
        """The studio on the settings' folders; with stack=False the model stack is left for `attach_stack`."""
        hashes = HashCache(Path(data_dir) / "hashes.json")
        studio = cls(settings, None, None, OutputWriter(output_options(settings)),
                     LoraLibrary(settings.folder("lora"), hashes), presets, credentials, offline, demo,
                     styles=styles or StyleLibrary(),
                     checkpoint_library=CheckpointLibrary(settings.folder("ckpt"), hashes),
                     vae_library=VaeLibrary(settings.folder("vae"), hashes),
                     # beside the settings file: --demo's stay in its own folder, as its settings do
                     kept_options=KeptOptions(settings.path.with_name("a1111-options.json") if settings.path else None))
        if stack:
            studio.attach_stack()
        return studio

    def attach_stack(self) -> None:
        """Import the model stack and make the pipelines and the engine (no checkpoint is loaded yet)."""
        if self.backend is not None:  # the pool's workers hold the models; they have the same shape here
            self.pipelines, self.engine = self.backend.start(self)
            return
        from .engine import Engine
        from .pipelines import Pipelines

        pipelines = Pipelines(self.checkpoint_library, pipeline_options(self.settings), vaes=self.vae_library)
        self.engine = Engine(pipelines, self.loras, preview_every=self.settings.get("preview_every"),
                             limits=self.limits(), styles=self.styles,
                             defaults=run_defaults(self.settings))
        self.engine.embeddings = self.embedding_library
        self.pipelines = pipelines
        self.engine.use_libraries(self.loras, self.upscalers())  # model upscalers for the hires pass

    def _stack(self) -> Pipelines:
        """The pipelines, or a 503 while the model stack is still importing at start."""
        if self.pipelines is None or self.engine is None:
            raise UserError("Homegrown is still loading the model; try again in a few seconds", status=503)
        return self.pipelines

    # ---- jobs ---------------------------------------------------------------------------------

    def generate(self, params: GenerationParams, owner: str = API_OWNER, job: Job | None = None,
                 save: bool | None = None, output_format: str | None = None) -> GenerationResult:
        """Run a request as `owner`'s job and save its images (unless `save` says not to). The job is on the
        board while it waits and runs, and off it when it ends, whatever way it ends."""
        self._stack()
        job = job or Job(params, owner)
        job.owner = owner
        self.jobs.add(job)
        try:
            result = self.engine.generate(params, job)
            if self.outputs.options.save_images if save is None else save:
                mark = time.perf_counter()
                self.outputs.save(result, output_format)
                result.timings["save"] = time.perf_counter() - mark
            return result
        finally:
            self.jobs.remove(job)

    def start(self, params: GenerationParams, owner: str, save: bool | None = None,
              output_format: str | None = None) -> Job:
        """`generate` in a thread of its own, for a front end that waits on the job (the page, the API): the
        job ends with its result, or with a message for the user (and the exception, as `job.cause`). A
        request over the limits is refused here, at once, before any thread or queue."""
        params.check(self.limits(), self.upscaler_names())
        job = Job(params, owner)
        return self._in_thread(job, lambda: self.generate(params, owner, job, save, output_format))

    def img2img(self, params: GenerationParams, images, mask=None, owner: str = API_OWNER, save: bool | None = None,
                output_format: str | None = None, **options) -> Job:
        """img2img (no mask) or inpainting, started as `start` does: `images` one init image or one per image of
        the batch, `options` the Img2ImgParams fields (denoising_strength, resize_mode, mask_blur_x...)."""
        from .img2img import Img2ImgParams

        images = tuple(images) if isinstance(images, (list, tuple)) else (images,)
        spec = (params.img2img or Img2ImgParams()).replace(init_images=images, mask=mask, **options)
        return self.start(params.replace(img2img=spec, hires=None), owner, save, output_format)

    def start_sd_upscale(self, params: GenerationParams, script, owner: str, save: bool | None = None,
                         output_format: str | None = None) -> Job:
        """A1111's "SD upscale" img2img script (`sd_upscale.SdUpscale`) as one job in a thread."""
        from . import sd_upscale

        params.check(self.limits())
        self._stack()
        job = Job(params, owner)
        return self._in_thread(job, lambda: sd_upscale.run(self, params, script, owner, job, save, output_format))

    def generate_grid(self, plan: xyz.GridPlan, owner: str = API_OWNER, job: Job | None = None,
                      save: bool | None = None, output_format: str | None = None) -> xyz.GridResult:
        """Run an X/Y/Z plot as ONE job: each cell through `generate` (so saving, progress and interrupt work as
        for any image), the progress spanning all cells; Interrupt stops the plot, Skip ends the current cell.
        A cell that fails with a UserError leaves a blank slot and a warning. The checkpoint loaded before is
        loaded back at the end. The grid is saved in `txt2img-grids/` when the images are saved."""
        job = job or Job(plan.base, owner)
        job.owner, job.part_count = owner, len(plan.cells)
        previous = self.current_checkpoint()
        done, warnings, first_error = {}, list(plan.warnings), None
        self.jobs.add(job)  # on the board between cells too: each `generate` adds and removes its own entry
        run_cells = getattr(self.engine, "run_cells", None)  # a pool of workers runs several cells at once
        try:
            if run_cells is not None:
                first_error = run_cells(_fewest_loads(plan.cells, previous), job, done, warnings, lambda cell, part:
                                        self.generate(cell.params, owner, part, save, output_format))
            else:
                for number, cell in enumerate(_fewest_loads(plan.cells, previous)):
                    if job.interrupted:
                        break
                    job.sampling_step, job.finished, job.part_no = 0, None, number  # the step count is the cell's
                    try:
                        done[cell.index] = self.generate(cell.params, owner, job, save, output_format)
                    except UserError as err:
                        first_error = first_error or err
                        warnings.append(f"{cell.label}: {err}")
                        log.warning("X/Y/Z plot cell %s failed: %s", cell.label, err)
        finally:
            if previous and self.current_checkpoint() != previous:
                self._load_back(previous, warnings)
            job.finished = time.time()
            self.jobs.remove(job)
        if first_error is not None and not any(result.images for result in done.values()) and not job.interrupted:
            raise first_error
        for result in done.values():
            warnings += [w for w in result.warnings if w not in warnings]
        grid = xyz.assemble(plan, done, interrupted=job.interrupted, warnings=warnings)
        if self.outputs.options.save_images if save is None else save:
            grid.path = self.outputs.save_grid(grid.grid, grid.infotext, output_format)
        return grid

    def start_grid(self, plan: xyz.GridPlan, owner: str) -> Job:
        """`generate_grid` in a thread: the job ends with one result, the grid first, then the single images."""
        job = Job(plan.base, owner)
        return self._in_thread(job, lambda: self.generate_grid(plan, owner, job).as_result())

    def _in_thread(self, job: Job, work) -> Job:
        def run():
            try:
                job.end(result=work())
            except UserError as err:
                job.end(error=str(err), cause=err)
            except Exception as err:  # never a dead page: say what broke, keep the traceback in the log
                log.exception("generation failed")
                job.end(error=f"generation failed: {type(err).__name__}: {err}", cause=err)

        threading.Thread(target=run, daemon=True, name=f"job-{job.owner}").start()
        return job

    def _load_back(self, name: str, warnings: list[str]) -> None:
        try:
            self.load_checkpoint(name)
        except UserError as err:
            warnings.append(f"could not load {name} back after the plot: {err}")

    def limits(self) -> Limits:
        """What one request may ask for (Settings → Limits)."""
        return limits(self.settings)

    def job_of(self, owner: str) -> Job | None:
        return self.jobs.of(owner)

    def running_job(self) -> Job | None:
        """The job on the GPU now, whoever started it (A1111's progress reports that one)."""
        return self.jobs.running()

    def interrupt(self, owner: str | None = None) -> bool:
        """Stop `owner`'s job after the current step; without an owner, the running one (A1111's API)."""
        job = self.running_job() if owner is None else self.job_of(owner)
        if job is not None:
            job.interrupt()
        return job is not None

    def skip(self, owner: str | None = None) -> bool:
        job = self.running_job() if owner is None else self.job_of(owner)
        if job is not None:
            job.skip()
        return job is not None

    def workers(self) -> list:
        """The pool's workers (device, loaded model, current job, state); empty when this process runs alone."""
        return self.engine.workers() if self.backend is not None and self.engine is not None else []

    def queue_position(self, job: Job) -> int:
        """How many jobs will hold the GPU before this queued one can (0 once it runs)."""
        return self.jobs.ahead_of(job)

    # ---- training -------------------------------------------------------------------------------

    def start_training(self, config, owner: str = API_OWNER):
        """Train a LoRA (`training.config.TrainConfig`) in a thread of its own, in the GPU queue: the run holds
        the GPU one step at a time and lets waiting generation jobs go first. One run at a time. The LoRA is
        written into the LoRA folder (listed at once), its settings beside it as `<name>.train.json`."""
        from .training.progress import TrainingRun
        from .training.run import train

        self._stack()
        with self._lock:
            if self.training is not None and not self.training.done:
                raise UserError(f"a LoRA is training already ({self.training.config.output_name}): stop it first",
                                field="output_name", status=409)
            config.output_dir = config.output_dir or str(self.settings.folder("lora"))
            config.check()
            run = TrainingRun(config, owner)
            self.training = run

        def work():
            try:
                train(config, run, self.checkpoint_library, self.checkpoint_library.hashes, self.pipelines.lock,
                      others_waiting=self.jobs.waiting)
            except Exception:  # noqa: BLE001 - recorded in the run (the page shows it), logged by train()
                pass

        threading.Thread(target=work, daemon=True, name=f"training-{owner}").start()
        return run

    # ---- checkpoints ------------------------------------------------------------------------

    def load_checkpoint(self, name: str) -> str:
        """Load `name` as the base checkpoint (the previous one stays if it fails); returns its name."""
        return self._stack().load_checkpoint(name).checkpoint.name

    def load_startup_checkpoint(self, wanted: str | None = None) -> str | None:
        """Load the checkpoint asked for (flag or setting), else the first SDXL base found; None if there is none."""
        wanted = wanted or self.settings.get("default_checkpoint") or None
        if wanted:
            return self.load_checkpoint(wanted)
        bases = self.checkpoint_names("sdxl-base")
        if not bases:
            return None
        return self.load_checkpoint(bases[0])

    # ---- settings ---------------------------------------------------------------------------

    def apply_settings(self, changes: dict) -> str:
        pipelines = self._stack()  # options apply to the pipelines: none are saved before they exist
        vae = changes.get("vae")
        if vae not in AUTOMATIC_VAE:
            self.vae_library.get(vae)  # an unknown VAE is refused before anything is saved
        before = self.settings.all()
        changed = self.settings.update(changes)
        if not changed:
            return "Nothing changed."
        if any(name.endswith("_dir") for name in changed):
            hashes = self.checkpoint_library.hashes
            self.loras = LoraLibrary(self.settings.folder("lora"), hashes)
            self.checkpoint_library = CheckpointLibrary(self.settings.folder("ckpt"), hashes)
            self.vae_library = VaeLibrary(self.settings.folder("vae"), hashes)
            self.embedding_library = EmbeddingLibrary(self.settings.folder("embeddings"), hashes)
            pipelines.use_libraries(self.checkpoint_library, self.vae_library)
            self.engine.use_libraries(self.loras)
            self.engine.embeddings = self.embedding_library
        try:
            message = pipelines.configure(pipeline_options(self.settings))
        except UserError:
            self.settings.update({name: before[name] for name in changed})  # keep the file matching what runs
            raise
        self.engine.configure(preview_every=self.settings.get("preview_every"), limits=self.limits(),
                              defaults=run_defaults(self.settings))
        self.engine.use_libraries(self.loras, self.upscalers())  # the upscaler folder / device may have moved
        self.outputs.configure(output_options(self.settings))
        return message

    # ---- saved images ---------------------------------------------------------------------------

    def history(self) -> History:
        """The images in the outputs folder in use now (a new browser when Settings move the folder): listing,
        search, thumbnails, and delete into the trash folder with undo."""
        folder = Path(self.outputs.options.outputs_dir)
        with self._lock:
            if self._history is None or self._history.folder != folder:
                self._history = History(folder)
            return self._history

    # ---- downloads ----------------------------------------------------------------------------

    def download(self, what: str, repo_id: str, filename: str, revision: str | None = None,
                 overwrite: bool = False, progress=None) -> Path:
        if self.offline:
            raise UserError("Homegrown runs with --offline: downloads are switched off", status=403)
        folder = {"lora": self.settings.folder("lora"), "checkpoint": self.settings.folder("ckpt")}[what]
        return downloads.download(repo_id, filename, folder, revision, overwrite, progress)


def _fewest_loads(cells, loaded: str | None) -> list:
    """The plan's cells with those on the loaded checkpoint first: one load fewer, and one fewer to load back."""
    return sorted(cells, key=lambda cell: cell.params.checkpoint not in (None, loaded))


def _from_settings(options_class, settings: SettingsStore, **converters):
    """An options dataclass filled from the settings of the same names (the settings table owns the values)."""
    values = {}
    for f in dataclasses.fields(options_class):
        value = settings.get(f.name)
        values[f.name] = converters[f.name](value) if f.name in converters else value
    return options_class(**values)


def pipeline_options(settings: SettingsStore) -> PipelineOptions:
    from .pipelines import PipelineOptions

    return _from_settings(PipelineOptions, settings)


def output_options(settings: SettingsStore) -> OutputOptions:
    return _from_settings(OutputOptions, settings, outputs_dir=Path)


def run_defaults(settings: SettingsStore) -> RunDefaults:
    """What a request leaves to the settings (the noise source, the hires fix's refiner pass)."""
    return RunDefaults(settings.get("randn_source"), settings.get("hires_fix_refiner_pass"))


def limits(settings: SettingsStore) -> Limits:
    return _from_settings(Limits, settings)

"""The loaded pipelines: device, precision, memory mode, fast path, and loading / freeing base, refiner and VAE.

The model manager, apart from the denoise step (`engine.py`), as in InvokeAI. One SDXL at a time: a new
base checkpoint frees the old one first, and if it fails to load the previous one comes back. The lock
here is the GPU's: a generation and a model change never overlap.
"""

from __future__ import annotations

import dataclasses
import gc
import threading
from dataclasses import dataclass, field

import torch

from . import fastpath
from .checkpoint_traits import Prediction, prediction_of
from .encoding import SYNTAXES, PromptEncoder
from .errors import UserError
from .loading import CheckpointWeights, check_kind, load_base, load_refiner, load_vae
from .lora_patch import LoraSet, WeightCache
from .models import AUTOMATIC_VAE, Checkpoint, CheckpointLibrary, VaeLibrary, model_title, read_header
from .pipeline_choices import DTYPE_NAMES, MEMORY_MODES, RELOAD_OPTIONS

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
GIB = 1024**3


@dataclass(frozen=True)
class PipelineOptions:
    device: str = "auto"  # DEVICES, or cuda:N
    dtype: str = "auto"  # auto (fp16 on CUDA, fp32 on CPU), or a DTYPES key
    memory_mode: str = "auto"  # MEMORY_MODES; auto picks by free VRAM
    vae_tiling: bool = False  # decode large images tile by tile (less VRAM, a little slower)
    vae: str = "Automatic"  # Automatic: the checkpoint's own VAE; else a file in the VAE folder
    compile: str = "off"  # fastpath.COMPILE_MODES: torch.compile the UNet and VAE decoder (no reload needed)
    prompt_syntax: str = "a1111"  # encoding.SYNTAXES


@dataclass
class LoadedModel:
    checkpoint: Checkpoint
    pipe: object
    short_hash: str
    scheduler_config: dict
    loras: LoraSet | None = None
    prediction: Prediction = Prediction()  # v-prediction / zero terminal SNR, as its file or .yaml says
    warnings: list[str] = field(default_factory=list)  # what the file lacks that changes images

    def infotext_fields(self) -> dict[str, str]:
        return self.prediction.infotext()

    @property
    def title(self) -> str:
        return model_title(self.checkpoint.short_name, self.short_hash)


class Pipelines:
    """The base and refiner pipelines in memory, and the choices that decide how they are held."""

    def __init__(self, checkpoints: CheckpointLibrary, options: PipelineOptions | None = None,
                 vaes: VaeLibrary | None = None):
        self.checkpoints = checkpoints
        self.vaes = vaes
        self.options = options or PipelineOptions()
        self.device = pick_device(self.options.device)
        self.dtype = pick_dtype(self.options.dtype, self.device)
        self.vae_file: tuple[str, str] | None = None  # (name, hash10) of a chosen VAE file, for the infotext
        self.lora_weights = WeightCache()  # survives checkpoint switches: no disk read for recent LoRAs
        self.base: LoadedModel | None = None
        self.refiner: LoadedModel | None = None
        self.encoder: PromptEncoder | None = None
        self.compile_problem: str | None = None  # why the fast path was switched off, until options change
        self.lock = threading.RLock()  # the GPU's: one job or model change at a time

    def use_libraries(self, checkpoints: CheckpointLibrary, vaes: VaeLibrary | None) -> None:
        """New folders (from Settings): what is loaded stays loaded; names resolve in the new folders."""
        self.checkpoints, self.vaes = checkpoints, vaes

    # ---- base and refiner ---------------------------------------------------------------------

    def load_checkpoint(self, name: str) -> LoadedModel:
        """Make `name` the base checkpoint. If it cannot be loaded, the previous one stays loaded."""
        with self.lock:
            return self.ensure_base(name)

    def ensure_base(self, name: str | None) -> LoadedModel:
        if name is None:
            if self.base is None:
                raise UserError("no checkpoint is loaded; choose one (put SDXL .safetensors files into "
                                f"{self.checkpoints.folder})", field="checkpoint", status=503)
            return self.base
        checkpoint = self.checkpoints.get(name)
        if self.base is not None and self.base.checkpoint.path == checkpoint.path:
            return self.base
        check_kind(checkpoint, "sdxl-base")  # cheap checks first: the old model stays if they fail
        short_hash = self.checkpoints.short_hash(checkpoint)
        previous = self.base.checkpoint if self.base else None
        self._unload_all()  # one SDXL at a time: holding two would need twice the memory
        try:
            pipe = load_base(checkpoint, self.dtype, self._chosen_vae())
        except UserError:
            if previous is not None:
                self._install_base(previous, load_base(previous, self.dtype, self._chosen_vae()),
                                   self.checkpoints.short_hash(previous))
            raise
        return self._install_base(checkpoint, pipe, short_hash)

    def _chosen_vae(self):
        """The VAE file chosen in the options (None: the checkpoint's own), for files without one."""
        return None if self.options.vae in AUTOMATIC_VAE else self._vae_path(self.options.vae)

    def _install_base(self, checkpoint: Checkpoint, pipe, short_hash: str) -> LoadedModel:
        prediction = _prediction(checkpoint, pipe)
        scheduler_config = {**pipe.scheduler.config, **prediction.scheduler_changes()}
        self._choose_vae(pipe)
        self._place(pipe)
        originals = CheckpointWeights(checkpoint, pipe.unet.config)
        self.base = LoadedModel(checkpoint, pipe, short_hash, scheduler_config,
                                LoraSet(pipe, self.lora_weights, originals=originals), prediction,
                                [*getattr(pipe, "homegrown_warnings", []), *prediction.warnings])
        self.encoder = PromptEncoder(pipe, self.options.prompt_syntax)
        return self.base

    def _choose_vae(self, pipe) -> None:
        """Put the VAE file chosen in the options into the pipeline (before it is placed on the device)."""
        name = self.options.vae
        self.vae_file = None
        if name in AUTOMATIC_VAE:
            return
        path = self._vae_path(name)
        pipe.vae = load_vae(path, self.dtype)
        self.vae_file = (path.stem, self.vaes.hashes.sha256(path)[:10])

    def _vae_path(self, name: str):
        if self.vaes is None:
            raise UserError("no VAE folder is configured", field="sd_vae")
        return self.vaes.get(name)

    def ensure_refiner(self, name: str) -> LoadedModel:
        checkpoint = self.checkpoints.get(name)
        if self.refiner is not None and self.refiner.checkpoint.path == checkpoint.path:
            return self.refiner
        check_kind(checkpoint, "sdxl-refiner")
        short_hash = self.checkpoints.short_hash(checkpoint)
        self._drop_refiner()
        pipe = load_refiner(checkpoint, self.dtype, base=self.base.pipe)
        prediction = _prediction(checkpoint, pipe)
        scheduler_config = {**pipe.scheduler.config, **prediction.scheduler_changes()}
        self._place(pipe)
        self.refiner = LoadedModel(checkpoint, pipe, short_hash, scheduler_config, None, prediction,
                                   [*getattr(pipe, "homegrown_warnings", []), *prediction.warnings])
        return self.refiner

    def load_refiner(self, name: str) -> LoadedModel:
        with self.lock:
            self.ensure_base(None)  # the refiner borrows the base's second text encoder and VAE
            return self.ensure_refiner(name)

    def unload_refiner(self) -> None:
        with self.lock:
            self._drop_refiner()

    def _drop_refiner(self) -> None:
        if self.refiner is not None:
            self.refiner = None
            free_memory()

    def _unload_all(self) -> None:
        self.refiner = None
        self.base = None
        self.encoder = None
        free_memory()

    def loaded_pipes(self) -> list:
        return [model.pipe for model in (self.base, self.refiner) if model is not None]

    # ---- memory and the fast path -------------------------------------------------------------

    def memory_mode(self) -> str:
        mode = self.options.memory_mode
        if mode not in MEMORY_MODES:
            raise UserError(f"unknown memory mode {mode!r}; choose one of: {', '.join(MEMORY_MODES)}",
                            field="memory_mode")
        if self.device.type != "cuda":
            return "none"  # offloading moves weights between CPU and GPU; without a GPU there is nothing to gain
        if mode != "auto":
            return mode
        free, _ = torch.cuda.mem_get_info(self.device)
        # SDXL base in fp16 is ~7 GB of weights; 1024x1024 sampling needs ~3 GB more.
        if free >= 12 * GIB:
            return "none"
        return "model-offload" if free >= 6 * GIB else "sequential-offload"

    def _place(self, pipe) -> None:
        for part in pipe.components.values():
            if isinstance(part, torch.nn.Module):
                # Inference only. peft freezes the layers it wraps; freezing everything up front keeps a
                # compiled UNet's guards (requires_grad is one) the same before and after the first LoRA.
                part.requires_grad_(False)
        mode = self.memory_mode()
        if mode == "model-offload":
            pipe.enable_model_cpu_offload(device=self.device)
        elif mode == "sequential-offload":
            pipe.enable_sequential_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        pipe.vae.enable_slicing()  # batches decode one image at a time: same pixels, far less memory
        if self.options.vae_tiling:
            pipe.vae.enable_tiling()
        fastpath.set_compiled(pipe, self.compile_mode(), self.device)

    def compile_mode(self) -> str:
        """The fast path in force: the option, unless offloading is on or compiling failed here before."""
        mode = fastpath.check_mode(self.options.compile)
        # Offload hooks move weights inside forward(): a compiled graph would bake those moves in.
        if self.compile_problem or self.memory_mode() != "none":
            return "off"
        return mode

    def compiled(self) -> bool:
        """Whether the loaded pipelines run compiled: what _place or configure did, not the options read again
        (with memory mode auto, free VRAM after loading would give another answer than it gave before)."""
        return any(fastpath.is_compiled(pipe) for pipe in self.loaded_pipes())

    def eager_if_compile_fails(self, fn, warnings: list[str]):
        """Run `fn`; if compiling fails (no C compiler, an unsupported GPU), switch the fast path off and run
        it again eagerly: the user still gets the image, and a warning that says why."""
        if not self.compiled():
            return fn()
        try:
            return fn()
        except fastpath.compile_errors() as exc:
            # torch wraps the compiler's own error, which is the one that says what is wrong.
            cause = getattr(exc, "inner_exception", None) or exc.__cause__ or exc
            reason = (str(cause).strip().splitlines() or [""])[0][:300]
            self.compile_problem = (f"the fast path (compile: {self.options.compile}) failed and is off until the "
                                    f"setting changes: {type(cause).__name__}: {reason}")
            for pipe in self.loaded_pipes():
                fastpath.set_compiled(pipe, "off", self.device)
            warnings.append(self.compile_problem)
            return fn()

    # ---- options ------------------------------------------------------------------------------

    def configure(self, options: PipelineOptions) -> str:
        """Apply new options; reload the checkpoint if device, precision, memory mode or VAE changed.

        If the reload fails, the previous options and checkpoint come back. Returns a sentence for the user."""
        with self.lock:
            reload = any(getattr(options, f) != getattr(self.options, f) for f in RELOAD_OPTIONS)
            device = pick_device(options.device)
            dtype = pick_dtype(options.dtype, device)
            if options.vae not in AUTOMATIC_VAE:
                self._vae_path(options.vae)
            fastpath.check_mode(options.compile)
            check_syntax(options.prompt_syntax)
            syntax_changed = options.prompt_syntax != self.options.prompt_syntax
            compile_changed = options.compile != self.options.compile
            previous = (self.options, self.device, self.dtype)
            self.options = options
            if compile_changed:
                self.compile_problem = None  # a new choice gets a new try
            if not reload:
                if syntax_changed and self.base is not None:
                    self.encoder = PromptEncoder(self.base.pipe, options.prompt_syntax)
                if compile_changed:
                    return self._recompile()
                return "Settings applied."
            self.device, self.dtype = device, dtype
            if self.base is None:
                return "Settings applied; they take effect when a checkpoint loads."
            name = self.base.checkpoint.name
            self._unload_all()
            try:
                self.ensure_base(name)
            except UserError:
                self.options, self.device, self.dtype = previous
                self.ensure_base(name)
                raise
            return f"Settings applied; {name} was reloaded for the new device, precision, memory mode or VAE."

    def replace_options(self, **changes) -> str:
        """`configure` with some options changed: what a test or the benchmark switches."""
        return self.configure(dataclasses.replace(self.options, **changes))

    def _recompile(self) -> str:
        for pipe in self.loaded_pipes():
            fastpath.set_compiled(pipe, self.compile_mode(), self.device)
        if self.options.compile == "off":
            return "Settings applied."
        if self.compile_mode() == "off":
            return "Settings applied; the fast path stays off while the memory mode offloads weights."
        return "Settings applied; the next image compiles the model first (tens of seconds), later ones run faster."


def _prediction(checkpoint: Checkpoint, pipe) -> Prediction:
    names = () if checkpoint.is_folder else read_header(checkpoint.path).tensors
    return prediction_of(checkpoint.path, names, dict(pipe.scheduler.config))


def check_syntax(syntax: str) -> str:
    if syntax not in SYNTAXES:
        raise UserError(f"unknown prompt syntax {syntax!r}; choose one of: {', '.join(SYNTAXES)}",
                        field="prompt_syntax")
    return syntax


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N", field="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda was asked for, but PyTorch sees no CUDA GPU", field="device")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}", field="dtype")
    if device.type == "cpu" and DTYPES[name] == torch.float16:
        raise UserError("float16 is not supported on the CPU; use float32 or bfloat16", field="dtype")
    return DTYPES[name]


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

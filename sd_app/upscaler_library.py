"""The model upscalers on disk: ESRGAN / Real-ESRGAN / SwinIR / DAT / HAT ... files in A1111's folders, checked
and loaded with spandrel (which tells the architecture from the weights).

Loading runs no code from a file: `.safetensors` are plain tensors, `.pth` / `.ckpt` are read only through
`torch.load(weights_only=True)`, and a file that needs full unpickling is refused with the reason. A damaged
file is listed with its problem and refused when chosen; it never stops the app. Nothing here knows the page
or HTTP; `upscalers.py` runs the loaded models.
"""

from __future__ import annotations

import importlib
import json
import re
import struct
import sys
import threading
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

# A1111's folders below the models folder, in the order it lists them.
FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")
EXTENSIONS = (".safetensors", ".pth", ".ckpt")
PURPOSES = ("SR", "Restoration")  # spandrel's purposes that take an image and give it back larger (or same size)
SPANDREL_HINT = "pip install --no-deps spandrel==0.4.2 einops (spandrel's torchvision requirement is not needed)"


@dataclass(frozen=True)
class UpscalerFile:
    """A model upscaler as the lists show it."""

    name: str  # the file's stem, as A1111 names it (`4x-UltraSharp`)
    path: Path
    folder: str  # one of FOLDERS
    scale: int  # from the loaded model when it has been loaded, else from the name ("4x", "x2"), else 4 (A1111)
    architecture: str | None = None  # spandrel's name, once loaded
    problem: str | None = None  # why it cannot be used, or None


@dataclass
class LoadedUpscaler:
    file: UpscalerFile
    model: object  # spandrel.ImageModelDescriptor
    scale: int
    architecture: str


class UpscalerLibrary:
    """The upscaler files below `root` (A1111's models folder), with what is known about each.

    What a load found out (architecture, scale, or a problem) is remembered per file version (size and mtime),
    so the list shows it without reading the file again. One model stays loaded: the last one used."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._known: dict[Path, tuple[tuple[int, int], str | None, int | None, str | None]] = {}
        self._loaded: LoadedUpscaler | None = None
        self._lock = threading.Lock()

    def list(self) -> list[UpscalerFile]:
        found = []
        for folder in FOLDERS:
            directory = self.root / folder
            if not directory.is_dir():
                continue
            try:
                paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
            except OSError:
                continue  # an unreadable folder lists nothing; the others still do
            found += [self._describe(path, folder) for path in paths]
        seen, unique = set(), []
        for item in sorted(found, key=lambda f: f.name.lower()):
            if item.name not in seen:  # the same name in two folders: the first folder's file, as A1111
                seen.add(item.name)
                unique.append(item)
        return unique

    def get(self, name: str) -> UpscalerFile:
        for item in self.list():
            if item.name == name:
                return item
        raise UserError(f"no upscaler named {name!r} in {self.root} ({', '.join(FOLDERS)})", status=404)

    def load(self, name: str, device="cpu", dtype=None) -> LoadedUpscaler:
        """The model `name`, ready to run on `device` (half precision where the model supports it and `dtype`
        asks for it). A file that cannot be used raises UserError saying why, and is marked in the list."""
        item = self.get(name)
        if item.problem:
            raise UserError(f"{item.name} cannot be used: {item.problem}", field="upscaler")
        with self._lock:
            loaded = self._loaded
            if loaded is not None and loaded.file.path == item.path and _version(item.path) == \
                    self._known.get(item.path, (None,))[0]:
                return _placed(loaded, device, dtype)
            self._loaded = None  # the previous model's memory goes before the next one is read
            try:
                model = _read_model(item.path)
            except UserError as err:
                self._remember(item.path, err.message, None, None)
                raise UserError(f"{item.name} cannot be used: {err.message}", field="upscaler") from None
            architecture = model.architecture.name
            self._remember(item.path, None, model.scale, architecture)
            self._loaded = LoadedUpscaler(item, model, model.scale, architecture)
            return _placed(self._loaded, device, dtype)

    def _describe(self, path: Path, folder: str) -> UpscalerFile:
        version = _version(path)
        known = self._known.get(path)
        if known is None or known[0] != version:
            known = (version, header_problem(path), None, None)
            self._known[path] = known
        _, problem, scale, architecture = known
        return UpscalerFile(path.stem, path, folder, scale or scale_from_name(path.stem), architecture, problem)

    def _remember(self, path: Path, problem: str | None, scale: int | None, architecture: str | None) -> None:
        self._known[path] = (_version(path), problem, scale, architecture)


def scale_from_name(name: str) -> int:
    """A1111 lists an unloaded model at 4x; names usually say their scale (`4x-UltraSharp`, `RealESRGAN_x2plus`)."""
    match = re.search(r"(?:^|[^a-z0-9])(\d)x(?:[^a-z0-9]|$)|x(\d)(?:plus|[^a-z0-9]|$)", name.lower())
    return int(match.group(1) or match.group(2)) if match else 4


def header_problem(path: Path) -> str | None:
    """What is wrong with the file that can be seen without loading it (a cut-short or foreign file), or None."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "the file is empty"
        if path.suffix.lower() == ".safetensors":
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    return "the file is damaged: too short for a safetensors header"
                length = struct.unpack("<Q", head)[0]
                if length > min(size - 8, 100_000_000):
                    return "the file is damaged: its safetensors header is longer than the file"
                header = json.loads(f.read(length))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
            if not ends:
                return "the file holds no tensors"
            if max(ends) > size - 8 - length:
                return "the file is damaged: it is shorter than its header says (an interrupted download?)"
            return None
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"
        if zipped:
            with zipfile.ZipFile(path) as archive:  # reads the directory at the end: a cut-short file fails here
                archive.namelist()
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile) as err:
        return f"the file is damaged: {type(err).__name__}: {err}"


def _version(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
        return stat.st_size, stat.st_mtime_ns
    except OSError:
        return -1, -1


def _read_model(path: Path):
    """The spandrel descriptor of the upscaler in `path`, or UserError saying why it cannot be used."""
    spandrel = import_spandrel()
    state = read_weights(path)
    try:
        state = spandrel.canonicalize_state_dict(state)
        model = spandrel.MAIN_REGISTRY.load(state)
    except spandrel.UnsupportedModelError:
        raise UserError("its weights are not an architecture spandrel knows (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, "
                        "SPAN, ...)") from None
    except (KeyError, ValueError, RuntimeError, IndexError, TypeError, AttributeError, AssertionError) as err:
        raise UserError(f"its weights do not fit the architecture they look like ({type(err).__name__}: {err})") \
            from None
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose not in PURPOSES:
        raise UserError(f"it is a {model.purpose} model ({model.architecture.name}), not an upscaler")
    if model.input_channels != 3 or model.output_channels != 3:
        raise UserError(f"it takes {model.input_channels} and gives {model.output_channels} channels; upscalers "
                        "here work on RGB images (3)")
    return model.eval()


def read_weights(path: Path) -> dict:
    """The tensors of an upscaler file, without running any of its code."""
    import torch

    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors' own error types: a damaged file
            raise UserError(f"the file is damaged ({type(err).__name__}: {err})") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except __import__("pickle").UnpicklingError as err:
        reason = str(err).strip().splitlines()
        detail = next((line.strip() for line in reason if "Unsupported global" in line or "GLOBAL" in line),
                      reason[0] if reason else "")
        raise UserError("it needs full unpickling, which can run code from the file; only plain tensors are "
                        f"read here ({detail[:200]}). Use a .safetensors version of this model") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise UserError(f"the file is damaged ({type(err).__name__}: {str(err)[:200]})") from None
    if not isinstance(state, dict) or not state:
        raise UserError(f"it holds {type(state).__name__}, not a dictionary of weights")
    return state


def _placed(loaded: LoadedUpscaler, device, dtype) -> LoadedUpscaler:
    import torch

    model = loaded.model
    wanted = torch.float16 if dtype in (torch.float16, torch.bfloat16) and model.supports_half else torch.float32
    if model.device != torch.device(device) or model.dtype != wanted:
        model.to(torch.device(device), dtype=wanted)
    return loaded


_import_lock = threading.Lock()


def import_spandrel():
    """spandrel, importable without torchvision: two of its architectures (LaMa inpainting, RestoreFormer faces;
    neither an upscaler, both refused here) import torchvision at import time, and torchvision breaks diffusers
    on this torch. Without torchvision, stand-ins are put in place for spandrel's import only; calling one says
    torchvision is missing."""
    with _import_lock:
        try:
            return importlib.import_module("spandrel")
        except ModuleNotFoundError as err:
            if err.name == "spandrel" or err.name == "einops":
                raise UserError(f"model upscalers need the spandrel package: {SPANDREL_HINT}", status=503) from None
            if not (err.name or "").startswith("torchvision"):
                raise
        for name in [n for n in sys.modules if n == "spandrel" or n.startswith("spandrel.")]:
            del sys.modules[name]  # the half-done import's modules
        stand_ins = _torchvision_stand_ins()
        sys.modules.update(stand_ins)
        try:
            return importlib.import_module("spandrel")
        finally:
            for name, module in stand_ins.items():  # nothing else may take them for torchvision
                if sys.modules.get(name) is module:
                    del sys.modules[name]


def _torchvision_stand_ins() -> dict[str, types.ModuleType]:
    def missing(attribute):
        def call(*args, **kwargs):
            raise UserError(f"torchvision.{attribute} is not installed; this model needs it")
        return call

    modules = {}
    for name in ("torchvision", "torchvision.transforms", "torchvision.transforms.functional"):
        module = types.ModuleType(name)
        module.__getattr__ = missing  # PEP 562: any name imported from it is a stand-in
        module.__path__ = []  # a package, so its submodules import
        modules[name] = module
    return modules

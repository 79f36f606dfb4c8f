"""Model files on disk: finding checkpoints the A1111 way, telling what a file is, hashing it once.

Nothing here loads tensors: a safetensors file starts with a JSON header that names every tensor,
which is enough to tell an SDXL base from a refiner, an SD 1.5 checkpoint or a stray LoRA.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import reprlib
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
MAX_HEADER_BYTES = 100 * 1024 * 1024

# What each kind is called in messages.
KIND_LABELS = {
    "sdxl-base": "an SDXL base checkpoint",
    "sdxl-refiner": "an SDXL refiner checkpoint",
    "sd1": "a Stable Diffusion 1.x checkpoint",
    "sd2": "a Stable Diffusion 2.x checkpoint",
    "lora": "a LoRA (it belongs in the Lora folder)",
    "vae": "a VAE (it belongs in the VAE folder)",
    "unknown": "not a checkpoint Homegrown recognises",
}
SUPPORTED_KINDS = ("sdxl-base", "sdxl-refiner")
SUPPORTED_TEXT = "Homegrown runs SDXL checkpoints: SDXL 1.0 base, the SDXL refiner and fine-tunes of them"


# Bits per element of every dtype safetensors knows (its own list; a file with another one cannot be loaded).
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
              "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
              "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, dict]  # name -> {"dtype", "shape", "data_offsets"}
    metadata: dict[str, str]


def read_header(path: str | Path) -> SafetensorsHeader:
    """Read the JSON header of a .safetensors file without touching the tensors.

    The header is checked as safetensors itself checks it before loading, so a damaged or hand-made file
    is refused here, by name and fault, as a UserError: never an exception of another type, whatever the
    file holds (a library that lists a folder of them relies on that)."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(pickle_message(path), status=415)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise UserError(f"{path.name} is empty or cut short: it is not a valid .safetensors file")
            (length,) = struct.unpack("<Q", head)
            size = os.fstat(f.fileno()).st_size
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise UserError(f"{path.name} is not a valid .safetensors file (its header is damaged, "
                                "or the file was cut short while downloading)")
            header = json.loads(f.read(length))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist", status=404) from None
    except OSError as err:
        raise UserError(f"{path.name} cannot be read: {err.strerror or err}") from None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep, numbers too long
        raise UserError(f"{path.name} is not a valid .safetensors file (its header is not readable JSON)") from None
    if not isinstance(header, dict):
        raise _invalid(path, f"its header is {_json_type(header)}, not a JSON object")
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise _invalid(path, f"its __metadata__ is {_json_type(metadata)}, not an object of text values")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise _invalid(path, f"its __metadata__ entry {_shown(key)} is {_json_type(value)}, not text")
    end = _check_tensors(path, header)
    if 8 + length + end > size:
        raise UserError(f"{path.name} is incomplete ({size} bytes, its header describes {8 + length + end}): "
                        "download it again")
    if 8 + length + end < size:
        raise _invalid(path, f"{size - 8 - length - end} bytes after its last tensor belong to no tensor")
    return SafetensorsHeader(header, metadata)


def _check_tensors(path: Path, tensors: dict) -> int:
    """Check every tensor entry (dtype, shape, data_offsets) as safetensors does: the tensors, in the order of
    their offsets, must fill the data area exactly, each with the size its shape and dtype give. Returns the
    data area's size."""
    spans = []
    for name, entry in tensors.items():
        # The common case inline (a real checkpoint has thousands of entries); a fault is described below.
        if type(entry) is not dict or type(entry.get("dtype")) is not str or type(entry.get("shape")) is not list:
            raise _entry_fault(path, name, entry)
        offsets, bits = entry.get("data_offsets"), DTYPE_BITS.get(entry["dtype"], 0)
        for n in entry["shape"]:
            if type(n) is not int or n < 0:
                raise _entry_fault(path, name, entry)
            bits *= n
        if not (type(offsets) is list and len(offsets) == 2 and type(offsets[0]) is int and type(offsets[1]) is int
                and 0 <= offsets[0] <= offsets[1] and entry["dtype"] in DTYPE_BITS and bits % 8 == 0
                and offsets[1] - offsets[0] == bits // 8):
            raise _entry_fault(path, name, entry)
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin != end:
            where = "after a gap no tensor fills" if begin > end else "inside another tensor"
            raise _invalid(path, f"tensor {_shown(name)} starts at byte {begin} of the data, {where}")
        end = stop
    return end


def _entry_fault(path: Path, name: str, entry) -> UserError:
    """What is wrong with a tensor entry that `_check_tensors` refused, in words."""
    if not isinstance(entry, dict):
        return _invalid(path, f"the entry of tensor {_shown(name)} is {_json_type(entry)}, not an object")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        return _invalid(path, f"tensor {_shown(name)} has no {' and no '.join(missing)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        return _invalid(path, f"tensor {_shown(name)} has dtype {_shown(dtype)}; known: {', '.join(DTYPE_BITS)}")
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        return _invalid(path, f"tensor {_shown(name)} has shape {_shown(shape)}, not a list of whole numbers >= 0")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(n) for n in offsets)
            and offsets[0] <= offsets[1]):
        return _invalid(path, f"tensor {_shown(name)} has data_offsets {_shown(offsets)}, not [begin, end] "
                              "with 0 <= begin <= end")
    bits = DTYPE_BITS[dtype] * math.prod(shape)
    return _invalid(path, f"tensor {_shown(name)} ({dtype}, shape {shape}) needs {bits / 8:g} bytes, but its "
                          f"data_offsets {offsets} span {offsets[1] - offsets[0]}")


def _invalid(path: Path, fault: str) -> UserError:
    return UserError(f"{path.name} is not a valid .safetensors file: {fault}")


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a text", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _shown(value) -> str:
    """A value from a damaged file, kept short whatever it holds (tensor names in full, up to 120 characters)."""
    short = reprlib.Repr()
    short.maxstring = 120
    return short.repr(value)


def pickle_message(path: Path) -> str:
    return (f"{path.name} is a pickle file ({path.suffix}). Loading pickle files can run any code hidden in them, "
            "so Homegrown never opens them. Use the .safetensors version of this model (most model pages offer "
            "one), or convert it on a machine you trust, e.g. with diffusers' "
            "scripts/convert_original_stable_diffusion_to_diffusers.py --to_safetensors.")


def kind_of(keys) -> str:
    """The kind of a checkpoint, from its tensor names."""
    keys = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if has("lora_unet_") or has("lora_te") or any(".lora_down." in k or ".lora_A." in k for k in keys):
        return "lora"
    if has("model.diffusion_model."):
        if has("conditioner.embedders.1.model.") and has("conditioner.embedders.0.transformer."):
            return "sdxl-base"
        if has("conditioner.embedders.0.model.") and not has("conditioner.embedders.1."):
            return "sdxl-refiner"
        if has("cond_stage_model.model."):
            return "sd2"
        if has("cond_stage_model.transformer."):
            return "sd1"
        return "unknown"
    if has("encoder.conv_in.") and has("decoder.conv_in.") or has("first_stage_model.") and len(
            {k.split(".")[0] for k in keys}) == 1:
        return "vae"
    return "unknown"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint found on disk: a single .safetensors file or a diffusers-format folder."""

    name: str  # path below the checkpoint folder, without extension, "/" separated (A1111's model_name)
    path: Path
    is_folder: bool = False

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def short_name(self) -> str:
        # What A1111 writes as "Model:" in infotext: the file's own name without extension.
        return self.name.rsplit("/", 1)[-1]

    def title(self, short_hash: str | None) -> str:
        """A1111's checkpoint title, as its API lists it: `name.safetensors [hash10]`."""
        return model_title(self.name if self.is_folder else f"{self.name}.safetensors", short_hash)

    def kind(self) -> str:
        """What the checkpoint is, from its header; UserError naming the file and its fault if it is damaged."""
        if self.is_folder:
            index_file = self.path / "model_index.json"
            try:
                index = json.loads(index_file.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError) as err:
                raise UserError(f"{self.name}/model_index.json cannot be read: {err}") from None
            name = index.get("_class_name") if isinstance(index, dict) else None
            if not isinstance(name, str):
                raise UserError(f"{self.name}/model_index.json names no pipeline class (_class_name)")
            return "sdxl-refiner" if "Img2Img" in name else ("sdxl-base" if "XL" in name else "unknown")
        return kind_of(read_header(self.path).tensors)


class HashCache:
    """sha256 of model files, computed once and kept in a JSON file keyed by path, size and mtime."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._data: dict[str, dict] = {}
        if self.path and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError, RecursionError):
                data = {}
            self._data = data if isinstance(data, dict) else {}  # a damaged cache only costs a rehash

    def sha256(self, file: str | Path) -> str:
        """The sha256 of the whole file (A1111's checkpoint hash)."""
        return self._hash(file, "sha256", 0)

    def addnet(self, file: str | Path) -> str:
        """A1111's "addnet" hash of a .safetensors file (its LoRA hash): the sha256 of the bytes after the header
        (the 8-byte header length and the JSON header), so editing the metadata keeps the hash."""
        def data_start(f) -> int:
            head = f.read(8)
            return 8 + int.from_bytes(head, "little") if len(head) == 8 else len(head)
        return self._hash(file, "addnet", data_start)

    def _hash(self, file: str | Path, kind: str, start) -> str:
        file = Path(file).resolve()
        known = self.cached(file, kind)
        if known:
            return known
        stat = file.stat()
        key = str(file)
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            f.seek(start if isinstance(start, int) else start(f))
            for block in iter(lambda: f.read(16 * 1024 * 1024), b""):
                digest.update(block)
        value = digest.hexdigest()
        with self._lock:
            entry = self._data.get(key)
            if not (isinstance(entry, dict) and entry.get("size") == stat.st_size
                    and entry.get("mtime") == stat.st_mtime):
                entry = {"size": stat.st_size, "mtime": stat.st_mtime}  # the file changed: its other hash too
            self._data[key] = {**entry, kind: value}
            self._save()
        return value

    def cached(self, file: str | Path, kind: str = "sha256") -> str | None:
        """The hash (`sha256` or `addnet`) if it is already known for this exact file; never reads the file."""
        file = Path(file).resolve()
        stat = file.stat()
        with self._lock:
            entry = self._data.get(str(file))
        if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime \
                and isinstance(entry.get(kind), str):
            return entry[kind]
        return None

    def _save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self._data, indent=1))
        os.replace(tmp, self.path)


class CheckpointLibrary:
    """The checkpoints under one folder (A1111's models/Stable-diffusion), found fresh on each call."""

    def __init__(self, folder: str | Path, hashes: HashCache):
        self.folder = Path(folder)
        self.hashes = hashes
        # path -> ((size, mtime_ns), (kind or None, problem or None)): listings read a header once per change
        self._kinds: dict[Path, tuple] = {}
        self._lock = threading.Lock()

    def kind(self, checkpoint: Checkpoint) -> str | None:
        """`checkpoint.kind()`, remembered until the file changes; None for a damaged file (see `problem`)."""
        return self._read(checkpoint)[0]

    def problem(self, checkpoint: Checkpoint) -> str | None:
        """Why the checkpoint cannot be used (a damaged header), or None; remembered until the file changes."""
        return self._read(checkpoint)[1]

    def _read(self, checkpoint: Checkpoint) -> tuple[str | None, str | None]:
        marker = checkpoint.path / "model_index.json" if checkpoint.is_folder else checkpoint.path
        try:
            stat = marker.stat()
            signature = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            signature = None  # gone or unreadable: kind() says which, and nothing is remembered
        with self._lock:
            known = self._kinds.get(checkpoint.path)
        if signature is not None and known is not None and known[0] == signature:
            return known[1]
        try:
            found = (checkpoint.kind(), None)
        except UserError as err:
            found = (None, err.message)
        if signature is not None:
            with self._lock:
                self._kinds[checkpoint.path] = (signature, found)
        return found

    def list(self) -> list[Checkpoint]:
        if not self.folder.is_dir():
            return []
        found = []
        folders: list[Path] = []
        for path in sorted(self.folder.rglob("*")):
            if any(f in path.parents for f in folders):
                continue  # the weights inside a diffusers folder are not checkpoints of their own
            if path.is_file() and path.suffix.lower() == ".safetensors":
                found.append(Checkpoint(self._name(path.with_suffix("")), path))
            elif path.is_dir() and (path / "model_index.json").is_file():
                found.append(Checkpoint(self._name(path), path, is_folder=True))
                folders.append(path)
        return found

    def _name(self, path: Path) -> str:
        return path.relative_to(self.folder).as_posix()

    def get(self, name: str) -> Checkpoint:
        """Find a checkpoint by name, file name, A1111 title ("name.safetensors [hash]"), short name, or A1111's
        10-hex short hash or the full sha256 (hashing the files not hashed yet)."""
        if not isinstance(name, str) or not name.strip():
            raise UserError("no checkpoint named", field="checkpoint")
        wanted = name.strip()
        if wanted.endswith("]") and " [" in wanted:
            wanted = wanted.rsplit(" [", 1)[0]
        wanted = wanted.removesuffix(".safetensors")
        if any(wanted.lower().endswith(s) for s in PICKLE_SUFFIXES):
            raise UserError(pickle_message(Path(wanted)), field="checkpoint", status=415)
        checkpoints = self.list()
        for match in (lambda c: c.name == wanted, lambda c: c.short_name == wanted,
                      lambda c: c.name.replace("/", "_") == wanted,  # A1111's model_name of a subfolder's file
                      lambda c: c.name.lower() == wanted.lower()):
            hits = [c for c in checkpoints if match(c)]
            if hits:
                return hits[0]
        if re.fullmatch(r"[0-9a-fA-F]{10}|[0-9a-fA-F]{64}", wanted):  # A1111's short hash, or the full sha256
            for checkpoint in checkpoints:
                if not checkpoint.is_folder and self.hashes.sha256(checkpoint.path).startswith(wanted.lower()):
                    return checkpoint
        for suffix in PICKLE_SUFFIXES:
            if (self.folder / (wanted + suffix)).is_file():
                raise UserError(pickle_message(self.folder / (wanted + suffix)), field="checkpoint", status=415)
        names = ", ".join(c.name for c in checkpoints) or f"none: put .safetensors files into {self.folder}"
        raise UserError(f"no checkpoint {name!r}; available: {names}", field="checkpoint", status=404)

    def short_hash(self, checkpoint: Checkpoint) -> str:
        """A1111's model hash: the first 10 hex digits of the file's sha256 (folders have none)."""
        if checkpoint.is_folder:
            return ""
        return self.hashes.sha256(checkpoint.path)[:10]


def model_title(name: str, short_hash: str | None) -> str:
    """A1111's way of naming a model with its hash: `name [hash10]`, or the name alone without a hash."""
    return f"{name} [{short_hash}]" if short_hash else name


AUTOMATIC_VAE = ("Automatic", "None", "", None)  # the checkpoint's own VAE, as in A1111


class VaeLibrary:
    """VAE files under one folder (A1111's models/VAE)."""

    def __init__(self, folder: str | Path, hashes: HashCache):
        self.folder = Path(folder)
        self.hashes = hashes

    def list(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return [p.relative_to(self.folder).with_suffix("").as_posix()
                for p in sorted(self.folder.rglob("*.safetensors")) if p.is_file()]

    def problems(self) -> dict[str, str]:
        """name -> why the file cannot be used, for the damaged VAE files in the folder."""
        found = {}
        for name in self.list():
            try:
                read_header(self.folder / (name + ".safetensors"))
            except UserError as err:
                found[name] = err.message
        return found

    def get(self, name: str) -> Path:
        wanted = (name or "").strip().removesuffix(".safetensors")
        if wanted.startswith("/") or ".." in wanted.split("/"):
            raise UserError("must be a VAE file inside the VAE folder", field="sd_vae")
        if wanted in self.list():
            path = self.folder / (wanted + ".safetensors")
            try:
                read_header(path)  # a damaged file is refused by name and fault before any setting changes
            except UserError as err:
                raise UserError(err.message, field="sd_vae", status=err.status) from None
            return path
        names = ", ".join(["Automatic", *self.list()])
        raise UserError(f"no VAE {name!r}; available: {names}", field="sd_vae", status=404)

"""Textual inversion embeddings on disk (A1111's embeddings folder): what each file holds, and its vectors.

An embedding is used by writing its file name in a prompt, as in A1111; `encoding.py` puts its vectors in
place of the name's tokens. SDXL embeddings hold two tensors, `clip_l` (for CLIP-L) and `clip_g` (for
OpenCLIP-G), one row per vector. SD 1.x / 2.x embeddings (one tensor in `string_to_param`, `emb_params` or a
diffusers concept) are listed, marked, and refused with a message when a prompt names them. `.safetensors` files
are read by their header for the listing; `.pt` / `.bin` files only through torch's weights-only loader, which
runs no code from the file. A damaged file is listed with its fault and never stops the app.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .models import HashCache, read_header

SUFFIXES = (".safetensors", ".pt", ".bin")
PREVIEW_SUFFIXES = (".preview.png", ".png", ".preview.jpg", ".jpg", ".preview.jpeg", ".jpeg", ".preview.webp",
                    ".webp")
MAX_FILE_BYTES = 64 * 1024 * 1024  # the largest embeddings are a few MB; a bigger file in the folder is no embedding
MAX_VECTORS = 75  # A1111 keeps an embedding in one 75-token chunk
# Text-encoder width -> the base model an embedding made for it belongs to.
SINGLE_WIDTHS = {768: "sd1", 1024: "sd2"}
KIND_LABELS = {"sdxl": "SDXL", "sd1": "SD 1.x", "sd2": "SD 2.x", "unknown": "an unknown model"}


@dataclass
class EmbeddingInfo:
    name: str  # the file name without extension: what a prompt writes
    path: Path
    kind: str  # sdxl | sd1 | sd2 | unknown
    vectors: int = 0  # rows: the tokens it takes in a prompt
    widths: dict[str, int] = field(default_factory=dict)  # clip_l / clip_g width (SDXL), or {"": width}
    step: int | None = None  # training step, when the file says
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    preview: Path | None = None
    problem: str | None = None  # why it cannot be used (damaged, SD 1.x, too many vectors); listed, refused when used

    @property
    def shape(self) -> int:
        """A1111's `shape`: the vector width, both encoders' added for SDXL."""
        return sum(self.widths.values())

    @property
    def kind_label(self) -> str:
        return KIND_LABELS[self.kind]


def _meta_int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _meta_str(value) -> str | None:
    return str(value) if isinstance(value, (str, int)) and str(value) else None


def _classify(info: EmbeddingInfo, shapes: dict[str, list[int]]) -> None:
    """Fill kind, vectors and widths from the tensors' shapes; set `problem` for what SDXL cannot use."""
    if "clip_l" in shapes and "clip_g" in shapes:
        left, right = shapes["clip_l"], shapes["clip_g"]
        if len(left) != 2 or len(right) != 2 or left[0] != right[0] or not left[0]:
            info.kind = "sdxl"
            info.problem = (f"its clip_l {list(left)} and clip_g {list(right)} tensors should be (vectors, width) "
                            "with the same number of vectors")
            return
        info.kind, info.vectors, info.widths = "sdxl", right[0], {"clip_l": left[1], "clip_g": right[1]}
        if info.vectors > MAX_VECTORS:
            info.problem = f"it has {info.vectors} vectors; at most {MAX_VECTORS} fit in a prompt chunk"
        return
    tensors = [shape for shape in shapes.values()]
    if len(tensors) == 1 and 1 <= len(tensors[0]) <= 2 and tensors[0]:
        shape = tensors[0]
        width = shape[-1]
        info.kind = SINGLE_WIDTHS.get(width, "unknown")
        info.vectors, info.widths = (shape[0] if len(shape) == 2 else 1), {"": width}
        info.problem = (f"it was made for {info.kind_label} (one {width}-wide tensor); SDXL needs clip_l and "
                        "clip_g tensors. Use an SDXL version of it.")
        return
    info.kind = "unknown"
    info.problem = ("it is not a textual inversion embedding (expected clip_l and clip_g tensors, found "
                    f"{', '.join(sorted(shapes)[:5]) or 'no tensors'})")


def _tensors_of(data) -> dict:
    """The tensors of a loaded .pt/.bin embedding: A1111's `string_to_param`, or the dict itself (SDXL, diffusers)."""
    import torch

    if not isinstance(data, dict):
        raise UserError("it holds no dictionary of tensors")
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)
        if not isinstance(params, dict) or len(params) != 1:
            raise UserError("its string_to_param should hold one tensor")
        return {"emb_params": next(iter(params.values()))}
    return {key: value for key, value in data.items() if isinstance(value, torch.Tensor)}


def _load_pickle(path: Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses code; anything else is a damaged file
        raise UserError(f"it cannot be read as weights only ({type(err).__name__}: {str(err).splitlines()[0][:160]})"
                        ) from None


def describe(path: Path) -> EmbeddingInfo:
    """What an embedding file holds; a damaged or foreign file gets a `problem`, never an exception."""
    info = EmbeddingInfo(name=path.stem, path=path, kind="unknown")
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.with_name(path.stem + suffix)
        if candidate.is_file():
            info.preview = candidate
            break
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(f"it is {path.stat().st_size // 2**20} MB; embeddings are a few MB at most")
        if path.suffix.lower() == ".safetensors":
            header = read_header(path)
            shapes = {k: list(v.get("shape", [])) for k, v in header.tensors.items() if isinstance(v, dict)}
            meta = header.metadata
        else:
            data = _load_pickle(path)
            shapes = {k: list(v.shape) for k, v in _tensors_of(data).items()}
            meta = data
        info.step = _meta_int(meta.get("step"))
        info.sd_checkpoint = _meta_str(meta.get("sd_checkpoint"))
        info.sd_checkpoint_name = _meta_str(meta.get("sd_checkpoint_name"))
        _classify(info, shapes)
    except UserError as err:
        info.problem = err.message
    except OSError as err:
        info.problem = f"it cannot be read ({err.strerror or err})"
    return info


def load_vectors(path: Path) -> dict:
    """The file's tensors as float32, by name (clip_l, clip_g for SDXL)."""
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path), device="cpu")
        except Exception as err:
            raise UserError(f"{path.name} cannot be read: {err}") from None
    else:
        tensors = _tensors_of(_load_pickle(path))
    return {key: value.detach().to(torch.float32) for key, value in tensors.items()}


class EmbeddingLibrary:
    """The embeddings under one folder (A1111's embeddings; subfolders are read too, names are file names)."""

    def __init__(self, folder: str | Path, hashes: HashCache):
        self.folder = Path(folder)
        self.hashes = hashes
        self._cache: dict[Path, tuple[float, EmbeddingInfo]] = {}
        self._vectors: dict[Path, tuple[float, dict]] = {}
        self._lock = threading.Lock()

    def list(self) -> list[EmbeddingInfo]:
        """Every embedding file, sorted by name; the first of two files with one name is the one used."""
        if not self.folder.is_dir():
            return []
        found: dict[str, EmbeddingInfo] = {}
        paths = sorted((p for p in self.folder.rglob("*") if p.suffix.lower() in SUFFIXES),
                       key=lambda p: (p.stem.lower(), p.as_posix()))
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                continue  # gone since the folder was read
            if not path.is_file() or stat.st_size == 0:
                continue  # A1111 skips empty files too
            with self._lock:
                cached = self._cache.get(path)
            if cached and cached[0] == stat.st_mtime:
                info = cached[1]
            else:
                info = describe(path)
                with self._lock:
                    self._cache[path] = (stat.st_mtime, info)
            found.setdefault(info.name, info)
        return list(found.values())

    def get(self, name: str) -> EmbeddingInfo:
        for info in self.list():
            if info.name == name:
                return info
        raise UserError(f"no embedding named {name!r} in {self.folder}", field="prompt", status=404)

    def vectors(self, info: EmbeddingInfo) -> dict:
        """The vectors of a usable SDXL embedding (read once per file version)."""
        if info.problem:
            raise UserError(f"the embedding {info.name!r} cannot be used: {info.problem}", field="prompt")
        mtime = info.path.stat().st_mtime
        with self._lock:
            cached = self._vectors.get(info.path)
        if cached and cached[0] == mtime:
            return cached[1]
        tensors = load_vectors(info.path)
        vectors = {key: tensors[key] for key in ("clip_l", "clip_g")}
        with self._lock:
            self._vectors[info.path] = (mtime, vectors)
        return vectors

    def short_hash(self, info: EmbeddingInfo) -> str:
        """What A1111 writes in "TI hashes": the first 12 hex digits of the file's sha256."""
        return self.hashes.sha256(info.path)[:12]

    def check_widths(self, info: EmbeddingInfo, clip_l: int, clip_g: int) -> None:
        """Refuse an SDXL embedding made for text encoders of other widths (another model family)."""
        if info.widths != {"clip_l": clip_l, "clip_g": clip_g}:
            raise UserError(f"the embedding {info.name!r} has vectors {info.widths.get('clip_l')} and "
                            f"{info.widths.get('clip_g')} wide; this checkpoint's text encoders are {clip_l} and "
                            f"{clip_g} wide", field="prompt")


def ti_hashes(used: list[tuple[str, str]]) -> str | None:
    """The infotext's `TI hashes` value as A1111 writes it: "name: hash, name2: hash" (`:` and `,` dropped from
    names), each embedding once, in the order the prompts use them."""
    seen: dict[str, str] = {}
    for name, short in used:
        seen.setdefault(name.replace(":", "").replace(",", ""), short)
    return ", ".join(f"{name}: {short}" for name, short in seen.items()) or None

"""The LoRA library on disk: what each file says about itself, and `<lora:name:w>` tags resolved to files.

It reads only safetensors headers and the small files A1111 and civitai tools put beside a LoRA, so
listing hundreds of LoRAs costs no tensor reads. Applying LoRAs to a pipeline is `lora_patch.py`.
"""

from __future__ import annotations

import base64
import difflib
import json
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .models import PICKLE_SUFFIXES, HashCache, pickle_message, read_header
from .prompts import LoraTag

PREVIEW_SUFFIXES = (".png", ".preview.png", ".jpg", ".jpeg", ".preview.jpg", ".preview.jpeg", ".webp",
                    ".preview.webp")
BASE_LABELS = {"sdxl": "SDXL", "sd1": "SD 1.x", "sd2": "SD 2.x", "unknown": "?"}
MAX_WEIGHT = 10.0


@dataclass
class LoraInfo:
    name: str  # path below the LoRA folder without extension, "/" separated: what <lora:NAME:w> uses
    path: Path
    alias: str  # kohya's ss_output_name, or the file name
    base_model: str  # sdxl | sd1 | sd2 | unknown
    trigger_words: list[str] = field(default_factory=list)
    description: str = ""
    preferred_weight: float | None = None
    negative_text: str = ""
    preview: Path | None = None  # an image file beside the LoRA
    cover_image: bytes | None = None  # an image embedded in the metadata (modelspec.thumbnail)
    metadata: dict[str, str] = field(default_factory=dict)
    problem: str | None = None  # why the file cannot be used (a damaged header): listed, refused when used

    @property
    def stem(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def category(self) -> str:
        return self.name.rsplit("/", 1)[0] if "/" in self.name else ""

    @property
    def base_label(self) -> str:
        return BASE_LABELS[self.base_model]


def base_model_of(keys, metadata: dict[str, str], shapes: dict[str, list[int]]) -> str:
    """Which base model a LoRA was made for: kohya's metadata if it says, else the key layout."""
    version = (metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture") or "").lower()
    if "xl" in version:
        return "sdxl"
    if version.startswith(("sd_v1", "sd_1", "stable-diffusion-v1")):
        return "sd1"
    if version.startswith(("sd_v2", "sd_2", "stable-diffusion-v2")):
        return "sd2"
    keys = list(keys)
    if any(k.startswith("lora_te2_") or k.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks",
                                                       "lora_unet_middle_block")) for k in keys):
        return "sdxl"
    if any(k.startswith("text_encoder_2.") for k in keys):
        return "sdxl"
    # Cross-attention key projections read the text encoder's width: 2048 SDXL, 1024 SD2, 768 SD1.
    for key, shape in shapes.items():
        if "attn2" in key and ("to_k" in key) and ("lora_down" in key or "lora_A" in key) and len(shape) >= 2:
            return {2048: "sdxl", 1024: "sd2", 768: "sd1"}.get(shape[1], "unknown")
    if any(k.startswith(("lora_unet_down_blocks", "lora_unet_up_blocks", "lora_te_")) for k in keys):
        return "sd1"
    return "unknown"


def _trigger_words(metadata: dict[str, str], limit: int = 6) -> list[str]:
    try:
        frequencies = json.loads(metadata.get("ss_tag_frequency", "{}"))
    except (ValueError, RecursionError):
        return []
    counts: Counter = Counter()
    if isinstance(frequencies, dict):
        for tags in frequencies.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, (int, float)) and math.isfinite(n):
                        counts[str(tag).strip()] += n
    return [tag for tag, _ in counts.most_common(limit) if tag]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError, RecursionError):  # a broken neighbour file only loses its extras
        return {}


def describe(path: Path, name: str) -> LoraInfo:
    """Everything a LoRA file and its neighbours say about it; nothing is required."""
    header = read_header(path)
    meta = header.metadata
    shapes = {k: v.get("shape", []) for k, v in header.tensors.items() if isinstance(v, dict)}
    info = LoraInfo(name=name, path=path, alias=meta.get("ss_output_name") or path.stem,
                    base_model=base_model_of(header.tensors.keys(), meta, shapes),
                    trigger_words=_trigger_words(meta), metadata=meta)
    user = _read_json(path.with_suffix(".json"))  # A1111's per-LoRA user metadata
    if user.get("activation text"):
        info.trigger_words = [w.strip() for w in str(user["activation text"]).split(",") if w.strip()]
    info.description = str(user.get("description", "") or "")
    info.negative_text = str(user.get("negative text", "") or "")
    try:
        weight = float(user.get("preferred weight") or 0)
        info.preferred_weight = weight if weight and math.isfinite(weight) else None
    except (TypeError, ValueError, OverflowError):
        pass
    version = str(user.get("sd version", "") or "").lower()
    if version in ("sdxl", "sd1", "sd2"):
        info.base_model = version
    civitai = _read_json(path.with_suffix(".civitai.info"))
    words = civitai.get("trainedWords")
    if isinstance(words, list) and words and not user.get("activation text"):
        info.trigger_words = [str(w).strip() for w in words if str(w).strip()]
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            info.preview = candidate
            break
    thumb = meta.get("modelspec.thumbnail") or meta.get("ssmd_cover_images")
    if info.preview is None and thumb:
        info.cover_image = _decode_cover(thumb)
    return info


def _decode_cover(value: str) -> bytes | None:
    """modelspec.thumbnail is a data: URL; ssmd_cover_images a JSON list of base64 images."""
    try:
        if value.startswith("data:"):
            return base64.b64decode(value.split(",", 1)[1])
        items = json.loads(value)
        if isinstance(items, list) and items:
            return base64.b64decode(items[0])
    except (ValueError, IndexError, TypeError):
        return None
    return None


class LoraLibrary:
    """The LoRA files under one folder (A1111's models/Lora); subfolders are categories."""

    def __init__(self, folder: str | Path, hashes: HashCache):
        self.folder = Path(folder)
        self.hashes = hashes
        self._cache: dict[Path, tuple[float, LoraInfo]] = {}
        self._lock = threading.Lock()

    def list(self) -> list[LoraInfo]:
        if not self.folder.is_dir():
            return []
        found = []
        for path in sorted(self.folder.rglob("*.safetensors")):
            if not path.is_file():
                continue
            name = path.relative_to(self.folder).with_suffix("").as_posix()
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue  # gone since the folder was read
            with self._lock:
                cached = self._cache.get(path)
            if cached and cached[0] == mtime:
                found.append(cached[1])
                continue
            try:
                info = describe(path, name)
            except UserError as err:  # listed with its fault, so the page and the API can say what is wrong
                info = LoraInfo(name=name, path=path, alias=path.stem, base_model="unknown", problem=err.message)
            with self._lock:
                self._cache[path] = (mtime, info)
            found.append(info)
        return found

    def get(self, name: str) -> LoraInfo:
        """Resolve a name from a <lora:...> tag as A1111 does: path below the folder, file name, or alias."""
        wanted = name.strip().replace("\\", "/")
        if not wanted:
            raise UserError("a <lora:...> tag has no name", field="prompt")
        if wanted.startswith("/") or ".." in wanted.split("/") or ":" in wanted:
            raise UserError(f"LoRA name {name!r} is a path; only files inside the LoRA folder can be used",
                            field="prompt", status=404)
        if any(wanted.lower().endswith(s) for s in PICKLE_SUFFIXES):
            raise UserError(pickle_message(Path(wanted)), field="prompt", status=415)
        wanted = wanted.removesuffix(".safetensors")
        loras = self.list()
        for match in (lambda i: i.name == wanted, lambda i: i.stem == wanted, lambda i: i.alias == wanted,
                      lambda i: i.name.lower() == wanted.lower() or i.stem.lower() == wanted.lower()):
            hits = [i for i in loras if match(i)]
            if hits:
                info = hits[0]
                if self.folder.resolve() not in info.path.resolve().parents:
                    raise UserError(f"LoRA {name!r} lies outside the LoRA folder", field="prompt", status=404)
                if info.problem:
                    raise UserError(f"LoRA {info.name!r} cannot be used: {info.problem}", field="prompt")
                return info
        names = [i.name for i in loras]
        close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.4)
        hint = f"did you mean: {', '.join(close)}?" if close else (
            f"available: {', '.join(names[:20])}" if names else f"the LoRA folder {self.folder} has no LoRAs")
        raise UserError(f"no LoRA named {name!r}; {hint}", field="prompt", status=404)

    def short_hash(self, info: LoraInfo) -> str:
        """What A1111 writes in "Lora hashes": the file's `sshs_model_hash` metadata when it has one, else its
        "addnet" hash (the sha256 of the tensor data after the header), 12 hex digits."""
        stored = str(info.metadata.get("sshs_model_hash") or "").strip().lower()
        if re.fullmatch(r"[0-9a-f]{12,64}", stored):
            return stored[:12]
        return self.hashes.addnet(info.path)[:12]

    def find_by_hash(self, short_hash: str) -> LoraInfo | None:
        """The LoRA an infotext's "Lora hashes" entry means: by A1111's hash; else by the whole file's sha256,
        which Homegrown wrote before it used A1111's."""
        wanted = short_hash.lower()
        usable = [info for info in self.list() if info.problem is None]
        for hash_of in (self.short_hash, lambda info: self.hashes.sha256(info.path)):
            for info in usable:
                if hash_of(info).startswith(wanted):
                    return info
        return None

    def cover(self, info: LoraInfo) -> bytes | None:
        if info.preview is not None:
            return info.preview.read_bytes()
        return info.cover_image


@dataclass(frozen=True)
class ActiveLora:
    info: LoraInfo
    weight: float


def resolve_tags(library: LoraLibrary, tags: list[LoraTag]) -> list[ActiveLora]:
    """Check a job's <lora:...> tags: known names, numeric weights, the right base model; merge repeats."""
    merged: dict[Path, ActiveLora] = {}
    for tag in tags:
        if not math.isfinite(tag.weight) or abs(tag.weight) > MAX_WEIGHT:
            raise UserError(f"<lora:{tag.name}:...> needs a weight between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}",
                            field="prompt")
        info = library.get(tag.name)
        if info.base_model in ("sd1", "sd2"):
            raise UserError(f"LoRA {info.name!r} was made for {info.base_label}, not SDXL: it cannot work with an "
                            "SDXL checkpoint. Use an SDXL version of it.", field="prompt")
        if info.path in merged:  # the same LoRA twice: weights add up, as A1111's do
            merged[info.path] = ActiveLora(info, merged[info.path].weight + tag.weight)
        else:
            merged[info.path] = ActiveLora(info, tag.weight)
    return list(merged.values())

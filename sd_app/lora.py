"""LoRAs: the library on disk (what each file says about itself) and applying them to a pipeline.

The library reads only safetensors headers and the small files A1111 and civitai tools put beside a
LoRA, so listing hundreds of LoRAs costs no tensor reads. `LoraSet` keeps parsed weights in a bounded
cache and adapters loaded in the pipeline, so switching between recent LoRAs is a `set_adapters` call.
"""

from __future__ import annotations

import base64
import difflib
import json
import math
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch

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
    except json.JSONDecodeError:
        return []
    counts: Counter = Counter()
    if isinstance(frequencies, dict):
        for tags in frequencies.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(n, (int, float)):
                        counts[str(tag).strip()] += n
    return [tag for tag, _ in counts.most_common(limit) if tag]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
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
    except (TypeError, ValueError):
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
            mtime = path.stat().st_mtime
            with self._lock:
                cached = self._cache.get(path)
            if cached and cached[0] == mtime:
                found.append(cached[1])
                continue
            try:
                info = describe(path, name)
            except UserError:
                continue  # damaged files are reported when used, not while listing
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
                return info
        candidate = self.folder / (wanted + ".safetensors")
        if candidate.is_file() and self.folder.resolve() in candidate.resolve().parents:
            describe(candidate, wanted)  # left out of the list because it is damaged: say how
        names = [i.name for i in loras]
        close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.4)
        hint = f"did you mean: {', '.join(close)}?" if close else (
            f"available: {', '.join(names[:20])}" if names else f"the LoRA folder {self.folder} has no LoRAs")
        raise UserError(f"no LoRA named {name!r}; {hint}", field="prompt", status=404)

    def short_hash(self, info: LoraInfo) -> str:
        """What A1111 writes in "Lora hashes": 12 hex digits of the file's sha256."""
        return self.hashes.sha256(info.path)[:12]

    def find_by_hash(self, short_hash: str) -> LoraInfo | None:
        for info in self.list():
            if self.short_hash(info).startswith(short_hash.lower()):
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


@dataclass(frozen=True)
class LoraWeights:
    tensors: dict[str, torch.Tensor]
    adapter_metadata: dict | None  # diffusers' saved LoraConfig (alpha, rank pattern), for peft-format files


class WeightCache:
    """Parsed LoRA files by path (and mtime), least recently used dropped past a byte budget."""

    def __init__(self, max_bytes: int = 2 * 1024**3):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[Path, float], LoraWeights] = OrderedDict()
        self._lock = threading.Lock()
        self.disk_reads = 0

    def get(self, path: Path) -> LoraWeights:
        from safetensors.torch import load_file

        key = (path, path.stat().st_mtime)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        try:
            raw = read_header(path).metadata.get("lora_adapter_metadata")
            tensors = load_file(str(path))
            weights = LoraWeights(tensors, json.loads(raw) if raw else None)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"LoRA file {path.name} could not be read: it looks damaged ({str(exc)[:200]})",
                            field="prompt") from None
        self.disk_reads += 1
        with self._lock:
            self._items[key] = weights
            while len(self._items) > 1 and self._bytes() > self.max_bytes:
                self._items.popitem(last=False)
        return weights

    def _bytes(self) -> int:
        return sum(t.numel() * t.element_size() for w in self._items.values() for t in w.tensors.values())


class LoraSet:
    """The adapters loaded into one pipeline. Switching sets is `set_adapters`; the base stays untouched.

    peft keeps each LoRA beside the original weights instead of merging it in, so turning LoRAs off gives
    the base model's exact pixels back. Up to `max_loaded` adapters stay loaded; older ones are deleted.

    The active set is also fused into the UNet's weights, so that sampling costs what it costs without
    LoRAs (unfused, three rank-32 LoRAs add ~20% per step on the full SDXL UNet). Undoing the fusion
    copies the original weights back (exact, unlike subtracting the LoRA again): from a RAM copy when it
    fits `fuse_budget`, else from the checkpoint file (`originals`). With neither, the set runs unfused:
    slower, equally exact. Fusing depends on the request alone (never on which job ran before), so the
    same request always gives the same pixels.

    Whenever every UNet LoRA layer just passes its input to the original layer (the set is fused, or no
    LoRA is on), the original layers are put back in their places: the UNet is then the same module tree
    it was before any LoRA, so a compiled UNet (the fast path) reuses its graphs instead of compiling again
    for each LoRA set, and eager steps skip peft's per-layer Python. peft's layers go back before anything
    else touches the adapters.
    """

    def __init__(self, pipe, weights: WeightCache, max_loaded: int = 8, fuse: bool = True,
                 fuse_budget: int | None = None, originals=None):
        self.pipe = pipe
        self.originals = originals  # loading.CheckpointWeights, or None
        self.weights = weights
        self.max_loaded = max_loaded
        self.fuse = fuse
        self.fuse_budget = fuse_budget
        self._loaded: OrderedDict[tuple[Path, float], str] = OrderedDict()  # file -> adapter name
        self._counter = 0
        self._fused_key: tuple | None = None
        self._originals: dict[torch.nn.Module, torch.Tensor] = {}  # layer -> RAM copy of its weight
        self._from_file: dict[torch.nn.Module, str] = {}  # layer -> weight name in the checkpoint file
        self._bypassed: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []  # (parent, attribute, peft layer)

    @property
    def fused(self) -> bool:
        return self._fused_key is not None

    def apply(self, active: list[ActiveLora]) -> None:
        key = tuple(sorted((str(a.info.path), a.info.path.stat().st_mtime, a.weight) for a in active))
        fused_already = bool(key) and key == self._fused_key
        off_already = not key and self._fused_key is None and bool(self._bypassed)
        if fused_already or off_already:
            return
        self._restore_layers()
        self._unfuse()
        if not active:
            if self._loaded:
                self.pipe.disable_lora()
                self._bypass_layers()
            return
        names = [self._ensure_loaded(item.info) for item in active]
        self.pipe.enable_lora()
        # Explicitly, every time: the UNet and the text encoders otherwise disagree about the active set.
        self.pipe.set_adapters(names, adapter_weights=[item.weight for item in active])
        if self.fuse:
            self._fuse(key, names)
        if self.fused:
            self._bypass_layers()

    def _bypass_layers(self) -> None:
        """Put the UNet's original layers back in place of peft's (which only pass inputs through now)."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        unet = self.pipe.unet
        for name, module in list(unet.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent_name, _, attribute = name.rpartition(".")
                parent = unet.get_submodule(parent_name) if parent_name else unet
                setattr(parent, attribute, module.get_base_layer())
                self._bypassed.append((parent, attribute, module))

    def _restore_layers(self) -> None:
        for parent, attribute, layer in self._bypassed:
            setattr(parent, attribute, layer)
        self._bypassed.clear()

    def _fuse(self, key: tuple, names: list[str]) -> None:
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = {name.replace(".base_layer", "") + ".weight": m for name, m in self.pipe.unet.named_modules()
                  if isinstance(m, BaseTunerLayer) and any(n in getattr(m, "lora_A", {}) for n in names)}
        needed = sum(m.get_base_layer().weight.numel() * m.get_base_layer().weight.element_size()
                     for m in layers.values())
        if needed <= self._budget():
            self._originals = {m: m.get_base_layer().weight.detach().to("cpu", copy=True) for m in layers.values()}
        elif self._file_holds(layers):
            self._from_file = {m: name for name, m in layers.items()}
        else:
            return  # nowhere to keep the originals: stay unfused, still exact
        for layer in layers.values():
            layer.merge(adapter_names=[n for n in names if n in layer.lora_A])
        self._fused_key = key

    def _file_holds(self, layers: dict) -> bool:
        """True if the checkpoint file gives back these weights bit for bit (checked on two of them)."""
        names = list(layers)
        if self.originals is None or not names or not self.originals.holds(names):
            return False
        probe = [names[0], names[-1]]
        for name, tensor in self.originals.read(probe).items():
            live = layers[name].get_base_layer().weight
            if not torch.equal(tensor.to(live.device, live.dtype), live.detach()):
                return False
        return True

    def _unfuse(self) -> None:
        if self._fused_key is None:
            return
        with torch.no_grad():
            for layer, original in self._originals.items():
                layer.get_base_layer().weight.copy_(original)  # the exact original bits
                layer.merged_adapters.clear()
            if self._from_file:
                by_name = {name: layer for layer, name in self._from_file.items()}
                names = list(by_name)
                for start in range(0, len(names), 64):  # a slice at a time: bounded extra memory
                    for name, tensor in self.originals.read(names[start:start + 64]).items():
                        layer = by_name[name]
                        weight = layer.get_base_layer().weight
                        weight.copy_(tensor.to(weight.device, weight.dtype))
                        layer.merged_adapters.clear()
        self._originals.clear()
        self._from_file.clear()
        self._fused_key = None

    def _budget(self) -> int:
        if self.fuse_budget is not None:
            return self.fuse_budget
        import psutil

        return int(psutil.virtual_memory().available * 0.5)

    def _ensure_loaded(self, info: LoraInfo) -> str:
        key = (info.path, info.path.stat().st_mtime)
        if key in self._loaded:
            self._loaded.move_to_end(key)
            self._evict()
            return self._loaded[key]
        weights = self.weights.get(info.path)
        self._counter += 1
        name = f"lora{self._counter}"
        try:
            with _quiet_transformers():
                _load_adapter(self.pipe, weights, name)
        except Exception as exc:
            self._remove(name)
            raise UserError(f"LoRA {info.name!r} could not be applied to this checkpoint: it does not match its "
                            f"layers ({type(exc).__name__}: {str(exc)[:200]})", field="prompt") from None
        if not self._has(name):
            raise UserError(f"LoRA {info.name!r} holds no weights this checkpoint can use", field="prompt")
        self._loaded[key] = name
        self._evict()
        return name

    def _evict(self) -> None:
        while len(self._loaded) > max(1, self.max_loaded):
            _, old = self._loaded.popitem(last=False)
            self._remove(old)

    def _has(self, name: str) -> bool:
        return any(name in names for names in self.pipe.get_list_adapters().values())

    def _remove(self, name: str) -> None:
        if self._has(name):
            self.pipe.delete_adapters(name)


def _load_adapter(pipe, weights: LoraWeights, adapter: str) -> None:
    """`load_lora_weights` from cached tensors: the same three steps, with the file's saved config.

    diffusers reads a peft-format LoRA's saved LoraConfig (its alpha) only from a file path, and
    Homegrown passes tensors from memory, so the config is handed over here.
    """
    state, alphas, metadata = pipe.lora_state_dict(dict(weights.tensors), unet_config=pipe.unet.config,
                                                   return_lora_metadata=True)
    metadata = metadata or weights.adapter_metadata
    if not any(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for k in state):
        raise ValueError("no UNet or text encoder weights found")
    pipe.load_lora_into_unet(state, network_alphas=alphas, unet=pipe.unet, adapter_name=adapter, _pipeline=pipe,
                             metadata=metadata)
    for prefix in ("text_encoder", "text_encoder_2"):
        if any(k.startswith(prefix + ".") for k in state):
            pipe.load_lora_into_text_encoder(state, network_alphas=alphas, text_encoder=getattr(pipe, prefix),
                                             prefix=prefix, adapter_name=adapter, _pipeline=pipe, metadata=metadata)
    _load_text_encoder_weights(pipe, state, adapter)


def _load_text_encoder_weights(pipe, state: dict[str, torch.Tensor], adapter: str) -> None:
    """Put the text-encoder half of a LoRA into the adapter layers diffusers injected.

    With transformers 5 and peft 0.21 (the newest on PyPI), transformers' adapter loader creates the
    text-encoder LoRA layers but leaves their weights at their initial values (lora_B = 0, no effect),
    silently. peft's own `set_peft_model_state_dict` loads them correctly, so the weights go in through it.
    """
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft
    from peft import set_peft_model_state_dict

    for prefix in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, prefix, None)
        part = {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
        if encoder is None or not part:
            continue
        part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        if not hasattr(encoder, "text_model"):  # CLIPTextModel is flattened in transformers 5
            part = {k.removeprefix("text_model."): v for k, v in part.items()}
        result = set_peft_model_state_dict(encoder, part, adapter_name=adapter)
        if result.unexpected_keys:
            raise ValueError(f"{prefix} has no layers for {len(result.unexpected_keys)} LoRA weights "
                             f"(e.g. {result.unexpected_keys[0]})")


class _quiet_transformers:
    """transformers prints a long load report for every adapter; keep the console readable."""

    def __enter__(self):
        from transformers.utils import logging

        self._level = logging.get_verbosity()
        logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging

        logging.set_verbosity(self._level)
        return False

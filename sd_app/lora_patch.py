"""LoRAs applied to a pipeline: parsed weights in a bounded cache, adapters loaded, the active set fused.

`LoraSet` keeps parsed weights in a bounded cache and adapters loaded in the pipeline, so switching between
recent LoRAs is a `set_adapters` call; which files a job uses is decided by `lora_library.py`. Plain LoRAs
go through diffusers + peft; the LyCORIS kinds peft cannot read from kohya files (LoHa, LoKr, LoCon with
Tucker cores, DoRA, full diffs) are written into the weights in place (`weight_patch.py`), both under the
same `apply(active)`.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from . import lycoris, lycoris_weights
from .errors import UserError
from .lora_library import ActiveLora, LoraInfo
from .weight_patch import WeightPatches
from .models import read_header


@dataclass(frozen=True)
class LoraWeights:
    tensors: dict[str, torch.Tensor]
    adapter_metadata: dict | None  # diffusers' saved LoraConfig (alpha, rank pattern), for peft-format files
    kind: lycoris.NetworkKind  # the algorithm(s) the file holds: peft loads plain LoRAs, the rest is patched in


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
            kind = lycoris.network_kind({k: list(v.shape) for k, v in tensors.items()})
            weights = LoraWeights(tensors, json.loads(raw) if raw else None, kind)
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
        self.patches = WeightPatches(self._budget, lambda: self.originals)  # LyCORIS kinds, written in the weights
        self._index: dict[str, tuple[str, str]] | None = None  # kohya layer name -> (part, module), on first use
        self._key: tuple | None = None  # the set in place, when nothing needs doing to apply it again

    @property
    def fused(self) -> bool:
        return self._fused_key is not None

    def apply(self, active: list[ActiveLora]) -> None:
        key = tuple(sorted((str(a.info.path), a.info.path.stat().st_mtime, a.weight) for a in active))
        if key == self._key:  # exactly this set is in place already (fused and patched, or all off)
            return
        self._restore_layers()
        self._unfuse()
        self.patches.undo()
        self._key = None
        plain, patched = self._split(active)
        names = [self._ensure_loaded(item.info) for item in plain]
        if plain:
            self.pipe.enable_lora()
            # Explicitly, every time: the UNet and the text encoders otherwise disagree about the active set.
            self.pipe.set_adapters(names, adapter_weights=[item.weight for item in plain])
        elif self._loaded:
            self.pipe.disable_lora()
        # Patched before fusing: fusion saves (and puts back) the patched weights, the patches then the originals.
        self._patch(patched)
        if plain and self.fuse:
            self._fuse(key, names)
        if self.fused or not plain:
            self._bypass_layers()
            self._key = key

    def _split(self, active: list[ActiveLora]) -> tuple[list[ActiveLora], list[tuple[ActiveLora, LoraWeights]]]:
        """(the LoRAs peft loads, the ones written into the weights); a kind Homegrown does not run is refused."""
        plain, patched = [], []
        for item in active:
            weights = self.weights.get(item.info.path)
            if weights.kind.problem:
                raise lycoris.refuse(item.info.name, weights.kind)
            if weights.kind.needs_patching:
                patched.append((item, weights))
            else:
                plain.append(item)
        return plain, patched

    def _patch(self, patched: list[tuple[ActiveLora, LoraWeights]]) -> None:
        if not patched:
            return
        if self._index is None:
            self._index = lycoris_weights.layer_index(self.pipe)
        for item, weights in patched:
            try:
                self.patches.apply(self.pipe, self._index, item.info.name, weights.tensors, item.weight)
            except ValueError as exc:
                self.patches.undo()
                raise UserError(f"LoRA {item.info.name!r} ({weights.kind.label}) could not be applied to this "
                                f"checkpoint: {exc}", field="prompt") from None

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

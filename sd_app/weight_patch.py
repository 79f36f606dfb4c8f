"""Networks applied by changing weights in place, with the originals kept to put back bit for bit.

LyCORIS kinds (LoHa, LoKr, LoCon with Tucker cores, DoRA, full diffs) have no peft adapter that reads
kohya files; their weight change is computed per layer (`lycoris_weights.layer_update`) and written into the
layer's own parameter (the same tensor object, so a compiled UNet keeps its graphs). Undoing copies the
saved originals back: the exact pixels of no LoRA, never a subtraction's rounding.
"""

from __future__ import annotations

import torch

from . import lycoris, lycoris_weights


class WeightPatches:
    """Parameters changed in place; each original saved once (before the first change) and restored on `undo`.

    An original goes to RAM while the copies fit `budget()` bytes; past that, a UNet weight the checkpoint
    file holds bit for bit is read back from the file instead (`originals()`: a loading.CheckpointWeights).
    """

    def __init__(self, budget=lambda: 1 << 62, originals=lambda: None):
        self.budget = budget
        self.originals = originals
        self._saved: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
        self._from_file: dict[int, tuple[torch.nn.Parameter, str]] = {}  # param -> its diffusers name in the file
        self._ram = 0
        self.layers_patched = 0  # layers written since the set was last applied (0 for a set already in place)

    @property
    def active(self) -> bool:
        return bool(self._saved or self._from_file)

    @property
    def from_file(self) -> int:
        return len(self._from_file)

    def write(self, param: torch.nn.Parameter, value: torch.Tensor, file_name: str | None = None) -> None:
        with torch.no_grad():
            if id(param) not in self._saved and id(param) not in self._from_file:
                self._keep(param, file_name)
            param.copy_(value.to(param.device, param.dtype))

    def _keep(self, param: torch.nn.Parameter, file_name: str | None) -> None:
        size = param.numel() * param.element_size()
        if self._ram + size > self.budget() and file_name is not None and self._file_has(param, file_name):
            self._from_file[id(param)] = (param, file_name)
            return
        self._saved[id(param)] = (param, param.detach().to("cpu", copy=True))
        self._ram += size

    def _file_has(self, param: torch.nn.Parameter, name: str) -> bool:
        originals = self.originals()
        if originals is None or not originals.holds([name]):
            return False
        stored = originals.read([name])[name]
        return torch.equal(stored.to(param.device, param.dtype), param.detach())

    def undo(self) -> None:
        with torch.no_grad():
            for param, original in self._saved.values():
                param.copy_(original.to(param.device))
            pending = list(self._from_file.values())
            for start in range(0, len(pending), 64):  # a slice at a time: bounded extra memory
                chunk = dict((name, param) for param, name in pending[start:start + 64])
                for name, tensor in self.originals().read(list(chunk)).items():
                    chunk[name].copy_(tensor.to(chunk[name].device, chunk[name].dtype))
        self._saved.clear()
        self._from_file.clear()
        self._ram = 0
        self.layers_patched = 0

    def apply(self, pipe, index: dict[str, tuple[str, str]], name: str, tensors: dict[str, torch.Tensor],
              multiplier: float) -> None:
        """Write one network into the pipeline's layers. ValueError (naming the layer) if it does not fit;
        the caller undoes what was written."""
        layers = lycoris.layers_of(tensors)
        unknown = [layer for layer in layers if layer not in index]
        if unknown:
            raise ValueError(f"{len(unknown)} of its {len(layers)} layers are not in this checkpoint "
                             f"(e.g. {unknown[0]})")
        for layer, parts in layers.items():
            part, path = index[layer]
            module = lycoris_weights.find_module(pipe, part, path)
            bias = getattr(module, "bias", None)
            try:
                weight, new_bias = lycoris_weights.layer_update(parts, module.weight, bias, multiplier)
            except (ValueError, RuntimeError, KeyError) as exc:
                detail = f"no {exc.args[0]!r} tensor" if isinstance(exc, KeyError) else str(exc)[:200]
                raise ValueError(f"layer {layer}: {detail}") from None
            in_file = part == "unet"  # the checkpoint file can give the UNet's weights back (diffusers names)
            self.write(module.weight, weight, f"{path}.weight" if in_file else None)
            if new_bias is not None:
                self.write(bias, new_bias, f"{path}.bias" if in_file else None)
            self.layers_patched += 1

"""Networks applied by changing weights in place, with the originals kept to put back bit for bit.

LyCORIS kinds (LoHa, LoKr, LoCon with Tucker cores, DoRA, full diffs) have no peft adapter that reads
kohya files; their weight change is computed per layer (`lycoris.layer_update`) and written into the
layer's own parameter (the same tensor object, so a compiled UNet keeps its graphs). Undoing copies the
saved originals back: the exact pixels of no LoRA, never a subtraction's rounding.
"""

from __future__ import annotations

import torch

from . import lycoris


class WeightPatches:
    """Parameters changed in place; each original saved once (before the first change) and restored on `undo`."""

    def __init__(self):
        self._saved: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
        self.layers_patched = 0  # layers written since the set was last applied (0 for a set already in place)

    @property
    def active(self) -> bool:
        return bool(self._saved)

    def write(self, param: torch.nn.Parameter, value: torch.Tensor) -> None:
        with torch.no_grad():
            if id(param) not in self._saved:
                self._saved[id(param)] = (param, param.detach().to("cpu", copy=True))
            param.copy_(value.to(param.device, param.dtype))

    def undo(self) -> None:
        with torch.no_grad():
            for param, original in self._saved.values():
                param.copy_(original.to(param.device))
        self._saved.clear()
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
            module = lycoris.find_module(pipe, *index[layer])
            bias = getattr(module, "bias", None)
            try:
                weight, new_bias = lycoris.layer_update(parts, module.weight, bias, multiplier)
            except (ValueError, RuntimeError, KeyError) as exc:
                detail = f"no {exc.args[0]!r} tensor" if isinstance(exc, KeyError) else str(exc)[:200]
                raise ValueError(f"layer {layer}: {detail}") from None
            self.write(module.weight, weight)
            if new_bias is not None:
                self.write(bias, new_bias)
            self.layers_patched += 1

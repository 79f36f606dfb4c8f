"""LyCORIS networks: which algorithm a LoRA file holds, where its layers go, and the weight change each one makes.

A kohya / LyCORIS file names each layer it changes (`lora_unet_input_blocks_4_1_..._to_q`, or the diffusers
spelling `lora_unet_down_blocks_1_..._to_q`, `lora_te1_...`, `lora_te2_...`) and stores the change in a
form that depends on the algorithm: low-rank factors (LoRA / LoCon, with a Tucker core `lora_mid` on 3x3
convolutions), a Hadamard product of two low-rank products (LoHa), a Kronecker product (LoKr), the full
difference (`diff`), normalisation deltas (`w_norm`), each optionally followed by DoRA's weight
decomposition (`dora_scale`). `layer_update` turns one layer's tensors into the new weight, by the formulas
of KohakuBlueleaf/LyCORIS (scale = alpha / rank; DoRA's norm along the axis its `dora_scale` was saved on).

Plain LoRAs go through diffusers + peft (`lora_patch.py`); everything else is applied by patching weights in
place (`weight_patch.py`) with the changes `lycoris_weights.py` computes. This module imports no torch: the
LoRA library reads files' kinds while the page is up and the model stack still importing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # the library lists LoRA files before the model stack is imported (the page comes first)
    import torch

# The tensor that identifies each algorithm in a layer's group of tensors, as LyCORIS's own loader detects it.
_DETECT = (
    ("hada_w1_a", "loha"),
    ("lokr_w1", "lokr"),
    ("lokr_w1_a", "lokr"),
    ("lora_up.weight", "lora"),
    ("lora_B.weight", "lora"),
    ("diff", "full"),
    ("w_norm", "norm"),
    ("on_input", "ia3"),
    ("oft_blocks", "oft"),
    ("oft_R.weight", "oft"),
    ("a1.weight", "glora"),
)
RUNS = ("lora", "locon", "loha", "lokr", "full", "norm")
LABELS = {"lora": "LoRA", "locon": "LoCon", "loha": "LoHa", "lokr": "LoKr", "full": "Full", "norm": "Norm",
          "ia3": "IA3", "oft": "OFT", "boft": "BOFT", "glora": "GLoRA", "unknown": "unknown"}
REFUSED_NOTE = "Homegrown runs LoRA, LoCon, LoHa, LoKr, DoRA and full (diff) LyCORIS files"


@dataclass(frozen=True)
class NetworkKind:
    algorithms: tuple[str, ...]  # sorted keys of LABELS present in the file
    dora: bool

    @property
    def label(self) -> str:
        shown = "+".join(LABELS[a] for a in self.algorithms) or "empty"
        return f"{shown} (DoRA)" if self.dora else shown

    @property
    def refused(self) -> list[str]:
        return [a for a in self.algorithms if a not in RUNS]

    @property
    def problem(self) -> str | None:
        if not self.refused:
            return None
        names = " and ".join(LABELS[a] for a in self.refused)
        return f"its layers are {names}, a LyCORIS algorithm Homegrown does not run ({REFUSED_NOTE})"

    @property
    def needs_patching(self) -> bool:
        """Anything peft cannot load from a kohya file: every algorithm but plain LoRA, and DoRA."""
        return self.dora or any(a != "lora" for a in self.algorithms)


def split_key(key: str) -> tuple[str, str]:
    """`lora_unet_x.hada_w1_a` -> ("lora_unet_x", "hada_w1_a"); `unet.x.lora_A.weight` stays whole-layer named."""
    layer, _, rest = key.partition(".")
    return layer, rest


def group_layers(keys) -> dict[str, set[str]]:
    layers: dict[str, set[str]] = {}
    for key in keys:
        layer, rest = split_key(key)
        layers.setdefault(layer, set()).add(rest)
    return layers


def network_kind(shapes: dict[str, list[int]]) -> NetworkKind:
    """What a LoRA file holds, from its tensor names and shapes alone (a safetensors header is enough)."""
    found = set()
    dora = False
    for layer, parts in group_layers(shapes).items():
        kind = _layer_algorithm(parts)
        if kind == "lora" and ("lora_mid.weight" in parts or len(shapes.get(f"{layer}.lora_down.weight", ())) == 4):
            kind = "locon"
        if kind == "oft" and len(shapes.get(f"{layer}.oft_blocks", ())) == 4:
            kind = "boft"  # BOFT's butterfly blocks carry one more dimension than OFT's
        if kind:
            found.add(kind)
        dora = dora or "dora_scale" in parts  # kohya / LyCORIS DoRA; peft-format DoRA is peft's to load
    if "locon" in found:
        found.discard("lora")  # LoCon is LoRA on convolutions too: its linear layers are plain LoRA
    return NetworkKind(tuple(sorted(found)), dora)


def _layer_algorithm(parts: set[str]) -> str | None:
    for name, kind in _DETECT:
        if name in parts:
            return kind
    # peft-format files keep the whole module path in the key: `unet.down_blocks...to_q.lora_A.weight`
    if any(p.endswith(("lora_A.weight", "lora_B.weight", "lora_up.weight", "lora_down.weight")) for p in parts):
        return "lora"
    return None


def layers_of(tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """A file's tensors grouped by layer: {"lora_unet_...": {"hada_w1_a": ..., "alpha": ...}}."""
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        layer, rest = split_key(key)
        layers.setdefault(layer, {})[rest] = tensor
    return layers


def refuse(name: str, kind: NetworkKind) -> UserError:
    return UserError(f"LoRA {name!r} cannot be used: {kind.problem}", field="prompt")

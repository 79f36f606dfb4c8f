"""LyCORIS layers on the model: where each layer of a file goes, and the weight change each one makes.

`layer_update` turns one layer's tensors into the new weight, by the formulas of KohakuBlueleaf/LyCORIS
(scale = alpha / rank; DoRA's norm along the axis its `dora_scale` was saved on). Which algorithm a file
holds is `lycoris.py`'s (torch-free) business.
"""

from __future__ import annotations

import torch

# ---- where each layer goes -----------------------------------------------------------------------


def layer_index(pipe) -> dict[str, tuple[str, str]]:
    """kohya layer name -> (pipeline part, module path), both spellings of the UNet (SGM and diffusers).

    Built from the model's own modules: the diffusers spelling is the module path with "_" for ".", the
    SGM spelling comes from `ldm_format`'s block table (the inverse of diffusers' single-file conversion,
    which the checkpoint round-trip tests check). diffusers' kohya key converter rewrites whole LoRA keys
    (`to.q.lora` -> `to_q_lora`) and cannot name a module on its own.
    """
    from . import ldm_format

    index: dict[str, tuple[str, str]] = {}
    unet_names = _weight_modules(pipe.unet)
    for name in unet_names:
        index["lora_unet_" + name.replace(".", "_")] = ("unet", name)
    ldm = ldm_format.unet_to_ldm({name + ".weight": None for name in unet_names}, dict(pipe.unet.config))
    for name, sgm in zip(unet_names, ldm):
        sgm = sgm.removeprefix(ldm_format.UNET_PREFIX).removesuffix(".weight")
        index.setdefault("lora_unet_" + sgm.replace(".", "_"), ("unet", name))
    for part, prefix in (("text_encoder", "lora_te1_"), ("text_encoder_2", "lora_te2_")):
        encoder = getattr(pipe, part, None)
        if encoder is None:
            continue
        for name in _weight_modules(encoder):
            # kohya names CLIP's layers as transformers 4 did, under text_model (flattened in transformers 5)
            spelled = name if name.startswith(("text_model.", "text_projection")) else "text_model." + name
            index[prefix + spelled.replace(".", "_")] = (part, name)
    return index


_PATCHABLE = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.GroupNorm)


def _weight_modules(root: torch.nn.Module) -> list[str]:
    """Paths of the modules a network can change, as they were before peft wrapped any of them."""
    names = []
    for name, module in root.named_modules():
        if not isinstance(module, _PATCHABLE):
            continue
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts):
            continue  # peft's own adapter layers
        names.append(".".join(p for p in parts if p != "base_layer"))
    return names


def find_module(pipe, part: str, path: str) -> torch.nn.Module:
    """The module itself, also while peft wraps it (its base layer holds the weights)."""
    module = getattr(pipe, part).get_submodule(path)
    base = getattr(module, "get_base_layer", None)
    return base() if base is not None else module


# ---- the weight change of one layer ----------------------------------------------------------------


def layer_update(parts: dict[str, torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None,
                 multiplier: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The new (weight, bias) of a layer with one network's tensors applied at `multiplier`, in float32.

    Raises ValueError naming the mismatch if the tensors do not fit the layer.
    """
    w = weight.detach().float()
    delta, delta_bias = _delta(parts, tuple(w.shape))
    if delta.numel() != w.numel():
        raise ValueError(f"it changes a weight of {delta.numel()} values, the layer has {tuple(w.shape)}")
    delta = delta.reshape(w.shape)
    if "dora_scale" in parts:
        new = w + multiplier * (_decompose(w + delta, parts["dora_scale"].float()) - w)
    else:
        new = w + multiplier * delta
    new_bias = None
    if delta_bias is not None:
        if bias is None:
            raise ValueError("it changes a bias the layer does not have")
        if delta_bias.numel() != bias.numel():
            raise ValueError(f"it changes a bias of {delta_bias.numel()} values, the layer has {bias.numel()}")
        new_bias = bias.detach().float() + multiplier * delta_bias.reshape(bias.shape)
    return new, new_bias


def _scale(parts: dict[str, torch.Tensor], rank: int | None) -> float:
    alpha = parts.get("alpha")
    if alpha is None or not rank:
        return 1.0
    alpha = float(alpha)
    return alpha / rank if alpha else 1.0  # LyCORIS: alpha 0 means alpha = rank


def _delta(parts: dict[str, torch.Tensor], shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    p = {k: v.float() for k, v in parts.items()}
    if "hada_w1_a" in p:
        one = _hada_half(p["hada_w1_a"], p["hada_w1_b"], p.get("hada_t1"))
        two = _hada_half(p["hada_w2_a"], p["hada_w2_b"], p.get("hada_t2"))
        return one.reshape(shape) * two.reshape(shape) * _scale(p, p["hada_w1_b"].shape[0]), None
    if "lokr_w1" in p or "lokr_w1_a" in p:
        return _kron(p, shape), None
    if "lora_up.weight" in p or "lora_B.weight" in p:
        up = p.get("lora_up.weight", p.get("lora_B.weight"))
        down = p.get("lora_down.weight", p.get("lora_A.weight"))
        mid = p.get("lora_mid.weight")
        if mid is not None:  # Tucker: the 3x3 core between two 1x1 factors
            product = torch.einsum("i j ..., p i, j r -> p r ...", mid, up.flatten(1), down.flatten(1))
        else:
            product = up.flatten(1) @ down.flatten(1)
        return product * _scale(p, down.shape[0]), None
    if "diff" in p:
        return p["diff"], p.get("diff_b")
    if "w_norm" in p:
        return p["w_norm"], p.get("b_norm")
    raise ValueError("it holds no weights of an algorithm Homegrown runs")


def _hada_half(a: torch.Tensor, b: torch.Tensor, core: torch.Tensor | None) -> torch.Tensor:
    if core is not None:  # Tucker: a is (rank, out), b is (rank, in)
        return torch.einsum("i j ..., j r, i p -> p r ...", core, b, a)
    return a.flatten(1) @ b.flatten(1)


def _kron(p: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
    if "lokr_w2" in p:
        w2 = p["lokr_w2"]
    elif "lokr_t2" in p:
        w2 = torch.einsum("i j ..., i p, j r -> p r ...", p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
    else:
        b = p["lokr_w2_b"]
        w2 = (p["lokr_w2_a"] @ b.flatten(1)).reshape(p["lokr_w2_a"].shape[0], *b.shape[1:])
    # alpha / rank only when a factor is itself low-rank; two full factors are used as they are
    rank = p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else None
    while w1.dim() < w2.dim():
        w1 = w1.unsqueeze(-1)
    return torch.kron(w1, w2.contiguous()).reshape(shape) * _scale(p, rank)


def _decompose(merged: torch.Tensor, dora_scale: torch.Tensor) -> torch.Tensor:
    """DoRA: the merged weight's direction with the trained magnitude, per output row or per input column.

    LyCORIS saves `dora_scale` as (out, 1, ...) (wd_on_out, its default) or, in older files, (1, in, ...).
    """
    out_axis = dora_scale.dim() >= 2 and dora_scale.shape[0] == merged.shape[0] and dora_scale.shape[1] == 1
    if out_axis:
        norm = merged.flatten(1).norm(dim=1).reshape(merged.shape[0], *[1] * (merged.dim() - 1))
    else:
        norm = merged.transpose(0, 1).flatten(1).norm(dim=1).reshape(1, merged.shape[1], *[1] * (merged.dim() - 2))
    norm = norm + torch.finfo(merged.dtype).eps
    return merged * (dora_scale.reshape(norm.shape) / norm)

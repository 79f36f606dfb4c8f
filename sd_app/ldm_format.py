"""Diffusers weights -> the original (Stability "LDM") single-file key layout of SDXL checkpoints.

diffusers can read `sd_xl_base_1.0.safetensors`-style files but not write them. The demo models and the
benchmarks need such files, so this module writes them: the same key names, nesting and tensor shapes
as the released checkpoints, for any width and depth. The inverse is diffusers' own `from_single_file`,
which the tests use to check that a round trip gives back every weight.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
BASE_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
BASE_CLIP_G_PREFIX = "conditioner.embedders.1.model."
REFINER_CLIP_G_PREFIX = "conditioner.embedders.0.model."

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}
_UNET_RESNET = {
    "norm1.": "in_layers.0.",
    "conv1.": "in_layers.2.",
    "norm2.": "out_layers.0.",
    "conv2.": "out_layers.3.",
    "time_emb_proj.": "emb_layers.1.",
    "conv_shortcut.": "skip_connection.",
}


def _unet_prefix_map(config: dict) -> dict[str, str]:
    """diffusers module prefix -> LDM prefix, derived from the block layout in the UNet config."""
    lpb = config["layers_per_block"]
    down_types, up_types = config["down_block_types"], config["up_block_types"]
    n = len(down_types)
    mapping: dict[str, str] = {}
    for i, kind in enumerate(down_types):
        for j in range(lpb):
            ldm = 1 + i * (lpb + 1) + j
            mapping[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{ldm}.0."
            if kind.startswith("CrossAttn"):
                mapping[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{ldm}.1."
        if i < n - 1:
            mapping[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(i + 1) * (lpb + 1)}.0.op."
    for i, kind in enumerate(up_types):
        has_attn = kind.startswith("CrossAttn")
        for j in range(lpb + 1):
            ldm = i * (lpb + 1) + j
            mapping[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{ldm}.0."
            if has_attn:
                mapping[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{ldm}.1."
        if i < n - 1:
            mapping[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{i * (lpb + 1) + lpb}.{2 if has_attn else 1}."
    mapping["mid_block.resnets.0."] = "middle_block.0."
    mapping["mid_block.attentions.0."] = "middle_block.1."
    mapping["mid_block.resnets.1."] = "middle_block.2."
    return mapping


def _longest_prefix(key: str, table: dict[str, str]) -> str | None:
    best = None
    for prefix in table:
        if key.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    return best


def unet_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    blocks = _unet_prefix_map(config)
    out = {}
    for key, value in state_dict.items():
        top = _longest_prefix(key, _UNET_TOP)
        if top is not None:
            out[UNET_PREFIX + _UNET_TOP[top] + key[len(top):]] = value
            continue
        prefix = _longest_prefix(key, blocks)
        if prefix is None:
            raise KeyError(f"no LDM name for UNet weight {key}")
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            part = _longest_prefix(rest, _UNET_RESNET)
            rest = _UNET_RESNET[part] + rest[len(part):]
        out[UNET_PREFIX + blocks[prefix] + rest] = value
    return out


def _vae_prefix_map(config: dict) -> dict[str, str]:
    n = len(config["down_block_types"])
    lpb = config["layers_per_block"]
    mapping = {"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."}
    for side in ("encoder", "decoder"):
        mapping[f"{side}.conv_in."] = f"{side}.conv_in."
        mapping[f"{side}.conv_out."] = f"{side}.conv_out."
        mapping[f"{side}.conv_norm_out."] = f"{side}.norm_out."
        mapping[f"{side}.mid_block.resnets.0."] = f"{side}.mid.block_1."
        mapping[f"{side}.mid_block.resnets.1."] = f"{side}.mid.block_2."
        mapping[f"{side}.mid_block.attentions.0."] = f"{side}.mid.attn_1."
    for i in range(n):
        for j in range(lpb):
            mapping[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
        if i < n - 1:
            mapping[f"encoder.down_blocks.{i}.downsamplers.0."] = f"encoder.down.{i}.downsample."
        # decoder blocks are numbered in reverse in the LDM layout
        for j in range(lpb + 1):
            mapping[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
        if i < n - 1:
            mapping[f"decoder.up_blocks.{i}.upsamplers.0."] = f"decoder.up.{n - 1 - i}.upsample."
    return mapping


_VAE_ATTN = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.", "to_out.0.": "proj_out."}


def vae_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    blocks = _vae_prefix_map(config)
    out = {}
    for key, value in state_dict.items():
        prefix = _longest_prefix(key, blocks)
        if prefix is None:
            raise KeyError(f"no LDM name for VAE weight {key}")
        rest = key[len(prefix):]
        if ".resnets." in prefix:
            rest = rest.replace("conv_shortcut.", "nin_shortcut.")
        if ".attentions." in prefix:
            part = _longest_prefix(rest, _VAE_ATTN)
            rest = _VAE_ATTN[part] + rest[len(part):]
            if value.ndim == 2:  # the LDM VAE attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out[VAE_PREFIX + blocks[prefix] + rest] = value
    return out


def clip_l_to_ldm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The CLIP-L encoder is stored with Hugging Face names under the embedder prefix.
    out = {}
    for key, value in state_dict.items():
        key = key if key.startswith("text_model.") else "text_model." + key
        out[BASE_CLIP_L_PREFIX + key] = value
    return out


_OPENCLIP_LAYER = {
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "self_attn.out_proj.": "attn.out_proj.",
}


def openclip_to_ldm(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection weights -> OpenCLIP names (fused q/k/v, transposed projection)."""
    out = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("text_model.")
        if key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.split(".")[-1]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif key.startswith("encoder.layers."):
            _, _, index, rest = key.split(".", 3)
            block = f"{prefix}transformer.resblocks.{index}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                which, kind = rest.split(".")[1][0], rest.split(".")[2]
                qkv.setdefault(f"{block}attn.in_proj_{kind}", {})[which] = value
                continue
            part = _longest_prefix(rest, _OPENCLIP_LAYER)
            if part is None:
                raise KeyError(f"no OpenCLIP name for text encoder weight {key}")
            out[block + _OPENCLIP_LAYER[part] + rest[len(part):]] = value
        elif key == "embeddings.position_ids":
            continue
        else:
            raise KeyError(f"no OpenCLIP name for text encoder weight {key}")
    for name, parts in qkv.items():
        out[name] = torch.cat([parts["q"], parts["k"], parts["v"]])
    # OpenCLIP checkpoints carry the contrastive temperature; SDXL files keep it.
    out[prefix + "logit_scale"] = torch.tensor(4.6052)
    return out


SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.bfloat16: "BF16", torch.int64: "I64"}


def write_safetensors(path: str | Path, specs: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
                      tensor_for: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write a .safetensors file one tensor at a time, header keys sorted, atomically.

    `specs` names every tensor with its shape and dtype; `tensor_for(name)` makes it when its turn comes,
    so a 7 GB checkpoint is written without holding it in memory. Sorted keys make the file's bytes (and
    sha256) depend only on its contents: the safetensors library writes them in hash-map order.
    """
    path = Path(path)
    specs = sorted(specs)
    header: dict = {"__metadata__": dict(sorted((metadata or {}).items()))}
    offset = 0
    for name, shape, dtype in specs:
        size = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format aligns the data to 8 bytes
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for name, shape, dtype in specs:
            tensor = tensor_for(name)
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise ValueError(f"{name}: made {tuple(tensor.shape)} {tensor.dtype}, header says {shape} {dtype}")
            f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path

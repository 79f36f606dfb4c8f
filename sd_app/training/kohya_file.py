"""Writing the trained LoRA as kohya's sd-scripts writes it: its tensors, its `ss_*` metadata, its hashes.

A1111, ComfyUI and civitai read the `ss_*` fields (dim, alpha, base model version, output name, tag
frequencies for trigger words, resolution, image count ...). `sshs_model_hash` is the sha256 of the bytes
after the safetensors header (A1111's and sd-webui-additional-networks' "addnet" hash, which A1111 writes
as `Lora hashes`); `sshs_legacy_hash` is additional-networks' old hash (8 hex digits of the sha256 of the
64 KiB at offset 1 MiB). As in sd-scripts, both are taken over the file with only the `ss_*` metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
from pathlib import Path

import torch

from .. import __version__
from .config import TrainConfig

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
BASE_MODEL_VERSION = "sdxl_base_v1-0"


def metadata(config: TrainConfig, dataset, steps: int, started_at: float, model_name: str,
             model_hash: str | None, precision: str, optimizer: str, epochs: int, batches_per_epoch: int) -> dict:
    network_args = {"conv_dim": str(config.rank), "conv_alpha": str(config.alpha)} if config.train_conv else {}
    buckets = sorted({item.bucket for item in dataset.items})
    fields = {
        "ss_session_id": str(config.seed),
        "ss_training_started_at": f"{started_at:.6f}",
        "ss_training_finished_at": f"{time.time():.6f}",
        "ss_output_name": config.output_name,
        "ss_sd_model_name": model_name,
        "ss_new_sd_model_hash": model_hash or "",
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_v2": "False",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(config.rank),
        "ss_network_alpha": _number(config.alpha),
        "ss_network_args": json.dumps(network_args) if network_args else "null",
        "ss_network_train_unet_only": str(not config.train_text_encoder),
        "ss_network_train_text_encoder_only": "False",
        "ss_resolution": f"({config.resolution}, {config.resolution})",
        "ss_enable_bucket": "True",
        "ss_bucket_info": json.dumps({"buckets": {str(i): {"resolution": list(b), "count": sum(
            dataset.repeats[it.folder] for it in dataset.items if it.bucket == b)} for i, b in enumerate(buckets)}}),
        "ss_num_train_images": str(sum(dataset.repeats[item.folder] for item in dataset.items)),
        "ss_num_reg_images": "0",
        "ss_num_batches_per_epoch": str(batches_per_epoch),
        "ss_num_epochs": str(epochs),
        "ss_epoch": str(epochs),
        "ss_steps": str(steps),
        "ss_max_train_steps": str(config.max_steps),
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_learning_rate": _number(config.learning_rate),
        "ss_unet_lr": _number(config.learning_rate),
        "ss_text_encoder_lr": _number(config.text_encoder_lr) if config.train_text_encoder else "0.0",
        "ss_lr_scheduler": config.lr_schedule,
        "ss_lr_warmup_steps": str(config.warmup_steps),
        "ss_optimizer": optimizer,
        "ss_mixed_precision": precision,
        "ss_full_fp16": "False",
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_gradient_accumulation_steps": "1",
        "ss_min_snr_gamma": _number(config.min_snr_gamma) if config.min_snr_gamma else "None",
        "ss_noise_offset": _number(config.noise_offset) if config.noise_offset else "None",
        "ss_seed": str(config.seed),
        "ss_cache_latents": "True",
        "ss_caption_extension": ".txt",
        "ss_dataset_dirs": json.dumps(dataset.dataset_dirs()),
        "ss_tag_frequency": json.dumps(dataset.tag_frequency()),
        "ss_training_comment": f"trained with Homegrown {__version__}",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-xl-v1-base/lora",
        "modelspec.implementation": "https://github.com/kohya-ss/sd-scripts",
        "modelspec.title": config.output_name,
        "modelspec.resolution": f"{config.resolution}x{config.resolution}",
    }
    if config.trigger_word:
        fields["modelspec.trigger_phrase"] = config.trigger_word
    return fields


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def addnet_hashes(data: bytes) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) of a safetensors file's bytes."""
    header_length = struct.unpack("<Q", data[:8])[0]
    model_hash = hashlib.sha256(data[8 + header_length:]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash


def save(state: dict[str, torch.Tensor], fields: dict[str, str], path: Path) -> Path:
    """Write the LoRA with its metadata and hashes; the file appears whole (written beside it, then renamed)."""
    from safetensors.torch import save as save_bytes

    training_only = {k: v for k, v in fields.items() if k.startswith("ss_")}
    model_hash, legacy_hash = addnet_hashes(save_bytes(state, training_only))
    data = save_bytes(state, {**fields, "sshs_model_hash": model_hash, "sshs_legacy_hash": legacy_hash})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    temporary.write_bytes(data)
    os.replace(temporary, path)
    return path

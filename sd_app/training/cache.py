"""Latents and text embeddings, computed once per dataset and model and kept on disk.

Encoding an image through SDXL's VAE costs more than a training step, and every image is seen many
times: each is encoded once, at its bucket's size, and kept under `<work_dir>/cache`, keyed by the hash of
the image file, the checkpoint's sha256 and the bucket. Captions' embeddings likewise (keyed by caption and
checkpoint), unless the text encoders train too (then their output changes each step).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .buckets import fit
from .dataset import Dataset, Item, load_rgb

CACHE_VERSION = "1"  # bump when what is cached changes meaning


@dataclass
class Example:
    latents: torch.Tensor  # (4, h, w), scaled by the VAE's scaling factor
    time_ids: torch.Tensor  # SDXL's micro-conditioning: original size, crop top-left, target size
    caption: str


def encode_text(tokenizers, encoders, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's conditioning as it was trained: both encoders' penultimate hidden states side by side, and the
    second encoder's projected pooled output."""
    states, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, encoders):
        ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        out = encoder(ids, output_hidden_states=True)
        states.append(out.hidden_states[-2])
        if hasattr(out, "text_embeds"):
            pooled = out.text_embeds
    return torch.cat(states, dim=-1), pooled


class Cache:
    def __init__(self, folder: Path, model_hash: str):
        self.folder = Path(folder)
        self.model_hash = model_hash
        self.hits = 0
        self.misses = 0

    def _path(self, kind: str, *key) -> Path:
        digest = hashlib.sha256(":".join(map(str, (CACHE_VERSION, self.model_hash, *key))).encode()).hexdigest()
        return self.folder / kind / f"{digest[:32]}.pt"

    def _load(self, path: Path):
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
            self.hits += 1
            return value
        except (OSError, RuntimeError, EOFError, ValueError):
            return None  # absent or damaged: computed again

    def _store(self, path: Path, value) -> None:
        self.misses += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".part")
        torch.save(value, temporary)
        temporary.replace(path)

    @torch.no_grad()
    def latents(self, item: Item, vae, device) -> Example:
        path = self._path("latents", item.sha256, *item.bucket)
        cached = self._load(path)
        if cached is None:
            fitted = fit(load_rgb(item.path), item.bucket)
            pixels = torch.from_numpy(np.asarray(fitted.image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
            # SDXL's VAE overflows in fp16: the encode runs in fp32 (the cache keeps the result).
            dist = vae.encode(pixels[None].to(device, torch.float32)).latent_dist
            latents = (dist.mean * vae.config.scaling_factor)[0].to("cpu", torch.float32)
            height, width = item.bucket[1], item.bucket[0]
            time_ids = torch.tensor([*fitted.original_size, *fitted.crop_top_left, height, width], dtype=torch.float32)
            cached = {"latents": latents, "time_ids": time_ids}
            self._store(path, cached)
        return Example(cached["latents"], cached["time_ids"], item.caption)

    @torch.no_grad()
    def text(self, caption: str, tokenizers, encoders, device) -> tuple[torch.Tensor, torch.Tensor]:
        path = self._path("text", caption)
        cached = self._load(path)
        if cached is None:
            embeds, pooled = encode_text(tokenizers, encoders, [caption], device)
            cached = {"embeds": embeds[0].to("cpu", torch.float32), "pooled": pooled[0].to("cpu", torch.float32)}
            self._store(path, cached)
        return cached["embeds"], cached["pooled"]


def cache_dataset(cache: Cache, dataset: Dataset, vae, device, report=None) -> list[Example]:
    """Every image's latents, from the disk cache or encoded now (`report(i, n)` after each)."""
    vae_dtype = vae.dtype
    vae.to(device, torch.float32)
    try:
        examples = []
        for number, item in enumerate(dataset.items):
            examples.append(cache.latents(item, vae, device))
            if report:
                report(number + 1, len(dataset.items))
        return examples
    finally:
        vae.to(dtype=vae_dtype)

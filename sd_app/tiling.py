"""Seamless tiling (A1111's `tiling: true`): the UNet's and the VAE's convolutions pad circularly while a job runs,
so the left edge continues the right and the top the bottom, and the picture repeats without seams.

A1111 switches every Conv2d's `padding_mode` to "circular" for the job; so does this, and puts each one back as
it was afterwards, whatever way the job ends. LoRA layers are convolutions inside the UNet too, so they follow.

    with seamless(pipe):                 # a diffusers pipeline (or several, or modules)
        image = pipe(...)
    with seamless(pipelines, on=params.tiling):   # a Pipelines: what is loaded now, and what loads inside
        ...
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

PARTS = ("unet", "vae")  # the convolutions that make the picture (the text encoders have none)


def convolutions(target) -> list[torch.nn.Conv2d]:
    """The Conv2d layers of a pipeline's UNet and VAE, or of a module."""
    if isinstance(target, torch.nn.Module):
        modules = [target]
    else:
        modules = [part for name in PARTS if isinstance(part := getattr(target, name, None), torch.nn.Module)]
    return [layer for module in modules for layer in module.modules() if isinstance(layer, torch.nn.Conv2d)]


@contextmanager
def seamless(*targets, on: bool = True):
    """Circular padding in the convolutions of `targets` (diffusers pipelines, modules, or a `Pipelines`, whose
    base and refiner count, including one loaded inside the block) until the block ends; then every layer has
    the padding it had before. With on=False, nothing changes."""
    changed: dict[torch.nn.Conv2d, str] = {}

    def make_circular(target) -> None:
        for layer in convolutions(target):
            if layer not in changed and _pads(layer):
                changed[layer] = layer.padding_mode
                layer.padding_mode = "circular"

    patched = []
    if on:
        for target in targets:
            if target is None:
                continue
            if hasattr(target, "ensure_base"):  # a Pipelines: its models now, and any it loads inside the block
                for loaded in (target.base, target.refiner):
                    if loaded is not None:
                        make_circular(loaded.pipe)
                patched.append(target)
                for method in ("ensure_base", "ensure_refiner"):
                    setattr(target, method, _also_circular(getattr(target, method), make_circular))
            else:
                make_circular(target)
    try:
        yield
    finally:
        for target in patched:
            for method in ("ensure_base", "ensure_refiner"):
                target.__dict__.pop(method, None)  # the class's method again
        for layer, mode in changed.items():
            layer.padding_mode = mode


def _pads(layer: torch.nn.Conv2d) -> bool:
    padding = layer.padding
    return padding == "same" or (not isinstance(padding, str) and any(p > 0 for p in padding))


def _also_circular(load, make_circular):
    def loading(*args, **kwargs):
        loaded = load(*args, **kwargs)
        if loaded is not None:
            make_circular(loaded.pipe)
        return loaded

    return loading

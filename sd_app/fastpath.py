"""The fast path: `torch.compile` for what runs on every step and every image (the UNet, the VAE decoder).

A setting turns it on; nothing else changes. Modules are compiled in place (`nn.Module.compile`), so the
pipeline keeps the same layers and weights: LoRAs load, fuse and unfuse exactly as without it, and the
compiled code reads the weights as they are at each call. Pixels match the eager path to a level or two
of 255 (kernels sum in another order).

The cost is the first image: compiling takes tens of seconds, and again at the first change of image size
(torch then compiles a graph for any size, which takes longer). Another checkpoint of the same architecture
reuses the graphs (weights are inputs, not constants), and so does a fused LoRA set (`lora.LoraSet` puts
the UNet's own layers back in place of peft's while one is fused). An unfused set, or the refiner, is a
graph of its own. Graphs are kept up to RECOMPILE_LIMIT; past it torch runs the rest eagerly. Text
encoders are left eager: they run once per prompt.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # torch imports when a pipeline is compiled: the settings table (and the page) need only the names
    import torch

# name -> torch.compile arguments; None runs eagerly. A table, so the Settings choice and the API share it.
# CUDA graphs are left out ("max-autotune-no-cudagraphs"): each captured shape keeps a private memory
# pool, and replaying them across LoRA fusing has not been verified on a GPU.
COMPILE_MODES: dict[str, dict | None] = {
    "off": None,
    "default": {"mode": "default"},
    "max-autotune": {"mode": "max-autotune-no-cudagraphs"},
}


RECOMPILE_LIMIT = 64


def check_mode(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise UserError(f"unknown compile mode {mode!r}; choose one of: {', '.join(COMPILE_MODES)}", field="compile")
    return mode


def compiled_modules(pipe) -> list[torch.nn.Module]:
    return [pipe.unet, pipe.vae.decoder]


def set_compiled(pipe, mode: str, device: torch.device) -> None:
    """Compile the pipeline's per-step modules with `mode` (a COMPILE_MODES key), or make them eager again."""
    import torch

    arguments = COMPILE_MODES[mode]
    if arguments is not None:
        # Compiled graphs are cached per forward() code, shared by every module of a class: base and refiner
        # UNets, image sizes, unfused LoRA sets. torch's default of 8 is used up within a session, and past it
        # torch silently runs eagerly; each graph costs a few MB of host memory.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for module in compiled_modules(pipe):
        if arguments is None:
            if module._compiled_call_impl is not None and device.type == "cuda":
                module.to(memory_format=torch.contiguous_format)  # as loading left it: eager runs as before
            module._compiled_call_impl = None  # what nn.Module.compile set; torch has no public "uncompile"
        else:
            if device.type == "cuda":
                # NHWC is the tensor cores' native layout for convolutions: compiled kernels skip the transposes.
                module.to(memory_format=torch.channels_last)
            module.compile(**arguments)


def is_compiled(pipe) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in compiled_modules(pipe))


def compile_errors() -> tuple[type[BaseException], ...]:
    """What a failed compile raises: no C compiler, an unsupported GPU, an operator inductor cannot lower."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    return TorchDynamoException, InductorError

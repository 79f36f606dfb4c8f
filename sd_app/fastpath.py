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

The convolutions' memory layout is chosen here too (`conv_layout`), on and off the fast path.
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
    set_layout(pipe, device, compiled=arguments is not None)
    for module in compiled_modules(pipe):
        if arguments is None:
            module._compiled_call_impl = None  # what nn.Module.compile set; torch has no public "uncompile"
        else:
            module.compile(**arguments)


def conv_layout(device: torch.device, compiled: bool, dtype: torch.dtype | None = None) -> torch.memory_format:
    """The memory layout of the UNet's and the VAE's convolution weights (activations follow the weights).

    NHWC for fp32 on the CPU: oneDNN runs convolutions in it natively, without the transposes NCHW costs
    (measured on the demo model: txt2img 13 % faster, a VAE decode or encode 30 %; plain diffusers' img2img got it
    by accident, from its image processor's permuted pixels). Half-precision weights on the CPU stay as loaded:
    they are mapped from the file, and a new layout would copy them (and it is not measured). NHWC for compiled
    CUDA modules: the tensor cores' layout, and compiled kernels skip the transposes. NCHW (as loaded) for eager
    CUDA and MPS: not measured there yet."""
    import torch

    if (device.type == "cpu" and dtype in (None, torch.float32)) or (compiled and device.type == "cuda"):
        return torch.channels_last
    return torch.contiguous_format


def set_layout(pipe, device: torch.device, compiled: bool) -> None:
    """Put the UNet's and VAE's convolution weights in `conv_layout`'s layout. Pixels differ from the other layout
    by a float rounding (a level of 255 at most); LoRAs patch the weights in place and keep it."""
    layout = conv_layout(device, compiled, pipe.unet.dtype)
    for module in (pipe.unet, pipe.vae):
        if any(p.dim() == 4 and not p.is_contiguous(memory_format=layout) for p in module.parameters()):
            module.to(memory_format=layout)


def is_compiled(pipe) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in compiled_modules(pipe))


def compile_errors() -> tuple[type[BaseException], ...]:
    """What a failed compile raises: no C compiler, an unsupported GPU, an operator inductor cannot lower."""
    from torch._dynamo.exc import TorchDynamoException
    from torch._inductor.exc import InductorError

    return TorchDynamoException, InductorError

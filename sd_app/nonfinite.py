"""Never a silent black image: the conditioning, the latents after each pass and the decoded pixels are checked
for NaN and infinity, and a job that has them fails with a message naming the likely cause.

A single NaN in a model's weights, a LoRA's or the conditioning spreads through every step to every pixel;
decoding it used to give an all-black image and a 200. The checks cost one reduction per tensor (nothing
next to a UNet step). Only when one fails are the suspects examined, in order: the job's LoRA files, then
the model's own weights part by part, then the request (prompt weight, CFG scale, half precision), so the
message says which file or value to change.
"""

from __future__ import annotations

import torch

from .errors import UserError
from .prompts import WEIGHT_RANGE


class NotFinite(Exception):
    """Raised where a tensor of the job is not finite; the engine turns it into a UserError with `explain`."""

    def __init__(self, stage: str, model, parts: tuple[str, ...], field: str = "checkpoint",
                 largest_weight: float = 1.0):
        super().__init__(stage)
        self.stage = stage  # what produced it, for the message: "the prompt's conditioning", "the base pass"...
        self.model = model  # the pipelines.LoadedModel whose weights are suspect (None: the base)
        self.parts = parts  # which of its modules could have made it: "text_encoder", "unet", "vae"
        self.field = field  # the request field that chose that model
        self.largest_weight = largest_weight  # the largest prompt weight in the conditioning used


def check(tensors, stage: str, model, parts: tuple[str, ...], field: str = "checkpoint",
          largest_weight: float = 1.0) -> None:
    """Raise NotFinite unless every tensor is finite."""
    for tensor in tensors:
        if not bool(torch.isfinite(tensor).all()):
            raise NotFinite(stage, model, parts, field, largest_weight)


PART_NAMES = {"text_encoder": "first text encoder (CLIP-L)", "text_encoder_2": "second text encoder (OpenCLIP)",
              "unet": "UNet", "vae": "VAE"}


def explain(err: NotFinite, params, active_loras=(), lora_files=None,
            vae_file: tuple[str, str] | None = None) -> UserError:
    """The message for a job whose `err.stage` came out NaN or infinite: the LoRA, the checkpoint (and which
    of its parts) or the request value most likely at fault. `lora_files` is the lora_patch.WeightCache
    the job's LoRAs were read through."""
    name = err.model.checkpoint.name
    happened = f"{err.stage} came out NaN or infinite, so the image would be black"
    for lora in active_loras:
        bad = _first_bad(lora_files.get(lora.info.path).tensors.items())
        if bad:
            return UserError(f"{happened}: LoRA {lora.info.name!r} has NaN or infinite values in its weights "
                             f"(e.g. {bad}); the file is damaged. Take <lora:{lora.info.name}:…> out of the prompt "
                             "or replace the file", field="prompt")
    for part in err.parts:
        module = getattr(err.model.pipe, part, None)
        bad = _first_bad(module.named_parameters()) if module is not None else None
        if bad:
            whose = (f"the VAE file {vae_file[0]!r} (Settings → VAE)" if part == "vae" and vae_file
                     else f"checkpoint {name!r}")
            fused = f" (with LoRAs {_names(active_loras)} applied)" if active_loras and part != "vae" else ""
            return UserError(f"{happened}: {whose} has NaN or infinite weights in its {PART_NAMES[part]}{fused} "
                             f"(e.g. {bad}); the file is damaged or was saved wrongly. Use another file",
                             field=err.field if whose.startswith("checkpoint") else None)
    return UserError(f"{happened} with checkpoint {name!r}, although no weights are damaged: the numbers "
                     f"overflowed. {_suspects(params, active_loras, err.largest_weight, err.model)}")


def _suspects(params, active_loras, largest_weight: float, model) -> str:
    hints = []
    if largest_weight > 2:
        hints.append(f"a prompt weight of {largest_weight:g} (weights are used between {WEIGHT_RANGE[0]:g} and "
                     f"{WEIGHT_RANGE[1]:g}; past 2 they rarely help)")
    if params.cfg_scale > 15:
        hints.append(f"CFG scale {params.cfg_scale:g}")
    strong = [f"{lora.info.name}:{lora.weight:g}" for lora in active_loras if abs(lora.weight) > 2]
    if strong:
        hints.append(f"LoRA weights {', '.join(strong)}")
    if model.pipe.unet.dtype == torch.float16:
        hints.append("half precision (Settings → Precision: bfloat16 or float32)")
    if active_loras and not strong:
        hints.append(f"the LoRAs {_names(active_loras)}")
    return ("Try lowering or changing: " + "; ".join(hints) + ".") if hints else \
        "Try another seed, sampler or checkpoint."


def _first_bad(named_tensors) -> str | None:
    """The name of the first tensor holding NaN or infinity, if any."""
    for name, tensor in named_tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _names(active_loras) -> str:
    return ", ".join(repr(lora.info.name) for lora in active_loras)

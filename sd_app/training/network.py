"""The LoRA layers a run trains (peft adapters on the UNet and, optionally, the text encoders) and their
kohya names.

Layers are chosen as kohya's sd-scripts and diffusers' SDXL example choose them: the UNet's attention
projections, optionally its feed-forward layers and its resnets' 3x3 convolutions (kohya's LoCon "conv_dim"),
and the text encoders' attention projections (out_proj included: loaders recognise kohya text-encoder LoRAs
by it). kohya names a layer by its SGM/LDM path with dots as underscores: the UNet's
`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` is
`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`.
"""

from __future__ import annotations

import torch

from .. import ldm_format

ADAPTER = "homegrown_training"
UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
UNET_FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
UNET_CONV = ("conv1", "conv2")  # the resnets' 3x3 convolutions
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
TEXT_PREFIXES = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def unet_targets(feed_forward: bool, conv: bool) -> list[str]:
    return [*UNET_ATTENTION, *(UNET_FEED_FORWARD if feed_forward else ()), *(UNET_CONV if conv else ())]


def add_lora(models: dict[str, torch.nn.Module], rank: int, alpha: float, seed: int, feed_forward: bool = False,
             conv: bool = False) -> None:
    """Freeze `models` ("unet", and the text encoders to train) and add a LoRA adapter to each, its starting
    weights drawn from `seed` (the global RNG is left as it was). lora_up starts at zero: step 0 is the base."""
    from peft import LoraConfig, inject_adapter_in_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, model in models.items():
            model.requires_grad_(False)
            targets = unet_targets(feed_forward, conv) if name == "unet" else list(TEXT_ATTENTION)
            config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets)
            inject_adapter_in_model(config, model, adapter_name=ADAPTER)
            for param_name, param in model.named_parameters():
                param.requires_grad_(f".{ADAPTER}." in param_name)


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The adapter's parameters by name, in a fixed order."""
    return {name: p for name, p in model.named_parameters() if f".{ADAPTER}." in name}


def upcast_lora(models: dict[str, torch.nn.Module]) -> None:
    """LoRA weights train in fp32 while the frozen base runs in fp16/bf16 (mixed precision)."""
    for model in models.values():
        for param in lora_parameters(model).values():
            param.data = param.data.float()


def kohya_state_dict(models: dict[str, torch.nn.Module], alpha: float, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The adapters as a kohya-format state dict: `<name>.lora_down.weight`, `.lora_up.weight`, `.alpha`."""
    state = {}
    for model_name, model in models.items():
        params = lora_parameters(model)
        modules = sorted({name.split(".lora_A.")[0] for name in params if ".lora_A." in name})
        names = _kohya_names(model_name, model, modules)
        for module in modules:
            down = params[f"{module}.lora_A.{ADAPTER}.weight"]
            up = params[f"{module}.lora_B.{ADAPTER}.weight"]
            state[f"{names[module]}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
            state[f"{names[module]}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
            state[f"{names[module]}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return state


def _kohya_names(model_name: str, model: torch.nn.Module, modules: list[str]) -> dict[str, str]:
    if model_name == "unet":
        placeholder = {f"{m}.weight": None for m in modules}
        ldm = ldm_format.unet_to_ldm(placeholder, dict(model.config))
        return {m: "lora_unet_" + key.removeprefix(ldm_format.UNET_PREFIX).removesuffix(".weight").replace(".", "_")
                for m, key in zip(modules, ldm)}
    prefix = TEXT_PREFIXES[model_name]
    return {m: f"{prefix}_" + (m if m.startswith("text_model.") else "text_model." + m).replace(".", "_")
            for m in modules}


def lora_state(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every adapter parameter (fp32, on the CPU) for a saved training state."""
    return {f"{model_name}/{name}": p.detach().to("cpu").clone()
            for model_name, model in models.items() for name, p in lora_parameters(model).items()}


def load_lora_state(models: dict[str, torch.nn.Module], state: dict[str, torch.Tensor]) -> None:
    for model_name, model in models.items():
        for name, param in lora_parameters(model).items():
            key = f"{model_name}/{name}"
            if key not in state:
                raise KeyError(key)
            with torch.no_grad():
                param.copy_(state[key])

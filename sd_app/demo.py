"""Tiny, random-weight SDXL models in the real file formats, so that Homegrown runs without a 7 GB download.

    python -m sd_app.demo DIR

writes, in A1111's folder layout:
    DIR/models/Stable-diffusion/homegrown-demo-base.safetensors      (single-file SDXL base layout)
    DIR/models/Stable-diffusion/homegrown-demo-refiner.safetensors   (single-file SDXL refiner layout)
    DIR/models/Lora/demo-style.safetensors, demo-detail.safetensors  (kohya-style SDXL LoRAs)
    DIR/models/VAE/homegrown-demo-vae.safetensors                    (a standalone VAE, sdxl_vae layout)
    DIR/models/Stable-diffusion/homegrown-demo-inpaint.safetensors   (SDXL inpainting base: a 9-channel UNet)

The key names, nesting and 8x VAE downscale are those of the released SDXL files; only widths and
depths shrink (see sd_app/configs/tiny-sdxl-*). The weights are random: the images are noise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from . import ldm_format
from .loading import CONFIGS_DIR

BASE_FILE = "homegrown-demo-base.safetensors"
REFINER_FILE = "homegrown-demo-refiner.safetensors"
VAE_FILE = "homegrown-demo-vae.safetensors"
INPAINT_FILE = "homegrown-demo-inpaint.safetensors"
LORA_FILES = {
    # name: (seed, rank, alpha, trigger tags)
    "demo-style": (11, 4, 2.0, {"demostyle": 40, "painting": 12, "bold colors": 7}),
    "demo-detail": (12, 8, 8.0, {"hyperdetailed": 25, "sharp": 9}),
}


def _read_config(name: str, component: str) -> dict:
    return json.loads((CONFIGS_DIR / name / component / "config.json").read_text())


def _tiny_components(seed: int = 0) -> dict[str, torch.nn.Module]:
    """Random-weight diffusers/transformers modules built from the tiny configs (deterministic by seed)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    parts = {
        "unet": UNet2DConditionModel.from_config(_read_config("tiny-sdxl-base", "unet")),
        "vae": AutoencoderKL.from_config(_read_config("tiny-sdxl-base", "vae")),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**_read_config("tiny-sdxl-base", "text_encoder"))),
        "text_encoder_2": CLIPTextModelWithProjection(
            CLIPTextConfig(**_read_config("tiny-sdxl-base", "text_encoder_2"))
        ),
        "refiner_unet": UNet2DConditionModel.from_config(_read_config("tiny-sdxl-refiner", "unet")),
        "other_vae": AutoencoderKL.from_config(_read_config("tiny-sdxl-base", "vae")),  # a separate VAE file
    }
    return parts


def _half(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # The released SDXL files are fp16; so are ours.
    return {k: v.detach().to(torch.float16).contiguous() for k, v in state.items()}


def base_state_dict(parts: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    state = {}
    state.update(ldm_format.unet_to_ldm(parts["unet"].state_dict(), dict(parts["unet"].config)))
    state.update(ldm_format.vae_to_ldm(parts["vae"].state_dict(), dict(parts["vae"].config)))
    state.update(ldm_format.clip_l_to_ldm(parts["text_encoder"].state_dict()))
    state.update(ldm_format.openclip_to_ldm(parts["text_encoder_2"].state_dict(), ldm_format.BASE_CLIP_G_PREFIX))
    return _half(state)


def refiner_state_dict(parts: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    state = {}
    state.update(ldm_format.unet_to_ldm(parts["refiner_unet"].state_dict(), dict(parts["refiner_unet"].config)))
    state.update(ldm_format.vae_to_ldm(parts["vae"].state_dict(), dict(parts["vae"].config)))
    # As in the released refiner: the same OpenCLIP encoder and VAE as the base.
    state.update(ldm_format.openclip_to_ldm(parts["text_encoder_2"].state_dict(), ldm_format.REFINER_CLIP_G_PREFIX))
    return _half(state)


def inpaint_state_dict(parts: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """An SDXL inpainting base (as sd_xl_base_1.0_inpainting_0.1): the base's encoders and VAE, a UNet whose first
    convolution takes 9 channels (latents, mask, masked-image latents)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(3)
    unet = UNet2DConditionModel.from_config(_read_config("tiny-sdxl-base-inpaint", "unet"))
    state = dict(base_state_dict(parts))
    state.update(_half(ldm_format.unet_to_ldm(unet.state_dict(), dict(unet.config))))
    return state


def write_demo_inpaint(path: Path, parts: dict[str, torch.nn.Module]) -> None:
    meta = {"modelspec.sai_model_spec": "1.0.0", "homegrown.note": "random weights: images are noise",
            "modelspec.architecture": "stable-diffusion-xl-v1-base/inpainting",
            "modelspec.title": "Homegrown demo SDXL inpainting base", "homegrown.config": "tiny-sdxl-base-inpaint"}
    _atomic_save(inpaint_state_dict(parts), path, meta)


def vae_state_dict(parts: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """A standalone VAE file, keyed like sdxl_vae.safetensors (the LDM names without a prefix)."""
    state = ldm_format.vae_to_ldm(parts["other_vae"].state_dict(), dict(parts["other_vae"].config))
    return _half({k.removeprefix(ldm_format.VAE_PREFIX): v for k, v in state.items()})


def _kohya_name(prefix: str, module_key: str) -> str:
    return prefix + "_" + module_key.replace(".", "_")


def kohya_lora_state_dict(parts: dict[str, torch.nn.Module], seed: int, rank: int, alpha: float) -> dict[str, torch.Tensor]:
    """A kohya-format SDXL LoRA over the UNet attention and both text encoders' attention layers."""
    gen = torch.Generator().manual_seed(seed)
    unet = parts["unet"]
    targets: dict[str, torch.Tensor] = {}
    ldm_names = ldm_format.unet_to_ldm({k: v for k, v in unet.state_dict().items()}, dict(unet.config))
    diffusers_to_ldm = dict(zip(unet.state_dict().keys(), ldm_names.keys()))
    for key, weight in unet.state_dict().items():
        if key.endswith(("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight", "attn1.to_out.0.weight",
                         "attn2.to_q.weight", "attn2.to_k.weight", "attn2.to_v.weight", "attn2.to_out.0.weight")):
            module = diffusers_to_ldm[key].removeprefix(ldm_format.UNET_PREFIX).removesuffix(".weight")
            targets[_kohya_name("lora_unet", module)] = weight
    for te_name, prefix in (("text_encoder", "lora_te1"), ("text_encoder_2", "lora_te2")):
        for key, weight in parts[te_name].state_dict().items():
            if key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "out_proj.weight")):
                module = key.removesuffix(".weight")
                module = module if module.startswith("text_model.") else "text_model." + module
                targets[_kohya_name(prefix, module)] = weight
    state = {}
    # Strong enough to change the picture plainly, mild enough (|dW| ~ 1/3 of |W|) to keep the maths tame.
    for name, weight in sorted(targets.items()):
        out_features, in_features = weight.shape[:2]
        state[f"{name}.lora_down.weight"] = torch.randn(rank, in_features, generator=gen) * 0.2
        state[f"{name}.lora_up.weight"] = torch.randn(out_features, rank, generator=gen) * 0.2
        state[f"{name}.alpha"] = torch.tensor(float(alpha))
    return _half(state)


def write_demo(root: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write the demo models under root's A1111 layout; existing files are kept unless overwrite."""
    root = Path(root)
    ckpt_dir = root / "models" / "Stable-diffusion"
    lora_dir = root / "models" / "Lora"
    vae_dir = root / "models" / "VAE"
    paths = {"base": ckpt_dir / BASE_FILE, "refiner": ckpt_dir / REFINER_FILE, "vae": vae_dir / VAE_FILE,
             "inpaint": ckpt_dir / INPAINT_FILE}
    paths.update({name: lora_dir / f"{name}.safetensors" for name in LORA_FILES})
    if not overwrite and all(p.exists() for p in paths.values()):
        return paths
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    lora_dir.mkdir(parents=True, exist_ok=True)
    vae_dir.mkdir(parents=True, exist_ok=True)
    parts = _tiny_components()
    meta = {"modelspec.sai_model_spec": "1.0.0", "homegrown.note": "random weights: images are noise"}
    _atomic_save(base_state_dict(parts), paths["base"], {
        **meta, "modelspec.architecture": "stable-diffusion-xl-v1-base",
        "modelspec.title": "Homegrown demo SDXL base", "homegrown.config": "tiny-sdxl-base"})
    _atomic_save(refiner_state_dict(parts), paths["refiner"], {
        **meta, "modelspec.architecture": "stable-diffusion-xl-v1-refiner",
        "modelspec.title": "Homegrown demo SDXL refiner", "homegrown.config": "tiny-sdxl-refiner"})
    write_demo_inpaint(paths["inpaint"], parts)
    _atomic_save(vae_state_dict(parts), paths["vae"], {"homegrown.config": "tiny-sdxl-base",
                                                        "homegrown.note": "random weights"})
    for name, (seed, rank, alpha, tags) in LORA_FILES.items():
        _atomic_save(kohya_lora_state_dict(parts, seed, rank, alpha), paths[name], {
            "ss_base_model_version": "sdxl_base_v1-0", "ss_output_name": name, "ss_network_module": "networks.lora",
            "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
            "ss_tag_frequency": json.dumps({"1_demo": tags}), "homegrown.note": "random weights"})
    return paths


def _atomic_save(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    # Sorted, streamed writing: the demo files hash the same on every machine, and so do their infotexts.
    specs = [(name, tuple(t.shape), t.dtype) for name, t in state.items()]
    ldm_format.write_safetensors(path, specs, state.__getitem__, metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sd_app.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="folder to write models/Stable-diffusion and models/Lora into")
    parser.add_argument("--overwrite", action="store_true", help="rewrite files that already exist")
    args = parser.parse_args(argv)
    for kind, path in write_demo(args.dir, overwrite=args.overwrite).items():
        print(f"{kind:12s} {path}  ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

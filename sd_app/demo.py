"""Tiny, random-weight SDXL models in the real file formats, so that Homegrown runs without a 7 GB download.

    python -m sd_app.demo DIR

writes, in A1111's folder layout:
    DIR/models/Stable-diffusion/homegrown-demo-base.safetensors      (single-file SDXL base layout)
    DIR/models/Stable-diffusion/homegrown-demo-refiner.safetensors   (single-file SDXL refiner layout)
    DIR/models/Lora/demo-style.safetensors, demo-detail.safetensors  (kohya-style SDXL LoRAs)
    DIR/models/VAE/homegrown-demo-vae.safetensors                    (a standalone VAE, sdxl_vae layout)
    DIR/models/ESRGAN/homegrown-demo-4x.safetensors                  (a 4x upscaler, RealESRGAN_x4plus layout)
    DIR/models/embeddings/demo-negative.safetensors                  (an SDXL textual inversion: clip_l, clip_g)
    DIR/models/embeddings/demo-sd1.safetensors                       (an SD 1.x one, emb_params: listed, refused)
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
UPSCALER_FILE = "homegrown-demo-4x.safetensors"
# name: (seed, vectors); the SD 1.x one is 768 wide, as SD 1.x's CLIP-L is
EMBEDDING_FILES = {"demo-negative": (21, 2), "demo-sd1": (22, 3)}
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


def _network_targets(parts: dict[str, torch.nn.Module], form: str) -> dict[str, tuple[torch.Tensor, bool]]:
    """kohya layer name -> (the weight it changes, whether the layer has a bias): UNet attention and resnet convolutions, both text encoders'
    attention. `form` "sgm" spells UNet layers as kohya does for SDXL (input_blocks...), "diffusers" as
    diffusers' module paths (down_blocks...)."""
    unet = parts["unet"]
    state = unet.state_dict()
    ldm = dict(zip(state, ldm_format.unet_to_ldm(state, dict(unet.config))))
    targets: dict[str, tuple[torch.Tensor, bool]] = {}
    for key, weight in state.items():
        attention = key.endswith(("attn1.to_q.weight", "attn1.to_k.weight", "attn1.to_v.weight",
                                  "attn1.to_out.0.weight", "attn2.to_k.weight", "attn2.to_v.weight"))
        if attention or key.endswith("resnets.0.conv1.weight") or key.endswith("resnets.1.conv2.weight"):
            module = key if form == "diffusers" else ldm[key].removeprefix(ldm_format.UNET_PREFIX)
            targets[_kohya_name("lora_unet", module.removesuffix(".weight"))] = (weight, key[:-6] + "bias" in state)
    for te_name, prefix in (("text_encoder", "lora_te1"), ("text_encoder_2", "lora_te2")):
        for key, weight in parts[te_name].state_dict().items():
            if key.endswith(("q_proj.weight", "v_proj.weight", "out_proj.weight")):
                module = key.removesuffix(".weight")
                module = module if module.startswith("text_model.") else "text_model." + module
                targets[_kohya_name(prefix, module)] = (weight, True)  # CLIP's projections all have biases
    return targets  # in the model's order, so both spellings of a network get the same values


def _split(n: int) -> tuple[int, int]:
    """n = a * b with a <= b as close as can be: LoKr's factorization of a layer's width."""
    a = max(d for d in range(1, int(n ** 0.5) + 1) if n % d == 0)
    return a, n // a


def _network_layer(algo: str, weight: torch.Tensor, has_bias: bool, rank: int, gen: torch.Generator,
                   index: int) -> dict:
    """One layer's tensors of a LyCORIS network, in the shapes LyCORIS saves (random values)."""
    def rand(*shape, std=1.0):
        return torch.randn(*shape, generator=gen) * std

    out_dim, in_dim, *kernel = weight.shape
    conv3 = kernel and kernel != [1, 1]
    if algo in ("lora", "locon", "dora"):
        if conv3 and index % 2 == 0:  # LoCon's Tucker form: 1x1 factors around a 3x3 core
            layer = {"lora_down.weight": rand(rank, in_dim, 1, 1, std=0.3), "lora_up.weight": rand(out_dim, rank, 1, 1, std=0.3),
                     "lora_mid.weight": rand(rank, rank, *kernel, std=0.3)}
        else:
            layer = {"lora_down.weight": rand(rank, in_dim, *kernel, std=0.22),
                     "lora_up.weight": rand(out_dim, rank, *([1, 1] if kernel else []), std=0.22)}
        if algo == "dora":  # magnitudes near the layer's own norms; per output row, or per input column (older files)
            rows = index % 2 == 0
            norms = weight.float().flatten(1).norm(dim=1) if rows else weight.float().transpose(0, 1).flatten(1).norm(dim=1)
            scale = norms * (1 + rand(norms.numel(), std=0.4).clamp(-0.8, 0.8))
            layer["dora_scale"] = (scale.reshape(out_dim, 1, *[1] * len(kernel)) if rows
                                   else scale.reshape(1, in_dim, *[1] * len(kernel)))
    elif algo == "loha":
        if conv3:
            layer = {f"hada_{p}": t for p, t in (("t1", rand(rank, rank, *kernel, std=0.4)), ("w1_a", rand(rank, out_dim, std=0.4)),
                                                  ("w1_b", rand(rank, in_dim, std=0.4)), ("t2", rand(rank, rank, *kernel, std=0.4)),
                                                  ("w2_a", rand(rank, out_dim, std=0.4)), ("w2_b", rand(rank, in_dim, std=0.4)))}
        else:
            layer = {"hada_w1_a": rand(out_dim, rank, std=0.4), "hada_w1_b": rand(rank, in_dim, std=0.4),
                     "hada_w2_a": rand(out_dim, rank, std=0.4), "hada_w2_b": rand(rank, in_dim, std=0.4)}
    elif algo == "lokr":
        (a, b), (c, d) = _split(out_dim), _split(in_dim)
        layer = {"lokr_w1": rand(a, c, std=0.5)} if index % 2 == 0 else {
            "lokr_w1_a": rand(a, rank, std=0.5), "lokr_w1_b": rand(rank, c, std=0.5)}
        if conv3:
            layer.update(lokr_t2=rand(rank, rank, *kernel, std=0.3), lokr_w2_a=rand(rank, b, std=0.3),
                         lokr_w2_b=rand(rank, d, std=0.3))
        elif index % 3 == 0:
            layer["lokr_w2"] = rand(b, d, *kernel, std=0.1)
        else:
            layer.update(lokr_w2_a=rand(b, rank, std=0.3), lokr_w2_b=rand(rank, d, *kernel, std=0.3))
    elif algo == "full":
        layer = {"diff": rand(*weight.shape, std=0.05)}
        if has_bias:
            layer["diff_b"] = rand(out_dim, std=0.05)
        return layer
    elif algo == "ia3":
        return {"weight": rand(out_dim, std=0.1), "on_input": torch.tensor(False)}
    elif algo in ("oft", "boft"):
        blocks = _split(out_dim)[0]
        shape = (2, blocks, out_dim // blocks, out_dim // blocks) if algo == "boft" else (blocks, out_dim // blocks, out_dim // blocks)
        return {"oft_blocks": rand(*shape, std=0.01), "alpha": torch.tensor(0.0)}
    elif algo == "glora":
        return {"a1.weight": rand(rank, in_dim), "a2.weight": rand(out_dim, rank), "b1.weight": rand(rank, in_dim),
                "b2.weight": rand(out_dim, rank), "alpha": torch.tensor(float(rank))}
    else:
        raise ValueError(f"unknown network algorithm {algo!r}")
    layer["alpha"] = torch.tensor(rank / 2)
    return layer


NETWORK_ALGOS = ("locon", "loha", "lokr", "dora", "full", "ia3", "oft", "boft", "glora")


def network_state_dict(parts: dict[str, torch.nn.Module], algo: str, seed: int, rank: int = 4,
                       form: str = "sgm") -> dict[str, torch.Tensor]:
    """A LyCORIS-format SDXL network of kind `algo` (NETWORK_ALGOS, or "lora") over the UNet's attention and
    some 3x3 convolutions and both text encoders, with the key names and tensor shapes LyCORIS writes."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for index, (name, (weight, has_bias)) in enumerate(_network_targets(parts, form).items()):
        if algo in ("ia3", "oft", "boft", "glora") and weight.dim() > 2:
            continue
        for part, tensor in _network_layer(algo, weight, has_bias, rank, gen, index).items():
            state[f"{name}.{part}"] = tensor
    return _half(state)


def write_network(parts: dict[str, torch.nn.Module], path: Path, algo: str, seed: int, form: str = "sgm") -> Path:
    """Write `network_state_dict` with the metadata LyCORIS's kohya trainer writes."""
    args = {"algo": algo if algo not in ("dora", "locon") else "locon", "dora_wd": str(algo == "dora")}
    _atomic_save(network_state_dict(parts, algo, seed, form=form), path, {
        "ss_base_model_version": "sdxl_base_v1-0", "ss_network_module": "lycoris.kohya",
        "ss_network_args": json.dumps(args), "ss_output_name": path.stem, "homegrown.note": "random weights"})
    return path


# Checkpoints as they come from the wild: each is the demo base, changed as files from other tools are.
WILD_VARIANTS = ("fp32", "bf16", "ema", "comfy-leftovers", "pruned-clip", "no-vae", "v-pred", "v-pred-ztsnr",
                 "edm-vpred")


def wild_state_dict(parts: dict[str, torch.nn.Module], variant: str) -> dict[str, torch.Tensor]:
    """The demo base's state dict as `variant` (WILD_VARIANTS) stores it."""
    state = base_state_dict(parts)
    unet = {k: v for k, v in state.items() if k.startswith(ldm_format.UNET_PREFIX)}
    empty = torch.zeros(0, dtype=torch.int64)  # the markers are empty int64 tensors (sd-mecha's sdxl-sgm.yaml)
    if variant == "fp32":
        return {k: v.float() for k, v in state.items()}
    if variant == "bf16":
        return {k: v.to(torch.bfloat16) for k, v in state.items()}
    if variant == "ema":  # the LDM trainer's EMA copy (other values), dots dropped after model_ema.: unused, as in A1111
        ema = {"model_ema." + k.removeprefix("model.").replace(".", ""): v * 0.5 for k, v in unet.items()}
        return {**state, **ema, "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(1000)}
    if variant == "comfy-leftovers":  # scheduler buffers and an SD 1.x text encoder's position ids left behind
        return {**state, "alphas_cumprod": torch.linspace(1, 0.01, 1000), "betas": torch.linspace(1e-4, 0.02, 1000),
                "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]}
    if variant == "pruned-clip":  # sd-mecha's optional keys left out, as merge tools do
        last_l = parts["text_encoder"].config.num_hidden_layers - 1
        last_g = parts["text_encoder_2"].config.num_hidden_layers - 1
        dropped = (f"{ldm_format.BASE_CLIP_L_PREFIX}text_model.encoder.layers.{last_l}.",
                   f"{ldm_format.BASE_CLIP_L_PREFIX}text_model.final_layer_norm.",
                   f"{ldm_format.BASE_CLIP_G_PREFIX}transformer.resblocks.{last_g}.",
                   f"{ldm_format.BASE_CLIP_G_PREFIX}ln_final.", f"{ldm_format.BASE_CLIP_G_PREFIX}text_projection",
                   f"{ldm_format.BASE_CLIP_G_PREFIX}logit_scale")
        return {k: v for k, v in state.items() if not k.startswith(dropped)}
    if variant == "no-vae":
        return {k: v for k, v in state.items() if not k.startswith(ldm_format.VAE_PREFIX)}
    if variant == "v-pred":
        return {**state, "v_pred": empty}
    if variant == "v-pred-ztsnr":
        return {**state, "v_pred": empty, "ztsnr": empty}
    if variant == "edm-vpred":
        return {**state, "edm_vpred.sigma_min": torch.tensor(0.002), "edm_vpred.sigma_max": torch.tensor(120.0)}
    raise ValueError(f"unknown variant {variant!r}; known: {', '.join(WILD_VARIANTS)}")


def write_wild_checkpoint(parts: dict[str, torch.nn.Module], path: Path, variant: str) -> Path:
    """A tiny SDXL base file as another tool would have saved it (see WILD_VARIANTS)."""
    _atomic_save(wild_state_dict(parts, variant), path, {"homegrown.config": "tiny-sdxl-base",
                                                          "homegrown.note": f"random weights, {variant}"})
    return path
def embedding_state(name: str) -> dict[str, torch.Tensor]:
    """A textual inversion file's tensors: SDXL's `clip_l` / `clip_g` at the tiny encoders' widths, or (for
    demo-sd1) SD 1.x's single `emb_params`."""
    seed, vectors = EMBEDDING_FILES[name]
    gen = torch.Generator().manual_seed(seed)
    if name == "demo-sd1":
        return {"emb_params": torch.randn(vectors, 768, generator=gen) * 0.3}
    widths = [_read_config("tiny-sdxl-base", part)["hidden_size"] for part in ("text_encoder", "text_encoder_2")]
    # Vectors larger than the random token embeddings (std 0.02): the embedding plainly changes the picture.
    return {key: torch.randn(vectors, width, generator=gen) * 0.5 for key, width in zip(("clip_l", "clip_g"), widths)}


def write_demo(root: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Write the demo models under root's A1111 layout; existing files are kept unless overwrite."""
    root = Path(root)
    ckpt_dir = root / "models" / "Stable-diffusion"
    lora_dir = root / "models" / "Lora"
    vae_dir = root / "models" / "VAE"
    paths = {"base": ckpt_dir / BASE_FILE, "refiner": ckpt_dir / REFINER_FILE, "vae": vae_dir / VAE_FILE,
             "inpaint": ckpt_dir / INPAINT_FILE}
    paths.update({name: lora_dir / f"{name}.safetensors" for name in LORA_FILES})
    paths.update(write_demo_upscaler(root, overwrite))
    paths.update({name: root / "models" / "embeddings" / f"{name}.safetensors" for name in EMBEDDING_FILES})
    if not overwrite and all(p.exists() for p in paths.values()):
        return paths
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    lora_dir.mkdir(parents=True, exist_ok=True)
    vae_dir.mkdir(parents=True, exist_ok=True)
    (root / "models" / "embeddings").mkdir(parents=True, exist_ok=True)
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
    for name in EMBEDDING_FILES:
        _atomic_save(_half(embedding_state(name)), paths[name], {"homegrown.note": "random weights"})
    return paths


def write_demo_upscaler(root: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """A tiny 4x upscaler in `root/models/ESRGAN`, in Real-ESRGAN's RRDBNet layout (RealESRGAN_x4plus.pth's key
    names: conv_first, body.N.rdbM.convK, conv_body, conv_up1/2, conv_hr, conv_last), so that spandrel detects
    it as ESRGAN, as it does the downloaded file; 8 features and 1 block instead of 64 and 23."""
    path = Path(root) / "models" / "ESRGAN" / UPSCALER_FILE
    if overwrite or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(rrdbnet_state_dict(), path, {"homegrown.note": "random weights: a blurry 4x resize"})
    return {"upscaler": path}


def rrdbnet_state_dict(features: int = 8, blocks: int = 1, growth: int = 32, seed: int = 7) -> dict[str, torch.Tensor]:
    """BasicSR's RRDBNet (scale 4) with random weights, small enough that the image mostly passes through:
    conv_last gets a nearest-4x identity so the picture survives, plus noise from the rest."""
    gen = torch.Generator().manual_seed(seed)

    def conv(out_ch: int, in_ch: int, std: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(out_ch, in_ch, 3, 3, generator=gen) * std, torch.zeros(out_ch)

    state: dict[str, torch.Tensor] = {}

    def put(name: str, out_ch: int, in_ch: int, std: float = 0.05) -> None:
        state[f"{name}.weight"], state[f"{name}.bias"] = conv(out_ch, in_ch, std)

    put("conv_first", features, 3)
    state["conv_first.weight"][:3, :, 1, 1] += torch.eye(3)  # the picture's colours ride through the features
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for k in range(1, 6):
                put(f"body.{block}.rdb{rdb}.conv{k}", growth if k < 5 else features, features + (k - 1) * growth,
                    0.01)
    put("conv_body", features, features, 0.01)
    for name in ("conv_up1", "conv_up2", "conv_hr"):
        put(name, features, features, 0.01)
        state[f"{name}.weight"][:, :, 1, 1] += torch.eye(features)
    put("conv_last", 3, features, 0.01)
    state["conv_last.weight"][:, :3, 1, 1] += torch.eye(3)
    return _half(state)


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

"""`python -m sd_app.bench --cases train`: training speed and memory on the demo model, against the core of
diffusers' example loop (examples/text_to_image/train_text_to_image_lora_sdxl.py), and the memory estimate
for full-size SDXL LoRA training at 1024².

Each loop runs in a fresh process (its peak RSS is its own). The estimate counts the full-size UNet's
parameters and the bytes autograd saves for the backward pass by running the UNet on PyTorch's meta device
(shapes only: no memory, no GPU), with and without gradient checkpointing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

GB = 1e9

COMMON = """
import json, os, sys, time, torch
torch.set_num_threads(1)
sys.path.insert(0, {root!r})
from pathlib import Path
def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
from sd_app.loading import load_base
from sd_app.models import Checkpoint
BASE, IMAGES, RES, RANK, STEPS, WARMUP = {base!r}, {images!r}, {res}, {rank}, {steps}, {warmup}
"""

OURS = COMMON + """
from sd_app.training.config import TrainConfig
from sd_app.training import run as R
from sd_app.training.dataset import scan
from sd_app.training.progress import TrainingRun
config = TrainConfig(dataset_dir=IMAGES, output_name="bench", checkpoint=BASE, output_dir=IMAGES + "/out",
                     work_dir=IMAGES + "/work", resolution=RES, rank=RANK, alpha=float(RANK), max_steps=STEPS + WARMUP,
                     gradient_checkpointing={checkpointing})
dataset = scan(IMAGES, RES)
pipe, trainer = R._prepare(config, TrainingRun(config), dataset, R.resolve_checkpoint(BASE, None), "bench",
                           torch.device("cpu"), "no", Path(IMAGES + "/work"))
for _ in range(WARMUP):
    trainer.train_step()
start = time.perf_counter()
for _ in range(STEPS):
    trainer.train_step()
print(json.dumps({{"seconds_per_step": (time.perf_counter() - start) / STEPS, "peak_rss": peak_rss()}}))
"""

DIFFUSERS_EXAMPLE = COMMON + """
import numpy as np, torch.nn.functional as F
from PIL import Image
from peft import LoraConfig
from diffusers import DDPMScheduler
pipe = load_base(Checkpoint("base", Path(BASE)), torch.float32)
unet, vae = pipe.unet, pipe.vae
for model in (unet, vae, pipe.text_encoder, pipe.text_encoder_2):
    model.requires_grad_(False)
unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                            target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
params = [p for p in unet.parameters() if p.requires_grad]
optimizer = torch.optim.AdamW(params, lr=1e-4)
scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
files = sorted(p for p in Path(IMAGES).rglob("*.png") if "/work/" not in str(p))
image = np.asarray(Image.open(files[0]).convert("RGB").resize((RES, RES)), np.float32) / 127.5 - 1
pixels = torch.from_numpy(image).permute(2, 0, 1)[None]
def step():
    # The example's loop: the VAE and both text encoders run every step (nothing cached).
    latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
    noise = torch.randn_like(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (1,))
    noisy = scheduler.add_noise(latents, noise, t)
    embeds, _, pooled, _ = pipe.encode_prompt("a photo of zebra", device="cpu", do_classifier_free_guidance=False)
    time_ids = torch.tensor([[RES, RES, 0, 0, RES, RES]], dtype=torch.float32)
    pred = unet(noisy, t, embeds, added_cond_kwargs={{"text_embeds": pooled, "time_ids": time_ids}}).sample
    loss = F.mse_loss(pred.float(), noise.float())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
for _ in range(WARMUP):
    step()
start = time.perf_counter()
for _ in range(STEPS):
    step()
print(json.dumps({{"seconds_per_step": (time.perf_counter() - start) / STEPS, "peak_rss": peak_rss()}}))
"""


def _child(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _images(folder: Path, resolution: int) -> Path:
    import numpy as np
    from PIL import Image

    images = folder / "5_zebra"
    images.mkdir(parents=True, exist_ok=True)
    for number in range(4):
        pixels = np.zeros((resolution, resolution, 3), np.uint8)
        pixels[..., 0] = 60 * number
        pixels[..., 1] = np.linspace(0, 255, resolution, dtype=np.uint8)[None, :]
        Image.fromarray(pixels).save(images / f"{number}.png")
    return folder


def case_train(report, work: Path, runs: int) -> None:
    from ..demo import BASE_FILE, write_demo

    root = Path(__file__).resolve().parents[2]
    demo = write_demo(work / "demo")["base"]
    resolution, rank = 128, 16
    images = _images(work / "train-images", resolution)
    values = dict(root=str(root), base=str(demo), images=str(images), res=resolution, rank=rank,
                  steps=4 * runs, warmup=2)
    codes = {"ours": OURS.format(**values, checkpointing=False), "ours_gc": OURS.format(**values, checkpointing=True),
             "example": DIFFUSERS_EXAMPLE.format(**values)}
    # Round after round, each loop once a round, the fastest round kept: a shared machine's load drifts.
    rounds = [{name: _child(code) for name, code in codes.items()} for _ in range(2)]
    ours, ours_gc, example = ({"seconds_per_step": min(r[name]["seconds_per_step"] for r in rounds),
                               "peak_rss": max(r[name]["peak_rss"] for r in rounds)} for name in codes)
    label = f"demo {BASE_FILE.split('.')[0]}, {resolution}², rank {rank}, CPU, 1 thread"
    report.add("train", f"s/step, Homegrown ({label})", f"{ours['seconds_per_step']:.3f} s",
               ours["seconds_per_step"])
    report.add("train", "s/step, Homegrown, gradient checkpointing", f"{ours_gc['seconds_per_step']:.3f} s",
               ours_gc["seconds_per_step"])
    report.add("train", "s/step, diffusers example loop (no caches)", f"{example['seconds_per_step']:.3f} s",
               example["seconds_per_step"])
    report.add("train", "peak RSS, Homegrown", f"{ours['peak_rss'] / 2**20:.0f} MiB", ours["peak_rss"])
    report.add("train", "peak RSS, Homegrown, gradient checkpointing", f"{ours_gc['peak_rss'] / 2**20:.0f} MiB",
               ours_gc["peak_rss"])
    report.add("train", "peak RSS, diffusers example loop", f"{example['peak_rss'] / 2**20:.0f} MiB",
               example["peak_rss"])
    for what, value in full_size_estimate().items():
        report.add("train", what, f"{value / GB:.2f} GB" if isinstance(value, float) else str(value), value)


def full_size_estimate(resolution: int = 1024, rank: int = 16) -> dict:
    """GPU memory of SDXL LoRA training at resolution², batch 1: the frozen UNet in bf16, the adapter in fp32 with
    its gradients and 8-bit AdamW's two one-byte states, what autograd keeps for the backward pass (measured on
    the meta device with gradient checkpointing), one block recomputed during the backward pass (its saved
    tensors and as much again for their gradients: an upper bound, the meta device takes the math attention
    path, which keeps the attention matrix that flash attention does not), and 1 GB for CUDA's context and
    allocator. Cached latents and embeddings: the VAE and text encoders are not on the GPU while it trains."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import ResnetBlock2D
    from peft import LoraConfig, inject_adapter_in_model

    from ..loading import CONFIGS_DIR
    from .network import UNET_ATTENTION

    config = json.loads((CONFIGS_DIR / "sdxl-base" / "unet" / "config.json").read_text())
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config).to(torch.bfloat16)
    frozen = sum(p.numel() for p in unet.parameters())
    unet.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(UNET_ATTENTION)), unet,
                            adapter_name="estimate", low_cpu_mem_usage=True)
    lora = sum(p.numel() for n, p in unet.named_parameters() if ".estimate." in n)
    for name, p in unet.named_parameters():
        p.requires_grad_(".estimate." in name)
    unet.train()
    saved = {"total": 0, "block": None, "blocks": {}}

    def pack(tensor):
        size = tensor.numel() * tensor.element_size()
        saved["total"] += size
        if saved["block"] is not None:
            saved["blocks"][saved["block"]] = saved["blocks"].get(saved["block"], 0) + size
        return tensor

    def forward():
        side = resolution // 8
        args = dict(device="meta", dtype=torch.bfloat16)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            unet(torch.empty(1, 4, side, side, **args), torch.tensor([500], device="meta"),
                 torch.empty(1, 77, 2048, **args),
                 added_cond_kwargs={"text_embeds": torch.empty(1, 1280, **args), "time_ids": torch.empty(1, 6, **args)})

    unet.enable_gradient_checkpointing()
    forward()
    kept = saved["total"]
    unet.disable_gradient_checkpointing()
    for module in unet.modules():
        if isinstance(module, (BasicTransformerBlock, ResnetBlock2D)):
            module.register_forward_pre_hook(lambda m, *a: saved.__setitem__("block", id(m)))
            module.register_forward_hook(lambda m, *a: saved.__setitem__("block", None))
    saved["total"] = 0
    forward()
    block = max(saved["blocks"].values())
    weights, adapter = frozen * 2, lora * (4 + 4 + 2)
    total = weights + adapter + kept + 2 * block + 1e9
    return {"full SDXL: UNet parameters (frozen, bf16)": f"{frozen / 1e6:.0f} M",
            f"full SDXL: LoRA parameters (rank {rank}, attention)": f"{lora / 1e6:.1f} M",
            "full SDXL: UNet weights": float(weights),
            "full SDXL: LoRA weights + grads + 8-bit AdamW": float(adapter),
            f"full SDXL: kept for backward at {resolution}², checkpointing": float(kept),
            f"full SDXL: kept for backward at {resolution}², no checkpointing": float(saved["total"]),
            "full SDXL: largest block recomputed (x2 for its grads)": float(2 * block),
            "full SDXL: estimated peak VRAM (+1 GB CUDA context)": float(total)}

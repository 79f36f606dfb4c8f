"""Benchmark cases for img2img, inpainting and the hires fix (`python -m sd_app.bench --cases img2img`).

Homegrown against plain diffusers' StableDiffusionXLImg2ImgPipeline / StableDiffusionXLInpaintPipeline made on
the very same loaded modules (the same prompt, init image, mask, sampler, steps and strength), in alternating
rounds; then a hires-fix image's cost against its first pass alone.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from PIL import Image


def _init_and_mask(size: int):
    import numpy as np

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    pixels = np.stack([x * 255, y * 255, (1 - x) * 255], -1) + rng.normal(0, 12, (size, size, 3))
    image = Image.fromarray(pixels.clip(0, 255).astype("uint8"))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, size * 3 // 4, size * 3 // 4))
    return image, mask


def _plain(pipelines, params, kind: str, image, mask, strength: float):
    """A plain diffusers img2img / inpaint call on Homegrown's loaded base."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLInpaintPipeline

    cls = StableDiffusionXLInpaintPipeline if kind == "inpaint" else StableDiffusionXLImg2ImgPipeline
    pipe = cls.from_pipe(pipelines.base.pipe)
    pipe.set_progress_bar_config(disable=True)
    assert params.sampler_name == "Euler"  # diffusers' Euler on the checkpoint's scheduler config: the same work
    extra = {"mask_image": mask, "width": params.width, "height": params.height} if kind == "inpaint" else {}

    def run():
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipelines.base.scheduler_config)
        pipe(prompt=params.prompt, negative_prompt=params.negative_prompt, image=image, strength=strength,
             num_inference_steps=params.steps, guidance_scale=params.cfg_scale,
             generator=torch.Generator().manual_seed(params.seed), output_type="pil", **extra)

    return run


def case_img2img(report, work: Path, runs: int) -> None:
    from .bench import _demo_request, _demo_studio, fmt, measure, measure_side_by_side
    from .hires import HiresParams
    from .img2img import Img2ImgParams

    studio = _demo_studio(work)
    params = _demo_request()
    image, mask = _init_and_mask(params.width)
    strength = 0.6
    requests = {
        "img2img": params.replace(img2img=Img2ImgParams(init_images=(image,), denoising_strength=strength)),
        # Whole picture, "original" content: the same work as diffusers' inpaint pipeline, plus the paste-back.
        "inpaint": params.replace(img2img=Img2ImgParams(init_images=(image,), mask=mask, denoising_strength=strength,
                                                        inpainting_fill=1)),
    }
    size = f"demo {params.width}x{params.height}, {params.steps} steps, strength {strength}"
    for kind, request in requests.items():
        timings = []

        def ours(request=request):
            timings.append(studio.generate(request, save=False).timings)

        both = measure_side_by_side({"plain": _plain(studio.pipelines, params, kind, image, mask, strength),
                                     "ours": ours}, runs)
        a, b = both["plain"], both["ours"]
        label = "StableDiffusionXLImg2ImgPipeline" if kind == "img2img" else "StableDiffusionXLInpaintPipeline"
        report.add("img2img", f"plain diffusers {label}, {size}", fmt(a), a)
        report.add("img2img", f"Homegrown {kind}, same request", fmt(b), b)
        report.add("img2img", f"{kind}: ratio Homegrown / diffusers", f"{b['median'] / a['median']:.3f}x",
                   b["median"] / a["median"])
        for phase in ("encode", "denoise", "decode"):
            value = statistics.median(t.get(phase, 0.0) for t in timings[-runs:])
            report.add("img2img", f"  {kind} phase: {phase}", f"{value * 1000:.1f} ms", value)
    first = params.replace(width=256, height=256)
    hires_request = first.replace(hires=HiresParams(scale=2.0, second_pass_steps=10, denoising_strength=0.5))
    a = measure(lambda: studio.generate(first, save=False), runs)
    b = measure(lambda: studio.generate(hires_request, save=False), runs)
    report.add("img2img", "hires: first pass alone, 256x256, 20 steps", fmt(a), a)
    report.add("img2img", "hires: whole image, 256 -> 512 (Latent), 10 hires steps at 0.5", fmt(b), b)
    report.add("img2img", "hires: upscale + hires pass + larger decode", f"{b['median'] - a['median']:.2f} s",
               b["median"] - a["median"])

"""Benchmark cases for img2img, inpainting and the hires fix (`python -m sd_app.bench --cases img2img`).

Homegrown against plain diffusers' StableDiffusionXLImg2ImgPipeline / StableDiffusionXLInpaintPipeline made on
the very same loaded modules (the same prompt, init image, mask, sampler and steps), in alternating rounds; then
a hires-fix image's cost against its first pass alone.

The same work on both sides: at strength s, A1111 (and Homegrown) run int(s * steps) + 1 steps from sigma index
steps - int(s * steps) - 1, diffusers int(s' * steps) steps from index steps - int(s' * steps). diffusers gets
the s' that gives the same steps from the same sigma ((int(s * steps) + 1) / steps); at the same s it runs one
step fewer. The VAE decode is timed on both sides and the ratio is given without it too: a layout difference
shows there first (diffusers' img2img pixels come permuted, NHWC, and its convolutions ran 30 % faster on the CPU
than Homegrown's NCHW ones until `fastpath.conv_layout` chose NHWC for both).
"""

from __future__ import annotations

import contextlib
import statistics
import time
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


@contextlib.contextmanager
def _timed_decodes(vae, sink: list):
    """Append the seconds of each `vae.decode` call to `sink` while inside."""
    decode = vae.decode

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return decode(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)

    vae.decode = timed
    try:
        yield
    finally:
        del vae.decode  # the class's method again


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
    run_steps = int(strength * params.steps) + 1
    same_work = run_steps / params.steps  # diffusers' strength for the same steps from the same sigma
    size = f"demo {params.width}x{params.height}, {params.steps} steps, strength {strength} ({run_steps} steps run)"
    vae = studio.pipelines.base.pipe.vae
    for kind, request in requests.items():
        timings = []
        decodes = {"plain": [], "ours": []}
        plain = _plain(studio.pipelines, params, kind, image, mask, same_work)

        def ours(request=request):
            with _timed_decodes(vae, decodes["ours"]):
                timings.append(studio.generate(request, save=False).timings)

        def theirs():
            with _timed_decodes(vae, decodes["plain"]):
                plain()

        both = measure_side_by_side({"plain": theirs, "ours": ours}, runs)
        a, b = both["plain"], both["ours"]
        label = "StableDiffusionXLImg2ImgPipeline" if kind == "img2img" else "StableDiffusionXLInpaintPipeline"
        report.add("img2img", f"plain diffusers {label} at strength {same_work:.2f}, {size}", fmt(a), a)
        report.add("img2img", f"Homegrown {kind}, same request", fmt(b), b)
        report.add("img2img", f"{kind}: ratio Homegrown / diffusers", f"{b['median'] / a['median']:.3f}x",
                   b["median"] / a["median"])
        decode_a, decode_b = (statistics.median(decodes[side][-runs:]) for side in ("plain", "ours"))
        report.add("img2img", f"  {kind}: VAE decode, diffusers / Homegrown",
                   f"{decode_a * 1000:.0f} / {decode_b * 1000:.0f} ms", decode_b / decode_a)
        without = (b["median"] - decode_b) / (a["median"] - decode_a)
        report.add("img2img", f"{kind}: ratio without the VAE decode", f"{without:.3f}x", without)
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

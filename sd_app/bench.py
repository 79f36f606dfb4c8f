"""Benchmarks: what a generation costs here, side by side with plain diffusers, in one run.

    python -m sd_app.bench                       # every case that fits this machine
    python -m sd_app.bench --cases overhead,lora-demo --runs 5 --json bench.json

Cases (each figure: the median of --runs after a warm-up, with min-max, on the machine named at the top):
  overhead    the Homegrown engine vs a plain diffusers StableDiffusionXLPipeline call (demo model)
  fastpath    the fast path (torch.compile) vs the default path and plain diffusers (demo model, CPU or GPU)
  load        loading a full-size SDXL base single file (random weights, ~6.9 GB fp16, made once and cached):
              seconds and peak RSS vs reading the file from the page cache; then base + refiner
  lora-demo   LoRA switching and per-step cost on the demo model
  lora        the same on the full-size SDXL UNet with a rank-32 LoRA (~200 MB)
  coldstart   `python app.py --demo`: launch to the page, to the model loaded, to the first API image;
              and `import gradio` alone, the page's floor
  limits      against `python app.py --demo`: the time to refuse each oversized request (a 422), and
              /progress, /interrupt with 80 txt2img requests queued, then how fast the queue drains once
              their clients have gone
  gpu         SDXL 1024x1024, 30 steps, bf16, base and base+refiner: plain diffusers, Homegrown, fast path
              (only with a CUDA GPU; full-size random weights)
  upscale     a tiled 4x upscale of 1024x1024 with the demo upscaler (ESRGAN layout, 8 features, 1 block): time and
              peak memory (RSS high-water mark over the loaded process, tracemalloc's peak of Python and numpy
              buffers, and on a GPU its peak allocation), in a process of its own
  pool        the pool's queueing simulation: random vs affinity routing for 1, 4, 16, 64 workers, with the
              per-image and LoRA-switch costs measured on the demo engine (and given ones)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

from . import ldm_format, rng
from .loading import CONFIGS_DIR

ROOT = Path(__file__).resolve().parent.parent
ALL_CASES = ("overhead", "fastpath", "load", "lora-demo", "lora", "coldstart", "limits", "gpu", "upscale", "img2img",
             "train", "pool")


# ---- measuring ---------------------------------------------------------------------------------


def measure(fn, runs: int, warmup: int = 1) -> dict:
    return measure_side_by_side({"fn": fn}, runs, warmup)["fn"]


def measure_side_by_side(fns: dict, runs: int, warmup: int = 1) -> dict[str, dict]:
    """Each function once per round, `runs` rounds: a shared machine's slow drifts (a neighbour, the clock)
    then hit every contender alike, so their ratio holds where back-to-back blocks drifted by ±4 %."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: {"median": statistics.median(t), "min": min(t), "max": max(t), "runs": runs}
            for name, t in times.items()}


def fmt(stat: dict, unit: str = "s") -> str:
    scale = 1000 if unit == "ms" else 1
    return f"{stat['median'] * scale:.3g} {unit} ({stat['min'] * scale:.3g}-{stat['max'] * scale:.3g})"


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "threads": torch.get_num_threads()}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class Report:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []
        self.data: dict = {"machine": machine(), "cases": {}}

    def add(self, case: str, what: str, value: str, raw=None) -> None:
        self.rows.append((case, what, value))
        self.data["cases"].setdefault(case, {})[what] = raw if raw is not None else value
        print(f"  {case:10s} {what:46s} {value}", flush=True)

    def table(self) -> str:
        lines = ["| case | measure | value |", "| --- | --- | --- |"]
        lines += [f"| {c} | {w} | {v} |" for c, w, v in self.rows]
        return "\n".join(lines)


# ---- full-size model files (random weights, real layout) ---------------------------------------


def _specs(kind: str) -> tuple[list[tuple[str, tuple, torch.dtype]], dict[str, str]]:
    """Every tensor name and shape of a released SDXL base or refiner file, from the shipped configs."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = CONFIGS_DIR / ("sdxl-base" if kind == "base" else "sdxl-refiner")
    read = lambda part: json.loads((folder / part / "config.json").read_text())  # noqa: E731
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(read("unet"))
        vae = AutoencoderKL.from_config(read("vae"))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**read("text_encoder_2")))
        te1 = CLIPTextModel(CLIPTextConfig(**read("text_encoder"))) if kind == "base" else None
    state = {}
    state.update(ldm_format.unet_to_ldm(unet.state_dict(), dict(unet.config)))
    state.update(ldm_format.vae_to_ldm(vae.state_dict(), dict(vae.config)))
    if te1 is not None:
        state.update(ldm_format.clip_l_to_ldm(te1.state_dict()))
        state.update(ldm_format.openclip_to_ldm(te2.state_dict(), ldm_format.BASE_CLIP_G_PREFIX))
    else:
        state.update(ldm_format.openclip_to_ldm(te2.state_dict(), ldm_format.REFINER_CLIP_G_PREFIX))
    specs = [(name, tuple(t.shape), torch.float16) for name, t in state.items()
             if t.is_floating_point() and not name.endswith("position_ids")]
    arch = "stable-diffusion-xl-v1-base" if kind == "base" else "stable-diffusion-xl-v1-refiner"
    return specs, {"modelspec.architecture": arch, "homegrown.note": "benchmark file, random weights"}


def _random_tensor(name: str, shape: tuple, dtype=torch.float16) -> torch.Tensor:
    """Weights that keep activations in range (1/sqrt(fan_in)); norms 1, biases 0: a forward pass is stable."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if len(shape) >= 2:
        fan_in = max(1, torch.Size(shape[1:]).numel())
        return (torch.randn(shape, generator=generator) / fan_in**0.5).to(dtype)
    if name.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "ln_1.weight", "ln_2.weight",
                      "ln_final.weight", "norm_out.weight", "layer_norm1.weight", "layer_norm2.weight",
                      "final_layer_norm.weight", "in_layers.0.weight", "out_layers.0.weight", "out.0.weight")):
        return torch.ones(shape, dtype=dtype)
    if name.endswith("logit_scale"):
        return torch.full(shape, 4.6052, dtype=dtype)
    return torch.zeros(shape, dtype=dtype)


def full_size_file(kind: str, folder: Path) -> Path:
    path = folder / f"bench-sdxl-{kind}.safetensors"
    if not path.exists():
        print(f"  writing a full-size SDXL {kind} file (random weights) to {path} ...", flush=True)
        specs, meta = _specs(kind)
        shapes = {name: shape for name, shape, _ in specs}
        ldm_format.write_safetensors(path, specs, lambda name: _random_tensor(name, shapes[name]), meta)
    return path


def full_size_lora(pipe, path: Path, rank: int = 32) -> Path:
    """A kohya-format SDXL LoRA over every attention and feed-forward layer of the UNet."""
    if path.exists():
        return path
    unet = pipe.unet
    names = ldm_format.unet_to_ldm({k: v for k, v in unet.state_dict().items()}, dict(unet.config))
    to_ldm = dict(zip(unet.state_dict().keys(), names.keys()))
    wanted = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "ff.net.0.proj.weight",
              "ff.net.2.weight", "proj_in.weight", "proj_out.weight")
    specs, sources = [], {}
    for key, weight in unet.state_dict().items():
        if key.endswith(wanted) and weight.ndim == 2:
            module = to_ldm[key].removeprefix(ldm_format.UNET_PREFIX).removesuffix(".weight").replace(".", "_")
            out_features, in_features = weight.shape
            base = f"lora_unet_{module}"
            specs += [(f"{base}.lora_down.weight", (rank, in_features), torch.float16),
                      (f"{base}.lora_up.weight", (out_features, rank), torch.float16),
                      (f"{base}.alpha", (), torch.float16)]
            sources[base] = True

    def make(name: str) -> torch.Tensor:
        shape = next(s for n, s, _ in specs if n == name)
        if name.endswith("alpha"):
            return torch.tensor(float(rank), dtype=torch.float16)
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        return (torch.randn(shape, generator=generator) * 0.01).to(torch.float16)

    ldm_format.write_safetensors(path, specs, make, {"ss_base_model_version": "sdxl_base_v1-0",
                                                     "ss_network_dim": str(rank)})
    return path


# ---- cases -------------------------------------------------------------------------------------


def bench_studio(work: Path, ckpt_dir: Path, lora_dir: Path | None = None, **settings):
    """A studio on these folders with settings held in memory (nothing written but images), as app.py builds it."""
    from .presets import PresetLibrary
    from .settings import SettingsStore
    from .studio import Studio
    from .styles import StyleLibrary

    overrides = {"ckpt_dir": str(ckpt_dir), "lora_dir": str(lora_dir or ckpt_dir.parent / "Lora"),
                 "vae_dir": str(ckpt_dir.parent / "VAE"),
                 "embeddings_dir": str(ckpt_dir.parent / "embeddings"), "outputs_dir": str(work / "outputs"), **settings}
    return Studio.create(SettingsStore(None, overrides), work, PresetLibrary(ROOT / "presets"),
                         styles=StyleLibrary(ROOT / "presets" / "styles"))


def _demo_studio(work: Path, **settings):
    from .demo import write_demo

    paths = write_demo(work / "demo")
    studio = bench_studio(work, paths["base"].parent, paths["demo-style"].parent, preview_every=0, **settings)
    studio.load_checkpoint("homegrown-demo-base")
    return studio


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _diffusers_scheduler(sampler: str, schedule: str):
    """diffusers' nearest scheduler for the samplers the speed cases use (same steps and spacing; the images
    differ in the last bits, the work per step is the same)."""
    import diffusers

    choices = {
        ("Euler", "Automatic"): (diffusers.EulerDiscreteScheduler, {}),
        ("DPM++ 2M", "Karras"): (diffusers.DPMSolverMultistepScheduler,
                                 {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True,
                                  "final_sigmas_type": "zero"}),
    }
    if (sampler, schedule) not in choices:
        raise ValueError(f"the bench compares with diffusers only for {sorted(choices)}")
    cls, options = choices[(sampler, schedule)]

    def make(config: dict):
        base = {k: v for k, v in dict(config).items() if not k.startswith("_")}
        return cls.from_config({**base, "timestep_spacing": "linspace", **options})

    return make


def plain_diffusers(pipelines, params, refiner=None):
    """A plain diffusers call on Homegrown's own loaded pipelines: the same prompt, starting latents, sampler and
    steps, with none of Homegrown's code in the loop (base alone, or base then refiner as diffusers documents)."""
    from . import samplers

    sampler, schedule = samplers.resolve(params.sampler_name, params.scheduler)
    make_scheduler = _diffusers_scheduler(sampler.name, schedule.name)
    shape = (1, pipelines.base.pipe.unet.config.in_channels, params.height // 8, params.width // 8)
    common = dict(prompt=params.prompt, negative_prompt=params.negative_prompt, num_inference_steps=params.steps,
                  guidance_scale=params.cfg_scale)

    def run():
        base = pipelines.base.pipe
        base.scheduler = make_scheduler(pipelines.base.scheduler_config)
        # the engine's starting noise (rng.py: A1111's default source unless the request names one)
        latents = rng.ImageRNG(shape[1:], [params.seed], source=params.randn_source or rng.DEFAULT_SOURCE).next()
        latents = latents.to(pipelines.device, pipelines.dtype)
        if refiner is None:
            base(**common, width=params.width, height=params.height, latents=latents, output_type="pil")
        else:
            switch = params.refiner_switch_at
            latents = base(**common, width=params.width, height=params.height, latents=latents,
                           denoising_end=switch, output_type="latent").images
            refiner.pipe.scheduler = make_scheduler(refiner.scheduler_config)
            refiner.pipe(**common, image=latents, denoising_start=switch, output_type="pil")
        _sync(pipelines.device)

    return run


def _demo_request():
    from .params import GenerationParams

    return GenerationParams(prompt="a photo of a cat, highly detailed", negative_prompt="blurry", steps=20,
                            width=512, height=512, sampler_name="Euler", seed=1)


def case_overhead(report: Report, work: Path, runs: int) -> None:
    studio = _demo_studio(work)
    params = _demo_request()
    timings = []

    def ours():
        timings.append(studio.generate(params).timings)

    both = measure_side_by_side({"plain": plain_diffusers(studio.pipelines, params), "ours": ours}, runs)
    a, b = both["plain"], both["ours"]
    report.add("overhead", "plain diffusers, demo 512x512, 20 steps", fmt(a), a)
    report.add("overhead", "Homegrown engine, same request (saves PNG)", fmt(b), b)
    report.add("overhead", "ratio Homegrown / diffusers", f"{b['median'] / a['median']:.3f}x",
               b["median"] / a["median"])
    last = timings[-runs:]
    for phase in ("encode", "lora", "denoise", "decode", "save"):
        value = statistics.median(t.get(phase, 0.0) for t in last)
        report.add("overhead", f"  Homegrown phase: {phase}", f"{value * 1000:.1f} ms", value)
    small = params.replace(prompt="a cat <lora:demo-style:0.8>")
    studio.generate(small)
    c = measure(lambda: studio.generate(small), runs)
    report.add("overhead", "Homegrown engine with one LoRA", fmt(c), c)


def speed_rows(report: Report, case: str, studio, params, runs: int, refiner_name: str | None = None,
               modes: tuple[str, ...] = ()) -> None:
    """Plain diffusers, the Homegrown default path, then each fast-path mode, on the same pipelines in one
    run: seconds per image, it/s, peak VRAM on a GPU; for the fast path also the first (compiling) image and
    the largest pixel difference from the default path."""
    import numpy as np

    pipelines = studio.pipelines
    cuda = pipelines.device.type == "cuda"
    size = f"{params.width}x{params.height}, {params.steps} steps"
    refiner = pipelines.load_refiner(refiner_name) if refiner_name else None
    runs_with = [("base", params, None)]
    if refiner is not None:
        runs_with.append(("base+refiner", params.replace(refiner_checkpoint=refiner_name), refiner))

    peaks: dict[str, int] = {}

    def peak_tracked(label: str, fn):
        def run():
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            result = fn()
            if cuda:
                peaks[label] = max(peaks.get(label, 0), torch.cuda.max_memory_allocated())
            return result
        return run

    def add_rows(label: str, stat: dict) -> dict:
        report.add(case, f"{label}: {size}", fmt(stat), stat)
        report.add(case, f"{label}: it/s", f"{params.steps / stat['median']:.2f}", params.steps / stat["median"])
        if cuda:
            report.add(case, f"{label}: peak VRAM", f"{peaks[label] / 2**30:.2f} GiB", peaks[label])
        return stat

    def row(label: str, fn) -> dict:
        return add_rows(label, measure(peak_tracked(label, fn), runs))

    def ours(p):
        def run():
            result = studio.generate(p)
            _sync(pipelines.device)
            return result
        return run

    for what, request, refiner_model in runs_with:
        contenders = {f"plain diffusers, {what}": plain_diffusers(pipelines, request, refiner_model),
                      f"Homegrown, {what}": ours(request)}
        both = measure_side_by_side({label: peak_tracked(label, fn) for label, fn in contenders.items()}, runs)
        plain, default = (add_rows(label, both[label]) for label in contenders)
        report.add(case, f"Homegrown / plain diffusers, {what}", f"{default['median'] / plain['median']:.3f}x",
                   default["median"] / plain["median"])
        eager = np.asarray(studio.generate(request).images[0]).astype(np.int16)
        for mode in modes:
            studio.apply_settings({"compile": mode})
            start = time.perf_counter()
            first = ours(request)()
            seconds = time.perf_counter() - start
            if first.warnings:
                report.add(case, f"fast path {mode}, {what}", "failed: " + first.warnings[0])
                continue
            report.add(case, f"fast path {mode}, {what}: first image (compiles)", f"{seconds:.1f} s", seconds)
            fast = row(f"fast path {mode}, {what}", ours(request))
            report.add(case, f"fast path {mode} / Homegrown default, {what}",
                       f"{fast['median'] / default['median']:.3f}x", fast["median"] / default["median"])
            diff = int(np.abs(np.asarray(first.images[0]).astype(np.int16) - eager).max())
            report.add(case, f"fast path {mode}, {what}: largest pixel difference", f"{diff} of 255", diff)
        studio.apply_settings({"compile": "off"})


def case_fastpath(report: Report, work: Path, runs: int) -> None:
    studio = _demo_studio(work, save_images=False)
    params = _demo_request()
    speed_rows(report, "fastpath", studio, params, runs, modes=("default",))
    # A new LoRA set must not mean compiling again (LoraSet keeps the UNet's module tree as compiled).
    studio.apply_settings({"compile": "default"})
    studio.generate(params)
    for tags in ("<lora:demo-style:0.8>", "<lora:demo-style:0.8> <lora:demo-detail:0.5>"):
        start = time.perf_counter()
        studio.generate(params.replace(prompt=f"{params.prompt} {tags}"))
        seconds = time.perf_counter() - start
        report.add("fastpath", f"fast path, first image with a new set of {tags.count('<')} LoRA(s)",
                   f"{seconds:.2f} s", seconds)


def _load_in_child(code: str) -> dict:
    """Run a loading snippet in a fresh process and return what it prints as JSON (peak RSS included)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


LOAD_SNIPPET = """
import json, time, torch

def peak_rss():
    # VmHWM: this process's own high-water mark (ru_maxrss can carry the parent's over fork/exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

from pathlib import Path
from sd_app.loading import load_base, load_refiner
from sd_app.models import Checkpoint
import psutil, os
baseline = psutil.Process(os.getpid()).memory_info().rss  # Python, torch, diffusers, transformers imported
start = time.perf_counter()
base = load_base(Checkpoint("base", Path({base!r})), torch.float16)
seconds = time.perf_counter() - start
rss_lazy = peak_rss()
# safetensors maps the file: weights become resident when first used. Touch them all, as a first
# generation (or the copy to the GPU) does, so that the peak counts every byte.
start = time.perf_counter()
with torch.no_grad():
    for part in (base.unet, base.vae, base.text_encoder, base.text_encoder_2):
        for p in part.parameters():
            p.view(-1)[::512].sum()
            p.abs().max()
touch = time.perf_counter() - start
rss_base = peak_rss()
out = {{"seconds": seconds, "peak_rss": rss_base, "peak_rss_lazy": rss_lazy, "touch_seconds": touch,
        "baseline_rss": baseline}}
if {refiner!r}:
    start = time.perf_counter()
    refiner = load_refiner(Checkpoint("refiner", Path({refiner!r})), torch.float16, base=base)
    out["refiner_seconds"] = time.perf_counter() - start
    with torch.no_grad():
        for p in refiner.unet.parameters():
            p.abs().max()
    out["rss_both"] = psutil.Process(os.getpid()).memory_info().rss
    out["peak_rss_both"] = peak_rss()
    params = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())
    out["bytes_base"] = sum(params(m) for m in (base.unet, base.vae, base.text_encoder, base.text_encoder_2))
    out["bytes_refiner_own"] = params(refiner.unet)
print(json.dumps(out))
"""


def _read_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(64 * 1024 * 1024):
            pass


def case_load(report: Report, work: Path, runs: int) -> None:
    base = full_size_file("base", work)
    refiner = full_size_file("refiner", work)
    size = base.stat().st_size
    read = measure(lambda: _read_file(base), runs)
    report.add("load", f"read {size / 1e9:.2f} GB base file from page cache", fmt(read), read)
    results = [_load_in_child(LOAD_SNIPPET.format(base=str(base), refiner="")) for _ in range(max(1, runs))]
    seconds = statistics.median(r["seconds"] for r in results)
    peak = statistics.median(r["peak_rss"] for r in results)
    report.add("load", "load SDXL base single file (fp16)", f"{seconds:.2f} s", seconds)
    report.add("load", "load time / page-cache read time", f"{seconds / read['median']:.2f}x",
               seconds / read["median"])
    lazy = statistics.median(r["peak_rss_lazy"] for r in results)
    touch = statistics.median(r["touch_seconds"] for r in results)
    report.add("load", "peak RSS right after loading (weights still mapped)", f"{lazy / 1e9:.2f} GB", lazy)
    report.add("load", "then touching every weight once", f"{touch:.2f} s", touch)
    report.add("load", "peak RSS with every weight resident", f"{peak / 1e9:.2f} GB", peak)
    report.add("load", "peak RSS / file size", f"{peak / size:.2f}x", peak / size)
    baseline = statistics.median(r["baseline_rss"] for r in results)
    report.add("load", "  of which Python + libraries before loading", f"{baseline / 1e9:.2f} GB", baseline)
    report.add("load", "(peak RSS - libraries) / file size", f"{(peak - baseline) / size:.2f}x",
               (peak - baseline) / size)
    both = _load_in_child(LOAD_SNIPPET.format(base=str(base), refiner=str(refiner)))
    separate = size + refiner.stat().st_size
    report.add("load", "load refiner next to base (shares TE2 + VAE)", f"{both['refiner_seconds']:.2f} s",
               both["refiner_seconds"])
    report.add("load", "RSS with base + refiner loaded, all weights resident", f"{both['rss_both'] / 1e9:.2f} GB",
               both["rss_both"])
    report.add("load", "the two files' sizes added", f"{separate / 1e9:.2f} GB", separate)
    report.add("load", "weights held: base + refiner's own UNet",
               f"{(both['bytes_base'] + both['bytes_refiner_own']) / 1e9:.2f} GB",
               both["bytes_base"] + both["bytes_refiner_own"])


def _lora_case(report: Report, case: str, pipe, loras: list[Path], runs: int, latent: int, originals) -> None:
    from .lora_library import ActiveLora, describe
    from .lora_patch import LoraSet, WeightCache

    infos = [describe(p, p.stem) for p in loras]
    cache = WeightCache()
    unet = pipe.unet
    dtype = next(unet.parameters()).dtype
    sample = torch.randn(1, 4, latent, latent, dtype=dtype)
    hidden = torch.randn(1, 77, unet.config.cross_attention_dim, dtype=dtype)
    time_ids = torch.tensor([[latent * 8, latent * 8, 0, 0, latent * 8, latent * 8]], dtype=dtype)
    pooled_dim = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(1, pooled_dim, dtype=dtype), "time_ids": time_ids}

    @torch.no_grad()
    def step():
        unet(sample, torch.tensor(500), hidden, added_cond_kwargs=added)

    start = time.perf_counter()
    cache.get(infos[0].path)
    report.add(case, f"first read of a {infos[0].path.stat().st_size / 1e6:.0f} MB LoRA (page cache)",
               f"{time.perf_counter() - start:.2f} s")
    sets = [[infos[0]], infos[:3], [infos[1]], []]
    for mode, fuse in (("unfused", False), ("fused", True)):
        lora_set = LoraSet(pipe, cache, fuse=fuse, originals=originals)
        start = time.perf_counter()
        lora_set.apply([ActiveLora(infos[0], 1.0)])
        first = time.perf_counter() - start
        report.add(case, f"[{mode}] first load into the UNet (from memory)", f"{first:.2f} s", first)
        if fuse:
            where = "RAM copy" if lora_set._originals else "checkpoint file" if lora_set._from_file else "not fused"
            report.add(case, "[fused] originals kept in", where if lora_set.fused else "not fused (no room)")
        for info in infos[1:]:
            lora_set.apply([ActiveLora(info, 1.0)])
        switch = measure(lambda: [lora_set.apply([ActiveLora(i, 0.7) for i in s]) for s in sets], runs)
        per = {k: v / len(sets) for k, v in switch.items() if k != "runs"}
        report.add(case, f"[{mode}] switch between loaded LoRA sets", fmt(per, "ms"), per)
        steps = {}
        for label, active in (("no LoRA", []), ("1 LoRA", infos[:1]), ("3 LoRAs", infos[:3])):
            lora_set.apply([ActiveLora(i, 0.8) for i in active])
            steps[label] = measure(step, runs)
            report.add(case, f"[{mode}] UNet step, {latent * 8}px, {label}", fmt(steps[label]), steps[label])
        for label in ("1 LoRA", "3 LoRAs"):
            ratio = steps[label]["median"] / steps["no LoRA"]["median"]
            report.add(case, f"[{mode}] step cost {label} / no LoRA", f"{ratio:.3f}x", ratio)
        lora_set.max_loaded = 1
        evicted = measure(lambda: [lora_set.apply([ActiveLora(i, 1.0)]) for i in infos[:2]], max(1, runs // 2))
        per = {k: v / 2 for k, v in evicted.items() if k != "runs"}
        report.add(case, f"[{mode}] switch to a cached LoRA no longer in the UNet", fmt(per), per)
        lora_set.apply([])
        for name in list(lora_set._loaded.values()):
            lora_set._remove(name)


def case_lora_demo(report: Report, work: Path, runs: int) -> None:
    from .demo import LORA_FILES, write_demo
    from .loading import CheckpointWeights, load_base
    from .models import Checkpoint

    paths = write_demo(work / "demo")
    pipe = load_base(Checkpoint("demo", paths["base"]), torch.float32)
    loras = [paths[name] for name in LORA_FILES]
    third = work / "demo" / "models" / "Lora" / "demo-third.safetensors"
    if not third.exists():
        third.write_bytes(paths["demo-style"].read_bytes())
    originals = CheckpointWeights(Checkpoint("demo", paths["base"]), pipe.unet.config)
    _lora_case(report, "lora-demo", pipe, loras + [third], max(runs, 5), latent=64, originals=originals)


def case_lora(report: Report, work: Path, runs: int) -> None:
    from .loading import CheckpointWeights, load_base
    from .models import Checkpoint

    base = full_size_file("base", work)
    pipe = load_base(Checkpoint("bench", base), torch.float32)
    loras = []
    for i in range(3):
        path = work / f"bench-lora-{i}.safetensors"
        if i == 0:
            full_size_lora(pipe, path)
        elif not path.exists():
            path.write_bytes(loras[0].read_bytes())
        loras.append(path)
    originals = CheckpointWeights(Checkpoint("bench", base), pipe.unet.config)
    _lora_case(report, "lora", pipe, loras, runs, latent=32, originals=originals)
    del pipe
    gc.collect()


def case_coldstart(report: Report, work: Path, runs: int) -> None:
    """`python app.py --demo` from launch: the page (served before the model stack imports), the model, the first
    image; beside it `import gradio` alone in a fresh interpreter, the floor for the page."""
    import httpx

    from .demo import write_demo

    for label, fresh in (("first start (writes demo models)", True), ("later start", False)):
        data = Path(tempfile.mkdtemp(dir=work, prefix="cold-"))
        if not fresh:
            write_demo(data / "demo")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import gradio"], cwd=ROOT, check=True)
        gradio_alone = time.perf_counter() - start
        port = _free_port()
        start = time.perf_counter()
        server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--demo", "--port", str(port),
                                   "--data-dir", str(data), "--outputs-dir", str(data / "outputs")],
                                  cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            page = _wait_for(server, start, lambda: httpx.get(url + "/config", timeout=1).status_code == 200)
            # The API answers 503 until the model is loaded.
            model = _wait_for(server, start,
                              lambda: httpx.get(url + "/sdapi/v1/samplers", timeout=1).status_code == 200)
            r = httpx.post(url + "/sdapi/v1/txt2img", json={"prompt": "cold start", "steps": 12, "width": 256,
                                                             "height": 256}, timeout=120)
            r.raise_for_status()
            first = time.perf_counter() - start
        finally:
            server.terminate()
            server.wait(30)
            shutil.rmtree(data, ignore_errors=True)  # ~30 MB of demo models and settings per start
        report.add("coldstart", f"{label}: import gradio alone (fresh python)", f"{gradio_alone:.1f} s", gradio_alone)
        report.add("coldstart", f"{label}: launch to page ready", f"{page:.1f} s", page)
        report.add("coldstart", f"{label}: page ready - import gradio", f"{page - gradio_alone:.1f} s",
                   page - gradio_alone)
        report.add("coldstart", f"{label}: launch to model loaded (API answers)", f"{model:.1f} s", model)
        report.add("coldstart", f"{label}: launch to first API image", f"{first:.1f} s", first)


def _wait_for(server: subprocess.Popen, start: float, ready) -> float:
    """Seconds from `start` until `ready()` is true (polled every 50 ms)."""
    import httpx

    while True:
        try:
            if ready():
                return time.perf_counter() - start
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.perf_counter() - start > 300:
            raise RuntimeError("the app did not start")
        time.sleep(0.05)


OVERSIZED = (  # the requests of issue 13 that held the engine for seconds to minutes
    ("prompt of 3300 BREAKs (20 KB)", {"prompt": "BREAK " * 3300}),
    ("prompt a( x 6667", {"prompt": "a(" * 6667}),
    ("prompt of 1000 nested ( )", {"prompt": "(" * 1000 + "cat" + ")" * 1000}),
    ("prompt of 25,000 characters", {"prompt": "x" * 25_000}),
    ("4096x4096", {"width": 4096, "height": 4096}),
    ("150 steps", {"steps": 150}),
    ("n_iter 100", {"n_iter": 100}),
)


def case_limits(report: Report, work: Path, runs: int) -> None:
    import httpx

    from .errors import UserError
    from .params import GenerationParams

    data = Path(tempfile.mkdtemp(dir=work, prefix="limits-"))
    with _demo_app(data) as (url, port), httpx.Client(base_url=url, timeout=120) as client:
        stat = measure(lambda: client.get("/sdapi/v1/samplers"), runs * 5)
        report.add("limits", "HTTP round trip of GET /sdapi/v1/samplers, for scale", fmt(stat, "ms"), stat)
        for what, payload in OVERSIZED:
            def refused(payload=payload):
                answer = client.post("/sdapi/v1/txt2img", json=payload)
                assert answer.status_code == 422, answer.text

            def checked(payload=payload):
                try:
                    GenerationParams(**payload).check()
                except UserError:
                    return
                raise AssertionError(f"{payload} passed the check")

            stat = measure(refused, runs * 5)
            report.add("limits", f"{what}: refused (HTTP 422)", fmt(stat, "ms"), stat)
            stat = measure(checked, runs * 5)
            report.add("limits", f"{what}: the check alone, in process", fmt(stat, "ms"), stat)

        queued = [post_without_reading(port, "/sdapi/v1/txt2img", {"prompt": "queued", "steps": 30, "width": 64,
                                                                    "height": 64, "n_iter": 10}) for _ in range(80)]
        try:
            while client.get("/sdapi/v1/progress").json()["state"]["sampling_step"] == 0:
                time.sleep(0.05)
            stat = measure(lambda: client.get("/sdapi/v1/progress"), runs * 10)
            report.add("limits", "/progress with 80 txt2img requests queued", fmt(stat, "ms"), stat)
            stat = measure(lambda: client.post("/sdapi/v1/interrupt"), runs * 3)
            report.add("limits", "/interrupt with the queue (each stops the running job)", fmt(stat, "ms"), stat)
        finally:
            gone = time.perf_counter()
            for sock in queued:
                sock.close()
        idle_since = None
        while idle_since is None or time.perf_counter() - idle_since < 1:
            running = client.get("/sdapi/v1/progress").json()["state"]["job_count"]
            idle_since = None if running else idle_since or time.perf_counter()
            time.sleep(0.05)
        drained = idle_since - gone
        report.add("limits", "80 queued jobs ended after their clients left", f"{drained:.2f} s", drained)


def post_without_reading(port: int, path: str, payload: dict):
    """A POST to the local app whose answer is never read; closing the socket is a client that went away."""
    import socket

    body = json.dumps(payload).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


class _demo_app:
    """`python app.py --demo` on a free port for a case, stopped (and its folder removed) afterwards."""

    def __init__(self, data: Path):
        self.data = data
        self.port = _free_port()
        self.server = None

    def __enter__(self) -> tuple[str, int]:
        import httpx

        url = f"http://127.0.0.1:{self.port}"
        self.server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--demo", "--port", str(self.port),
                                        "--data-dir", str(self.data), "--outputs-dir", str(self.data / "outputs")],
                                       cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start = time.perf_counter()
        while True:
            try:
                if httpx.get(url + "/sdapi/v1/samplers", timeout=1).status_code == 200:
                    return url, self.port
            except httpx.HTTPError:
                time.sleep(0.05)
            if self.server.poll() is not None or time.perf_counter() - start > 180:
                self.__exit__()
                raise RuntimeError("the app did not start")

    def __exit__(self, *exc) -> None:
        self.server.terminate()
        self.server.wait(30)
        shutil.rmtree(self.data, ignore_errors=True)


def case_gpu(report: Report, work: Path, runs: int) -> None:
    if not torch.cuda.is_available():
        report.add("gpu", "skipped", "no CUDA GPU on this machine")
        return
    from .params import GenerationParams

    folder = work / "ckpt"
    folder.mkdir(exist_ok=True)
    for kind in ("base", "refiner"):
        target = folder / f"bench-sdxl-{kind}.safetensors"
        if not target.exists():
            os.link(full_size_file(kind, work), target)
    # Live previews on, as the page has them.
    studio = bench_studio(work, folder, save_images=False, memory_mode="none", dtype="bfloat16")
    studio.load_checkpoint("bench-sdxl-base")
    report.add("gpu", "device, precision", f"{torch.cuda.get_device_name(0)}, bfloat16, live preview every "
                                           f"{studio.settings.get('preview_every')} steps, PNG not saved")
    params = GenerationParams(prompt="a photo of a cat", negative_prompt="blurry", steps=30, width=1024,
                              height=1024, seed=1, sampler_name="Euler")
    speed_rows(report, "gpu", studio, params, runs, refiner_name="bench-sdxl-refiner",
               modes=("default", "max-autotune"))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


UPSCALE_SNIPPET = """
import json, os, time, tracemalloc
import numpy as np, psutil, torch
from PIL import Image
from sd_app.demo import UPSCALER_FILE, write_demo_upscaler
from sd_app.jobs import Job
from sd_app.upscaler_library import UpscalerLibrary
from sd_app.upscalers import Tiling, Upscalers

def peak_rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the kernel's way to restart VmHWM from the current RSS
    except OSError:
        pass

work = {work!r}
write_demo_upscaler(work)
name = UPSCALER_FILE.rsplit(".", 1)[0]
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.float16 if device == "cuda" else None
upscalers = Upscalers(UpscalerLibrary(os.path.join(work, "models")), device, dtype, Tiling(tile={tile}))
rng = np.random.default_rng(0)
image = Image.fromarray(rng.integers(0, 256, (129, 129, 3), dtype=np.uint8)).resize((1024, 1024), Image.BICUBIC)
upscalers.upscale(image.crop((0, 0, 64, 64)), name, scale=4)  # model loaded and warm
out = []
for run in range({runs}):
    gc_before = psutil.Process(os.getpid()).memory_info().rss
    reset_peak()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tracemalloc.start()
    job = Job()
    start = time.perf_counter()
    result = upscalers.upscale(image, name, scale=4, job=job)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    out.append({{"seconds": seconds, "size": list(result.size), "tiles": job.note, "rss_before": gc_before,
                "peak_rss": peak_rss(), "traced_peak": traced,
                "cuda_peak": torch.cuda.max_memory_allocated() if device == "cuda" else None}})
    del result
print(json.dumps({{"device": device, "runs": out}}))
"""


def case_upscale(report: Report, work: Path, runs: int) -> None:
    """A tiled 4x upscale of 1024x1024 with the demo upscaler, in a fresh process (its memory high-water mark
    is this upscale's alone)."""
    for tile in (192, 512):
        code = UPSCALE_SNIPPET.format(work=str(work / "upscale"), tile=tile, runs=runs)
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows = result["runs"]
        seconds = {"median": statistics.median(r["seconds"] for r in rows), "min": min(r["seconds"] for r in rows),
                   "max": max(r["seconds"] for r in rows), "runs": len(rows)}
        above = max(r["peak_rss"] - r["rss_before"] for r in rows)
        label = f"tile {tile}"
        report.add("upscale", f"4x 1024x1024 -> {rows[0]['size'][0]}x{rows[0]['size'][1]}, {label}, "
                              f"{result['device']}", fmt(seconds), seconds)
        report.add("upscale", f"{label}: {rows[0]['tiles']}", "", rows[0]["tiles"])
        report.add("upscale", f"{label}: peak RSS above the loaded process", f"{above / 1e6:.0f} MB", above)
        report.add("upscale", f"{label}: peak RSS of the process", f"{max(r['peak_rss'] for r in rows) / 1e6:.0f} MB",
                   max(r["peak_rss"] for r in rows))
        report.add("upscale", f"{label}: tracemalloc peak (numpy buffers)",
                   f"{max(r['traced_peak'] for r in rows) / 1e6:.0f} MB", max(r["traced_peak"] for r in rows))
        if rows[0]["cuda_peak"] is not None:
            report.add("upscale", f"{label}: peak GPU memory allocated",
                       f"{max(r['cuda_peak'] for r in rows) / 1e6:.0f} MB", max(r["cuda_peak"] for r in rows))


def case_train(report: Report, work: Path, runs: int) -> None:
    """LoRA training: s/step and peak memory against diffusers' example loop, and the full-size estimate."""
    from .training.bench_case import case_train as train_case

    train_case(report, work, runs)


def pool_costs(studio, params, runs: int):
    """(seconds per image with the LoRA set already applied, seconds to switch to another set) on this studio:
    the switch is the engine's own `lora` phase when the set alternates, less that phase when it does not."""
    from .pool.simulate import Costs

    sets = [params.replace(prompt=f"{params.prompt} <lora:{name}:0.8>") for name in ("demo-style", "demo-detail")]
    same = [studio.generate(sets[0], save=False) for _ in range(runs + 1)][1:]
    switched = [studio.generate(sets[n % 2], save=False) for n in range(1, runs + 1)]
    image_s = statistics.median(sum(r.timings.values()) for r in same)
    lora_s = statistics.median(r.timings["lora"] for r in switched) - statistics.median(r.timings["lora"] for r in same)
    return Costs(image_s, max(0.0, lora_s))


def case_pool(report: Report, work: Path, runs: int) -> None:
    """The pool's queueing simulation (sd_app/pool/simulate.py, the pool's own router): random vs affinity
    routing for N = 1, 4, 16, 64 workers at 80 % load, 24 users, 6 LoRA sets; the costs measured here on the
    demo engine, then given ones (1 s an image, 0.3 s a LoRA switch) for a GPU whose switches cost more."""
    from .pool import simulate

    studio = _demo_studio(work)
    params = _demo_request().replace(width=128, height=128, steps=8)
    measured = pool_costs(studio, params, runs)
    report.add("pool", "demo 128x128, 8 steps: one image, LoRA set loaded", f"{measured.image_s:.3g} s",
               measured.image_s)
    report.add("pool", "demo: switching the LoRA set", f"{measured.lora_switch_s * 1000:.3g} ms",
               measured.lora_switch_s)
    workload = simulate.Workload()
    for label, costs in (("measured", measured), ("given 1 s + 0.3 s", simulate.Costs(1.0, 0.3))):
        outcomes = simulate.table(costs, workload)
        for o in outcomes:
            report.add("pool", f"{label}: N={o.workers} {o.routing}",
                       f"wait p50 {o.p50_wait:.3g} s, p95 {o.p95_wait:.3g} s, busy {o.utilisation:.0%}, "
                       f"on images {o.useful:.0%}, {o.switches:.2f} switches/request", dataclasses.asdict(o))
        print(simulate.markdown(outcomes), flush=True)


CASES = {"overhead": case_overhead, "fastpath": case_fastpath, "load": case_load, "lora-demo": case_lora_demo,
         "lora": case_lora, "coldstart": case_coldstart, "limits": case_limits, "gpu": case_gpu,
         "upscale": case_upscale,
         "img2img": lambda report, work, runs: _img2img_case(report, work, runs), "train": case_train,
         "pool": case_pool}


def _img2img_case(report: Report, work: Path, runs: int) -> None:
    from .bench_img2img import case_img2img  # its own module: it imports this one's helpers

    case_img2img(report, work, runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sd_app.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated, from: {', '.join(ALL_CASES)}")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per figure (after one warm-up)")
    parser.add_argument("--work-dir", default="data/bench", help="where the big benchmark files are cached")
    parser.add_argument("--json", default="bench-results.json", help="write the figures here")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r}; choose from {', '.join(ALL_CASES)}")
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    report = Report()
    print("machine:", json.dumps(report.data["machine"]))
    for case in cases:
        print(f"[{case}]", flush=True)
        started = time.perf_counter()
        CASES[case](report, work, max(1, args.runs))
        report.data["cases"].setdefault(case, {})["_seconds"] = time.perf_counter() - started
        gc.collect()
    print()
    print(report.table())
    Path(args.json).write_text(json.dumps(report.data, indent=2, default=str))
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

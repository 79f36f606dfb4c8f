"""LoRAs applied to the pipelines: pixels change, removing restores them exactly, caching, fusing."""

import shutil
import threading

import numpy as np
import pytest
from safetensors.torch import load_file

from sd_app.errors import UserError
from sd_app.lora_patch import WeightCache


def pixels(result, i=0):
    return np.asarray(result.images[i]).astype(np.int16)


@pytest.fixture(scope="module")
def reference(lora_engine):
    """Pixels made before any LoRA was ever loaded into this engine."""
    return {}


def test_lora_changes_pixels_and_removing_it_restores_them_exactly(lora_engine, small):
    before = lora_engine.generate(small)  # no LoRA ever loaded yet in this engine
    styled = lora_engine.generate(small.replace(prompt="a photo of a cat <lora:demo-style:1>"))
    assert np.abs(pixels(before) - pixels(styled)).mean() > 1
    half = lora_engine.generate(small.replace(prompt="a photo of a cat <lora:demo-style:0.5>"))
    assert not np.array_equal(pixels(half), pixels(styled))
    negative = lora_engine.generate(small.replace(prompt="a photo of a cat <lora:demo-style:-1>"))
    assert not np.array_equal(pixels(negative), pixels(before))
    both = lora_engine.generate(small.replace(prompt="<lora:demo-style:1> a photo of a cat <lora:chars/hero:0.8>"))
    assert not np.array_equal(pixels(both), pixels(styled))
    after = lora_engine.generate(small)
    assert np.array_equal(pixels(after), pixels(before))
    again = lora_engine.generate(small.replace(prompt="a photo of a cat <lora:demo-style:1>"))
    assert np.array_equal(pixels(again), pixels(styled))


@pytest.mark.parametrize("name, words", [("cut-short", "incomplete"), ("wrong-shapes", "could not be applied")])
def test_broken_lora_fails_its_job_and_leaves_nothing_behind(lora_engine, small, name, words):
    before = lora_engine.generate(small)
    def adapters():
        return {part: names for part, names in lora_engine.pipelines.base.pipe.get_list_adapters().items() if names}

    adapters_before = adapters()
    with pytest.raises(UserError) as err:
        lora_engine.generate(small.replace(prompt=f"cat <lora:{name}:1>"))
    assert words in err.value.message
    assert adapters() == adapters_before
    assert np.array_equal(pixels(lora_engine.generate(small)), pixels(before))


def test_switching_uses_the_cache_and_never_reloads_the_checkpoint(lora_engine, small):
    pipe = lora_engine.pipelines.base.pipe
    lora_engine.pipelines.base.loras.max_loaded = 1  # force adapters out of the pipeline at each switch
    lora_engine.generate(small.replace(prompt="cat <lora:demo-style:1>"))
    lora_engine.generate(small.replace(prompt="cat <lora:chars/hero:1>"))
    reads = lora_engine.pipelines.lora_weights.disk_reads
    for prompt in ("cat <lora:chars/hero:1>", "cat <lora:demo-style:1>", "cat <lora:chars/hero:1>"):
        lora_engine.generate(small.replace(prompt=prompt))
    lora_engine.pipelines.base.loras.max_loaded = 8
    assert lora_engine.pipelines.lora_weights.disk_reads == reads  # adapters were rebuilt from memory, not disk
    assert lora_engine.pipelines.base.pipe is pipe
    assert sum(len(v) for v in pipe.get_list_adapters().values()) <= 3  # one adapter in unet + 2 encoders


def test_weight_cache_is_bounded(ckpt_dir):
    folder = ckpt_dir.parent / "Lora"
    size = sum(t.numel() * t.element_size() for t in load_file(str(folder / "demo-style.safetensors")).values())
    cache = WeightCache(max_bytes=size + 1)
    cache.get(folder / "demo-style.safetensors")
    cache.get(folder / "demo-detail.safetensors")
    cache.get(folder / "demo-style.safetensors")
    assert cache.disk_reads == 3


def test_peft_format_loads_like_kohya(lora_engine, small, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from peft.utils import get_peft_model_state_dict

    kohya = lora_engine.generate(small.replace(prompt="cat <lora:demo-style:1>"))
    pipe = lora_engine.pipelines.base.pipe
    lora_engine.pipelines.base.loras._restore_layers()  # peft's layers stand aside while a fused set runs
    adapter = lora_engine.pipelines.base.loras._loaded[next(k for k in lora_engine.pipelines.base.loras._loaded if k[0].stem == "demo-style")]
    layers = {part: get_peft_model_state_dict(getattr(pipe, part), adapter_name=adapter)
              for part in ("unet", "text_encoder", "text_encoder_2")}
    configs = {part: getattr(pipe, part).peft_config[adapter].to_dict() for part in layers}
    StableDiffusionXLPipeline.save_lora_weights(tmp_path, unet_lora_layers=layers["unet"],
                                                text_encoder_lora_layers=layers["text_encoder"],
                                                text_encoder_2_lora_layers=layers["text_encoder_2"],
                                                unet_lora_adapter_metadata=configs["unet"],
                                                text_encoder_lora_adapter_metadata=configs["text_encoder"],
                                                text_encoder_2_lora_adapter_metadata=configs["text_encoder_2"],
                                                weight_name="peft-style.safetensors")
    shutil.copy(tmp_path / "peft-style.safetensors", lora_engine.loras.folder / "peft-style.safetensors")
    assert lora_engine.loras.get("peft-style").base_model == "sdxl"
    peft = lora_engine.generate(small.replace(prompt="cat <lora:peft-style:1>"))
    assert np.abs(pixels(peft) - pixels(kohya)).max() <= 1


def test_concurrent_jobs_never_see_each_others_loras(lora_engine, small):
    prompts = ["cat <lora:demo-style:1>", "cat <lora:chars/hero:1>", "cat", "cat <lora:demo-style:-0.5>"]
    solo = {p: pixels(lora_engine.generate(small.replace(prompt=p))) for p in prompts}
    results, errors = {}, []

    def run(i):
        try:
            p = prompts[i % len(prompts)]
            results[i] = (p, pixels(lora_engine.generate(small.replace(prompt=p))))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    for p, got in results.values():
        assert np.array_equal(got, solo[p]), p


def test_fused_and_unfused_agree_and_both_restore_exactly(lora_engine, small):
    before = lora_engine.generate(small)
    prompt = small.replace(prompt="cat <lora:demo-style:0.9> <lora:chars/hero:0.5>")
    fused = lora_engine.generate(prompt)
    assert lora_engine.pipelines.base.loras.fused
    assert np.array_equal(pixels(lora_engine.generate(small)), pixels(before))  # unfused back, exactly
    loras = lora_engine.pipelines.base.loras
    loras.fuse_budget, loras.originals, originals = 0, None, loras.originals  # nowhere to keep originals
    try:
        unfused = lora_engine.generate(prompt)
        assert not loras.fused
    finally:
        loras.fuse_budget, loras.originals = None, originals
    assert np.abs(pixels(fused) - pixels(unfused)).max() <= 2
    assert np.array_equal(pixels(lora_engine.generate(small)), pixels(before))
    assert np.array_equal(pixels(lora_engine.generate(prompt)), pixels(fused))


def test_fusion_undone_from_the_checkpoint_file_when_ram_is_short(lora_engine, small):
    before = lora_engine.generate(small)
    prompt = small.replace(prompt="cat <lora:demo-style:0.7>")
    in_ram = lora_engine.generate(prompt)
    lora_engine.generate(small)
    loras = lora_engine.pipelines.base.loras
    loras.fuse_budget = 0  # no room for a RAM copy: the originals come back from the .safetensors file
    try:
        from_file = lora_engine.generate(prompt)
        assert loras.fused and loras._from_file and not loras._originals
        assert np.array_equal(pixels(from_file), pixels(in_ram))
        assert np.array_equal(pixels(lora_engine.generate(small)), pixels(before))
    finally:
        loras.fuse_budget = None

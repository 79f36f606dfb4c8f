"""LyCORIS files (LoCon, LoHa, LoKr, DoRA, full diffs) applied by `<lora:name:w>`: each layer's weight becomes what
LyCORIS's formulas say, pixels change, removing restores the exact pixels; kinds Homegrown does not run are refused."""

import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import BASE, make_engine
from sd_app import lycoris, lycoris_weights
from sd_app.demo import _tiny_components, write_network
from sd_app.errors import UserError
from sd_app.lora_library import ActiveLora
from sd_app.weight_patch import WeightPatches

RUN = ("locon", "loha", "lokr", "dora", "full")
REFUSED = {"ia3": "IA3", "oft": "OFT", "boft": "BOFT", "glora": "GLoRA"}


@pytest.fixture(scope="module")
def lyco_engine(ckpt_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lycoris")
    folder = tmp / "Lora"
    folder.mkdir()
    parts = _tiny_components()
    for seed, algo in enumerate(RUN + tuple(REFUSED)):
        write_network(parts, folder / f"{algo}.safetensors", algo, 100 + seed)
    write_network(parts, folder / "loha-diffusers.safetensors", "loha", 100 + RUN.index("loha"), form="diffusers")
    shutil.copy(ckpt_dir.parent / "Lora" / "demo-style.safetensors", folder / "demo-style.safetensors")
    eng = make_engine(ckpt_dir, tmp, lora_dir=folder)
    eng.pipelines.load_checkpoint(BASE)
    return eng


def pixels(result):
    return np.asarray(result.images[0]).astype(np.int16)


def active(engine, *pairs):
    return [ActiveLora(engine.loras.get(name), weight) for name, weight in pairs]


def snapshot(pipe):
    return [(p, p.detach().clone()) for part in ("unet", "text_encoder", "text_encoder_2")
            for p in getattr(pipe, part).parameters()]


def unchanged(saved) -> bool:
    return all(torch.equal(p.detach(), before) for p, before in saved)


# ---- the formulas, written out as LyCORIS states them -------------------------------------------------------


def expected_weight(parts: dict, weight: torch.Tensor, m: float) -> torch.Tensor:
    p = {k: v.float() for k, v in parts.items()}
    w = weight.detach().float()
    alpha = float(p["alpha"]) if "alpha" in p else None
    if "hada_w1_a" in p:
        if "hada_t1" in p:  # Tucker: rebuild = t x1 w_a x2 w_b
            one = torch.einsum("i j k l, j r, i p -> p r k l", p["hada_t1"], p["hada_w1_b"], p["hada_w1_a"])
            two = torch.einsum("i j k l, j r, i p -> p r k l", p["hada_t2"], p["hada_w2_b"], p["hada_w2_a"])
        else:
            one, two = p["hada_w1_a"] @ p["hada_w1_b"], p["hada_w2_a"] @ p["hada_w2_b"]
        delta = (one * two).reshape(w.shape) * alpha / p["hada_w1_b"].shape[0]
    elif any(k.startswith("lokr") for k in p):
        w1 = p["lokr_w1"] if "lokr_w1" in p else p["lokr_w1_a"] @ p["lokr_w1_b"]
        if "lokr_w2" in p:
            w2 = p["lokr_w2"]
        elif "lokr_t2" in p:
            w2 = torch.einsum("i j k l, i p, j r -> p r k l", p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"])
        else:
            w2 = p["lokr_w2_a"] @ p["lokr_w2_b"]
        # the Kronecker product, block by block: block (i, j) is w1[i, j] * w2
        blocks = torch.cat([torch.cat([w1[i, j] * w2 for j in range(w1.shape[1])], dim=1)
                            for i in range(w1.shape[0])], dim=0)
        rank = p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else None
        delta = blocks.reshape(w.shape) * (alpha / rank if rank else 1.0)
    elif "diff" in p:
        delta = p["diff"]
    else:
        up, down = p["lora_up.weight"].flatten(1), p["lora_down.weight"].flatten(1)
        if "lora_mid.weight" in p:
            mid = p["lora_mid.weight"]
            delta = torch.einsum("p i, i j k l, j r -> p r k l", up, mid, down)
        else:
            delta = (up @ down).reshape(w.shape)
        delta = delta * alpha / down.shape[0]
    if "dora_scale" in p:
        merged = w + delta
        scale = p["dora_scale"]
        dims = tuple(range(1, w.dim())) if scale.shape[0] == w.shape[0] and scale.shape[1] == 1 else \
            tuple(d for d in range(w.dim()) if d != 1)
        norm = torch.linalg.vector_norm(merged, dim=dims, keepdim=True)
        decomposed = merged * scale / (norm + torch.finfo(torch.float32).eps)
        return w + m * (decomposed - w)
    return w + m * delta


@pytest.mark.parametrize("algo", RUN)
def test_each_kind_sets_every_layer_to_its_formula_and_removal_restores_the_bits(lyco_engine, algo):
    loras = lyco_engine.pipelines.base.loras
    pipe = lyco_engine.pipelines.base.pipe
    loras.apply([])
    saved = snapshot(pipe)
    index = lycoris_weights.layer_index(pipe)
    layers = lycoris.layers_of(load_file(str(lyco_engine.loras.get(algo).path)))
    modules = {layer: lycoris_weights.find_module(pipe, *index[layer]) for layer in layers}
    originals = {layer: (m.weight.detach().clone(), m.bias.detach().clone() if m.bias is not None else None)
                 for layer, m in modules.items()}
    for m in (1.0, 0.5):
        loras.apply(active(lyco_engine, (algo, m)))
        for layer, parts in layers.items():
            weight, bias = originals[layer]
            want = expected_weight(parts, weight, m)
            assert torch.allclose(modules[layer].weight.detach().float(), want, atol=1e-5, rtol=1e-4), layer
            if "diff_b" in parts:
                want_bias = bias + m * parts["diff_b"].float()
                assert torch.allclose(modules[layer].bias.detach(), want_bias, atol=1e-6), layer
        assert not unchanged(saved)
    loras.apply([])
    assert unchanged(saved)


def test_each_kind_changes_the_image_and_removing_it_gives_the_exact_pixels_back(lyco_engine, small):
    small = small.replace(steps=2)
    before = pixels(lyco_engine.generate(small))
    seen = []
    for algo in RUN:
        image = pixels(lyco_engine.generate(small.replace(prompt=f"a photo of a cat <lora:{algo}:1>")))
        assert np.abs(image - before).mean() > 1, algo
        seen.append(image)
    half = pixels(lyco_engine.generate(small.replace(prompt="a photo of a cat <lora:loha:0.5>")))
    assert not np.array_equal(half, seen[RUN.index("loha")])
    assert np.array_equal(pixels(lyco_engine.generate(small)), before)


def test_sgm_and_diffusers_key_spellings_reach_the_same_layers(lyco_engine):
    loras = lyco_engine.pipelines.base.loras
    unet = lyco_engine.pipelines.base.pipe.unet
    loras.apply(active(lyco_engine, ("loha", 1.0)))
    sgm = [p.detach().clone() for p in unet.parameters()]
    loras.apply(active(lyco_engine, ("loha-diffusers", 1.0)))
    assert all(torch.equal(a, b.detach()) for a, b in zip(sgm, unet.parameters()))
    loras.apply([])


def test_a_plain_lora_written_in_by_the_patch_path_equals_peft_fused(lyco_engine):
    """The layer index and alpha / rank agree with diffusers' own kohya conversion (peft's fused weights)."""
    loras = lyco_engine.pipelines.base.loras
    pipe = lyco_engine.pipelines.base.pipe
    tokens = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])

    def encoded():
        with torch.no_grad():
            return [getattr(pipe, part)(tokens, output_hidden_states=True).hidden_states[-2]
                    for part in ("text_encoder", "text_encoder_2")]

    loras.apply(active(lyco_engine, ("demo-style", 0.8)))
    assert loras.fused  # the UNet's layers fused; the text encoders' run as peft adapters
    tensors = load_file(str(lyco_engine.loras.get("demo-style").path))
    index = lycoris_weights.layer_index(pipe)
    fused = {layer: lycoris_weights.find_module(pipe, *index[layer]).weight.detach().clone()
             for layer in lycoris.layers_of(tensors) if layer.startswith("lora_unet_")}
    by_peft = encoded()
    loras.apply([])
    patches = WeightPatches()
    patches.apply(pipe, index, "demo-style", tensors, 0.8)
    try:
        for layer, weight in fused.items():
            assert torch.allclose(lycoris_weights.find_module(pipe, *index[layer]).weight, weight, atol=1e-5), layer
        for mine, theirs in zip(encoded(), by_peft):
            assert torch.allclose(mine, theirs, atol=1e-4)
    finally:
        patches.undo()


def test_plain_and_lycoris_together_then_removed_leave_every_weight_as_it_was(lyco_engine):
    loras = lyco_engine.pipelines.base.loras
    loras.apply([])
    saved = snapshot(lyco_engine.pipelines.base.pipe)
    loras.apply(active(lyco_engine, ("demo-style", 1.0), ("lokr", 0.7), ("dora", 1.0)))
    assert loras.fused and loras.patches.active
    loras.apply(active(lyco_engine, ("lokr", 0.7)))
    loras.apply([])
    assert unchanged(saved)


def test_the_same_set_again_is_not_computed_again(lyco_engine, monkeypatch):
    loras = lyco_engine.pipelines.base.loras
    reads = lyco_engine.pipelines.lora_weights.disk_reads
    loras.apply(active(lyco_engine, ("loha", 1.0)))
    assert loras.patches.layers_patched > 0
    loras.apply(active(lyco_engine, ("lokr", 1.0)))
    loras.apply(active(lyco_engine, ("loha", 1.0)))
    reads_after = lyco_engine.pipelines.lora_weights.disk_reads

    def fail(*args):
        raise AssertionError("computed again")

    monkeypatch.setattr(lycoris_weights, "layer_update", fail)
    loras.apply(active(lyco_engine, ("loha", 1.0)))  # in place already: nothing to compute
    monkeypatch.undo()
    loras.apply([])
    assert reads_after - reads <= 2  # each file read from disk once at most, then from the cache


@pytest.mark.parametrize("algo, label", REFUSED.items())
def test_a_kind_homegrown_does_not_run_is_listed_marked_and_refused_by_name(lyco_engine, small, algo, label):
    info = next(i for i in lyco_engine.loras.list() if i.name == algo)
    assert info.unsupported and info.algorithm == label and label in info.problem
    with pytest.raises(UserError) as err:
        lyco_engine.generate(small.replace(prompt=f"cat <lora:{algo}:1>"))
    assert label in err.value.message and "does not match its layers" not in err.value.message


def test_library_names_the_kind_of_each_file(lyco_engine):
    kinds = {i.name: i.algorithm for i in lyco_engine.loras.list()}
    assert kinds["loha"] == kinds["loha-diffusers"] == "LoHa"
    assert kinds["lokr"] == "LoKr" and kinds["locon"] == "LoCon" and kinds["full"] == "Full"
    assert kinds["dora"] == "LoCon (DoRA)" and kinds["demo-style"] == "LoRA"
    assert all(i.base_model == "sdxl" for i in lyco_engine.loras.list())


def test_a_lycoris_file_that_does_not_fit_names_the_layer_and_changes_nothing(lyco_engine, small, tmp_path):
    tensors = load_file(str(lyco_engine.loras.get("loha").path))
    key = next(k for k in tensors if k.endswith("hada_w1_b") and "attn1_to_q" in k)
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 5, dtype=tensors[key].dtype)
    save_file(tensors, str(lyco_engine.loras.folder / "loha-wrong.safetensors"),
              metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    loras = lyco_engine.pipelines.base.loras
    loras.apply([])
    saved = snapshot(lyco_engine.pipelines.base.pipe)
    with pytest.raises(UserError) as err:
        loras.apply(active(lyco_engine, ("demo-style", 1.0), ("loha-wrong", 1.0)))
    assert "loha-wrong" in err.value.message and "attn1_to_q" in err.value.message
    loras.apply([])
    assert unchanged(saved)


def test_with_no_ram_to_spare_the_originals_come_back_from_the_checkpoint_file(lyco_engine):
    loras = lyco_engine.pipelines.base.loras
    loras.apply([])
    saved = snapshot(lyco_engine.pipelines.base.pipe)
    loras.apply(active(lyco_engine, ("loha", 1.0)))
    in_ram = snapshot(lyco_engine.pipelines.base.pipe)
    loras.apply([])
    loras.fuse_budget = 0
    try:
        loras.apply(active(lyco_engine, ("loha", 1.0)))
        assert loras.patches.from_file > 0  # the UNet's layers; the text encoders' still in RAM
        assert all(torch.equal(p.detach(), value) for (p, value) in in_ram)
        loras.apply([])
        assert unchanged(saved)
    finally:
        loras.fuse_budget = None

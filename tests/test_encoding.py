import torch

from sd_app.encoding import PromptEncoder

TOKENS_PER_CHUNK = 77


def cat_position(engine, prompt="a photo of a cat"):
    ids = engine.pipelines.base.pipe.tokenizer(prompt).input_ids
    return ids.index(2368)  # "cat</w>"


def test_a_weighted_word_moves_its_embedding_further_with_more_weight(engine):
    enc = engine.pipelines.encoder
    plain = enc.encode("a photo of a cat", "").embeds
    pos = cat_position(engine)
    moved = [(enc.encode(f"a photo of a (cat:{w})", "").embeds[0, pos] - plain[0, pos]).norm().item()
             for w in (1.0, 1.2, 1.5)]
    assert moved[0] < 1e-5 < moved[1] < moved[2]
    # Other tokens before the weighted word are untouched (causal encoder).
    assert torch.allclose(enc.encode("a photo of a (cat:1.5)", "").embeds[0, :pos], plain[0, :pos])


def test_a1111_brackets_mean_1_1(engine):
    enc = engine.pipelines.encoder
    assert torch.allclose(enc.encode("a photo of a (cat)", "").embeds, enc.encode("a photo of a (cat:1.1)", "").embeds)
    assert torch.allclose(enc.encode("a photo of a [cat]", "").embeds,
                          enc.encode(f"a photo of a (cat:{1 / 1.1})", "").embeds)


def test_compel_syntax_setting(engine):
    compel = PromptEncoder(engine.pipelines.base.pipe, syntax="compel")
    a1111 = engine.pipelines.encoder
    # compel's "cat++" is A1111's "(cat:1.21)"; compel reads "(cat:1.21)" as text.
    assert torch.allclose(compel.encode("a photo of a cat++", "").embeds,
                          a1111.encode("a photo of a (cat:1.21)", "").embeds, atol=1e-5)
    assert not torch.allclose(compel.encode("a photo of a (cat:1.5)", "").embeds,
                              a1111.encode("a photo of a (cat:1.5)", "").embeds)


def test_long_prompt_is_chunked_not_truncated(engine):
    words = ["red", "green", "blue", "cat", "dog", "tree", "house", "sky"]
    long_prompt = " ".join(words[i % len(words)] for i in range(200))
    assert engine.pipelines.encoder.count_tokens(long_prompt) == 200
    cond = engine.pipelines.encoder.encode(long_prompt, "blurry")
    assert cond.embeds.shape[1] == 3 * TOKENS_PER_CHUNK  # 200 tokens -> three chunks of 75
    assert cond.negative_embeds.shape == cond.embeds.shape  # the negative prompt is padded to match
    changed = engine.pipelines.encoder.encode(long_prompt + " moon", "blurry").embeds
    assert not torch.allclose(changed[0, 2 * TOKENS_PER_CHUNK:], cond.embeds[0, 2 * TOKENS_PER_CHUNK:])


def test_long_negative_prompt_pads_the_positive(engine):
    cond = engine.pipelines.encoder.encode("cat", "ugly " * 100)
    assert cond.embeds.shape == cond.negative_embeds.shape and cond.embeds.shape[1] == 2 * TOKENS_PER_CHUNK


def test_refiner_conditioning_is_the_openclip_half(engine):
    cond = engine.pipelines.encoder.encode("a cat", "")
    refiner = cond.for_refiner()
    width = engine.pipelines.base.pipe.text_encoder_2.config.hidden_size
    assert refiner.embeds.shape[-1] == width
    assert torch.equal(refiner.embeds, cond.embeds[..., -width:])


def test_malformed_prompts_generate(engine, small):
    for prompt in ["((((cat", "cat)))]]", "(cat:1.2.3)", "a:b:c", "", "\\", "(cat:-1)", "BREAK", "a BREAK BREAK"]:
        assert len(engine.generate(small.replace(prompt=prompt)).images) == 1


def test_break_starts_a_new_chunk_as_in_a1111(engine):
    enc = engine.pipelines.encoder
    cat, dog = enc.encode("a cat", ""), enc.encode("a dog", "")
    both = enc.encode("a cat BREAK a dog", "")
    assert both.embeds.shape[1] == 2 * TOKENS_PER_CHUNK and both.negative_embeds.shape == both.embeds.shape
    assert torch.equal(both.embeds[:, :TOKENS_PER_CHUNK], cat.embeds)
    assert torch.equal(both.embeds[:, TOKENS_PER_CHUNK:], dog.embeds)
    assert torch.equal(both.pooled, cat.pooled)  # A1111 pools the first chunk
    assert enc.encode("a cat BREAK", "").embeds.shape[1] == TOKENS_PER_CHUNK  # no chunk after a trailing BREAK
    leading = enc.encode("BREAK a dog", "").embeds
    assert leading.shape[1] == 2 * TOKENS_PER_CHUNK and torch.equal(leading[:, TOKENS_PER_CHUNK:], dog.embeds)
    compel = PromptEncoder(engine.pipelines.base.pipe, syntax="compel")
    assert torch.allclose(compel.encode("a cat BREAK a dog", "").embeds, both.embeds, atol=1e-6)


def test_token_counter_fills_the_chunk_a_break_ends(engine):
    count = engine.pipelines.encoder.count_tokens
    assert count("a cat") == 2
    assert count("a cat BREAK a dog") == 75 + 2
    assert count("a cat BREAK") == 75  # A1111 shows 75/75
    assert count("(a cat:1.2) BREAK (a dog:0.5) <lora:x:1>") == 75 + 2


def _pixels(result):
    import numpy as np

    return np.asarray(result.images[0])


def test_clip_skip_is_a1111s_meaning_on_sdxl(engine, small):
    """A1111 applies Clip skip to SDXL only with its "Clip skip SDXL" option, and then to CLIP-L alone, as
    hidden_states[-clip_skip] (2 is SDXL's own penultimate layer)."""
    import numpy as np
    import pytest

    from sd_app.errors import UserError

    enc = engine.pipelines.encoder
    today = enc.encode("a photo of a cat", "blurry")
    text = engine.pipelines.base.pipe.text_encoder
    with torch.no_grad():
        ids = engine.pipelines.base.pipe.tokenizer("a photo of a cat", padding="max_length", max_length=77,
                                                   return_tensors="pt").input_ids
        last = text(ids, output_hidden_states=True).hidden_states[-1]
    skip_1 = enc.encode("a photo of a cat", "blurry", clip_l_layer=1)
    te1 = today.embeds.shape[-1] - today.te2_width
    assert torch.allclose(skip_1.embeds[0, :, :te1], last[0], atol=1e-5)  # CLIP-L's last layer, no final norm
    assert torch.equal(skip_1.embeds[..., te1:], today.embeds[..., te1:])  # OpenCLIP untouched, as in A1111
    assert torch.equal(skip_1.pooled, today.pooled)
    assert torch.equal(enc.encode("a photo of a cat", "blurry", clip_l_layer=2).embeds, today.embeds)

    plain = engine.generate(small)
    assert np.array_equal(_pixels(engine.generate(small.replace(clip_skip=1))), _pixels(plain))
    # Without "Clip skip SDXL" A1111's Clip skip leaves SDXL images as they are; with it, it changes them.
    assert np.array_equal(_pixels(engine.generate(small.replace(clip_skip=3))), _pixels(plain))
    skipped = engine.generate(small.replace(clip_skip=1, sdxl_clip_l_skip=True))
    assert not np.array_equal(_pixels(skipped), _pixels(plain))
    assert np.array_equal(_pixels(engine.generate(small.replace(clip_skip=2, sdxl_clip_l_skip=True))), _pixels(plain))
    assert "Clip skip:" not in skipped.infotexts[0] and "Clip skip SDXL: True" in skipped.infotexts[0]
    layers = text.config.num_hidden_layers
    with pytest.raises(UserError) as err:
        engine.generate(small.replace(clip_skip=layers + 1, sdxl_clip_l_skip=True))
    assert err.value.field == "clip_skip" and f"has {layers} layers" in err.value.message
    with pytest.raises(UserError) as err:
        small.replace(clip_skip=13).check()
    assert err.value.field == "clip_skip"

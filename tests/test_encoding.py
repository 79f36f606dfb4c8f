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


# ---- textual inversion embeddings ---------------------------------------------------------------------------

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from sd_app.embedding_library import EmbeddingLibrary  # noqa: E402
from sd_app.errors import UserError  # noqa: E402
from sd_app.models import HashCache  # noqa: E402


@pytest.fixture
def embeddings(demo_root, tmp_path):
    return EmbeddingLibrary(demo_root / "models" / "embeddings", HashCache(tmp_path / "hashes.json"))


def token_inputs(engine, embeddings, prompt):
    """What each text encoder's token table gave for the prompt (its first chunk), embeddings in place."""
    seen = {}
    handles = [encoder.get_input_embeddings().register_forward_hook(
        lambda module, args, out, key=key: None if key in seen else seen.update({key: out[0].clone()}))
        for key, encoder in (("clip_l", engine.pipelines.base.pipe.text_encoder),
                             ("clip_g", engine.pipelines.base.pipe.text_encoder_2))]
    try:
        engine.pipelines.encoder.encode(prompt, "", embeddings)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_an_embeddings_vectors_replace_its_name_in_both_encoders(engine, embeddings):
    vectors = embeddings.vectors(embeddings.get("demo-negative"))
    seen = token_inputs(engine, embeddings, "Demo-Negative cat")  # names match as A1111's do: any case
    for key in ("clip_l", "clip_g"):
        assert torch.equal(seen[key][1:3], vectors[key])  # after the start token, one position per vector
        table = (engine.pipelines.base.pipe.text_encoder if key == "clip_l"
                 else engine.pipelines.base.pipe.text_encoder_2).get_input_embeddings().weight
        assert torch.equal(seen[key][3], table[2368])  # then "cat" as usual


def test_an_embedding_in_the_negative_prompt_changes_the_conditioning(engine, embeddings):
    enc = engine.pipelines.encoder
    plain = enc.encode("a cat", "blurry")
    named = enc.encode("a cat", "blurry, demo-negative", embeddings)
    assert not torch.allclose(plain.negative_embeds, named.negative_embeds)
    assert not torch.allclose(plain.negative_pooled, named.negative_pooled)  # the pooled output sees it too
    assert torch.equal(plain.embeds, named.embeds)
    assert named.ti_hashes == f"demo-negative: {embeddings.short_hash(embeddings.get('demo-negative'))}"
    without = enc.encode("a cat", "blurry, demo-negative")  # no library: the name is only words
    assert without.ti_hashes is None and not torch.allclose(without.negative_embeds, named.negative_embeds)


def test_prompt_weights_apply_to_an_embeddings_positions_only(engine, embeddings):
    enc = engine.pipelines.encoder
    plain = enc.encode("demo-negative cat", "", embeddings).embeds[0]
    weighted = enc.encode("(demo-negative:1.5) cat", "", embeddings).embeds[0]
    changed = (plain - weighted).abs().amax(dim=-1) > 1e-6
    assert changed[1:3].all() and not changed[3:].any() and not changed[0]


def test_an_embedding_does_not_straddle_two_chunks(engine, embeddings):
    vectors = embeddings.vectors(embeddings.get("demo-negative"))
    seen = {}
    encoder = engine.pipelines.base.pipe.text_encoder
    handle = encoder.get_input_embeddings().register_forward_hook(
        lambda module, args, out: seen.setdefault("chunks", []).append(out[0].clone()) and None)
    try:
        cond = engine.pipelines.encoder.encode("cat " * 74 + "demo-negative", "", embeddings)
    finally:
        handle.remove()
    assert cond.embeds.shape[1] == 2 * TOKENS_PER_CHUNK  # 74 + 2 vectors > 75: the embedding starts chunk two
    second = [chunk for chunk in seen["chunks"] if torch.equal(chunk[1:3], vectors["clip_l"])]
    assert second, "the embedding's vectors are together at the start of a chunk"


def test_an_sd1_embedding_is_refused_by_name(engine, embeddings):
    with pytest.raises(UserError, match="SD 1.x") as err:
        engine.pipelines.encoder.encode("a cat", "demo-sd1", embeddings)
    assert err.value.field == "negative_prompt"


def test_a_negative_embedding_changes_the_image_and_is_in_the_infotext(engine, embeddings, small, monkeypatch):
    monkeypatch.setattr(engine, "embeddings", embeddings)
    small = small.replace(steps=3)
    before = engine.generate(small)
    named = engine.generate(small.replace(negative_prompt="blurry, demo-negative"))
    after = engine.generate(small)
    pixels = [np.asarray(result.images[0], dtype=np.int16) for result in (before, named, after)]
    assert np.abs(pixels[0] - pixels[1]).max() > 5 and np.array_equal(pixels[0], pixels[2])
    short = embeddings.short_hash(embeddings.get("demo-negative"))
    assert f'TI hashes: "demo-negative: {short}"' in named.infotexts[0] and "TI hashes" not in before.infotexts[0]
    from sd_app import infotext

    pasted = infotext.read_params(named.infotexts[0])  # a paste takes the names back; the hashes only inform
    assert pasted.params.negative_prompt == "blurry, demo-negative"
    assert not any("TI hashes" in str(entry) for entry in pasted.not_applied)


# ---- prompt editing and alternation ---------------------------------------------------------------------------

def test_cond_at_follows_a1111s_schedule(engine):
    enc = engine.pipelines.encoder
    schedule = enc.encode_schedule("a [cat:dog:0.5]", "blurry", 10)
    cat, dog = enc.encode("a cat", "blurry"), enc.encode("a dog", "blurry")
    for step in range(10):
        expected = cat if step <= 5 else dog  # A1111: the entry ending at step 5 serves steps 0 to 5
        assert torch.equal(schedule.cond_at(step).embeds, expected.embeds), step
        assert torch.equal(schedule.cond_at(step).pooled, expected.pooled), step
    assert torch.equal(schedule.cond_at(7).negative_embeds, cat.negative_embeds)


def test_alternation_changes_every_step_and_each_prompt_is_encoded_once(engine, monkeypatch):
    enc = engine.pipelines.encoder
    calls = []
    original = enc._encode_one
    monkeypatch.setattr(enc, "_encode_one", lambda text, weights=None, clip_l_layer=None:
                        calls.append(text) or original(text, weights, clip_l_layer))
    schedule = enc.encode_schedule("[cat|dog] photo", "[ugly|blurry]", 150)
    assert sorted(calls) == ["blurry", "cat photo", "dog photo", "ugly"]
    cat, dog = enc.encode("cat photo", "ugly"), enc.encode("dog photo", "blurry")
    # A1111's steps: ends 1, 2, 3 ... take cat, dog, cat ...; step s takes the entry ending at max(s, 1).
    assert [torch.equal(schedule.cond_at(s).embeds, cat.embeds) for s in range(5)] == [True, True, False, True, False]
    assert torch.equal(schedule.cond_at(2).negative_embeds, dog.negative_embeds)


def test_the_number_of_prompts_a_schedule_makes_is_limited(engine):
    with pytest.raises(UserError, match="at most 3") as err:
        engine.pipelines.encoder.encode_schedule("a", "[a|b|c|d] x", 20, most=3)
    assert err.value.field == "negative_prompt"


def test_the_sampler_receives_the_edited_prompt_at_the_right_step(engine, small):
    """[cat:dog:0.5] over 4 steps: A1111 gives steps 0-2 "cat", step 3 "dog"; checked on the UNet's input."""
    unet = engine.pipelines.base.pipe.unet
    received = []
    handle = unet.register_forward_pre_hook(
        lambda module, args, kwargs: received.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        engine.generate(small.replace(prompt="a photo of a [cat:dog:0.5]", steps=4))
    finally:
        handle.remove()
    enc = engine.pipelines.encoder
    cat, dog = enc.encode("a photo of a cat", small.negative_prompt), enc.encode("a photo of a dog",
                                                                                 small.negative_prompt)
    assert len(received) == 4
    positives = [states[0] for states in received]  # the batch is [prompt, negative prompt]
    assert [torch.equal(p, cat.embeds[0]) for p in positives] == [True, True, True, False]
    assert torch.equal(positives[3], dog.embeds[0])
    assert all(torch.equal(states[1], cat.negative_embeds[0]) for states in received)


def test_the_hires_pass_edits_the_prompt_over_its_own_steps(engine, small):
    """A1111 builds the hires pass's conditioning over the hires steps: [cat:dog:0.5] with 4 hires steps at
    strength 1 gives calls 0-2 "cat" and call 3 "dog" again, after the first pass's own 4 steps."""
    from sd_app.hires import HiresParams

    unet = engine.pipelines.base.pipe.unet
    received = []
    handle = unet.register_forward_pre_hook(
        lambda module, args, kwargs: received.append(kwargs["encoder_hidden_states"][0].clone()), with_kwargs=True)
    spec = HiresParams(scale=2, upscaler="Latent", second_pass_steps=4, denoising_strength=1.0)
    try:
        engine.generate(small.replace(prompt="a photo of a [cat:dog:0.5]", steps=4, hires=spec))
    finally:
        handle.remove()
    enc = engine.pipelines.encoder
    cat = enc.encode("a photo of a cat", small.negative_prompt).embeds[0]
    assert len(received) == 8  # 4 + int(0.999 * 4) + 1
    assert [torch.equal(p, cat) for p in received] == [True, True, True, False] * 2


def test_the_refiner_goes_on_with_the_schedule_at_its_steps(engine, small):
    """[cat:dog:0.5], 4 steps, refiner from 0.5: steps 0-2 "cat", step 3 "dog", whichever model runs them."""
    from conftest import REFINER

    engine.pipelines.load_refiner(REFINER)
    received = []

    def record(module, args, kwargs):
        received.append((module, kwargs["encoder_hidden_states"][0].clone()))  # [prompt, negative prompt]

    unets = [engine.pipelines.base.pipe.unet, engine.pipelines.refiner.pipe.unet]
    handles = [unet.register_forward_pre_hook(record, with_kwargs=True) for unet in unets]
    try:
        engine.generate(small.replace(prompt="a [cat:dog:0.5]", steps=4, refiner_checkpoint=REFINER,
                                      refiner_switch_at=0.5))
    finally:
        for handle in handles:
            handle.remove()
    enc = engine.pipelines.encoder
    cat, dog = enc.encode("a cat", small.negative_prompt), enc.encode("a dog", small.negative_prompt)
    refining = [module is unets[1] for module, _ in received]
    assert len(received) == 4 and not refining[0] and refining[-1]  # the base, then the refiner
    expected = [(dog if call == 3 else cat) for call in range(4)]  # A1111 counts calls across the switch
    expected = [cond.for_refiner() if refined else cond for cond, refined in zip(expected, refining)]
    assert [torch.equal(states, cond.embeds[0]) for (_, states), cond in zip(received, expected)] == [True] * 4


def test_clamped_weights_anywhere_in_the_schedule_are_reported(engine):
    schedule = engine.pipelines.encoder.encode_schedule("a [cat:(dog:50):0.5]", "", 10)
    assert schedule.cond_at(0).notes and schedule.cond_at(0).notes == schedule.cond_at(9).notes
    assert schedule.cond_at(0).largest_weight == 10.0


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


def test_the_token_counter_counts_an_embedding_as_its_vectors():
    """As A1111's counter: a textual inversion's name takes as many tokens as it has vectors."""
    from sd_app.encoding import count_tokens
    from sd_app.loading import load_tokenizers

    tokenizer = load_tokenizers()[0]
    name_tokens = len(tokenizer("demo-negative", add_special_tokens=False).input_ids)
    plain = count_tokens(tokenizer, "a cat, demo-negative, demo-negative")
    counted = count_tokens(tokenizer, "a cat, demo-negative, demo-negative", embeddings={"demo-negative": 7})
    assert name_tokens > 1 and counted == plain + 2 * (7 - name_tokens)
    assert count_tokens(tokenizer, "a cat", embeddings={"demo-negative": 7}) == count_tokens(tokenizer, "a cat")
    # 74 tokens, then 8 vectors that do not fit in the chunk's last place: they start the next chunk (75 + 8)
    assert count_tokens(tokenizer, "cat " * 74 + "demo-negative", embeddings={"demo-negative": 8}) == 83

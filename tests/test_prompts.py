import pytest

from sd_app.prompts import extract_lora_tags, insert_lora_tag, split_breaks


def parse_attention(prompt):
    """A prompt without BREAK is one part: A1111's parse_prompt_attention."""
    parts = split_breaks(prompt)
    return [run for part in parts for run in part]


def plain_text(prompt):
    return "".join(t for t, _ in parse_attention(prompt))


def close(runs, expected):
    assert len(runs) == len(expected), runs
    for (text, weight), (etext, eweight) in zip(runs, expected):
        assert text == etext
        assert weight == pytest.approx(eweight)


@pytest.mark.parametrize("prompt, expected", [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
    ("[a] (b:1.3) [[c]]", [("a", 1 / 1.1), (" ", 1.0), ("b", 1.3), (" ", 1.0), ("c", 1 / 1.21)]),
    ("", [("", 1.0)]),
])
def test_a1111_attention_matches_a1111(prompt, expected):
    close(parse_attention(prompt), expected)


@pytest.mark.parametrize("prompt", [
    "(a:1.2.3)", "a:b", ")))", "]]][[", "(a:)", "((a:x))", "\\", "(a:1e5)", "[(a]:1.2)", "a BREAK b", ":::", "(:1.2)",
])
def test_malformed_prompts_never_fail(prompt):
    runs = parse_attention(prompt)
    assert runs and all(isinstance(t, str) and isinstance(w, float) for t, w in runs)


def test_stray_colon_and_bad_weight_stay_text():
    assert plain_text("a:b") == "a:b"
    assert plain_text("(a:1.2.3)") == "a:1.2.3)"


def test_negative_weight():
    close(parse_attention("(ugly:-0.5)"), [("ugly", -0.5)])


def test_break_separates_without_the_word():
    assert "BREAK" not in plain_text("a cat BREAK a dog")


def test_break_splits_parts_and_weights_span_it():
    close(split_breaks("a (b BREAK c:1.2) d")[0], [("a ", 1.0), ("b", 1.2)])
    close(split_breaks("a (b BREAK c:1.2) d")[1], [("c", 1.2), (" d", 1.0)])
    assert [len(split_breaks(p)) for p in ("a", "a BREAK b", "BREAK a", "a BREAK", "a BREAK BREAK b")] == [1, 2, 2, 2, 3]
    assert split_breaks("xBREAKy BREAKING") == [[("xBREAKy BREAKING", 1.0)]]  # only the word BREAK


def test_lora_tags_are_extracted():
    text, tags = extract_lora_tags("a cat <lora:style:0.8>, <lora:sub/detail> <LORA:neg:-1>")
    assert "<" not in text
    assert [(t.name, t.weight) for t in tags] == [("style", 0.8), ("sub/detail", 1.0), ("neg", -1.0)]


WORDS = ["demostyle", "painting"]


@pytest.mark.parametrize("prompt, weight, expected", [
    ("a castle", 0.8, "a castle, <lora:demo-style:0.8> demostyle, painting"),
    ("", 1, "<lora:demo-style:1> demostyle, painting"),
    ("a castle,", 0.5, "a castle, <lora:demo-style:0.5> demostyle, painting"),
    ("a painting of a castle", 0.8, "a painting of a castle, <lora:demo-style:0.8> demostyle"),  # only the missing
    ("a castle, <lora:demo-style:1> snow", 0.7, "a castle, <lora:demo-style:0.7> demostyle, painting, snow"),
    ("a castle, <lora:demo-style:1>, snow", 0.7, "a castle, <lora:demo-style:0.7> demostyle, painting, snow"),
    # A negative weight takes the concept out: no trigger words, and those right after the tag go.
    ("a castle", -0.5, "a castle, <lora:demo-style:-0.5>"),
    ("a castle, <lora:demo-style:0.8> demostyle, painting, snow", -1, "a castle, <lora:demo-style:-1>, snow"),
    ("a castle, <lora:demo-style:0.8> demostyle, painting", -1, "a castle, <lora:demo-style:-1>"),
    ("demostyle, a castle, <lora:demo-style:0.8>", -1, "demostyle, a castle, <lora:demo-style:-1>"),  # typed: kept
])
def test_lora_tag_then_its_trigger_words(prompt, weight, expected):
    assert insert_lora_tag(prompt, "demo-style", weight, WORDS) == expected


def test_lora_tag_is_set_once_and_words_are_not_repeated():
    once = insert_lora_tag("a castle", "demo-style", 0.8, WORDS)
    assert insert_lora_tag(once, "demo-style", 0.8, WORDS) == once
    assert insert_lora_tag(once, "DEMO-STYLE", 0.6, WORDS) == "a castle, <lora:DEMO-STYLE:0.6> demostyle, painting"
    assert insert_lora_tag("a castle", "demo-style", 0.8) == "a castle, <lora:demo-style:0.8>"

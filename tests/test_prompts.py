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


# ---- prompt editing and alternation: A1111's schedules (its prompt_parser doctests, 10 steps) ------------------

from sd_app.prompts import prompt_schedule, schedule_index  # noqa: E402


@pytest.mark.parametrize("prompt, expected", [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
    ("[fe|]male", [(s, "female" if s % 2 else "male") for s in range(1, 11)]),
    ("[fe|||]male", [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)]),
    ("a [b:c:0.5]", [(5, "a b"), (10, "a c")]),
    ("[a::3] b", [(3, "a b"), (10, " b")]),
    ("[a:b:c:3]", [(10, "[a:b:c:3]")]),  # no valid syntax: text
    ("a | b", [(10, "a | b")]),  # a `|` outside brackets: A1111 reads no schedule at all
    ("\\[a:3\\]", [(10, "\\[a:3\\]")]),  # escaped brackets are text
])
def test_schedules_equal_a1111s(prompt, expected):
    assert prompt_schedule(prompt, 10) == expected


def test_a1111s_documented_example_at_100_steps():
    prompt = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
              "[ in background:0.25] [shoddy:masterful:0.5]")
    assert prompt_schedule(prompt, 100) == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_nested_editing_inside_alternation_and_weights():
    assert prompt_schedule("[(red:1.2)|[blue:green:2]] cat", 4) == [
        (1, "(red:1.2) cat"), (2, "blue cat"), (3, "(red:1.2) cat"), (4, "green cat")]


def test_a_decimal_is_a_fraction_and_a_whole_number_a_step():
    assert prompt_schedule("[a:b:2]", 20) == [(2, "a"), (20, "b")]
    assert prompt_schedule("[a:b:2.0]", 20) == [(20, "a")]  # 2.0 of the steps: never switches
    assert prompt_schedule("[a:b:0.25]", 20) == [(5, "a"), (20, "b")]
    assert prompt_schedule("[a:b:0]", 20) == [(20, "b")]
    assert prompt_schedule("[a:b:1e400]", 20) == [(20, "a")]  # no overflow


def test_hires_pass_rule():
    """A1111: in a hires pass a whole number counts the steps of both passes, a decimal the hires pass as 1 to 2."""
    assert prompt_schedule("a [b:.5] c", 10, 10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, 10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:13] c", 10, 10) == [(3, "a  c"), (10, "a b c")]


def test_schedule_index_is_a1111s_step_rule():
    """Step s (0-based) takes the first entry ending at or after s: `[b:3]` is without b for steps 0 to 3."""
    schedule = prompt_schedule("a [b:3]", 10)
    assert [schedule_index(schedule, s) for s in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert schedule_index(schedule, 12) == 1  # past the end: the last


def test_deep_and_long_prompts_parse_without_recursion():
    assert prompt_schedule("[" * 5000 + "a", 10) == [(10, "[" * 5000 + "a")]
    nested = "[a:" * 300 + "x" + ":1]" * 300
    assert prompt_schedule(nested, 10)[-1] == (10, "x")
    assert len(prompt_schedule("[a|b] " * 3000, 150)) == 150


def test_attention_reads_the_scheduled_text():
    """The schedule takes editing out; weights stay for the attention parser."""
    texts = [text for _, text in prompt_schedule("a [(red:1.5):blue:0.5] cat", 10)]
    close(parse_attention(texts[0]), [("a ", 1.0), ("red", 1.5), (" cat", 1.0)])
    assert plain_text(texts[1]) == "a blue cat"


def test_an_embedding_card_toggles_its_name():
    from sd_app.prompts import toggle_embedding

    assert toggle_embedding("", "easyneg") == "easyneg"
    assert toggle_embedding("blurry", "easyneg") == "blurry, easyneg"
    assert toggle_embedding("blurry,", "easyneg") == "blurry, easyneg"
    assert toggle_embedding("blurry, EasyNeg", "easyneg") == "blurry"
    assert toggle_embedding("easyneg, blurry", "easyneg") == "blurry"
    assert toggle_embedding("easyneg-v2, blurry", "easyneg") == "easyneg-v2, blurry, easyneg"

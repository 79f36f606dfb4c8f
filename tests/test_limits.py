"""Request limits (Settings → Limits) and linear prompt parsing: issue 13, item 3, in the library.

The exact inputs of the issue: "BREAK " x 3300 (a 20 KB prompt), "a(" x 6667, 4096x4096, 150 steps, n_iter 100.
"""

import random
import time

import pytest

from sd_app.errors import UserError
from sd_app.loading import load_tokenizers
from sd_app.params import GenerationParams, Limits
from sd_app.prompts import extract_lora_tags, prompt_chunks, prompt_nesting, split_breaks
from sd_app.settings import BY_NAME, SETTINGS

from conftest import make_studio

OVERSIZED = [  # (change, field, words in the message)
    ({"prompt": "BREAK " * 3300}, "prompt", ["3300 BREAKs", "at most 32"]),
    ({"prompt": "a(" * 6667}, "prompt", ["nested 6667 deep", "at most 50"]),
    ({"negative_prompt": "(" * 1000 + "cat" + ")" * 1000}, "negative_prompt", ["nested 1000 deep"]),
    ({"prompt": "a cat, " * 2800}, "prompt", ["75 chunks", "at most 32"]),
    ({"prompt": "x" * 20_001}, "prompt", ["20001 characters", "at most 20000"]),
    ({"width": 4096, "height": 4096}, "width", ["16,777,216 pixels", "at most 4,194,304"]),
    ({"steps": 150}, "steps", ["between 1 and 100"]),
    ({"n_iter": 100}, "n_iter", ["100 images", "at most 32"]),
    ({"batch_size": 8, "n_iter": 5}, "n_iter", ["40 images"]),
]


@pytest.mark.parametrize("change, field, words", OVERSIZED)
def test_oversized_requests_are_refused_naming_the_field_the_limit_and_where_to_change_it(change, field, words):
    with pytest.raises(UserError) as err:
        GenerationParams(**change).check()
    assert err.value.field == field and err.value.status == 422
    for word in words + ["Settings → Limits"]:
        assert word in err.value.message


def test_ordinary_requests_stay_within_the_default_limits():
    long_prompt = ", ".join(["masterpiece", "(detailed face:1.2)", "[blurry]", "((sharp))"] * 40)
    GenerationParams(prompt=long_prompt + " BREAK " + long_prompt, negative_prompt="((((ugly))))", steps=100,
                     width=2048, height=2048, batch_size=4, n_iter=8).check()


def test_limits_are_settings_in_their_own_section_with_the_tables_defaults():
    section = [s for s in SETTINGS if s.section == "Limits"]
    assert [s.name for s in section] == [name for name, *_ in Limits.table()]
    assert BY_NAME["max_steps"].default == Limits().max_steps == 100 and BY_NAME["max_steps"].limits == (1, 150)
    assert BY_NAME["max_images"].limits == (1, 800)


def test_limits_changed_in_settings_reach_the_page_the_api_and_the_engine(ckpt_dir, tmp_path):
    studio = make_studio(ckpt_dir, tmp_path, save_images=False)
    tight = GenerationParams(prompt="a cat", steps=40, width=64, height=64)
    studio.apply_settings({"max_steps": 30})
    assert studio.limits().max_steps == 30 and studio.engine.limits.max_steps == 30
    with pytest.raises(UserError, match="between 1 and 30"):
        studio.start(tight, owner="page")  # refused at once, before a thread or the queue
    with pytest.raises(UserError, match="between 1 and 30"):
        studio.engine.generate(tight)
    studio.apply_settings({"max_steps": 150, "max_prompt_nesting": 2000})
    GenerationParams(prompt="(" * 1000 + "cat" + ")" * 1000, steps=150).check(studio.limits())
    with pytest.raises(UserError, match="between 1 and 150"):
        studio.apply_settings({"max_steps": 151})  # the table's `most`


def test_parsing_is_linear_in_nesting_depth():
    # A1111's parser (and ours before) is quadratic here: 6667 levels took 1-5 s, so 50,000 would take minutes.
    started = time.perf_counter()
    runs = split_breaks("a(" * 50_000)[0]
    assert time.perf_counter() - started < 10
    assert "".join(t for t, _ in runs) == "a" * 50_000  # (past 1.1^7448 the weights are all inf, one run)
    assert runs[:3] == [("a", 1.0), ("a", 1.1), ("a", 1.1 * 1.1)]


def test_breaks_spaces_and_unclosed_lora_tags_parse_in_linear_time():
    # Each of these took 2-20 s: BREAK's `\s*` backtracked over runs of spaces, `<lora:` scanned to the end.
    started = time.perf_counter()
    assert split_breaks(" " * 200_000) == [[(" " * 200_000, 1.0)]]
    assert len(split_breaks("BREAK " * 33_000)) == 33_001
    assert extract_lora_tags("<lora:" * 30_000) == ("<lora:" * 30_000, [])
    assert time.perf_counter() - started < 10


def _a1111_reference(text):
    """A1111's parse_prompt_attention as it was here before (quadratic), to compare the linear one against."""
    from sd_app import prompts

    runs, round_open, square_open = [], [], []

    def scale(start, factor):
        for run in runs[start:]:
            if run is not None:
                run[1] *= factor

    for match in prompts._TOKEN.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\") and len(piece) == 2:
            runs.append([piece[1], 1.0])
        elif piece in ("(", "["):
            (round_open if piece == "(" else square_open).append(len(runs))
        elif weight is not None and round_open and prompts._is_number(weight):
            scale(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale(round_open.pop(), 1.1)
        elif piece == "]" and square_open:
            scale(square_open.pop(), 1 / 1.1)
        else:
            for i, part in enumerate(__import__("re").split(r"\s*\bBREAK\b\s*", piece)):
                if i > 0:
                    runs.append(None)
                runs.append([part, 1.0])
    for start in round_open:
        scale(start, 1.1)
    for start in square_open:
        scale(start, 1 / 1.1)
    parts = [[]]
    for run in runs:
        if run is None:
            parts.append([])
        elif run[0]:
            if parts[-1] and parts[-1][-1][1] == run[1]:
                parts[-1][-1] = (parts[-1][-1][0] + run[0], run[1])
            else:
                parts[-1].append((run[0], run[1]))
    return [part or [("", 1.0)] for part in parts]


def test_linear_parser_gives_a1111s_runs_and_weights_to_the_last_bit():
    rng = random.Random(13)
    pieces = ["a", "cat", " ", ", ", "(", ")", "[", "]", ":1.3)", ":0.5)", ":2)", "\\(", " BREAK ", "x:y", "((", "))"]
    for _ in range(5000):
        prompt = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        assert split_breaks(prompt) == _a1111_reference(prompt), prompt


def test_nesting_is_counted_as_the_parser_reads_brackets():
    assert prompt_nesting("a (b [c] (d)) e") == 2
    assert prompt_nesting(")))(((") == 3 and prompt_nesting("\\(\\(\\(") == 0 and prompt_nesting("a(" * 10) == 10


def test_chunk_count_before_encoding_never_exceeds_the_encoders():
    """The limit may only refuse prompts that really need that many chunks: the estimate is a lower bound."""
    tokenizer = load_tokenizers()[0]
    rng = random.Random(7)
    pieces = ["a", "cat", "photograph", "123", "!!", "(", ")", ":1.3)", "[", "]", " BREAK ", " ", ", ", "\u732b",
              "<lora:demo-style:0.5>", "x.y", "e30", "\n"]
    for _ in range(300):
        prompt = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 400)))
        text = extract_lora_tags(prompt)[0]
        counts = [len(tokenizer("".join(t for t, _ in part), truncation=False, verbose=False).input_ids) - 2
                  for part in split_breaks(text)]
        if len(counts) > 1 and counts[-1] == 0:
            counts.pop()  # no chunk after a trailing BREAK
        chunks = sum(max(1, -(-count // 75)) for count in counts)
        assert prompt_chunks(prompt)[0] <= chunks, prompt
    assert prompt_chunks("a cat BREAK a dog BREAK") == (2, 2)


def test_a_long_prompt_pads_its_short_negative_in_one_copy():
    """The negative prompt is padded to the prompt's chunks: one chunk at a time copied the growing tensor each
    time, quadratic (400 chunks of SDXL's width took 74 s): the cost behind "BREAK" x 3300 taking 400 s."""
    import torch

    from sd_app.encoding import _pad

    negative, empty = torch.randn(1, 77, 96), torch.randn(1, 77, 96)
    started = time.perf_counter()
    padded = _pad(negative, empty, 77 * 3300)
    assert time.perf_counter() - started < 10
    assert padded.shape == (1, 77 * 3300, 96)
    assert torch.equal(padded[:, :77], negative) and torch.equal(padded[:, -77:], empty)

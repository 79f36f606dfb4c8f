"""A1111 prompt syntax: attention weights and `<lora:name:weight>` tags. Pure text, no torch.

A1111 weights: `(word)` x1.1, `[word]` /1.1, `(word:1.3)` x1.3, nesting multiplies, `\\(` is a literal
bracket. Unclosed brackets weigh the rest of the prompt, stray closers are text, and a malformed weight
(`(a:1.2.3)`) is text: a prompt never fails to parse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The prompt syntaxes a user can pick: this module reads A1111's; `encoding` hands compel's to compel's parser.
SYNTAXES = ("a1111", "compel")
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1

_TOKEN = re.compile(
    r"""
    \\[()\[\]\\:]            # escaped bracket, backslash or colon
  | \\                       # a lone backslash
  | \(                       # open
  | \[
  | :\s*([+-]?[.\d]+)\s*\)   # weight and close
  | \)
  | \]
  | [^\\()\[\]:]+            # plain text
  | :                        # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_LORA_TAG = re.compile(r"<lora:([^:>]*)(?::([^:>]*))?(?::[^>]*)?>", re.I)


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float


def split_breaks(text: str) -> list[list[tuple[str, float]]]:
    """A1111's `parse_prompt_attention`, one list per `BREAK`-separated part: (text, weight) runs with
    neighbours of equal weight merged. A1111 starts a new 77-token chunk at each BREAK; weights span it
    (`(a BREAK b:1.2)` weighs both parts). A trailing empty part is kept, so the token counter can count
    the chunk it closes, as A1111's does."""
    runs: list[list | None] = []  # None marks a BREAK
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            if run is not None:
                run[1] *= factor

    for match in _TOKEN.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\") and len(piece) == 2:
            runs.append([piece[1], 1.0])
        elif piece == "(":
            round_open.append(len(runs))
        elif piece == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open and _is_number(weight):
            scale(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            scale(round_open.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and square_open:
            scale(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(piece)):
                if i > 0:
                    runs.append(None)
                runs.append([part, 1.0])
    for start in round_open:
        scale(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale(start, SQUARE_MULTIPLIER)

    parts: list[list[tuple[str, float]]] = [[]]
    for run in runs:
        if run is None:
            parts.append([])
        else:
            parts[-1].append((run[0], run[1]))
    return [_merged(part) for part in parts]


def _merged(runs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Neighbours of equal weight joined, empty runs dropped; never an empty list."""
    merged: list[list] = []
    for text_part, weight in runs:
        if not text_part:
            continue
        if merged and merged[-1][1] == weight:
            merged[-1][0] += text_part
        else:
            merged.append([text_part, weight])
    return [(t, w) for t, w in merged] or [("", 1.0)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def split_break_text(prompt: str) -> list[str]:
    """`BREAK` parts of a prompt in compel's syntax (which has no BREAK of its own)."""
    return _BREAK.split(prompt)


def extract_lora_tags(prompt: str) -> tuple[str, list[LoraTag]]:
    """Remove `<lora:name[:weight]>` tags; return the rest of the prompt and the tags in order.

    A weight that is not a number is kept as the text it was, so the caller can report it.
    """
    tags: list[LoraTag] = []

    def take(match: re.Match) -> str:
        weight_text = (match.group(2) or "1").strip()
        try:
            weight = float(weight_text)
        except ValueError:
            weight = float("nan")
        tags.append(LoraTag(match.group(1).strip(), weight))
        return ""

    return _LORA_TAG.sub(take, prompt), tags


def insert_lora_tag(prompt: str, name: str, weight: float) -> str:
    """Add `<lora:name:weight>` to a prompt; if the LoRA is already there, set its weight instead."""
    text = f"<lora:{name}:{weight:g}>"
    pattern = re.compile(rf"<lora:{re.escape(name)}(?::[^>]*)?>", re.I)
    if pattern.search(prompt):
        return pattern.sub(lambda m: text, prompt, count=1)
    prompt = prompt.rstrip()
    return f"{prompt}, {text}" if prompt and not prompt.endswith(",") else f"{prompt} {text}".strip()


def token_chunks(count: int) -> str:
    """A1111's counter: "12/75", "80/150": tokens used out of what the chunks hold (75 each)."""
    return f"{count}/{max(1, -(-count // 75)) * 75}"

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
# Prompt weights are used within this range; one outside it is clamped, with a warning. A1111 sets no
# bound (weights past ~2 already wreck an image), but a weight such as `(cat:1e30)` written out in digits,
# or 1000 nested brackets (1.1^1000), overflows the conditioning to infinity: a black image.
WEIGHT_RANGE = (-10.0, 10.0)
TOKENS_PER_CHUNK = 75  # a 77-token chunk less its start and end markers
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
_BREAK_WORD = re.compile(r"\bBREAK\b")
# No `<` inside a tag: else each unclosed `<lora:` scans to the end of the prompt (quadratic).
_LORA_TAG = re.compile(r"<lora:([^:<>]*)(?::([^:<>]*))?(?::[^<>]*)?>", re.I)
_WORD = re.compile(r"(?<![.\w])[^\W\d_]+")  # a run of letters: at least one token, whatever the tokenizer makes
_SYNTAX = re.compile(r"\\.|:\s*[+-]?[.\d]+\s*\)|[()\[\]]")  # what the A1111 parser takes out of the text
_BRACKET = re.compile(r"\\.|[()\[\]]")


@dataclass(frozen=True)
class LoraTag:
    name: str
    weight: float


def split_breaks(text: str) -> list[list[tuple[str, float]]]:
    """A1111's `parse_prompt_attention`, one list per `BREAK`-separated part: (text, weight) runs with
    neighbours of equal weight merged. A1111 starts a new 77-token chunk at each BREAK; weights span it
    (`(a BREAK b:1.2)` weighs both parts). A trailing empty part is kept, so the token counter can count
    the chunk it closes, as A1111's does.

    Linear in the prompt's length, however deep the brackets. A1111 multiplies every run inside a bracket
    when the bracket closes, which is quadratic (`a(` x 6667 took seconds); here each run remembers the
    innermost brackets open when it was read, and weights are worked out at the end (`_Brackets`)."""
    brackets = _Brackets()
    round_open: list[int] = []
    square_open: list[int] = []
    runs: list[tuple[str, int, int] | None] = []  # (text, innermost round, innermost square); None marks a BREAK

    for match in _TOKEN.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\") and len(piece) == 2:
            runs.append((piece[1], _top(round_open), _top(square_open)))
        elif piece == "(":
            round_open.append(brackets.open(_top(round_open)))
        elif piece == "[":
            square_open.append(brackets.open(_top(square_open)))
        elif weight is not None and round_open and _is_number(weight):
            brackets.close(round_open.pop(), float(weight))
        elif piece == ")" and round_open:
            brackets.close(round_open.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and square_open:
            brackets.close(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_split_break_word(piece)):
                if i > 0:
                    runs.append(None)
                runs.append((part, _top(round_open), _top(square_open)))
    for bracket in round_open:  # unclosed brackets weigh the rest of the prompt, outermost first (A1111)
        brackets.close(bracket, ROUND_MULTIPLIER)
    for bracket in square_open:
        brackets.close(bracket, SQUARE_MULTIPLIER)

    parts: list[list[tuple[str, float]]] = [[]]
    for run in runs:
        if run is None:
            parts.append([])
        else:
            parts[-1].append((run[0], brackets.weight(run[1], run[2])))
    return [_merged(part) for part in parts]


class _Brackets:
    """The brackets of one prompt: each one's factor, enclosing bracket of its kind, and when it closed.

    A run's weight is the product of the factors of the brackets open around it. A1111 multiplies them in
    the order the brackets close; that order is kept (the same floats to the last bit) for runs inside at
    most EXACT_DEPTH brackets, at a cost of their depth once per distinct nesting. Deeper runs (a weight
    long past any sensible range) take each bracket's product once from its enclosing one: linear, and
    equal to A1111's but for rounding."""

    EXACT_DEPTH = 32

    def __init__(self):
        self.factor = [1.0]  # index 0: no bracket
        self.parent = [0]
        self.closed_at = [0]
        self._closes = 0
        self._products: list[float] | None = None
        self._weights: dict[tuple[int, int], float] = {}

    def open(self, parent: int) -> int:
        self.factor.append(1.0)
        self.parent.append(parent)
        self.closed_at.append(0)
        return len(self.factor) - 1

    def close(self, bracket: int, factor: float) -> None:
        self._closes += 1
        self.factor[bracket] = factor
        self.closed_at[bracket] = self._closes

    def weight(self, round_bracket: int, square_bracket: int) -> float:
        key = (round_bracket, square_bracket)
        if key not in self._weights:
            around = self._chain(round_bracket) + self._chain(square_bracket)
            if len(around) <= self.EXACT_DEPTH:
                weight = 1.0
                for bracket in sorted(around, key=self.closed_at.__getitem__):
                    weight *= self.factor[bracket]
            else:
                products = self._outer_first()
                weight = products[round_bracket] * products[square_bracket]
            self._weights[key] = weight
        return self._weights[key]

    def _chain(self, bracket: int) -> list[int]:
        chain = []
        while bracket and len(chain) <= self.EXACT_DEPTH:
            chain.append(bracket)
            bracket = self.parent[bracket]
        return chain

    def _outer_first(self) -> list[float]:
        if self._products is None:
            self._products = [1.0] * len(self.factor)
            for bracket in range(1, len(self.factor)):  # an enclosing bracket always comes first
                self._products[bracket] = self._products[self.parent[bracket]] * self.factor[bracket]
        return self._products


def _top(stack: list[int]) -> int:
    return stack[-1] if stack else 0


def clamp_weight(weight: float) -> float:
    """The weight within WEIGHT_RANGE (NaN cannot come from the parser; it would be taken as 1)."""
    low, high = WEIGHT_RANGE
    return min(high, max(low, weight)) if weight == weight else 1.0


def _split_break_word(text: str) -> list[str]:
    """`text` split at the word BREAK, the whitespace around each BREAK dropped. (One regex with `\\s*` on
    both sides backtracks over every run of spaces: 20,000 spaces took 18 s.)"""
    pieces = _BREAK_WORD.split(text)
    if len(pieces) == 1:
        return pieces
    last = len(pieces) - 1
    return [piece.lstrip() if i == last else piece.rstrip() if i == 0 else piece.strip()
            for i, piece in enumerate(pieces)]


def _merged(runs: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Neighbours of equal weight joined (texts joined once: linear), empty runs dropped; never an empty list."""
    merged: list[tuple[list[str], float]] = []
    for text_part, weight in runs:
        if not text_part:
            continue
        if merged and merged[-1][1] == weight:
            merged[-1][0].append(text_part)
        else:
            merged.append(([text_part], weight))
    return [("".join(texts), w) for texts, w in merged] or [("", 1.0)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def split_break_text(prompt: str) -> list[str]:
    """`BREAK` parts of a prompt in compel's syntax (which has no BREAK of its own)."""
    return _split_break_word(prompt)


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


def insert_lora_tag(prompt: str, name: str, weight: float, trigger_words=()) -> str:
    """Add `<lora:name:weight>` to a prompt, or set its weight if the LoRA is there already; then the trigger
    words the prompt lacks, right after the tag (where A1111's cards put a LoRA's activation text).

    A negative weight takes the LoRA's concept out of the image, so its trigger words (which would call the
    concept up) are not added, and those right after the tag go."""
    text = f"<lora:{name}:{weight:g}>"
    found = re.compile(rf"<lora:{re.escape(name)}(?::[^<>]*)?>", re.I).search(prompt)
    if found:
        before, after = prompt[:found.start()], prompt[found.end():]
    else:
        before, after = prompt.rstrip(), ""
        before = f"{before}, " if before and not before.endswith(",") else f"{before} " if before else ""
    if weight < 0:
        after = _without_words(after, trigger_words)
    elif weight > 0:
        missing = [word for word in trigger_words if word.strip() and word.lower() not in prompt.lower()]
        if missing:
            glue = "," if after.strip() and not after.lstrip().startswith(",") else ""
            after = f" {', '.join(missing)}{glue}{after}"
    return before + text + after


def _without_words(after: str, words) -> str:
    """The text after a tag without the trigger words that follow it directly (comma-separated)."""
    lowered = {word.strip().lower() for word in words}
    parts = after.split(",")
    count = 0
    while count < len(parts) and parts[count].strip() and parts[count].strip().lower() in lowered:
        count += 1
    if not count:
        return after
    rest = ",".join(parts[count:])
    return f",{rest}" if rest else ""


def token_chunks(count: int) -> str:
    """A1111's counter: "12/75", "80/150": tokens used out of what the chunks hold (75 each)."""
    return f"{count}/{max(1, -(-count // 75)) * 75}"


def prompt_nesting(text: str) -> int:
    """How deep `(` and `[` nest (unclosed ones count; a stray closer does not), `\\(` being text."""
    depth = deepest = 0
    open_round = open_square = 0
    for match in _BRACKET.finditer(text):
        bracket = match.group(0)
        if bracket == "(":
            open_round += 1
        elif bracket == "[":
            open_square += 1
        elif bracket == ")" and open_round:
            open_round -= 1
        elif bracket == "]" and open_square:
            open_square -= 1
        depth = open_round + open_square
        deepest = max(deepest, depth)
    return deepest


def prompt_chunks(text: str) -> tuple[int, int]:
    """(at least how many chunks the prompt's encoding takes, how many BREAKs it has). Without the tags and
    the bracket syntax, every run of letters is at least one token and each BREAK part at least one chunk
    (as in A1111, none after a trailing BREAK), so this never counts more chunks than encoding makes (a
    word right after a `.`, such as compel's `.blend`, is not counted)."""
    parts = _BREAK_WORD.split(_LORA_TAG.sub("", text))
    words = [len(_WORD.findall(_SYNTAX.sub("", part))) for part in parts]
    if len(words) > 1 and not words[-1]:
        words.pop()
    return sum(max(1, -(-count // TOKENS_PER_CHUNK)) for count in words), len(parts) - 1


# ---- prompt editing and alternation ----------------------------------------------------------------------
# A1111's `[from:to:when]`, `[to:when]`, `[from::when]` and `[a|b|...]`: the prompt changes during sampling. Read
# here as A1111 reads them (modules/prompt_parser.py, its default "new" timeline): `when` with a decimal point is a
# fraction of the steps, without one a step number; `[a|b]` takes the next option at every step. A prompt that
# does not parse as a whole (a `|` outside brackets, a lone trailing backslash) has no schedule, as in A1111.

_EDIT_TOKEN = re.compile(r"\\.|[\[\]():|]|[^\\\[\]():|]+|\\", re.S)
_WHEN = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*")
MAX_EDIT_RETRIES = 1000  # brackets read again as text after a failed parse; past this the prompt has no schedule


class _Scheduled:
    __slots__ = ("before", "after", "when")

    def __init__(self, before: list | None, after: list, when: str):
        self.before, self.after, self.when = before, after, when


class _Alternate:
    __slots__ = ("options",)

    def __init__(self, options: list[list]):
        self.options = options


class _Frame:
    """An open bracket while parsing: its kind, where it opened, its parts so far and the separators between them."""

    __slots__ = ("kind", "start", "parts", "seps", "outer_len")

    def __init__(self, kind: str, start: int, outer_len: int):
        self.kind, self.start, self.outer_len = kind, start, outer_len
        self.parts: list[list] = [[]]
        self.seps = ""

    def separate(self, sep: str) -> bool:
        """Take a `:` or `|`; False if the bracket cannot hold it (then the bracket is no syntax)."""
        if self.kind == "(":
            ok = sep == ":" and not self.seps
        elif sep == ":":
            ok = "|" not in self.seps and len(self.seps) < 2
        else:
            ok = ":" not in self.seps
        if ok:
            self.seps += sep
            self.parts.append([])
        return ok

    def close(self, closer: str):
        """The node this bracket makes when `closer` ends it, or None if it is no syntax."""
        parts = self.parts
        if self.kind == "(":
            if closer != ")":
                return None
            return ["(", *parts[0], ")"] if not self.seps else ["(", *parts[0], ":", *parts[1], ")"]
        if closer != "]":
            return None
        if not self.seps:
            return ["[", *parts[0], "]"]  # emphasis: kept as text, weighed later
        if self.seps[0] == "|":
            return _Alternate(parts)
        when = parts[-1]
        if not all(isinstance(piece, str) for piece in when) or not _WHEN.fullmatch("".join(when)):
            return None
        number = _WHEN.fullmatch("".join(when)).group(1)
        return _Scheduled(None, parts[0], number) if len(self.seps) == 1 else _Scheduled(parts[0], parts[1], number)


def _parse_edits(text: str) -> list | None:
    """The prompt as text pieces and editing nodes, or None if it does not parse. A bracket that holds no valid
    syntax is text at the outermost level (A1111's grammar allows stray brackets only there): the parse starts
    again right after it. A bracket that failed fails wherever it opens, and so does every bracket around it:
    all are remembered as text, so `[` x 5000 takes two passes, not 5000. Iterative: deep nesting costs no
    recursion."""
    out: list = []
    position, retries = 0, 0
    doomed: set[int] = set()  # where brackets open that can only be text
    while True:
        stack: list[_Frame] = []
        failed = False
        for match in _EDIT_TOKEN.finditer(text, position):
            piece = match.group(0)
            target = stack[-1].parts[-1] if stack else out
            if piece in ("[", "(") and match.start() in doomed:
                failed = bool(stack)  # a bracket holding one that fails fails too
                if not stack:
                    out.append(piece)
            elif piece in ("[", "("):
                stack.append(_Frame(piece, match.start(), len(out)))
            elif piece == "\\":
                return None  # a lone backslash at the end
            elif not stack:
                if piece == "|":
                    return None
                out.append(piece)
            elif piece in (":", "|"):
                failed = not stack[-1].separate(piece)
            elif piece in ("]", ")"):
                node = stack[-1].close(piece)
                failed = node is None
                if not failed:
                    stack.pop()
                    (stack[-1].parts[-1] if stack else out).append(node)
            else:
                target.append(piece)
            if failed:
                break
        if not stack:
            return out
        retries += 1
        if retries > MAX_EDIT_RETRIES:
            return None
        doomed.update(frame.start for frame in stack)
        outer = stack[0]  # the outermost open bracket is text; read on after it
        del out[outer.outer_len:]
        out.append(outer.kind)
        position = outer.start + 1


def _walk(nodes: list):
    """Every node below `nodes`, depth first, without recursion."""
    stack = [iter(nodes)]
    while stack:
        for node in stack[-1]:
            yield node
            if isinstance(node, list):
                stack.append(iter(node))
            elif isinstance(node, _Scheduled):
                stack.append(iter((node.before or []) + node.after))
            elif isinstance(node, _Alternate):
                stack.append(iter(node.options))
            else:
                continue
            break
        else:
            stack.pop()


def _render(nodes: list, step: int, whens: dict[int, int]) -> str:
    out: list[str] = []
    stack = [iter(nodes)]
    while stack:
        for node in stack[-1]:
            if isinstance(node, str):
                out.append(node)
                continue
            if isinstance(node, list):
                chosen = node
            elif isinstance(node, _Scheduled):
                chosen = (node.before or []) if step <= whens[id(node)] else node.after
            else:
                chosen = node.options[(step - 1) % len(node.options)]
            stack.append(iter(chosen))
            break
        else:
            stack.pop()
    return "".join(out)


def prompt_schedule(text: str, steps: int, hires_steps: int | None = None) -> list[tuple[int, str]]:
    """A1111's `get_learned_conditioning_prompt_schedules` for one prompt: (last step, prompt text) pairs in order,
    the last ending at `steps`. Step s (0-based) of sampling uses the first pair whose last step is >= s.

    For a hires pass (`hires_steps` given), A1111's rule: a whole number counts the steps of both passes
    (`[a:b:25]` with 20 + 10 steps changes at the hires pass's step 5), a decimal counts the hires pass as 1.0
    to 2.0 (`[a:b:1.5]` changes half way through it; `0.5` has already changed when the hires pass starts)."""
    int_offset, float_offset, total = (0, 0.0, steps) if hires_steps is None else (steps, 1.0, hires_steps)
    nodes = _parse_edits(text)
    if nodes is None:
        return [(total, text)]
    ends, whens, alternates = {total}, {}, False
    for node in _walk(nodes):
        if isinstance(node, _Scheduled):
            value = float(node.when)
            value = (value - float_offset) * total if "." in node.when else value - int_offset
            when = total if value >= total else int(max(value, -1.0))
            whens[id(node)] = when
            if when >= 1:
                ends.add(when)
        elif isinstance(node, _Alternate):
            alternates = True
    if alternates:
        ends.update(range(1, total + 1))
    return [(end, _render(nodes, end, whens)) for end in sorted(ends)]


def schedule_index(schedule: list[tuple[int, str]], step: int) -> int:
    """Which entry of a schedule step `step` (0-based) uses: the first that ends at or after it (past the end, the
    last; A1111 falls back to the first there, which only samplers with extra model calls per step reach)."""
    for index, (end, _) in enumerate(schedule):
        if step <= end:
            return index
    return len(schedule) - 1


def toggle_embedding(prompt: str, name: str) -> str:
    """An embedding card clicked: its name added at the end of the prompt, or taken out if the prompt names it
    already (as A1111's cards do), with the comma that joined it."""
    found = re.compile(rf"(?:,\s*)?(?<![\w-]){re.escape(name)}(?![\w-])", re.I).search(prompt)
    if found:
        rest = prompt[:found.start()] + prompt[found.end():]
        return rest.lstrip(", ") if found.start() == 0 else rest
    stripped = prompt.rstrip()
    return f"{stripped}, {name}" if stripped and not stripped.endswith(",") else f"{stripped} {name}".strip()

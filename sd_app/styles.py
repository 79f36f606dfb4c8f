"""Styles: prompt templates applied when an image is made, several at once, never written into the prompt box.

A style has a prompt and a negative prompt. "{prompt}" in them marks where the user's text goes; without it
the style is appended after the text (A1111's rule, `merge`). Styles apply in the order they are listed,
each around the result of the ones before, as in A1111.

They are read fresh on each call (the files are tiny) from JSON files (one style a file: `name`, `prompt`,
`negative_prompt`, `description`) and from A1111's `styles.csv` files (columns `name`, `prompt`,
`negative_prompt`), in the shipped folder `presets/styles/` and the user's `data/styles/`; a user style of
the same name replaces a shipped one. A bad file or row is reported by file (and row) and left out.

The infotext holds the prompts as they were encoded (what A1111 writes, what other readers expect) and
names the styles in `Styles: a, b`; pasting it back takes each style's text out of the prompts again
(`take_out`), so a style is never applied twice and the prompt box gets the user's own text back.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .datafiles import read_json_object
from .errors import UserError
from .params import GenerationParams

STYLE_KEYS = {"name", "description", "prompt", "negative_prompt"}
PLACEHOLDER = "{prompt}"


def merge(template: str, text: str) -> str:
    """A1111's `merge_prompts`: the text in place of "{prompt}", else the style after the text."""
    if PLACEHOLDER in template:
        return template.replace(PLACEHOLDER, text)
    return ", ".join(part for part in (text.strip(), template.strip()) if part)


def unmerge(template: str, text: str) -> str | None:
    """The text that `merge(template, ...)` turned into `text`, or None if it did not (A1111's
    `extract_style_text_from_prompt`, checked by merging the answer again)."""
    if not template.strip():
        return text
    wanted = text.strip()
    if PLACEHOLDER in template:
        left, _, right = template.strip().partition(PLACEHOLDER)
        if len(wanted) < len(left) + len(right) or not (wanted.startswith(left) and wanted.endswith(right)):
            return None
        inner = wanted[len(left):len(wanted) - len(right)]
    else:
        if not wanted.endswith(template.strip()):
            return None
        inner = wanted[:len(wanted) - len(template.strip())].rstrip()
        inner = inner[:-1] if inner.endswith(",") else inner
    return inner if merge(template, inner).strip() == wanted else None


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    description: str = ""

    def apply_to(self, prompt: str, negative: str) -> tuple[str, str]:
        return merge(self.prompt, prompt), merge(self.negative_prompt, negative)

    def take_out(self, prompt: str, negative: str) -> tuple[str, str] | None:
        """The prompts before this style was applied, or None when they do not hold its text."""
        inner, inner_negative = unmerge(self.prompt, prompt), unmerge(self.negative_prompt, negative)
        if inner is None or inner_negative is None:
            return None
        return inner, inner_negative


@dataclass(frozen=True)
class TakenOut:
    """Pasted prompts with the styles named in an infotext taken out of them."""

    prompt: str
    negative_prompt: str
    styles: tuple[str, ...]  # the styles taken out, in the order they apply
    kept: list[tuple[str, str]]  # (style, why its text stays in the prompt)


def check_name(name, where: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: 'name' must be a non-empty text")
    if "," in name or "\n" in name:
        # The infotext lists styles as "Styles: a, b": a comma in a name could not be read back.
        raise UserError(f"{where}: style name {name!r} must not hold a comma or a line break")
    return name.strip()


def parse_json(path: Path) -> Style:
    where = path.name
    data = read_json_object(path)
    for key in data:
        if key not in STYLE_KEYS:
            raise UserError(f"{where}: unknown field '{key}'; allowed: {', '.join(sorted(STYLE_KEYS))}")
    for key in ("prompt", "negative_prompt", "description"):
        if not isinstance(data.get(key, ""), str):
            raise UserError(f"{where}: '{key}' must be text")
    return Style(check_name(data.get("name"), where), data.get("prompt", ""), data.get("negative_prompt", ""),
                 data.get("description", ""))


def parse_csv(path: Path) -> tuple[list[Style], list[str]]:
    """A1111's styles.csv: (styles, problems by row). Rows without a name (A1111's old "None" row) are skipped."""
    where = path.name
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [], [f"{where}: cannot be read as A1111's styles.csv ({exc})"]
    if rows and "name" not in rows[0]:
        return [], [f"{where}: needs A1111's header line 'name,prompt,negative_prompt'"]
    styles, problems = [], []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        if not (row.get("name") or "").strip() or row.get("name") == "None":
            continue
        try:
            name = check_name(row["name"], f"{where} line {number}")
        except UserError as err:
            problems.append(str(err))
            continue
        styles.append(Style(name, row.get("prompt") or "", row.get("negative_prompt") or ""))
    return styles, problems


class StyleLibrary:
    """Styles from the shipped folder and a user folder, read fresh on each call."""

    def __init__(self, *folders: str | Path):
        self.folders = [Path(f) for f in folders if f]

    def load(self) -> tuple[dict[str, Style], list[str]]:
        """(styles by name, problems)."""
        styles: dict[str, Style] = {}
        problems: list[str] = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.iterdir()):
                if path.suffix.lower() == ".json":
                    try:
                        found = [parse_json(path)]
                    except UserError as err:
                        problems.append(str(err))
                        continue
                elif path.suffix.lower() == ".csv":
                    found, bad = parse_csv(path)
                    problems += bad
                else:
                    continue
                styles.update((style.name, style) for style in found)
        return styles, problems

    def names(self) -> list[str]:
        return list(self.load()[0])

    def get(self, name: str, known: dict[str, Style] | None = None) -> Style:
        styles, problems = (known, []) if known is not None else self.load()
        if name in styles:
            return styles[name]
        broken = [p for p in problems if name in p]
        if broken:
            raise UserError(broken[0], field="styles")
        raise UserError(f"no style {name!r}; available: {', '.join(styles) or 'none'}", field="styles", status=404)

    def apply(self, params: GenerationParams) -> GenerationParams:
        """The request with its styles applied to the prompts (they stay listed in `styles`, for the infotext)."""
        if not params.styles:
            return params
        styles, _ = self.load()
        chosen = [self.get(name, styles) for name in params.styles]
        prompt, negative = params.prompt, params.negative_prompt
        for style in chosen:
            prompt, negative = style.apply_to(prompt, negative)
        params = params.replace(prompt=prompt, negative_prompt=negative)
        spec = params.hires
        if spec is None or not (spec.prompt or spec.negative_prompt):
            return params  # the hires pass uses the prompts above
        # As A1111: a hires prompt of its own gets the styles too (an empty one is the styled prompt already).
        hr_prompt, hr_negative = spec.prompt, spec.negative_prompt
        for style in chosen:
            styled, styled_negative = style.apply_to(hr_prompt, hr_negative)
            hr_prompt, hr_negative = styled if hr_prompt else "", styled_negative if hr_negative else ""
        return params.replace(hires=dataclasses.replace(spec, prompt=hr_prompt, negative_prompt=hr_negative))

    def take_out(self, prompt: str, negative: str, names: list[str]) -> TakenOut:
        """Undo `apply` for pasted prompts: the last style first. A style that is unknown here, or whose text
        the prompts do not hold as this style writes it (edited by hand, or a different style of the same
        name), stays in the prompts as text, with the styles applied before it."""
        styles, _ = self.load()
        taken: list[str] = []
        kept: list[tuple[str, str]] = []
        for position in range(len(names) - 1, -1, -1):
            name = names[position]
            style = styles.get(name)
            inner = style.take_out(prompt, negative) if style else None
            if inner is None:
                why = ("it is not among your styles" if style is None else
                       f"the prompts do not hold its text as your {name!r} style writes it (edited, or another "
                       "style of that name)")
                kept.append((name, f"its text stays in the prompt: {why}"))
                kept.extend((earlier, f"its text stays in the prompt: it was applied before {name!r}")
                            for earlier in reversed(names[:position]))
                break
            prompt, negative = inner
            taken.insert(0, name)
        return TakenOut(prompt, negative, tuple(taken), list(reversed(kept)))

"""X/Y/Z plot, A1111's most used script: up to three axes of values, one image per combination, a labelled grid.

Pure core, no Gradio, no HTTP, no torch: axes with A1111's labels and value syntax, a plan of one
`GenerationParams` per cell (checked before anything runs), and the grid image drawn from the cells' images
with its own infotext. The studio runs a plan (`Studio.generate_grid`); the page and the API build plans.

Value syntax, as A1111's scripts/xyz_grid.py: comma-separated values (CSV: `"a, b"` is one value);
for numbers also ranges `1-5` (1, 2, 3, 4, 5), `10-30 (+5)` (a step), `1-10 [4]` (a count, evenly spaced).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image, ImageDraw, ImageFont

from . import infotext, samplers
from .errors import UserError
from .jobs import GenerationResult
from .params import LIMITS, GenerationParams

TITLE = "X/Y/Z plot"  # A1111's script title; its API matches it case-insensitively
MAX_CELLS = 64  # a typo (1-1000) is refused before it takes the GPU for hours
MAX_GRID_PIXELS = 200_000_000  # A1111's img_max_size_mp default, for the cells together
LETTERS = ("X", "Y", "Z")
SEED_RANGE = 4294967294  # A1111's fix_seed: random.randrange(4294967294)
_CHECKPOINT_TITLE = re.compile(r"\s*\[[0-9a-fA-F]+\]$")  # a title's " [hash]"
_LORA_WEIGHT = re.compile(r"(<lora:[^:>]*)(?::[^:>]*)?((?::[^>]*)?>)", re.I)
_SIZE = re.compile(r"^\s*(\d+)\s*[x×]\s*(\d+)\s*$", re.I)


@dataclass(frozen=True)
class Axis:
    """What an axis varies. `apply(params, value, values)` returns the cell's params; `check(values, base,
    checkpoints)` refuses bad values (naming them) and may normalise them before anything runs."""

    label: str  # A1111's label, as shown in the type list and written to the grid's infotext
    kind: type  # int, float or str: how the values text is read
    apply: Callable[[GenerationParams, Any, tuple], GenerationParams]
    check: Callable[[list, GenerationParams, Sequence[str]], list] | None = None
    named: bool = True  # grid labels read "Steps: 20"; False: the value alone ("Euler a")
    cost: float = 0.0  # A1111's: the costliest axis is the outer loop, so checkpoints load as rarely as possible
    keep_empty: bool = False  # an empty value means something (Prompt S/R: replace with nothing)
    choices: Callable[[Sequence[str]], list[str]] | None = None  # for the page's fill button and A1111's dropdowns
    strip_folder: bool = False  # label checkpoints by file name, without their subfolder (A1111's format_remove_path)


def _field(name: str) -> Callable:
    return lambda params, value, values: params.replace(**{name: value})


def _in_limits(name: str) -> Callable:
    low, high = LIMITS[name]

    def check(values, base, checkpoints):
        for value in values:
            if not low <= value <= high:
                raise ValueError(f"{_shown(value)} is out of range ({_shown(low)} to {_shown(high)})")
        return values

    return check


def _check_prompt_sr(values, base, checkpoints):
    if not values[0]:
        raise ValueError("the first value is the text to replace: it cannot be empty")
    if values[0] not in base.prompt and values[0] not in base.negative_prompt:
        raise ValueError(f"the first value {values[0]!r} is what gets replaced, and it is in neither the prompt "
                         "nor the negative prompt")
    return values


def _apply_prompt_sr(params, value, values):
    return params.replace(prompt=params.prompt.replace(values[0], value),
                          negative_prompt=params.negative_prompt.replace(values[0], value))


def _check_samplers(values, base, checkpoints):
    for value in values:
        try:
            samplers.resolve(value, "Automatic")
        except UserError as err:
            raise ValueError(err.message) from None
    return values


def _check_schedules(values, base, checkpoints):
    try:
        return [samplers.find_schedule(value).name for value in values]
    except UserError as err:
        raise ValueError(err.message) from None


def match_checkpoint(value: str, names: Sequence[str]) -> str:
    """A checkpoint as A1111's axis finds it: its name, file name or title, or else the shortest name holding it."""
    wanted = re.sub(r"\.(safetensors|ckpt)$", "", _CHECKPOINT_TITLE.sub("", value.strip()), flags=re.I).lower()
    for name in names:
        if name.lower() == wanted:
            return name
    found = sorted((name for name in names if wanted and wanted in name.lower()), key=len)
    if not found:
        raise ValueError(f"unknown checkpoint {value!r}; found: {', '.join(names) or 'none'}")
    return found[0]


def _check_checkpoints(values, base, checkpoints):
    return [match_checkpoint(value, checkpoints) for value in values]


def _check_refiners(values, base, checkpoints):
    return [None if value.strip().lower() in ("", "none") else match_checkpoint(value, checkpoints)
            for value in values]


def _check_sizes(values, base, checkpoints):
    sizes = []
    for value in values:
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a size: write WIDTHxHEIGHT, like 1024x1024")
        sizes.append(f"{match.group(1)}x{match.group(2)}")
    return sizes


def _apply_size(params, value, values):
    width, height = (int(v) for v in value.split("x"))
    return params.replace(width=width, height=height)


def _check_lora_weights(values, base, checkpoints):
    if not _LORA_WEIGHT.search(base.prompt):
        raise ValueError("the prompt has no <lora:name:weight> tag to vary")
    return values


def _apply_lora_weight(params, value, values):
    return params.replace(prompt=_LORA_WEIGHT.sub(lambda m: f"{m.group(1)}:{_shown(value)}{m.group(2)}",
                                                  params.prompt))


def _needs_hires(check: Callable | None = None) -> Callable:
    """An axis of the hires fix's second pass: refused when the request has no hires fix (A1111 would draw a grid
    of identical images)."""
    def checked(values, base, checkpoints):
        if base.hires is None:
            raise ValueError("turn the hires fix on: this axis varies its second pass")
        return check(values, base, checkpoints) if check else values

    return checked


def _hires_field(name: str) -> Callable:
    return lambda params, value, values: params.replace(hires=dataclasses.replace(params.hires, **{name: value}))


def _sampler_names(checkpoints):
    return [s.name for s in samplers.SAMPLERS]


def _schedule_names(checkpoints):
    return [s.name for s in samplers.SCHEDULES]


NOTHING = Axis("Nothing", str, lambda params, value, values: params, named=False)

# Homegrown's axes, in the order of A1111's list; "LoRA weight" is Homegrown's own.
AXES: tuple[Axis, ...] = (
    NOTHING,
    Axis("Seed", int, _field("seed"), _in_limits("seed")),
    Axis("Steps", int, _field("steps"), _in_limits("steps")),
    Axis("Hires steps", int, _hires_field("second_pass_steps"), _needs_hires()),  # 0: the first pass's steps
    Axis("CFG Scale", float, _field("cfg_scale"), _in_limits("cfg_scale")),
    Axis("Prompt S/R", str, _apply_prompt_sr, _check_prompt_sr, named=False, keep_empty=True),
    Axis("Sampler", str, _field("sampler_name"), _check_samplers, named=False, choices=_sampler_names),
    Axis("Hires sampler", str, _hires_field("sampler_name"), _needs_hires(_check_samplers), choices=_sampler_names),
    Axis("Checkpoint name", str, _field("checkpoint"), _check_checkpoints, named=False, cost=1.0,
         strip_folder=True, choices=lambda checkpoints: sorted(checkpoints, key=str.casefold)),
    Axis("Schedule type", str, _field("scheduler"), _check_schedules, choices=_schedule_names),
    Axis("Denoising", float, _hires_field("denoising_strength"), _needs_hires()),  # txt2img's: the hires pass's
    Axis("Hires upscaler", str, _hires_field("upscaler"), _needs_hires()),  # each cell's check knows the names
    Axis("Refiner checkpoint", str, _field("refiner_checkpoint"), _check_refiners, named=False, cost=1.0,
         strip_folder=True, choices=lambda checkpoints: ["None", *sorted(checkpoints, key=str.casefold)]),
    Axis("Refiner switch at", float, _field("refiner_switch_at"), _in_limits("refiner_switch_at")),
    Axis("Size", str, _apply_size, _check_sizes),
    Axis("LoRA weight", float, _apply_lora_weight, _check_lora_weights),
)
BY_LABEL = {axis.label.lower(): axis for axis in AXES}


def find_axis(label: str, letter: str = "X") -> Axis:
    axis = BY_LABEL.get(str(label or "Nothing").strip().lower())
    if axis is None:
        raise UserError(f"{letter} type {label!r} is not an axis Homegrown has; choose one of: "
                        f"{', '.join(a.label for a in AXES)}", field=f"{letter.lower()}_type")
    return axis


# ---- values -------------------------------------------------------------------------------------

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*(?:\d+(?:\.\d*)?|\.\d+)"


def _range_patterns(number: str) -> tuple[re.Pattern, re.Pattern]:
    step = re.compile(rf"\s*({number})\s*-\s*({number})\s*(?:\(\s*({number})\s*\))?\s*")
    count = re.compile(rf"\s*({number})\s*-\s*({number})\s*\[\s*(\d+)\s*\]\s*")
    return step, count


_RANGES = {int: _range_patterns(_INT), float: _range_patterns(_FLOAT)}


def split_values(text: str) -> list[str]:
    """A1111's reading of a values box: CSV (quotes keep commas in a value), each value stripped."""
    try:
        rows = list(csv.reader(io.StringIO(text or ""), skipinitialspace=True))
    except csv.Error as err:
        raise ValueError(f"cannot read the values as comma-separated text ({err})") from None
    return [value.strip() for row in rows for value in row]


def join_values(values: Sequence[str]) -> str:
    """Values -> the text a values box holds (quoted where a value has a comma), as A1111's fill button writes."""
    out = io.StringIO()
    csv.writer(out).writerow(list(values))
    return out.getvalue().strip()


def parse_values(axis: Axis, text: str) -> list:
    """The values of one axis from its text; ValueError saying which value is wrong."""
    values = split_values(text)
    if not axis.keep_empty:
        values = [value for value in values if value]
    if axis.kind is str:
        return values
    numbers: list = []
    for value in values:
        numbers.extend(_expand(axis.kind, value))
        if len(numbers) > MAX_CELLS:
            raise ValueError(f"more than {MAX_CELLS} values")
    return numbers


def _expand(kind: type, value: str) -> list:
    step_pattern, count_pattern = _RANGES[kind]
    ranged, counted = step_pattern.fullmatch(value), count_pattern.fullmatch(value)
    if counted:
        start, end, count = _number(kind, counted.group(1)), _number(kind, counted.group(2)), int(counted.group(3))
        if not 1 <= count <= MAX_CELLS:
            raise ValueError(f"{value!r}: the count in [ ] must be 1 to {MAX_CELLS}")
        spaced = [start + (end - start) * i / (count - 1) for i in range(count)] if count > 1 else [start]
        return [int(v) for v in spaced] if kind is int else [round(v, 8) for v in spaced]
    if ranged:
        start, end = _number(kind, ranged.group(1)), _number(kind, ranged.group(2))
        step = _number(kind, ranged.group(3)) if ranged.group(3) else (1 if end >= start else -1)
        if step == 0 or (end - start) * step < 0:
            raise ValueError(f"{value!r}: a step of {_shown(step)} never gets from {_shown(start)} to {_shown(end)}")
        count = math.floor((end - start) / step + 1e-9) + 1
        if count > MAX_CELLS:
            raise ValueError(f"{value!r} makes {count} values; at most {MAX_CELLS}")
        return [start + i * step if kind is int else round(start + i * step, 8) for i in range(count)]
    return [_number(kind, value)]


def _number(kind: type, text: str):
    cleaned = text.replace(" ", "")
    try:
        return kind(cleaned) if kind is float else int(cleaned)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{text!r} is not {what}, nor a range like 1-5, 10-30 (+5) or 1-10 [4]") from None


def _shown(value) -> str:
    if isinstance(value, float):
        value = round(value, 8)
        return str(int(value)) if value.is_integer() else str(value)
    return str(value)


def label_of(axis: Axis, value) -> str:
    """A value as the grid labels it: A1111's "Steps: 20", or the value alone for samplers, prompts, models."""
    if axis is NOTHING:
        return ""
    if value is None:
        shown = "None"
    else:
        shown = os.path.basename(value) if axis.strip_folder else _shown(value)
    return f"{axis.label}: {shown}" if axis.named else shown


# ---- the plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisValues:
    letter: str  # X, Y or Z
    axis: Axis
    text: str  # as typed: the grid's infotext keeps it ("X Values")
    values: tuple

    @property
    def labels(self) -> list[str]:
        return [label_of(self.axis, value) for value in self.values]


@dataclass(frozen=True)
class Cell:
    ix: int
    iy: int
    iz: int
    index: int  # where its image goes: x fastest, then y, then z
    params: GenerationParams
    label: str  # "Steps: 20, Euler a", for messages


@dataclass(frozen=True)
class GridPlan:
    base: GenerationParams  # the request, seed resolved (unless -1 is kept)
    axes: tuple[AxisValues, AxisValues, AxisValues]
    cells: tuple[Cell, ...]  # in run order: the costliest axis (checkpoints) changes least often
    draw_legend: bool = True
    margin: int = 0  # pixels between cells
    no_fixed_seeds: bool = False
    warnings: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(a.values) for a in self.axes)

    def grid_fields(self, letters: str) -> dict[str, str]:
        """A1111's extra infotext fields of a grid: `Script`, `X Type`, `X Values` (and `Fixed X Values` for
        seeds made concrete) for the axes in `letters`."""
        fields = {"Script": TITLE}
        for spec in self.axes:
            if spec.letter not in letters or spec.axis is NOTHING:
                continue
            fields[f"{spec.letter} Type"] = spec.axis.label
            fields[f"{spec.letter} Values"] = spec.text
            if spec.axis.label == "Seed" and not self.no_fixed_seeds:
                fields[f"Fixed {spec.letter} Values"] = ", ".join(str(v) for v in spec.values)
        return fields


def make_plan(base: GenerationParams, axes: Sequence[tuple[str, str]], checkpoints: Sequence[str] = (), *,
              draw_legend: bool = True, no_fixed_seeds: bool = False, vary_seeds: Sequence[bool] = (False,) * 3,
              margin: int = 0, upscalers: Sequence[str] | None = None) -> GridPlan:
    """The cells of an X/Y/Z plot, each checked: `axes` are (label, values text) for X, Y and Z (missing ones
    are Nothing). Seeds as A1111: a -1 seed is made concrete once, so every cell has the same noise unless
    the Seed axis varies it (or `no_fixed_seeds` keeps -1: each cell random; `vary_seeds` adds the X/Y/Z
    index to the seed, as A1111's "Vary seeds for X"). `upscalers`: the image upscalers' names there are, for
    the hires fix (None: the built-in ones)."""
    upscalers = None if upscalers is None else list(upscalers)
    base.check(upscalers=upscalers)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 500:
        raise UserError(f"must be 0 to 500 pixels, got {margin!r}", field="margin_size")
    specs = [_axis_values(letter, label, text, base, checkpoints)
             for letter, (label, text) in zip(LETTERS, [*axes, *[("Nothing", "")] * (3 - len(axes))])]
    if all(spec.axis is NOTHING for spec in specs):
        raise UserError("choose what to vary: an X, Y or Z type other than Nothing", field="x_type")
    if not no_fixed_seeds:
        base = base.replace(seed=_concrete(base.seed))
        specs = [_fixed_seeds(spec) for spec in specs]
    nx, ny, nz = (len(spec.values) for spec in specs)
    if nx * ny * nz > MAX_CELLS:
        raise UserError(f"{nx} x {ny} x {nz} = {nx * ny * nz} cells is too many; at most {MAX_CELLS} per plot")
    warnings = []
    if base.batch_size > 1 or base.n_iter > 1:
        warnings.append("X/Y/Z plot makes one image per cell: batch count and batch size were set to 1")
    base = base.replace(batch_size=1, n_iter=1)
    cells = [_cell(base, specs, ix, iy, iz, vary_seeds, upscalers) for ix, iy, iz in _run_order(specs)]
    pixels = sum(cell.params.width * cell.params.height for cell in cells)
    if pixels > MAX_GRID_PIXELS:
        raise UserError(f"the grid would have {pixels / 1e6:.0f} megapixels; at most {MAX_GRID_PIXELS // 10**6}: "
                        "use fewer values or a smaller size")
    return GridPlan(base, tuple(specs), tuple(cells), bool(draw_legend), int(margin), bool(no_fixed_seeds),
                    tuple(warnings))


def _axis_values(letter: str, label: str, text: str, base: GenerationParams, checkpoints: Sequence[str]) -> AxisValues:
    axis = find_axis(label, letter)
    if axis is NOTHING:
        return AxisValues(letter, axis, "", (None,))
    text = text if isinstance(text, str) else ""
    try:
        values = parse_values(axis, text)
        if not values:
            raise ValueError("no values: write them comma-separated, like 10, 20, 30 or 10-30 (+10)")
        if axis.check:
            values = axis.check(values, base, checkpoints)
    except ValueError as err:
        raise UserError(f"{axis.label}: {err}", field=f"{letter.lower()}_values") from None
    return AxisValues(letter, axis, text.strip(), tuple(values))


def _concrete(seed: int) -> int:
    return random.randrange(SEED_RANGE) if seed == -1 else seed


def _fixed_seeds(spec: AxisValues) -> AxisValues:
    if spec.axis.label != "Seed":
        return spec
    return AxisValues(spec.letter, spec.axis, spec.text, tuple(_concrete(v) for v in spec.values))


def _run_order(specs: list[AxisValues]) -> list[tuple[int, int, int]]:
    """(ix, iy, iz) in the order to run: axes by cost, the costliest outermost (A1111 runs Z, Y, X when
    costs tie), so a checkpoint axis loads each checkpoint once."""
    order = sorted((2, 1, 0), key=lambda i: -specs[i].axis.cost)  # axis numbers, outermost first
    sizes = [len(spec.values) for spec in specs]
    out = []

    def walk(depth: int, index: list[int]):
        if depth == 3:
            out.append(tuple(index))
            return
        for i in range(sizes[order[depth]]):
            index[order[depth]] = i
            walk(depth + 1, index)

    walk(0, [0, 0, 0])
    return out


def _cell(base: GenerationParams, specs: list[AxisValues], ix: int, iy: int, iz: int,
          vary_seeds: Sequence[bool], upscalers: list[str] | None = None) -> Cell:
    params = base
    for spec, i in zip(specs, (ix, iy, iz)):
        params = spec.axis.apply(params, spec.values[i], spec.values)
    nx, ny = len(specs[0].values), len(specs[1].values)
    offset = (ix if vary_seeds[0] else 0) + (iy * (nx if vary_seeds[0] else 1) if vary_seeds[1] else 0) + \
        (iz * (nx if vary_seeds[0] else 1) * (ny if vary_seeds[1] else 1) if vary_seeds[2] else 0)
    if offset and params.seed != -1:
        params = params.replace(seed=params.seed + offset)
    label = ", ".join(text for spec, i in zip(specs, (ix, iy, iz)) if (text := label_of(spec.axis, spec.values[i])))
    try:
        params.check(upscalers=upscalers)
    except UserError as err:
        raise UserError(f"the cell {label}: {err.message}", field=err.field, status=err.status) from None
    return Cell(ix, iy, iz, ix + iy * nx + iz * nx * ny, params, label)


# ---- the result ---------------------------------------------------------------------------------


@dataclass
class GridResult:
    """A plot that ran: the grid (one sub-grid per Z value, side by side), and each cell's own result."""

    plan: GridPlan
    grid: Image.Image
    infotext: str
    sub_grids: list[Image.Image]
    sub_infotexts: list[str]
    cells: dict[int, GenerationResult]  # by Cell.index; a cell that did not run (interrupted, failed) is absent
    interrupted: bool = False
    warnings: list[str] = field(default_factory=list)
    path: Path | None = None  # where the grid was saved

    def ordered_cells(self) -> list[GenerationResult]:
        return [self.cells[i] for i in sorted(self.cells)]

    def as_result(self, singles: bool = True, sub_grids: bool = False) -> GenerationResult:
        """One A1111-shaped result: the grid first (as A1111 returns it), then the sub-grids when asked and
        there are several, then the single images (x fastest, then y, then z), each with its infotext."""
        done = self.ordered_cells()
        first = done[0] if done else None
        images, texts = [self.grid], [self.infotext]
        seeds = [first.seeds[0] if first else self.plan.base.seed]
        if sub_grids and len(self.sub_grids) > 1:
            images += self.sub_grids
            texts += self.sub_infotexts
            seeds += [seeds[0]] * len(self.sub_grids)
        paths = [self.path] if self.path else []
        if singles:
            for result in done:
                images += result.images
                texts += result.infotexts
                seeds += result.seeds
                paths += result.paths
        timings: dict[str, float] = {}
        for result in done:
            for phase, seconds in result.timings.items():
                timings[phase] = timings.get(phase, 0.0) + seconds
        return GenerationResult(images, texts, seeds, self.plan.base.replace(seed=seeds[0]),
                                sampler=first.sampler if first else "", schedule=first.schedule if first else "",
                                model_name=first.model_name if first else None,
                                model_hash=first.model_hash if first else None,
                                vae_name=first.vae_name if first else None, vae_hash=first.vae_hash if first else None,
                                paths=paths, interrupted=self.interrupted, warnings=list(self.warnings),
                                timings=timings)


def assemble(plan: GridPlan, cells: dict[int, GenerationResult], interrupted: bool = False,
             warnings: Sequence[str] = ()) -> GridResult:
    """The grid of the cells that ran (a blank slot for the others) and its infotext: the first cell's,
    with A1111's `Script`, `X Type`, `X Values`... fields."""
    nx, ny, nz = plan.shape
    cells = {index: result for index, result in cells.items() if result.images}
    width = max(cell.params.width for cell in plan.cells)
    height = max(cell.params.height for cell in plan.cells)
    x_labels, y_labels, z_labels = (spec.labels for spec in plan.axes)
    sub_grids, sub_texts = [], []
    for iz in range(nz):
        slots = [cells[i].images[0] if i in cells else None for i in range(iz * nx * ny, (iz + 1) * nx * ny)]
        sub_grids.append(draw_grid(slots, nx, ny, width, height, x_labels if plan.draw_legend else [],
                                   y_labels if plan.draw_legend else [], plan.margin))
        sub_texts.append(_with_fields(_first_infotext(cells, range(iz * nx * ny, (iz + 1) * nx * ny)),
                                      plan.grid_fields("XY")))
    if nz == 1 and not any(z_labels):
        grid = sub_grids[0]
    else:
        grid = draw_grid(sub_grids, nz, 1, max(g.width for g in sub_grids), max(g.height for g in sub_grids),
                         z_labels if plan.draw_legend else [], [], plan.margin)
    text = _with_fields(_first_infotext(cells, range(nx * ny * nz)), plan.grid_fields("XYZ"))
    for image, image_text in ((grid, text), *zip(sub_grids, sub_texts)):
        image.info[infotext.PNG_KEY] = image_text  # kept by anything that saves the grid as PNG
    return GridResult(plan, grid, text, sub_grids, sub_texts, cells, interrupted, list(warnings))


def _first_infotext(cells: dict[int, GenerationResult], indices) -> str:
    for index in indices:
        if index in cells and cells[index].infotexts:
            return cells[index].infotexts[0]
    return ""


def _with_fields(text: str, fields: dict[str, str]) -> str:
    """An infotext with more `Key: value` fields on its last line (A1111's extra_generation_params)."""
    if not text:
        return ""
    extra = ", ".join(f"{key}: {infotext.quote(value)}" for key, value in fields.items())
    return f"{text}, {extra}"


# ---- drawing ------------------------------------------------------------------------------------


def draw_grid(images: Sequence[Image.Image | None], cols: int, rows: int, cell_width: int, cell_height: int,
              col_labels: Sequence[str] = (), row_labels: Sequence[str] = (), margin: int = 0) -> Image.Image:
    """Images in `rows` x `cols` slots (None: a blank slot), labels above the columns and left of the rows,
    as A1111's draw_grid_annotations lays them out; each image centred in its slot."""
    font = ImageFont.load_default(size=max(12, min(48, (cell_width + cell_height) // 25)))
    pad = max(4, font.size // 2)
    line_height = font.size + font.size // 3
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    col_lines = [_wrap(scratch, text, font, cell_width) for text in col_labels]
    row_room = max(cell_width * 3 // 4, font.size * 8)
    row_lines = [_wrap(scratch, text, font, row_room) for text in row_labels]
    top = max((len(lines) for lines in col_lines if any(lines)), default=0) * line_height
    top += 2 * pad if top else 0
    widest = max((scratch.textlength(line, font=font) for lines in row_lines for line in lines), default=0)
    left = int(widest) + 2 * pad if widest else 0
    width = left + cols * cell_width + (cols - 1) * margin
    height = top + rows * cell_height + (rows - 1) * margin
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for number, image in enumerate(images):
        col, row = number % cols, number // cols
        x, y = left + col * (cell_width + margin), top + row * (cell_height + margin)
        if image is None:
            draw.rectangle([x, y, x + cell_width - 1, y + cell_height - 1], fill=(32, 32, 32))
            continue
        canvas.paste(image.convert("RGB"), (x + (cell_width - image.width) // 2, y + (cell_height - image.height) // 2))
    for col, lines in enumerate(col_lines):
        centre = left + col * (cell_width + margin) + cell_width // 2
        start = pad + (top - 2 * pad - len(lines) * line_height) // 2
        for n, line in enumerate(lines):
            draw.text((centre, start + n * line_height), line, fill="black", font=font, anchor="mt")
    for row, lines in enumerate(row_lines):
        middle = top + row * (cell_height + margin) + cell_height // 2
        start = middle - len(lines) * line_height // 2
        for n, line in enumerate(lines):
            draw.text((left // 2, start + n * line_height), line, fill="black", font=font, anchor="mt")
    return canvas


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """Words on lines no wider than `width` (a single long word keeps its own line)."""
    lines: list[str] = []
    for word in (text or "").split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines

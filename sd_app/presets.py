"""Presets: JSON files of good starting points (parameters, styles, LoRAs, refiner settings).

A preset sets parameters on the form (the page can undo it); prompt templates are styles (`styles.py`),
which a preset can choose in `parameters.styles` but never writes into the prompt. One file is one preset. Files are checked when read: a bad one is reported by file and field and left
out, and the others still load. Users add their own by dropping a file into `presets/` or their user
presets folder; a user preset with the same name replaces the shipped one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .datafiles import read_json_object
from .errors import UserError
from .lora_library import MAX_WEIGHT
from .params import GenerationParams
from .prompts import insert_lora_tag

TOP_KEYS = {"name", "description", "parameters", "loras", "refiner"}
PARAMETER_KEYS = {"prompt", "negative_prompt", "steps", "cfg_scale", "width", "height", "sampler_name", "scheduler",
                  "seed", "batch_size", "n_iter", "styles"}
REFINER_KEYS = {"checkpoint", "switch_at"}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    loras: tuple[tuple[str, float], ...] = ()
    refiner: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def apply(self, params: GenerationParams) -> GenerationParams:
        """The request with this preset on top: its parameters (its styles replace the chosen ones, so presets
        picked one after another never pile up), its LoRAs' tags in the prompt (once each), its refiner."""
        changes: dict[str, Any] = dict(self.parameters)
        if self.refiner:
            changes["refiner_checkpoint"] = self.refiner.get("checkpoint") or None
            if "switch_at" in self.refiner:
                changes["refiner_switch_at"] = self.refiner["switch_at"]
        prompt = changes.get("prompt", params.prompt)
        for name, weight in self.loras:
            prompt = insert_lora_tag(prompt, name, weight)
        changes["prompt"] = prompt
        return params.replace(**changes)


def parse(path: Path) -> Preset:
    """Read and check one preset file; UserError names the file and the field."""
    where = path.name
    data = read_json_object(path)
    if "style" in data:
        raise UserError(f"{where}: 'style' is no longer part of a preset: put the prompt template in a style file "
                        "(data/styles/NAME.json with name, prompt, negative_prompt) and choose it in the preset's "
                        "parameters.styles")
    _known(where, "", data, TOP_KEYS)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: 'name' must be a non-empty text")
    parameters = data.get("parameters", {})
    _known(where, "parameters.", parameters, PARAMETER_KEYS)
    if isinstance(parameters.get("styles"), list):
        parameters = {**parameters, "styles": tuple(parameters["styles"])}
    try:
        GenerationParams(**parameters).check()
    except UserError as err:
        raise UserError(f"{where}: parameters.{err.field}: {err.message}") from None
    except TypeError as err:
        raise UserError(f"{where}: parameters: {err}") from None
    loras = []
    for i, item in enumerate(data.get("loras", []) if isinstance(data.get("loras", []), list) else [None]):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise UserError(f"{where}: loras[{i}] must be {{\"name\": ..., \"weight\": ...}}")
        _known(where, f"loras[{i}].", item, {"name", "weight"})
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not abs(weight) <= MAX_WEIGHT:
            raise UserError(f"{where}: loras[{i}].weight must be a number between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}")
        loras.append((item["name"], float(weight)))
    refiner = data.get("refiner", {})
    _known(where, "refiner.", refiner, REFINER_KEYS)
    if "switch_at" in refiner:
        try:
            GenerationParams(refiner_switch_at=refiner["switch_at"]).check()
        except UserError as err:
            raise UserError(f"{where}: refiner.switch_at: {err.message}") from None
    if "checkpoint" in refiner and not isinstance(refiner["checkpoint"], (str, type(None))):
        raise UserError(f"{where}: refiner.checkpoint must be a checkpoint name")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise UserError(f"{where}: 'description' must be text")
    return Preset(name.strip(), description, dict(parameters), tuple(loras), dict(refiner), path)


def _check_names(path: Path, preset: Preset, loras, styles, known_styles) -> None:
    """UserError naming the file and field when the preset names a LoRA or style that is not here."""
    for i, (name, _) in enumerate(preset.loras if loras is not None else ()):
        try:
            loras.get(name)
        except UserError as err:
            raise UserError(f"{path.name}: loras[{i}].name: {err.message}") from None
    for i, name in enumerate(preset.parameters.get("styles", ()) if styles is not None else ()):
        try:
            styles.get(name, known_styles)
        except UserError as err:
            raise UserError(f"{path.name}: parameters.styles[{i}]: {err.message}") from None


def _known(where: str, prefix: str, data, allowed: set[str]) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{where}: '{prefix.rstrip('.')}' must be a JSON object")
    for key in data:
        if key not in allowed:
            raise UserError(f"{where}: unknown field '{prefix}{key}'; allowed: {', '.join(sorted(allowed))}")


class PresetLibrary:
    """Presets from the shipped folder and a user folder, read fresh on each call (files are tiny)."""

    def __init__(self, *folders: str | Path):
        self.folders = [Path(f) for f in folders if f]

    def load(self, loras=None, styles=None) -> tuple[dict[str, Preset], list[str]]:
        """(presets by name, problems). With a LoRA or style library, presets naming a missing one are reported."""
        known_styles = styles.load()[0] if styles is not None else None
        presets: dict[str, Preset] = {}
        problems: list[str] = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for path in sorted(folder.glob("*.json")):
                try:
                    preset = parse(path)
                    _check_names(path, preset, loras, styles, known_styles)
                except UserError as err:
                    problems.append(str(err))
                    continue
                presets[preset.name] = preset
        return presets, problems

    def get(self, name: str, loras=None, styles=None) -> Preset:
        presets, problems = self.load(loras, styles)
        if name in presets:
            return presets[name]
        broken = [p for p in problems if p.startswith(tuple(f"{f.name}" for f in self._files(name)))]
        if broken:
            raise UserError(broken[0], field="preset")
        raise UserError(f"no preset {name!r}; available: {', '.join(presets) or 'none'}", field="preset", status=404)

    def _files(self, name: str) -> list[Path]:
        return [p for f in self.folders if f.is_dir() for p in f.glob("*.json") if name.lower() in p.stem.lower()]



"""User settings: one table says what each setting is; a JSON file keeps the user's values.

The file is written atomically (a crash never leaves half a file) and read at start. A damaged file is
reported, kept as it is, and defaults are used; the next save first copies it aside.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import rng, samplers
from .errors import UserError
from .fastpath import COMPILE_MODES
from .hires import REFINER_PASSES
from .outputs import OUTPUT_FORMATS
from .params import LIMITS, GenerationParams, Limits
from .pipeline_choices import DEVICES, DTYPE_NAMES, MEMORY_MODES, RELOAD_OPTIONS
from .prompts import SYNTAXES


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    label: str
    section: str
    choices: tuple | None = None  # allowed values, when there is a fixed list
    limits: tuple | None = None  # (low, high) for numbers
    help: str = ""

    @property
    def applies(self) -> str:
        """Either "now", or "reload": the checkpoint is reloaded to apply it (the pipelines say which)."""
        return "reload" if self.name in RELOAD_OPTIONS else "now"


SECTIONS = ("Folders", "Defaults", "Prompts", "Device and memory", "Previews", "Saving", "Limits")

SETTINGS: tuple[Setting, ...] = (
    Setting("models_dir", "models", "Models folder", "Folders",
            help="A1111 layout below it: Stable-diffusion, Lora, VAE. Point it at an A1111 install to share models."),
    Setting("ckpt_dir", "", "Checkpoint folder", "Folders", help="Empty: <models>/Stable-diffusion"),
    Setting("lora_dir", "", "LoRA folder", "Folders", help="Empty: <models>/Lora"),
    Setting("embeddings_dir", "", "Embeddings folder", "Folders",
            help="Textual inversion embeddings. Empty: <models>/embeddings, else A1111's embeddings folder beside "
                 "<models>"),
    Setting("vae_dir", "", "VAE folder", "Folders", help="Empty: <models>/VAE"),
    Setting("upscaler_dir", "", "Upscaler models folder", "Folders",
            help="Empty: <models>. A1111's ESRGAN, RealESRGAN, SwinIR, DAT and HAT folders below it"),
    Setting("outputs_dir", "outputs", "Outputs folder", "Folders"),
    Setting("default_checkpoint", "", "Checkpoint loaded at start", "Defaults", help="Empty: the first SDXL base found"),
    Setting("prompt", "", "Default prompt", "Defaults"),
    Setting("negative_prompt", "", "Default negative prompt", "Defaults"),
    Setting("steps", 30, "Steps", "Defaults", limits=LIMITS["steps"]),
    Setting("cfg_scale", 7.0, "CFG scale", "Defaults", limits=LIMITS["cfg_scale"]),
    Setting("width", 1024, "Width", "Defaults", limits=LIMITS["width"]),
    Setting("height", 1024, "Height", "Defaults", limits=LIMITS["height"]),
    Setting("sampler_name", "DPM++ 2M", "Sampler", "Defaults", choices=tuple(s.name for s in samplers.SAMPLERS)),
    Setting("scheduler", "Automatic", "Schedule type", "Defaults", choices=tuple(s.name for s in samplers.SCHEDULES)),
    Setting("refiner_switch_at", 0.8, "Refiner switch at", "Defaults", limits=LIMITS["refiner_switch_at"]),
    Setting("randn_source", rng.DEFAULT_SOURCE, "Random number generator source", "Defaults", choices=rng.SOURCES,
            help="A1111's: GPU (its default) gives a CUDA card's noise, here on any device; CPU: torch's CPU "
                 "generator; NV: a CUDA card's noise computed on the CPU. Infotexts say which (RNG)"),
    Setting("hires_fix_refiner_pass", REFINER_PASSES[1], "Hires fix: which pass the refiner runs in", "Defaults",
            choices=REFINER_PASSES, help="A1111's option: with a refiner and a hires fix, the refiner takes over "
            "in this pass (second: the hires pass). A request may say otherwise (infotext Hires refiner)"),
    Setting("prompt_syntax", "a1111", "Prompt syntax", "Prompts", choices=SYNTAXES,
            help="a1111: (word:1.2), [word]. compel: word++, (word)1.2, .blend()"),
    Setting("device", "auto", "Device", "Device and memory", choices=DEVICES),
    Setting("dtype", "auto", "Precision", "Device and memory", choices=("auto", *DTYPE_NAMES),
            help="auto: float16 on a GPU, float32 on the CPU"),
    Setting("memory_mode", "auto", "Memory mode", "Device and memory",
            choices=MEMORY_MODES,
            help="auto picks by free VRAM; offloading keeps weights in RAM and moves them to the GPU when needed"),
    Setting("vae", "Automatic", "VAE", "Device and memory",
            help="Automatic: the checkpoint's own. Or a file from the VAE folder, e.g. an fp16-fix SDXL VAE"),
    Setting("vae_tiling", False, "VAE tiling (large images with less VRAM)", "Device and memory"),
    Setting("compile", "off", "Fast path (torch.compile)", "Device and memory", choices=tuple(COMPILE_MODES),
            help="Faster steps, same images. The first image compiles (tens of seconds), and again at the first "
                 "change of size. Only with the whole model on the device (memory mode none)"),
    Setting("preview_every", 3, "Live preview every N steps (0: off)", "Previews", limits=(0, 50)),
    Setting("save_images", True, "Save every image to the outputs folder", "Saving"),
    Setting("output_format", "png", "Image format", "Saving", choices=OUTPUT_FORMATS),
    Setting("filename_pattern", "[seed]", "File name after the number", "Saving",
            help="Tokens: [seed] [model] [width] [height] [steps] [sampler] [date]"),
    Setting("embed_metadata", True, "Store generation parameters in the image", "Saving"),
    # What one request may ask for, from the page and the API alike (the table is params.Limits).
    *(Setting(name, default, label, "Limits", limits=(1, most), help=help)
      for name, default, most, label, help in Limits.table()),
)
BY_NAME = {s.name: s for s in SETTINGS}
GENERATION_DEFAULTS = ("prompt", "negative_prompt", "steps", "cfg_scale", "width", "height", "sampler_name",
                       "scheduler", "refiner_switch_at")


def check_value(setting: Setting, value: Any) -> Any:
    """The value in the setting's type, or UserError naming the setting and what it allows."""
    default = setting.default
    shown = reprlib.repr(value)  # a damaged file can hold anything: keep the message short
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"must be true or false, got {shown}", field=setting.name)
    elif isinstance(default, (int, float)):
        # JSON files can hold NaN, Infinity and 1e999 (read as inf): none of them is a setting.
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise UserError(f"must be a finite number, got {shown}", field=setting.name)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise UserError(f"must be a whole number, got {shown}", field=setting.name)
            value = int(value)
        elif not isinstance(value, float):
            try:
                value = float(value)
            except OverflowError:  # an integer with hundreds of digits
                raise UserError(f"must be a finite number, got {shown}", field=setting.name) from None
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise UserError(f"must be text, got {shown}", field=setting.name)
    if setting.choices is not None and value not in setting.choices:
        raise UserError(f"must be one of {', '.join(map(str, setting.choices))}; got {shown}", field=setting.name)
    if setting.limits is not None and not setting.limits[0] <= value <= setting.limits[1]:
        raise UserError(f"must be between {setting.limits[0]} and {setting.limits[1]}, got {reprlib.repr(value)}",
                        field=setting.name)
    return value


class SettingsStore:
    """The current settings, their file, and what went wrong reading it (shown to the user)."""

    def __init__(self, path: str | Path | None, overrides: dict[str, Any] | None = None):
        self.path = Path(path) if path else None
        self.values: dict[str, Any] = {s.name: s.default for s in SETTINGS}
        self.problems: list[str] = []
        self._file_broken = False
        self._load()
        self.overrides = dict(overrides or {})  # from command-line flags: win over the file, never saved

    def _load(self) -> None:
        if not self.path or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("the file does not hold a JSON object")
        except (OSError, ValueError, RecursionError) as exc:  # ValueError: not JSON, or not UTF-8
            self._file_broken = True
            self.problems.append(f"{self.path} could not be read ({exc}); using default settings. The file was "
                                 "left as it is; saving settings will keep a copy of it beside the new one.")
            return
        for name, value in data.items():
            setting = BY_NAME.get(name)
            if setting is None:
                self.problems.append(f"{self.path}: unknown setting {name!r} ignored")
                continue
            try:
                self.values[name] = check_value(setting, value)
            except UserError as err:
                self.problems.append(f"{self.path}: {err}; using the default {setting.default!r}")

    def get(self, name: str) -> Any:
        return self.overrides.get(name, self.values[name])

    def all(self) -> dict[str, Any]:
        return {name: self.get(name) for name in self.values}

    def update(self, changes: dict[str, Any]) -> list[str]:
        """Check and store changes; return the names whose value changed. Nothing is stored if any is bad."""
        checked = {}
        for name, value in changes.items():
            setting = BY_NAME.get(name)
            if setting is None:
                raise UserError(f"unknown setting; known: {', '.join(BY_NAME)}", field=name)
            checked[name] = check_value(setting, value)
        # A start-up flag's value sent back unchanged (the Settings page sends every field) is not the user's
        # choice: it stays a flag, unsaved. Another value wins over the flag and is saved.
        checked = {n: v for n, v in checked.items() if n not in self.overrides or self.overrides[n] != v}
        changed = [n for n, v in checked.items() if self.get(n) != v]
        before_values, before_overrides = dict(self.values), dict(self.overrides)
        self.values.update(checked)
        for name in checked:
            self.overrides.pop(name, None)
        try:
            self.save()
        except OSError as err:  # a read-only or full disk: keep what the file says, and say why
            self.values, self.overrides = before_values, before_overrides
            raise UserError(f"could not write {self.path} ({err.strerror or err}); nothing was changed",
                            status=507) from None
        return changed

    def save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._file_broken and self.path.exists():
            self.path.replace(self.path.with_name(f"{self.path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}"))
            self._file_broken = False
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.values, f, indent=2, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    # ---- derived values ----------------------------------------------------------------------

    def folder(self, name: str) -> Path:
        """ckpt / lora / vae / embeddings folder: the explicit one, else A1111's name below the models folder."""
        explicit = self.get(f"{name}_dir")
        if explicit:
            return Path(explicit).expanduser()
        models = Path(self.get("models_dir")).expanduser()
        if name == "embeddings":  # A1111 keeps them beside its models folder, not in it
            inside, beside = models / "embeddings", models.parent / "embeddings"
            return beside if not inside.is_dir() and beside.is_dir() else inside
        sub = {"ckpt": "Stable-diffusion", "lora": "Lora", "vae": "VAE", "upscaler": ""}[name]
        return models / sub

    def generation_defaults(self) -> GenerationParams:
        return GenerationParams(**{name: self.get(name) for name in GENERATION_DEFAULTS})

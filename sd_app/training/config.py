"""A training run's settings: one dataclass, checked field by field, saved as JSON next to the output."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

LR_SCHEDULES = ("constant", "cosine", "linear")  # each with optional warmup steps before it
OPTIMIZERS = ("adamw", "adamw8bit")
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")  # of the LoRA file; saved states are always fp32
PRECISIONS = ("auto", "no", "fp16", "bf16")  # auto: bf16 on a GPU that has it, else fp16; none on the CPU
_KIND_WORDS = {int: "a whole number", str: "text", float: "a number"}
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,99}$")


@dataclass
class TrainConfig:
    dataset_dir: str  # images (+ same-name .txt captions), or kohya's `N_name` folders (N repeats)
    output_name: str  # the LoRA's file name (without .safetensors) and its ss_output_name
    checkpoint: str  # a checkpoint name in the checkpoint folder, or a path to an SDXL base file
    output_dir: str = ""  # the LoRA folder; the studio fills it in
    work_dir: str = ""  # caches, saved states and samples; default: `<output_dir>/../training/<output_name>`
    trigger_word: str = ""
    caption_template: str = "a photo of {trigger}"  # for images without a caption file
    resolution: int = 1024  # the buckets' area is resolution²
    rank: int = 16
    alpha: float = 16.0
    train_feed_forward: bool = False
    train_conv: bool = False
    train_text_encoder: bool = False
    learning_rate: float = 1e-4
    text_encoder_lr: float = 5e-5
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    optimizer: str = "adamw"
    weight_decay: float = 1e-2
    max_steps: int = 1000
    batch_size: int = 1
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = True
    min_snr_gamma: float = 5.0  # 0 turns min-SNR weighting off
    noise_offset: float = 0.0
    seed: int = 42
    save_every: int = 0  # steps between saved states (and LoRA files); 0: only at the end
    sample_every: int = 0  # steps between sample images; 0: only at the end when prompts are given
    sample_prompts: list[str] = field(default_factory=list)
    sample_steps: int = 20
    sample_seed: int = 1234
    save_precision: str = "fp16"
    resume: str = ""  # a saved state (a .pt in <work_dir>/states) to go on from, or "latest"
    device: str = "auto"

    # ---- checking ------------------------------------------------------------------------------

    def check(self) -> "TrainConfig":
        """Every field within what a run can use; UserError naming the field otherwise."""
        if not str(self.dataset_dir).strip():
            raise UserError("choose the folder of training images", field="dataset_dir")
        if not NAME_PATTERN.match(self.output_name or "") or ".." in self.output_name:
            raise UserError("must be 1-100 letters, digits, spaces or ._()+- (no slashes), e.g. my_style_v1",
                            field="output_name")
        if not str(self.checkpoint).strip():
            raise UserError("choose the SDXL base checkpoint to train on", field="checkpoint")
        _between(self, "resolution", 64, 2048)
        if self.resolution % 32:
            raise UserError(f"must be a multiple of 32, got {self.resolution}", field="resolution")
        _between(self, "rank", 1, 256)
        _between(self, "alpha", 0.0, 1024.0, integer=False)
        _between(self, "learning_rate", 0.0, 1.0, integer=False, above=True)
        _between(self, "text_encoder_lr", 0.0, 1.0, integer=False)
        _between(self, "warmup_steps", 0, 1_000_000)
        _between(self, "weight_decay", 0.0, 1.0, integer=False)
        _between(self, "max_steps", 1, 1_000_000)
        _between(self, "batch_size", 1, 64)
        _between(self, "min_snr_gamma", 0.0, 100.0, integer=False)
        _between(self, "noise_offset", 0.0, 1.0, integer=False)
        _between(self, "seed", 0, 2**63 - 1)
        _between(self, "save_every", 0, 1_000_000)
        _between(self, "sample_every", 0, 1_000_000)
        _between(self, "sample_steps", 1, 150)
        _between(self, "sample_seed", 0, 2**63 - 1)
        _choice(self, "lr_schedule", LR_SCHEDULES)
        _choice(self, "optimizer", OPTIMIZERS)
        _choice(self, "mixed_precision", PRECISIONS)
        _choice(self, "save_precision", SAVE_PRECISIONS)
        for name in ("train_feed_forward", "train_conv", "train_text_encoder", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"must be true or false, got {getattr(self, name)!r}", field=name)
        if not isinstance(self.sample_prompts, list) or not all(isinstance(p, str) for p in self.sample_prompts):
            raise UserError("must be a list of prompts", field="sample_prompts")
        if "{trigger}" not in self.caption_template and not self.caption_template.strip():
            raise UserError("must not be empty (use {trigger} for the trigger word)", field="caption_template")
        return self

    # ---- files ---------------------------------------------------------------------------------

    def output_path(self) -> Path:
        return Path(self.output_dir) / f"{self.output_name}.safetensors"

    def work_path(self) -> Path:
        if self.work_dir:
            return Path(self.work_dir)
        return Path(self.output_dir).parent / "training" / self.output_name

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | Path | None = None) -> "TrainConfig":
        """A config from JSON data: unknown fields are refused by name; relative paths are taken from base_dir."""
        if not isinstance(data, dict):
            raise UserError("a training run's settings must be a JSON object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise UserError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(known)}",
                            field=unknown[0])
        missing = [n for n, f in known.items() if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and n not in data]
        if missing:
            raise UserError(f"missing setting(s): {', '.join(missing)}", field=missing[0])
        for name, value in data.items():
            default = known[name].default
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                data[name] = float(value)
            elif isinstance(default, (int, str)) and not isinstance(default, bool) and value is not None \
                    and type(value) is not type(default):
                raise UserError(f"must be {_KIND_WORDS[type(default)]}, got {value!r}", field=name)
        config = cls(**data)
        if base_dir is not None:
            for name in ("dataset_dir", "output_dir", "work_dir", "checkpoint"):
                value = getattr(config, name)
                if value and not Path(value).is_absolute() and (name != "checkpoint" or "/" in value
                                                                or value.endswith(".safetensors")):
                    setattr(config, name, str(Path(base_dir) / value))
        return config.check()

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise UserError(f"cannot read {path}: {err.strerror or err}") from None
        except ValueError as err:
            raise UserError(f"{path} is not valid JSON: {err}") from None
        return cls.from_dict(data, base_dir=path.parent)


def _between(config: TrainConfig, name: str, low, high, integer: bool = True, above: bool = False) -> None:
    value = getattr(config, name)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or (not integer and not math.isfinite(value)):
        raise UserError(f"must be {'a whole number' if integer else 'a number'}, got {value!r}", field=name)
    if value < low or value > high or (above and value <= low):
        raise UserError(f"must be {'above' if above else 'between'} {low}{'' if above else f' and {high}'}, "
                        f"got {value}", field=name)


def _choice(config: TrainConfig, name: str, allowed: tuple[str, ...]) -> None:
    if getattr(config, name) not in allowed:
        raise UserError(f"must be one of {', '.join(allowed)}, got {getattr(config, name)!r}", field=name)

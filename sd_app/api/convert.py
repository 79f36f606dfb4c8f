"""A1111 requests -> Homegrown requests, and Homegrown results -> A1111 answers: pure functions, no HTTP.

Kept apart from the routes so that A1111's rules (which fields override an infotext, what `info` holds,
how options are named) are tested in-process, without a server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .. import __version__, infotext, xyz
from ..errors import UserError
from ..jobs import GenerationResult
from ..outputs import output_format
from ..params import GenerationParams
from . import a1111_options as opts
from . import img2img_convert
from .schemas import UNSUPPORTED, Txt2ImgRequest


@dataclass(frozen=True)
class Txt2ImgPlan:
    """What an A1111 txt2img request asks Homegrown to do."""

    params: GenerationParams
    output_format: str  # one of outputs.OUTPUT_FORMATS
    save: bool
    restore_checkpoint: bool  # load the previous checkpoint back afterwards (override_settings_restore_afterwards)
    warnings: tuple[str, ...] = ()  # override_settings that had no effect, for info.warnings


def txt2img_plan(request: Txt2ImgRequest, current_vae: str, default_format: str, loras=None,
                 styles=None, kept: dict[str, Any] | None = None) -> Txt2ImgPlan:
    """The request as Homegrown runs it; UserError naming the field for what Homegrown cannot do.

    `loras` renames infotext LoRA tags by hash; `styles` (a StyleLibrary) checks the `styles` names (the engine
    applies them) and takes the infotext's styles back out of its prompts. `kept` are the options stored with
    POST /options: those of opts.REQUEST_OPTIONS apply to this request as A1111's global options do."""
    check_supported(request)
    kept = kept or {}
    base = GenerationParams(**{attr: opts.check_request_option(key, kept[key])
                               for key, attr in opts.REQUEST_OPTIONS.items() if key in kept})
    if request.infotext:
        pasted = infotext.to_params(request.infotext, loras=loras, styles=styles)
        if "Clip skip SDXL" not in infotext.parse(request.infotext)[2]:  # A1111 writes no such key: its option holds
            pasted = pasted.replace(sdxl_clip_l_skip=base.sdxl_clip_l_skip)
        base = pasted
    overrides = dict(request.override_settings or {})
    warnings = override_warnings(overrides)
    if "sd_vae" in overrides and vae_name(overrides["sd_vae"]) != vae_name(current_vae):
        raise UserError("a per-request VAE is not supported: set it with POST /sdapi/v1/options "
                        f"{{\"sd_vae\": ...}} (now: {current_vae!r})", field="sd_vae")
    fmt = output_format(overrides.get("samples_format", default_format), field="samples_format")
    # With `infotext`, its values are the base and only the fields the client sent override them (A1111).
    sent = request.model_fields_set if request.infotext else set(Txt2ImgRequest.model_fields)
    fields = {
        "prompt": request.prompt, "negative_prompt": request.negative_prompt, "steps": request.steps,
        "cfg_scale": request.cfg_scale, "width": request.width, "height": request.height, "seed": request.seed,
        "batch_size": request.batch_size, "n_iter": request.n_iter,
        "subseed": request.subseed, "subseed_strength": request.subseed_strength,
        "seed_resize_from_w": max(request.seed_resize_from_w, 0), "seed_resize_from_h": max(request.seed_resize_from_h, 0),
        "sampler_name": request.sampler_name or request.sampler_index,
        "scheduler": request.scheduler or "Automatic",
        "refiner_checkpoint": checkpoint_name(request.refiner_checkpoint)
        if request.refiner_checkpoint not in (None, "", "None") else None,
        "refiner_switch_at": request.refiner_switch_at if request.refiner_switch_at is not None else 0.8,
        "styles": tuple(request.styles or ()),
        "tiling": bool(request.tiling),
    }
    aliases = {"sampler_name": ("sampler_name", "sampler_index")}
    changes = {name: value for name, value in fields.items()
               if any(field in sent for field in aliases.get(name, (name,)))}
    changes.update({attr: opts.check_request_option(key, overrides[key])
                    for key, attr in opts.REQUEST_OPTIONS.items() if key in overrides})
    changes.update({key: opts.to_setting(key, overrides[key])[1] for key in opts.PER_REQUEST_SETTINGS
                    if key in overrides})
    changes["checkpoint"] = checkpoint_name(overrides.get("sd_model_checkpoint")) or (
        base.checkpoint if request.infotext else None)
    changes["hires"] = img2img_convert.hires_from_request(request) or (base.hires if request.infotext else None)
    if changes["hires"] is not None and "hires_fix_refiner_pass" in overrides:  # A1111's option, for this request
        changes["hires"] = changes["hires"].replace(refiner_pass=overrides["hires_fix_refiner_pass"])
    params = base.replace(**changes)
    for name in params.styles if styles is not None else ():
        styles.get(name)  # an unknown style is a 404 naming the styles there are, before any work
    return Txt2ImgPlan(params, fmt, save=request.save_images and not request.do_not_save_samples,
                       restore_checkpoint=request.override_settings_restore_afterwards and bool(params.checkpoint),
                       warnings=tuple(warnings))


def override_warnings(overrides: dict[str, Any]) -> list[str]:
    """What of `override_settings` has no effect on one request here, in words. A value equal to A1111's default
    changes nothing in A1111 either: no warning for it."""
    warnings = []
    for key, value in overrides.items():
        if key in ("sd_model_checkpoint", "sd_vae", "samples_format", "hires_fix_refiner_pass",
                   *opts.PER_REQUEST_SETTINGS) or \
                key in opts.REQUEST_OPTIONS:
            continue  # applied (or refused) by txt2img_plan
        if key not in opts.A1111_DEFAULTS:
            warnings.append(f"override_settings.{key}: not an option A1111 knows (an extension's?): ignored")
        elif key in opts.READ_ONLY:
            warnings.append(f"override_settings.{key} had no effect: {opts.READ_ONLY[key]}")
        elif key in opts.SETTING_OPTIONS:
            warnings.append(f"override_settings.{key} had no effect on this request: it is Homegrown's "
                            f"{opts.SETTING_OPTIONS[key]!r} setting, set with POST /sdapi/v1/options"
                            + (" (this request's saving follows save_images)" if key == "samples_save" else ""))
        elif value != opts.A1111_DEFAULTS[key]:
            warnings.append(f"override_settings.{key} had no effect: Homegrown has no use for it")
    return warnings


def check_supported(request: Txt2ImgRequest) -> None:
    for name, (allowed, why) in UNSUPPORTED.items():
        if name in ("script_name", "script_args") and wants_xyz(request):
            continue
        if getattr(request, name) not in allowed:
            raise UserError(f"{why} (got {getattr(request, name)!r})", field=name)


def txt2img_info(request: Txt2ImgRequest, result: GenerationResult, started: float,
                 warnings: tuple[str, ...] = ()) -> dict:
    """A1111's `info` for a txt2img answer (a JSON object; the route sends it as a string, as A1111 does)."""
    params = result.params
    count = len(result.images)
    return {
        "prompt": params.prompt, "all_prompts": [params.prompt] * count,
        "negative_prompt": params.negative_prompt, "all_negative_prompts": [params.negative_prompt] * count,
        "seed": params.seed, "all_seeds": result.seeds, "subseed": params.subseed,
        "all_subseeds": [params.subseed + (seed - params.seed) for seed in result.seeds],
        "subseed_strength": params.subseed_strength, "width": params.width, "height": params.height,
        "sampler_name": result.sampler, "scheduler": result.schedule,
        "cfg_scale": params.cfg_scale, "steps": params.steps, "batch_size": params.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": result.model_name, "sd_model_hash": result.model_hash,
        "sd_vae_name": result.vae_name, "sd_vae_hash": result.vae_hash,
        "seed_resize_from_w": params.seed_resize_from_w or -1, "seed_resize_from_h": params.seed_resize_from_h or -1,
        "denoising_strength": request.denoising_strength,
        "extra_generation_params": {}, "index_of_first_image": 0, "infotexts": result.infotexts,
        "styles": list(params.styles), "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
        "clip_skip": params.clip_skip, "is_using_inpainting_conditioning": False, "version": f"Homegrown {__version__}",
        "interrupted": result.interrupted, "saved_files": [str(p) for p in result.paths],
        "warnings": [*warnings, *result.warnings],
    }


def options(model, settings: dict[str, Any], kept: dict[str, Any]) -> dict:
    """A1111's `GET /options`: every option A1111 knows, with what Homegrown has loaded and set, the values kept
    by POST /options, and A1111's defaults for the rest. `model` is a studio_library.ModelInfo, or None."""
    values = {**opts.A1111_DEFAULTS, **{k: v for k, v in kept.items() if k in opts.A1111_DEFAULTS}}
    values.update({key: opts.from_setting(key, settings[name]) for key, name in opts.SETTING_OPTIONS.items()})
    values.update({"sd_model_checkpoint": model.title if model else None,
                   "sd_checkpoint_hash": (model.sha256 or "") if model else "",
                   "outdir_samples": str(settings["outputs_dir"])})
    return values


@dataclass
class OptionChanges:
    """What a POST /options asks for, sorted by what Homegrown does with each key."""

    checkpoint: str | None = None  # to load
    settings: dict[str, Any] = field(default_factory=dict)  # Homegrown settings to apply
    kept: dict[str, Any] = field(default_factory=dict)  # to store and echo (REQUEST_OPTIONS among them act)
    no_effect: dict[str, str] = field(default_factory=dict)  # key -> why it changes nothing
    unknown: list[str] = field(default_factory=list)  # keys A1111 does not know: not stored

    def answer(self) -> dict:
        applied = ([] if self.checkpoint is None else ["sd_model_checkpoint"]) + [
            key for key, name in opts.SETTING_OPTIONS.items() if name in self.settings] + [
            key for key in self.kept if key in opts.REQUEST_OPTIONS]
        return {"applied": applied, "stored": [key for key in self.kept if key not in opts.REQUEST_OPTIONS],
                "no_effect": self.no_effect, "unknown": self.unknown}


def option_changes(changes: dict[str, Any]) -> OptionChanges:
    """`POST /options` sorted; UserError (422) naming the option for a wrong value of an option Homegrown uses,
    before anything is applied.

    A key A1111 does not know either is not refused: A1111 itself only stores options of its own table, and
    clients made for an A1111 with extensions send the extensions' options (controlnet's, adetailer's) along with
    the rest, which must not cost them the rest. It is not stored (a typo cannot grow the file) and the answer
    names it under "unknown"."""
    out = OptionChanges()
    for key, value in changes.items():
        if key == "sd_model_checkpoint":
            out.checkpoint = checkpoint_name(value) or ""
        elif key in opts.SETTING_OPTIONS:
            name, setting = opts.to_setting(key, value)
            out.settings[name] = setting
        elif key in opts.REQUEST_OPTIONS:
            out.kept[key] = opts.check_request_option(key, value)
        elif key in opts.READ_ONLY:
            out.no_effect[key] = opts.READ_ONLY[key]
        elif key in opts.A1111_DEFAULTS:
            if not opts.is_json_value(value):
                raise UserError(f"must be a JSON value (no NaN or infinity), got {value!r}", field=key, status=422)
            out.kept[key] = value
            out.no_effect[key] = opts.NO_EFFECT
        else:
            out.unknown.append(key)
    return out


def checkpoint_name(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise UserError("must be a checkpoint name", field="sd_model_checkpoint")
    return value


def vae_name(value: Any) -> str:
    return opts.to_setting("sd_vae", value)[1]


# ---- X/Y/Z plot (A1111's scripts/xyz_grid.py) ---------------------------------------------------

# A1111 1.10's axis list as its txt2img tab has it: script_args' x_type, y_type and z_type index into it.
A1111_XYZ_AXES = (
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R",
    "Prompt order", "Sampler", "Hires sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn",
    "Sigma min", "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma",
    "Schedule rho", "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising",
    "Initial noise multiplier", "Extra noise", "Hires upscaler", "VAE", "Styles", "UniPC Order", "Face restore",
    "Token merging ratio", "Token merging ratio high-res", "Always discard next-to-last sigma",
    "SGM noise multiplier", "Refiner checkpoint", "Refiner switch at", "RNG source", "FP8 mode", "Size",
)
# The script's arguments in the order of its ui() return, with the page's defaults: A1111's API fills a
# shorter script_args from these.
XYZ_ARGS = (
    ("x_type", 1), ("x_values", ""), ("x_values_dropdown", []), ("y_type", 0), ("y_values", ""),
    ("y_values_dropdown", []), ("z_type", 0), ("z_values", ""), ("z_values_dropdown", []), ("draw_legend", True),
    ("include_lone_images", False), ("include_sub_grids", False), ("no_fixed_seeds", False), ("vary_seeds_x", False),
    ("vary_seeds_y", False), ("vary_seeds_z", False), ("margin_size", 0), ("csv_mode", False),
)


@dataclass(frozen=True)
class XyzRequest:
    plan: xyz.GridPlan
    include_lone_images: bool  # A1111's "Include Sub Images": the single images after the grid
    include_sub_grids: bool  # one grid per Z value after the whole grid


def wants_xyz(request: Txt2ImgRequest) -> bool:
    """`script_name` names the X/Y/Z plot (A1111 matches script titles case-insensitively)."""
    return isinstance(request.script_name, str) and request.script_name.strip().lower() == xyz.TITLE.lower()


def xyz_request(request: Txt2ImgRequest, params: GenerationParams, checkpoints,
                upscalers: list[str] | None = None) -> XyzRequest:
    """A1111's positional `script_args` for "x/y/z plot" -> the plan; UserError naming the argument at fault,
    and an axis Homegrown lacks by its A1111 label. `upscalers`: the names `hr_upscaler` may take."""
    args = xyz_args(request.script_args)
    axes = []
    for letter in "xyz":
        axis = xyz.find_axis(_axis_label(args[f"{letter}_type"], letter), letter.upper())
        text, dropdown = args[f"{letter}_values"], args[f"{letter}_values_dropdown"]
        if axis.choices is not None and not args["csv_mode"] and dropdown:
            text = xyz.join_values(dropdown)  # A1111 reads a list axis from its dropdown unless csv_mode
        axes.append((axis.label, text))
    plan = xyz.make_plan(params, axes, checkpoints, draw_legend=args["draw_legend"],
                         no_fixed_seeds=args["no_fixed_seeds"],
                         vary_seeds=(args["vary_seeds_x"], args["vary_seeds_y"], args["vary_seeds_z"]),
                         margin=args["margin_size"] or 0, upscalers=upscalers)
    return XyzRequest(plan, args["include_lone_images"], args["include_sub_grids"])


def xyz_args(values: Any) -> dict[str, Any]:
    """`script_args` by name, A1111's defaults for those not sent, each of the type the script takes."""
    if not isinstance(values, list):
        raise UserError("must be a list, in the order of A1111's X/Y/Z plot arguments", field="script_args")
    if len(values) > len(XYZ_ARGS):
        raise UserError(f"has {len(values)} values; the X/Y/Z plot takes {len(XYZ_ARGS)}: "
                        f"{', '.join(name for name, _ in XYZ_ARGS)}", field="script_args")
    args = {name: values[i] if i < len(values) else default for i, (name, default) in enumerate(XYZ_ARGS)}
    for position, (name, default) in enumerate(XYZ_ARGS):
        value = args[name]
        if name.endswith("_values"):
            value, what = "" if value is None else value, "text"
            ok = isinstance(value, str)
        elif name.endswith("_dropdown"):
            value, what = [] if value is None else value, "a list of texts"
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif isinstance(default, bool):
            value, what = bool(value) if value in (0, 1) else value, "true or false"  # 0/1 too, as Python reads them
            ok = isinstance(value, bool)
        else:
            what = "an axis index or label" if name.endswith("_type") else "a number"
            ok = value is None or (isinstance(value, (int, float, str)) and not isinstance(value, bool))
        if not ok:
            raise UserError(f"must be {what} (script_args[{position}]), got {value!r}", field=name)
        args[name] = value
    return args


def _axis_label(value: Any, letter: str) -> str:
    """An axis type as A1111 sends it (an index into its list) or as a label, -> a label."""
    if value is None:
        return "Nothing"
    if isinstance(value, str) and not value.strip().isdigit():
        return value
    index = int(value) if isinstance(value, (int, str)) else -1
    if not 0 <= index < len(A1111_XYZ_AXES) or isinstance(value, float):
        raise UserError(f"must be 0 to {len(A1111_XYZ_AXES) - 1} (an index into A1111's axis list) or an axis "
                        f"label, got {value!r}", field=f"{letter}_type")
    return A1111_XYZ_AXES[index]

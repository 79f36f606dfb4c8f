"""A1111 requests -> Homegrown requests, and Homegrown results -> A1111 answers: pure functions, no HTTP.

Kept apart from the routes so that A1111's rules (which fields override an infotext, what `info` holds,
how options are named) are tested in-process, without a server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .. import __version__, infotext, xyz
from ..errors import UserError
from ..jobs import GenerationResult
from ..outputs import output_format
from ..params import GenerationParams
from .schemas import OPTION_KEYS, UNSUPPORTED, Txt2ImgRequest


@dataclass(frozen=True)
class Txt2ImgPlan:
    """What an A1111 txt2img request asks Homegrown to do."""

    params: GenerationParams
    output_format: str  # one of outputs.OUTPUT_FORMATS
    save: bool
    restore_checkpoint: bool  # load the previous checkpoint back afterwards (override_settings_restore_afterwards)


def txt2img_plan(request: Txt2ImgRequest, current_vae: str, default_format: str, loras=None,
                 styles=None) -> Txt2ImgPlan:
    """The request as Homegrown runs it; UserError naming the field for what Homegrown cannot do.

    `loras` renames infotext LoRA tags by hash; `styles` (a StyleLibrary) checks the `styles` names (the engine
    applies them) and takes the infotext's styles back out of its prompts."""
    check_supported(request)
    base = GenerationParams()
    if request.infotext:
        base = infotext.to_params(request.infotext, loras=loras, styles=styles)
    overrides = dict(request.override_settings or {})
    unknown = [k for k in overrides if k not in OPTION_KEYS]
    if unknown:
        raise UserError(f"override_settings.{unknown[0]} is not supported; supported: {', '.join(OPTION_KEYS)}",
                        field="override_settings")
    if "CLIP_stop_at_last_layers" in overrides:
        check_option("CLIP_stop_at_last_layers", overrides["CLIP_stop_at_last_layers"])
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
    }
    aliases = {"sampler_name": ("sampler_name", "sampler_index")}
    changes = {name: value for name, value in fields.items()
               if any(field in sent for field in aliases.get(name, (name,)))}
    changes["checkpoint"] = checkpoint_name(overrides.get("sd_model_checkpoint")) or (
        base.checkpoint if request.infotext else None)
    params = base.replace(**changes)
    for name in params.styles if styles is not None else ():
        styles.get(name)  # an unknown style is a 404 naming the styles there are, before any work
    return Txt2ImgPlan(params, fmt, save=request.save_images and not request.do_not_save_samples,
                       restore_checkpoint=request.override_settings_restore_afterwards and bool(params.checkpoint))


def check_supported(request: Txt2ImgRequest) -> None:
    for name, (allowed, why) in UNSUPPORTED.items():
        if name in ("script_name", "script_args") and wants_xyz(request):
            continue
        if getattr(request, name) not in allowed:
            raise UserError(f"{why} (got {getattr(request, name)!r})", field=name)


def txt2img_info(request: Txt2ImgRequest, result: GenerationResult, started: float) -> dict:
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
        "clip_skip": 1, "is_using_inpainting_conditioning": False, "version": f"Homegrown {__version__}",
        "interrupted": result.interrupted, "saved_files": [str(p) for p in result.paths],
        "warnings": result.warnings,
    }


def options(model, settings: dict[str, Any]) -> dict:
    """A1111's `GET /options` from the loaded model (a studio.ModelInfo, or None) and the settings."""
    fmt = settings["output_format"]
    return {"sd_model_checkpoint": model.title if model else None,
            "sd_checkpoint_hash": model.short_hash if model else None,
            "sd_vae": settings["vae"], "CLIP_stop_at_last_layers": 1,
            "samples_format": "jpg" if fmt == "jpeg" else fmt, "outdir_samples": settings["outputs_dir"],
            "samples_save": settings["save_images"]}


def option_changes(changes: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """`POST /options` -> (checkpoint to load or None, settings to apply). Refuses what Homegrown lacks."""
    unknown = [k for k in changes if k not in OPTION_KEYS]
    if unknown:
        raise UserError(f"option {unknown[0]!r} is not supported; supported: {', '.join(OPTION_KEYS)}",
                        field=unknown[0])
    checkpoint, settings = None, {}
    for key, value in changes.items():
        if key == "sd_model_checkpoint":
            checkpoint = checkpoint_name(value) or ""
        elif key == "samples_format":
            settings["output_format"] = output_format(value, field="samples_format")
        elif key == "sd_vae":
            settings["vae"] = vae_name(value)
        else:
            check_option(key, value)
    return checkpoint, settings


def checkpoint_name(value: Any) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise UserError("must be a checkpoint name", field="sd_model_checkpoint")
    return value


def vae_name(value: Any) -> str:
    if value in (None, "", "None", "Automatic"):
        return "Automatic"
    if not isinstance(value, str):
        raise UserError("must be a VAE name", field="sd_vae")
    return value.removesuffix(".safetensors")


def check_option(key: str, value: Any) -> None:
    if key == "CLIP_stop_at_last_layers" and value not in (1, 2):
        raise UserError("must be 1 or 2 (SDXL always uses the penultimate layer, as A1111 does)",
                        field="CLIP_stop_at_last_layers")


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


def xyz_request(request: Txt2ImgRequest, params: GenerationParams, checkpoints) -> XyzRequest:
    """A1111's positional `script_args` for "x/y/z plot" -> the plan; UserError naming the argument at fault,
    and an axis Homegrown lacks by its A1111 label."""
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
                         margin=args["margin_size"] or 0)
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

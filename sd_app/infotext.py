"""A1111's "infotext" (the generation parameters stored in each PNG): its text, and where it lives in an image.

Format, as A1111 writes it, so civitai, A1111's PNG Info and other readers understand our images:

    a photo of a cat
    Negative prompt: blurry
    Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, Seed: 1234, Size: 1024x1024, ...

A value is JSON-quoted only when it holds ",", ":" or a newline. Keys come in A1111's order (`KEY_ORDER`,
from its processing.create_infotext: its own fields, then the extensions' fields as they are added while the
image is made, then `Version`), whatever order the caller's dict has.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from . import rng
from .errors import UserError
from .params import GenerationParams
from .prompts import extract_lora_tags

# A1111's pattern, without its leading `\s*` and with keys of at most 64 characters: as it was, each position
# of a long line without a colon scanned to the line's end (20 KB of text took 6-19 s).
_PARAM = re.compile(r'(\w[\w \-/]{0,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
PNG_KEY = "parameters"


def quote(value: Any) -> str:
    text = format_value(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# A1111's create_infotext: its fields in this order, then `extra_generation_params` in the order they are set
# (LoRA hashes when the networks activate, the refiner's when sampling switches to it), then Version and User.
KEY_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed", "Face restoration", "Size",
    "Model hash", "Model", "FP8 weight", "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength", "Conditional mask weight", "Clip skip",
    "Clip skip SDXL",  # Homegrown's: A1111 applies its global option without writing it, so its images lack it
    "ENSD", "Init image hash", "RNG", "Tiling", "Lora hashes", "TI hashes", "Styles", "Refiner", "Refiner switch at",
)
LAST_KEYS = ("Version", "User")
FLOAT_KEYS = ("CFG scale", "Refiner switch at", "Denoising strength", "Variation seed strength")


def format_value(value: Any) -> str:
    return str(value)  # as A1111: floats keep their decimal ("CFG scale: 7.0"), numbers are never rounded


def ordered(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields in A1111's order (KEY_ORDER, then other keys as given, then LAST_KEYS); floats as floats."""
    rank = {key: number for number, key in enumerate(KEY_ORDER)}
    last = {key: len(KEY_ORDER) + 1 + number for number, key in enumerate(LAST_KEYS)}
    keys = sorted(fields, key=lambda key: rank.get(key, last.get(key, len(KEY_ORDER))))
    return {key: float(fields[key]) if key in FLOAT_KEYS and isinstance(fields[key], int)
            and not isinstance(fields[key], bool) else fields[key] for key in keys}


def build(prompt: str, negative_prompt: str, fields: dict[str, Any]) -> str:
    """The infotext; fields in A1111's order, None values left out."""
    params = ", ".join(f"{k}: {quote(v)}" for k, v in ordered(fields).items() if v is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{params}".strip()


def parse(text: str) -> tuple[str, str, dict[str, str]]:
    """Split infotext into (prompt, negative prompt, {field: value}) like A1111's parser."""
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    fields = {key.strip(): unquote(value.strip()) for key, value in _PARAM.findall(last)}
    return "\n".join(prompt_lines), "\n".join(negative_lines), fields


# What A1111's parse_generation_parameters adds when the text lacks a key: the value A1111 then assumes.
A1111_ASSUMED = (
    ("Clip skip", "1"), ("Hires resize-1", 0), ("Hires resize-2", 0), ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"), ("Hires checkpoint", "Use same checkpoint"), ("Hires prompt", ""),
    ("Hires negative prompt", ""), ("Mask mode", "Inpaint masked"), ("Masked content", "original"),
    ("Inpaint area", "Whole picture"), ("Masked area padding", 32), ("RNG", "GPU"), ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0), ("Schedule min sigma", 0), ("Schedule rho", 0), ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"), ("FP8 weight", "Disable"),
)
_A1111_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")


def a1111_parameters(text: str, styles=None) -> dict[str, Any]:
    """The infotext as A1111's parse_generation_parameters returns it (its API's png-info `parameters`): values as
    text, `WxH` values split into `Key-1`/`Key-2`, the styles found in the prompts taken out (`Styles array`, as its
    default "Apply if any"), Prompt and Negative prompt after the fields, then the defaults A1111 assumes for what
    the text lacks, and its back-compatibility flags for older A1111 versions."""
    prompt, negative, fields = parse(text)
    res: dict[str, Any] = {}
    for key, value in fields.items():
        size = _SIZE.match(value)
        if size is not None:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    found = []
    if styles is not None:
        prompt, negative, found = _find_styles(prompt, negative, styles)
    if found:
        res["Styles array"] = found
    res["Prompt"], res["Negative prompt"] = prompt, negative
    for key, value in A1111_ASSUMED:
        res.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and re.search(r"[(\[]", prompt + negative):  # A1111: when a weight is not 1
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)
    _backcompat(res)
    return res


def _find_styles(prompt: str, negative: str, styles) -> tuple[str, str, list[str]]:
    """A1111's extract_styles_from_prompt: take out every style whose text the prompts hold, until none is left."""
    known, _ = styles.load()
    found: list[str] = []
    while True:
        for name, style in known.items():
            if name in found:
                continue
            inner = style.take_out(prompt, negative)
            if inner is not None and (style.prompt or style.negative_prompt):
                prompt, negative = inner
                found.append(name)
                break
        else:
            return prompt, negative, list(reversed(found))


def _backcompat(res: dict[str, Any]) -> None:
    """A1111's infotext_versions.backcompat: an image made by an older A1111 was made with the old behaviour."""
    version = _A1111_VERSION.match(str(res.get("Version", "")))
    if version is None:
        return
    number = tuple(int(part) for part in version.groups())
    if number < (1, 6, 0) and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if number < (1, 6, 0) and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if number <= (1, 7, 0):  # A1111: before v1.7.0-225
        res["Downcast alphas_cumprod"] = True
    if number < (1, 8, 0) and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True


@dataclass
class Pasted:
    """A request read from an infotext, and what of the text it holds and what not (with why)."""

    params: GenerationParams
    applied: list[str] = field(default_factory=list)  # "Steps: 30", ...
    not_applied: list[tuple[str, str]] = field(default_factory=list)  # ("Clip skip: 2", why)
    is_infotext: bool = True  # False: no parameters line, so the text is only a prompt
    upscalers: list[str] | None = None  # the image upscalers `Hires upscaler` may name (None: the built-ins)


# Fields Homegrown reads but cannot use, and why (a paste says so instead of dropping them without a word).
NOT_SUPPORTED = {
    "VAE": "the VAE is a setting here (Settings → VAE)",
    "Denoising strength": "it belongs to img2img (paste there) or to a hires fix",
    "Face restoration": "face restoration is not supported",
    "ENSD": "sampler noise options are not supported (samplers run with their defaults)",
    "Eta": "sampler noise options are not supported (samplers run with their defaults)",
}
INFORMATIONAL = {"Version", "Model hash", "VAE hash", "Lora hashes", "TI hashes", "Styles"}  # read with another field, or only notes


def to_params(text: str, base: GenerationParams | None = None, loras=None, styles=None) -> GenerationParams:
    """A request from pasted infotext (the API's `infotext`): `read_params` without its report."""
    return read_params(text, base, loras=loras, styles=styles).params


def read_params(text: str, base: GenerationParams | None = None, loras=None, styles=None, checkpoints=None,
                refiners=None, upscalers: list[str] | None = None) -> Pasted:
    """A request from pasted infotext, on top of `base`, and a report of what was applied and what not.

    With a LoRA library, `<lora:...>` tags whose file is known here under another name (found by the hash in
    "Lora hashes") are renamed to the local name, as A1111 does, and tags of LoRAs not here are reported.
    With a style library, the styles named in `Styles` are taken back out of the prompts (`styles.take_out`).
    `checkpoints` and `refiners` (records with `name`, `short_name`, `short_hash`, such as `studio_library.ModelInfo`)
    are what `Model` and `Refiner` may name; without them the names are taken as they are.
    `upscalers` are the image upscalers `Hires upscaler` may name (model files included; None: the built-ins).
    A text without a parameters line is not an infotext: `base` with that text as the prompt, is_infotext False.
    """
    prompt, negative, fields = parse(text)
    base = base or GenerationParams()
    if not fields:
        return Pasted(base.replace(prompt=prompt, negative_prompt=negative), is_infotext=False)
    pasted = Pasted(base, upscalers=upscalers)
    if loras is not None and fields.get("Lora hashes"):
        prompt = _rename_loras_by_hash(prompt, fields["Lora hashes"], loras, pasted)
    pasted.params = base.replace(prompt=prompt, negative_prompt=negative, styles=())
    pasted.applied += ["Prompt"] + (["Negative prompt"] if negative else [])
    _read_styles(pasted, fields, styles)
    _read_numbers(pasted, fields)
    _read_clip_skip(pasted, fields)
    _read_noise(pasted, fields)
    _read_sampler(pasted, fields)
    _read_models(pasted, fields, checkpoints, refiners)
    _read_modes(pasted, fields)
    if loras is not None:
        _check_loras(pasted, loras)
    _not_supported(pasted, fields)
    return pasted


def _try(pasted: Pasted, label: str, **changes) -> bool:
    """Apply the changes if the request stays valid; else report the field with the check's message."""
    trial = pasted.params.replace(**changes)
    try:
        trial.check(upscalers=pasted.upscalers)
    except UserError as err:
        pasted.not_applied.append((label, err.message))
        return False
    pasted.params = trial
    pasted.applied.append(label)
    return True


def _read_numbers(pasted: Pasted, fields: dict[str, str]) -> None:
    for key, attr, kind in (("Steps", "steps", int), ("CFG scale", "cfg_scale", float), ("Seed", "seed", int),
                            ("Refiner switch at", "refiner_switch_at", float), ("Clip skip", "clip_skip", int)):
        if key not in fields:
            continue
        try:
            value = kind(float(fields[key])) if kind is int else kind(fields[key])
        except ValueError:
            pasted.not_applied.append((f"{key}: {fields[key]}", "not a number"))
            continue
        _try(pasted, f"{key}: {fields[key]}", **{attr: value})
    if "Size" in fields:
        size = _SIZE.match(fields["Size"])
        if size is None:
            pasted.not_applied.append((f"Size: {fields['Size']}", "not WIDTHxHEIGHT"))
        else:
            _try(pasted, f"Size: {fields['Size']}", width=int(size.group(1)), height=int(size.group(2)))
    # An image made without tiling says nothing about it: the pasted request is not tiled either.
    tiled = fields.get("Tiling", "False").strip().lower() == "true"
    pasted.params = pasted.params.replace(tiling=tiled)
    if "Tiling" in fields:
        pasted.applied.append(f"Tiling: {fields['Tiling']}")


NOISE_KEYS = ("Variation seed", "Variation seed strength", "Seed resize from", "RNG")


def _read_noise(pasted: Pasted, fields: dict[str, str]) -> None:
    """Variation seed, seed resize and the noise source. Without `RNG` the text was drawn with A1111's default,
    GPU, unless Homegrown 0.1 wrote it: that version always drew on the CPU, and wrote no `RNG`."""
    source = fields.get("RNG")
    if source is None:
        source = "CPU" if fields.get("Version", "").startswith("Homegrown 0.1") else rng.DEFAULT_SOURCE
        pasted.params = pasted.params.replace(randn_source=source)
    else:
        _try(pasted, f"RNG: {source}", randn_source=source.strip())
    if "Variation seed" in fields or "Variation seed strength" in fields:
        label = ", ".join(f"{key}: {fields[key]}" for key in NOISE_KEYS[:2] if key in fields)
        try:
            subseed, strength = int(fields.get("Variation seed", "-1")), float(fields.get("Variation seed strength", 0))
        except ValueError:
            pasted.not_applied.append((label, "not a number"))
        else:
            _try(pasted, label, subseed=subseed, subseed_strength=strength)
    if "Seed resize from" in fields:
        size = _SIZE.match(fields["Seed resize from"])
        if size is None:
            pasted.not_applied.append((f"Seed resize from: {fields['Seed resize from']}", "not WIDTHxHEIGHT"))
        else:
            _try(pasted, f"Seed resize from: {fields['Seed resize from']}", seed_resize_from_w=int(size.group(1)),
                 seed_resize_from_h=int(size.group(2)))


def _read_clip_skip(pasted: Pasted, fields: dict[str, str]) -> None:
    """A text without "Clip skip" was made with 1 (A1111's parser says so too); without "Clip skip SDXL" with
    A1111's default, off."""
    if "Clip skip" not in fields:
        pasted.params = pasted.params.replace(clip_skip=1)
    value = fields.get("Clip skip SDXL", "False")
    if value not in ("True", "False"):
        pasted.not_applied.append((f"Clip skip SDXL: {value}", "must be True or False"))
        return
    pasted.params = pasted.params.replace(sdxl_clip_l_skip=value == "True")
    if "Clip skip SDXL" in fields:
        pasted.applied.append(f"Clip skip SDXL: {value}")


def _read_sampler(pasted: Pasted, fields: dict[str, str]) -> None:
    if "Sampler" not in fields:
        return
    sampler, schedule = fields["Sampler"], fields.get("Schedule type", "Automatic")
    label = f"Sampler: {sampler}" + (f", Schedule type: {schedule}" if "Schedule type" in fields else "")
    if _try(pasted, label, sampler_name=sampler, scheduler=schedule) or "Schedule type" not in fields:
        return
    pasted.not_applied.pop()  # the sampler alone may still be one Homegrown has
    if _try(pasted, f"Sampler: {sampler}", sampler_name=sampler, scheduler="Automatic"):
        pasted.not_applied.append((f"Schedule type: {schedule}", _check_message(pasted.params.replace(
            scheduler=schedule))))
    else:
        pasted.not_applied[-1] = (label, pasted.not_applied[-1][1])


def _check_message(params: GenerationParams) -> str:
    try:
        params.check()
    except UserError as err:
        return err.message
    return ""


def _read_models(pasted: Pasted, fields: dict[str, str], checkpoints, refiners) -> None:
    if "Model" in fields:
        local = _local_model(fields["Model"], fields.get("Model hash"), checkpoints)
        if local is not None:
            pasted.params = pasted.params.replace(checkpoint=local)
            pasted.applied.append(f"Model: {fields['Model']}" + (f" (your {local})" if local != fields["Model"] else ""))
        else:
            now = pasted.params.checkpoint or "the loaded one"
            pasted.not_applied.append((f"Model: {fields['Model']}", f"not in your checkpoint folder (by name or "
                                       f"hash): the checkpoint stays {now}"))
    refiner = None
    if "Refiner" in fields:
        title = re.match(r"^(.*?)\s*(?:\[([0-9a-fA-F]+)\])?$", fields["Refiner"])
        refiner = _local_model(title.group(1), title.group(2), refiners)
        if refiner is not None:
            pasted.applied.append(f"Refiner: {fields['Refiner']}")
        else:
            pasted.not_applied.append((f"Refiner: {fields['Refiner']}",
                                       "not in your checkpoint folder (by name or hash): made without a refiner"))
    pasted.params = pasted.params.replace(refiner_checkpoint=refiner)  # no Refiner field: made without one


def _local_model(name: str, short_hash: str | None, models) -> str | None:
    """The local checkpoint an infotext's name (and hash) means; without a list, the name as it is."""
    if models is None:
        return name or None
    wanted = name.removesuffix(".safetensors")
    for model in models:
        if wanted in (model.name, model.short_name):
            return model.name
    for model in models:
        if short_hash and model.short_hash and model.short_hash.lower() == short_hash.lower():
            return model.name
    return None


def _read_styles(pasted: Pasted, fields: dict[str, str], styles) -> None:
    if "Styles" not in fields:
        return  # the prompts hold everything: no style is applied on top
    names = [name.strip() for name in fields["Styles"].split(",") if name.strip()]
    if styles is None:
        pasted.not_applied.append((f"Styles: {fields['Styles']}", "their text stays in the prompt"))
        return
    taken = styles.take_out(pasted.params.prompt, pasted.params.negative_prompt, names)
    pasted.params = pasted.params.replace(prompt=taken.prompt, negative_prompt=taken.negative_prompt,
                                          styles=taken.styles)
    if taken.styles:
        pasted.applied.append(f"Styles: {', '.join(taken.styles)}")
    pasted.not_applied += [(f"Style {name}", why) for name, why in taken.kept]


def _check_loras(pasted: Pasted, loras) -> None:
    from .lora_library import resolve_tags

    for tag in extract_lora_tags(pasted.params.prompt)[1]:
        try:
            resolve_tags(loras, [tag])
        except UserError as err:
            pasted.not_applied.append((f"<lora:{tag.name}:{tag.weight:g}>", f"{err.message}. The tag stays in the "
                                       "prompt: Generate refuses it until the LoRA is in your LoRA folder"))


def _read_modes(pasted: Pasted, fields: dict[str, str]) -> None:
    """The hires fix (its `Hires ...` keys) or, on an img2img request, the img2img keys (`Mask blur`, ...)."""
    from . import hires, img2img

    spec, applied, refused = hires.from_infotext(fields)
    if spec is not None:
        if applied:
            _try(pasted, ", ".join(applied), hires=spec)
        pasted.not_applied += refused
        return
    pasted.params = pasted.params.replace(hires=None)  # no Hires keys: made without a hires fix
    if pasted.params.img2img is not None:
        spec, applied, refused = img2img.from_infotext(fields, pasted.params.img2img)
        if applied:
            _try(pasted, ", ".join(applied), img2img=spec)
        pasted.not_applied += refused


MODE_KEYS = {"Denoising strength", "Mask blur", "Mask blur x", "Mask blur y", "Inpaint area", "Masked area padding",
             "Mask mode", "Masked content", "Noise multiplier"}


def _not_supported(pasted: Pasted, fields: dict[str, str]) -> None:
    used = {"Steps", "CFG scale", "Seed", "Refiner switch at", "Size", "Sampler", "Schedule type", "Model",
            "Refiner", "Clip skip", "Clip skip SDXL", "Tiling", *NOISE_KEYS} | INFORMATIONAL
    if any(key.startswith("Hires ") for key in fields):
        used |= {key for key in fields if key.startswith("Hires ")} | {"Denoising strength"}
    elif pasted.params.img2img is not None:
        used |= MODE_KEYS
    for key, value in fields.items():
        if key in used:
            continue
        pasted.not_applied.append((f"{key}: {value}", NOT_SUPPORTED.get(key, "not a setting Homegrown has")))


def _rename_loras_by_hash(prompt: str, hashes: str, loras, pasted: Pasted) -> str:
    for entry in hashes.split(","):
        name, _, short_hash = entry.partition(":")
        name, short_hash = name.strip(), short_hash.strip()
        if not name or not re.fullmatch(r"[0-9a-fA-F]{6,64}", short_hash):
            continue
        local = loras.find_by_hash(short_hash)
        if local is not None and local.stem != name:
            prompt = re.sub(rf"<lora:{re.escape(name)}(?=[:>])", lambda m: f"<lora:{local.name}", prompt)
            pasted.applied.append(f"LoRA {name} as your {local.name} (same file hash)")
    return prompt


def read_image(path_or_image) -> str | None:
    """The infotext stored in an image (PNG chunk or EXIF UserComment), or None."""
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    text = image.info.get(PNG_KEY)
    if isinstance(text, str):
        return text
    comment = image.getexif().get_ifd(0x8769).get(_USER_COMMENT) or image.getexif().get(_USER_COMMENT)
    if isinstance(comment, bytes) and comment.startswith(b"UNICODE\0"):
        return comment[8:].decode("utf-16-be", errors="replace")
    if isinstance(comment, bytes) and comment.startswith(b"ASCII\0\0\0"):
        return comment[8:].decode("ascii", errors="replace")
    return None


_USER_COMMENT = 0x9286  # EXIF tag


def write_image(image: Image.Image, text: str | None, f, fmt: str = "png",
                chunks: dict[str, str] | None = None) -> None:
    """Encode an image with its infotext into a file object; `chunks` are more PNG text chunks (A1111's
    `postprocessing` and `extras` on an upscaled image), which JPEG and WebP have no place for."""
    if fmt == "png":
        meta = PngInfo()
        if text:
            meta.add_text(PNG_KEY, text)
        for key, value in (chunks or {}).items():
            if value and key != PNG_KEY:
                meta.add_text(key, value)
        image.save(f, format="PNG", pnginfo=meta)
        return
    exif = Image.Exif()
    if text:
        # EXIF UserComment with the "UNICODE" marker and UTF-16 text, as A1111 (piexif) writes it.
        exif[_USER_COMMENT] = b"UNICODE\0" + text.encode("utf-16-be")
    image.convert("RGB").save(f, format=fmt.upper(), quality=95, exif=exif.tobytes())

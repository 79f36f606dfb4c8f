"""A1111's "infotext" (the generation parameters stored in each PNG): its text, and where it lives in an image.

Format, as A1111 writes it, so civitai, A1111's PNG Info and other readers understand our images:

    a photo of a cat
    Negative prompt: blurry
    Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 1024x1024, ...

A value is JSON-quoted only when it holds ",", ":" or a newline.
"""

from __future__ import annotations

import json
import re
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .params import GenerationParams

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


def format_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # "CFG scale: 7", as in A1111's own examples
    return str(value)


def build(prompt: str, negative_prompt: str, fields: dict[str, Any]) -> str:
    """The infotext; fields in A1111's order, None values left out."""
    params = ", ".join(f"{k}: {quote(v)}" for k, v in fields.items() if v is not None)
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


def to_params(text: str, base: GenerationParams | None = None, loras=None) -> GenerationParams:
    """A request from pasted infotext: the fields Homegrown knows, on top of `base` (defaults).

    With a LoRA library, `<lora:...>` tags whose file is known here under another name (found by the
    hash in "Lora hashes") are renamed to the local name, as A1111 does.
    """
    prompt, negative, fields = parse(text)
    if loras is not None and fields.get("Lora hashes"):
        prompt = _rename_loras_by_hash(prompt, fields["Lora hashes"], loras)
    changes: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative}

    def number(key: str, kind):
        try:
            return kind(float(fields[key])) if kind is int else kind(fields[key])
        except (KeyError, ValueError):
            return None

    for key, attr, kind in (("Steps", "steps", int), ("CFG scale", "cfg_scale", float), ("Seed", "seed", int),
                            ("Refiner switch at", "refiner_switch_at", float)):
        value = number(key, kind)
        if value is not None:
            changes[attr] = value
    size = _SIZE.match(fields.get("Size", ""))
    if size:
        changes["width"], changes["height"] = int(size.group(1)), int(size.group(2))
    if "Sampler" in fields:
        changes["sampler_name"] = fields["Sampler"]
        changes["scheduler"] = fields.get("Schedule type", "Automatic")
    if "Model" in fields:
        changes["checkpoint"] = fields["Model"]
    if "Refiner" in fields:
        changes["refiner_checkpoint"] = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", fields["Refiner"])
    return (base or GenerationParams()).replace(**changes)


def _rename_loras_by_hash(prompt: str, hashes: str, loras) -> str:
    for entry in hashes.split(","):
        name, _, short_hash = entry.partition(":")
        name, short_hash = name.strip(), short_hash.strip()
        if not name or not re.fullmatch(r"[0-9a-fA-F]{6,64}", short_hash):
            continue
        local = loras.find_by_hash(short_hash)
        if local is not None and local.stem != name:
            prompt = re.sub(rf"<lora:{re.escape(name)}(?=[:>])", lambda m: f"<lora:{local.name}", prompt)
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


def write_image(image: Image.Image, text: str | None, f, fmt: str = "png") -> None:
    """Encode an image with its infotext into a file object."""
    if fmt == "png":
        meta = PngInfo()
        if text:
            meta.add_text(PNG_KEY, text)
        image.save(f, format="PNG", pnginfo=meta)
        return
    exif = Image.Exif()
    if text:
        # EXIF UserComment with the "UNICODE" marker and UTF-16 text, as A1111 (piexif) writes it.
        exif[_USER_COMMENT] = b"UNICODE\0" + text.encode("utf-16-be")
    image.convert("RGB").save(f, format=fmt.upper(), quality=95, exif=exif.tobytes())

"""Reading the small JSON files people write by hand (presets, styles): any fault is a UserError naming the file."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`, or UserError naming the file and what is wrong (unreadable, not JSON, not an
    object), so a bad file is reported by name and the others still load."""
    where = path.name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{where}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: must hold a JSON object")
    return data

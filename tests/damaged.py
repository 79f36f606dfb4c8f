"""Damaged .safetensors files for fault tests: a good file with only its JSON header changed (issue 13's inputs)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def with_header(source: Path, target: Path, change) -> Path:
    """Copy `source` to `target` with `change(header)` applied to its header; the tensor bytes stay as they were."""
    data = Path(source).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    change(header)
    text = json.dumps(header).encode()
    Path(target).write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])
    return Path(target)


def metadata_as_list(source: Path, target: Path) -> Path:
    """`__metadata__` as a list of [key, value] pairs instead of an object."""
    def change(header):
        header["__metadata__"] = [[k, v] for k, v in header.get("__metadata__", {"format": "pt"}).items()]
    return with_header(source, target, change)


def short_data_offsets(source: Path, target: Path) -> Path:
    """The first tensor's `data_offsets` with its begin only."""
    def change(header):
        first = next(name for name in sorted(header) if name != "__metadata__")
        header[first]["data_offsets"] = header[first]["data_offsets"][:1]
    return with_header(source, target, change)

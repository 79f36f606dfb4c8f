"""Memory figures in A1111's shape (`GET /sdapi/v1/memory`), read from /proc: no psutil, and torch only when the
model stack has already imported it (asking for memory never costs the 10 s import).

A1111's own meaning is kept: `ram.used` is this process's resident memory and `ram.free` the rest of the machine's
total; `cuda` has the device's free/used/total and torch's allocator counters, or `{"error": ...}`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def memory_report() -> dict:
    return {"ram": _ram(), "cuda": _cuda()}


def _ram() -> dict:
    try:
        total = _kib(Path("/proc/meminfo"), "MemTotal")
        used = _kib(Path(f"/proc/{os.getpid()}/status"), "VmRSS")
    except (OSError, ValueError) as err:  # not Linux, or /proc not mounted
        return {"error": f"memory figures are read from /proc, which this system lacks ({err})"}
    return {"free": total - used, "used": used, "total": total}


def _kib(path: Path, key: str) -> int:
    """A `Key:  123 kB` line of a /proc file, in bytes."""
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"{path} has no {key}")


def _cuda() -> dict:
    torch = sys.modules.get("torch")
    if torch is None:
        return {"error": "unavailable (the model stack is still loading)"}
    try:
        if not torch.cuda.is_available():
            return {"error": "unavailable"}
        free, total = torch.cuda.mem_get_info()
        stats = torch.cuda.memory_stats()

        def pair(name: str) -> dict:
            return {"current": stats.get(f"{name}.all.current", 0), "peak": stats.get(f"{name}.all.peak", 0)}

        return {"system": {"free": free, "used": total - free, "total": total}, "active": pair("active_bytes"),
                "allocated": pair("allocated_bytes"), "reserved": pair("reserved_bytes"),
                "inactive": pair("inactive_split_bytes"),
                "events": {"retries": stats.get("num_alloc_retries", 0), "oom": stats.get("num_ooms", 0)}}
    except Exception as err:  # a driver error is a figure we cannot give, never a failed request
        return {"error": str(err)}

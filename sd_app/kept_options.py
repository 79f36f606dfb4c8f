"""Values that clients store here for other programs' options (A1111's `POST /options`): a JSON object in a file,
written atomically, read at start. Which keys may be kept, and what they mean, is the caller's table
(`api/a1111_options.py`); this only keeps them. A damaged file is set aside and starts empty: these values are
echoes, never worth a failed start.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class KeptOptions:
    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._values: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        if not self.path or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                return data
        except (OSError, ValueError, RecursionError):
            pass
        aside = self.path.with_name(f"{self.path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        log.warning("%s could not be read; it was moved to %s and the kept options start empty", self.path, aside)
        try:
            self.path.replace(aside)
        except OSError:
            pass
        return {}

    def all(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._values)

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._values.get(key, default)

    def update(self, changes: dict[str, Any]) -> None:
        with self._lock:
            self._values.update(changes)
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_name(self.path.name + ".tmp")
                tmp.write_text(json.dumps(self._values, indent=1, ensure_ascii=False), encoding="utf-8")
                os.replace(tmp, self.path)

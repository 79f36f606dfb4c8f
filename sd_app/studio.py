"""The running app's objects in one place, and the few operations both front ends (UI and API) share.

`app.py` builds one `Studio` and hands it to the UI and the API; nothing here knows Gradio or HTTP.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import downloads
from .auth import Credentials
from .encoding import count_tokens
from .engine import Engine, EngineOptions, Job
from .errors import UserError
from .loading import load_tokenizers
from .lora import LoraLibrary
from .models import AUTOMATIC_VAE, CheckpointLibrary, HashCache, VaeLibrary
from .presets import PresetLibrary
from .settings import SettingsStore


@dataclass
class Studio:
    settings: SettingsStore
    engine: Engine
    loras: LoraLibrary
    presets: PresetLibrary
    credentials: Credentials = field(default_factory=Credentials)
    offline: bool = False
    demo: bool = False
    jobs: dict[str, Job] = field(default_factory=dict)  # the running job of each UI session
    start_preset: str | None = None
    _tokenizer: object = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: SettingsStore, data_dir: str | Path, presets: PresetLibrary,
               credentials: Credentials | None = None, offline: bool = False, demo: bool = False) -> "Studio":
        hashes = HashCache(Path(data_dir) / "hashes.json")
        loras = LoraLibrary(settings.folder("lora"), hashes)
        engine = Engine(CheckpointLibrary(settings.folder("ckpt"), hashes), engine_options(settings), loras=loras,
                        vaes=VaeLibrary(settings.folder("vae"), hashes))
        return cls(settings, engine, loras, presets, credentials or Credentials(), offline, demo)

    # ---- checkpoints ------------------------------------------------------------------------

    def checkpoint_names(self, kind: str | None = None) -> list[str]:
        """Names of the checkpoints found; with kind ("sdxl-base"/"sdxl-refiner") only those."""
        names = []
        for checkpoint in self.engine.checkpoints.list():
            if kind is not None:
                try:
                    if checkpoint.kind() != kind:
                        continue
                except (UserError, OSError, ValueError):
                    continue
            names.append(checkpoint.name)
        return names

    def load_startup_checkpoint(self, wanted: str | None = None) -> str | None:
        """Load the checkpoint asked for (flag or setting), else the first SDXL base found; None if there is none."""
        wanted = wanted or self.settings.get("default_checkpoint") or None
        if wanted:
            return self.engine.load_checkpoint(wanted).checkpoint.name
        bases = self.checkpoint_names("sdxl-base")
        if not bases:
            return None
        return self.engine.load_checkpoint(bases[0]).checkpoint.name

    def current_checkpoint(self) -> str | None:
        return self.engine.base.checkpoint.name if self.engine.base else None

    # ---- settings ---------------------------------------------------------------------------

    def vae_names(self) -> list[str]:
        return ["Automatic", *self.engine.vaes.list()]

    def apply_settings(self, changes: dict) -> str:
        vae = changes.get("vae")
        if vae not in AUTOMATIC_VAE:
            self.engine.vaes.get(vae)  # an unknown VAE is refused before anything is saved
        before = self.settings.all()
        changed = self.settings.update(changes)
        if not changed:
            return "Nothing changed."
        if any(name.endswith("_dir") for name in changed):
            hashes = self.engine.checkpoints.hashes
            self.engine.checkpoints = CheckpointLibrary(self.settings.folder("ckpt"), hashes)
            self.loras = LoraLibrary(self.settings.folder("lora"), hashes)
            self.engine.loras = self.loras
            self.engine.vaes = VaeLibrary(self.settings.folder("vae"), hashes)
        try:
            return self.engine.configure(engine_options(self.settings))
        except UserError:
            self.settings.update({name: before[name] for name in changed})  # keep the file matching what runs
            raise

    # ---- prompts ------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizers()[0]
        return count_tokens(self._tokenizer, text or "", self.settings.get("prompt_syntax"))

    # ---- downloads ----------------------------------------------------------------------------

    def download(self, what: str, repo_id: str, filename: str, revision: str | None = None,
                 overwrite: bool = False, progress=None) -> Path:
        if self.offline:
            raise UserError("Homegrown runs with --offline: downloads are switched off", status=403)
        folder = {"lora": self.settings.folder("lora"), "checkpoint": self.settings.folder("ckpt")}[what]
        return downloads.download(repo_id, filename, folder, revision, overwrite, progress)


def engine_options(settings: SettingsStore) -> EngineOptions:
    return EngineOptions(
        device=settings.get("device"), dtype=settings.get("dtype"), memory_mode=settings.get("memory_mode"),
        vae_tiling=settings.get("vae_tiling"), prompt_syntax=settings.get("prompt_syntax"),
        preview_every=settings.get("preview_every"), save_images=settings.get("save_images"),
        outputs_dir=Path(settings.get("outputs_dir")), output_format=settings.get("output_format"),
        filename_pattern=settings.get("filename_pattern"), embed_metadata=settings.get("embed_metadata"),
        vae=settings.get("vae"), compile=settings.get("compile"))

"""The studio's listing part (a base of `Studio`): the checkpoints, VAEs and embeddings found, the model loaded
now, token counts and memory, as plain dataclasses for the page and the API.

Kept apart from `studio.py` so that the seam stays one screenful per concern: these read the libraries and the
loaded pipelines and change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelInfo:
    """A checkpoint as the front ends show it."""

    name: str  # below the checkpoint folder, without extension: what requests and the page use
    title: str  # A1111's title: `name.safetensors [hash10]`
    short_name: str  # the file's own name, as the infotext's `Model:`
    short_hash: str | None  # A1111's 10-digit model hash, when known
    sha256: str | None
    filename: str
    problem: str | None = None  # why the file cannot be used (a damaged header), or None


@dataclass(frozen=True)
class EmbeddingList:
    """The textual-inversion embeddings as A1111's API lists them: name -> details, for the usable ones and the
    skipped ones (SD 1.x, damaged, made for other text-encoder widths)."""

    loaded: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)


class StudioLibrary:
    # ---- models -----------------------------------------------------------------------------

    def checkpoint_names(self, kind: str | None = None) -> list[str]:
        """Names of the checkpoints found; with kind ("sdxl-base"/"sdxl-refiner") only those."""
        library = self.checkpoint_library
        # A damaged file is none of the kinds (its kind is None); checkpoint_problems says why.
        return [c.name for c in library.list() if kind is None or library.kind(c) == kind]

    def checkpoints(self) -> list[ModelInfo]:
        """Every checkpoint found, with the hashes already known (listing never hashes a 7 GB file) and what
        is wrong with the damaged ones."""
        library = self.checkpoint_library
        found = []
        for checkpoint in library.list():
            try:
                sha = None if checkpoint.is_folder else library.hashes.cached(checkpoint.path)
            except OSError:
                sha = None  # gone or unreadable since the folder was read; problem() says which
            found.append(ModelInfo(checkpoint.name, checkpoint.title(sha[:10] if sha else None), checkpoint.short_name,
                                   sha[:10] if sha else None, sha, str(checkpoint.path.resolve()),
                                   library.problem(checkpoint)))
        return found

    def checkpoint_problems(self) -> list[str]:
        """What is wrong with each damaged checkpoint file, for the page to show beside the list."""
        library = self.checkpoint_library
        return [problem for checkpoint in library.list() if (problem := library.problem(checkpoint)) is not None]

    def loaded_model(self) -> ModelInfo | None:
        """The base checkpoint loaded now, if any."""
        loaded = self.pipelines.base if self.pipelines is not None else None
        if loaded is None:
            return None
        checkpoint = loaded.checkpoint
        try:  # known once the short hash is (the same sha256); never hashes here
            sha = None if checkpoint.is_folder else self.checkpoint_library.hashes.cached(checkpoint.path)
        except OSError:
            sha = None
        return ModelInfo(checkpoint.name, checkpoint.title(loaded.short_hash), checkpoint.short_name,
                         loaded.short_hash or None, sha, str(checkpoint.path.resolve()))

    def current_checkpoint(self) -> str | None:
        loaded = self.loaded_model()
        return loaded.name if loaded else None

    def vae_names(self) -> list[str]:
        return ["Automatic", *self.vae_library.list()]

    def vae_problems(self) -> dict[str, str]:
        """VAE name -> why its file cannot be used, for the damaged ones."""
        return self.vae_library.problems()

    def memory(self) -> dict:
        """RAM and GPU memory, in A1111's shape (`{"ram": ..., "cuda": ...}`)."""
        from .memory_report import memory_report

        return memory_report()

    # ---- prompts ------------------------------------------------------------------------------

    def embeddings(self) -> EmbeddingList:
        """The textual inversion embeddings in A1111's `/sdapi/v1/embeddings` shape: `loaded` (usable with the
        loaded checkpoint, or SDXL ones while none is loaded) and `skipped` (SD 1.x, damaged, other widths), each
        name -> {step, sd_checkpoint, sd_checkpoint_name, shape, vectors}."""
        base = self.pipelines.base if self.pipelines is not None else None
        widths = None
        if base is not None:
            widths = {"clip_l": base.pipe.text_encoder.config.hidden_size,
                      "clip_g": base.pipe.text_encoder_2.config.hidden_size}
        found = {"loaded": {}, "skipped": {}}
        for info in self.embedding_library.list():
            usable = info.problem is None and (widths is None or info.widths == widths)
            found["loaded" if usable else "skipped"][info.name] = {
                "step": info.step, "sd_checkpoint": info.sd_checkpoint, "sd_checkpoint_name": info.sd_checkpoint_name,
                "shape": info.shape, "vectors": info.vectors}
        return EmbeddingList(found["loaded"], found["skipped"])

    def embedding_list(self) -> list:
        """The embedding files with what the page shows of them (cards next to the LoRAs)."""
        return self.embedding_library.list()

    def count_tokens(self, text: str) -> int:
        from .encoding import count_tokens
        from .loading import load_tokenizers

        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizers()[0]
        # An embedding's name counts as its vectors, as in A1111 (one listing of the folder per count).
        embeddings = {info.name: info.vectors for info in self.embedding_library.list() if not info.problem}
        return count_tokens(self._tokenizer, text or "", self.settings.get("prompt_syntax"), embeddings)

"""Textual inversion embeddings in the text encoders: a name in the prompt becomes the embedding's vectors.

As in A1111, names are found among the prompt's tokens (so matching ignores case and stops at word ends) and the
embedding's vectors take the place of the name's tokens, one token position per vector: `clip_l` in CLIP-L,
`clip_g` in OpenCLIP-G. Prompt weights apply to those positions like to any token's. The text encoders and
tokenizers are not changed: while a prompt is encoded, each name's tokens become placeholder ids (beyond the
vocabulary) in compel's token lists, a hook on each encoder maps them to token 0 for the model (its pooling finds
the end token by the largest id) and writes the vectors over the token embeddings at their positions.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from compel.embeddings_provider import BaseTextualInversionManager, EmbeddingsProvider

from .embedding_library import EmbeddingInfo, EmbeddingLibrary, ti_hashes
from .errors import UserError

PLACEHOLDER_BASE = 1 << 24  # far past any CLIP vocabulary (49408)
KEYS = ("clip_l", "clip_g")  # an SDXL embedding's tensor for text_encoder, text_encoder_2


def name_lookup(named_ids) -> dict[int, list]:
    """(a name's token ids, its value) pairs -> first token id -> [(token ids, value)], longest names first
    (A1111's ids_lookup)."""
    lookup: dict[int, list] = {}
    for ids, value in named_ids:
        if ids:
            lookup.setdefault(ids[0], []).append((ids, value))
    for matches in lookup.values():
        matches.sort(key=lambda match: len(match[0]), reverse=True)
    return lookup


def name_at(token_ids: list[int], position: int, lookup: dict[int, list]) -> tuple[list[int], object] | None:
    """The (name's token ids, value) of `lookup` whose name starts at `position` of `token_ids`, or None."""
    return next(((ids, value) for ids, value in lookup.get(token_ids[position], ())
                 if token_ids[position:position + len(ids)] == ids), None)


class _Manager(BaseTextualInversionManager):
    """compel's hook for one encoder: called on each fragment's token ids."""

    def __init__(self, substitution: "Substitution", index: int):
        self.substitution, self.index = substitution, index

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
        return self.substitution.expand(self.index, token_ids)


class Substitution:
    """The embeddings of one encoding: names -> placeholders -> vectors, for both text encoders of a pipeline."""

    def __init__(self, pipe):
        self.encoders = (pipe.text_encoder, pipe.text_encoder_2)
        self.tokenizers = (pipe.tokenizer, pipe.tokenizer_2)
        self.managers = (_Manager(self, 0), _Manager(self, 1))
        self.field = "prompt"  # named in messages
        self.library: EmbeddingLibrary | None = None
        self._name_ids: tuple[dict[str, list[int]], ...] = ({}, {})  # per tokenizer: name -> its token ids
        self._lookup: tuple[dict, ...] = ({}, {})
        self._reset()

    def _reset(self) -> None:
        self._rows: tuple[list[torch.Tensor], ...] = ([], [])  # per encoder: each used embedding's vectors
        self._tables: list[torch.Tensor | None] = [None, None]
        self._slots: dict[object, int] = {}  # embedding path -> its first placeholder
        self.first_slots: set[int] = set()
        self._used: list[tuple[str, str]] = []  # (name, short hash), in order of use
        self._pending: list[tuple[torch.Tensor, torch.Tensor] | None] = [None, None]

    @contextmanager
    def active(self, library: EmbeddingLibrary | None, field: str = "prompt"):
        """Names of `library`'s embeddings are replaced while the block runs; without a library nothing is."""
        self.library, self.field = library, field
        self._reset()
        infos = library.list() if library is not None else []
        self._lookup = tuple(self._lookup_for(i, infos) for i in range(2))
        handles = []
        if infos:
            for index, encoder in enumerate(self.encoders):
                handles.append(encoder.register_forward_pre_hook(self._pre_hook(index), with_kwargs=True))
                token_embedding = encoder.get_input_embeddings()  # the token table, however the model nests it
                handles.append(token_embedding.register_forward_hook(self._embedding_hook(index), prepend=True))
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self.library, self._lookup = None, ({}, {})
            self._pending = [None, None]

    def ti_hashes(self) -> str | None:
        return ti_hashes(self._used)

    def _lookup_for(self, index: int, infos: list[EmbeddingInfo]) -> dict[int, list]:
        """First token id -> [(token ids, embedding)], longest names first (A1111's ids_lookup)."""
        known = self._name_ids[index]
        missing = [info.name for info in infos if info.name not in known]
        if missing:
            ids = self.tokenizers[index](missing, add_special_tokens=False, truncation=False)["input_ids"]
            known.update(zip(missing, ids))
        return name_lookup((known[info.name], info) for info in infos)

    def expand(self, index: int, token_ids: list[int]) -> list[int]:
        lookup = self._lookup[index]
        if not lookup:
            return token_ids
        out, position = [], 0
        while position < len(token_ids):
            found = name_at(token_ids, position, lookup)
            if found is None:
                out.append(token_ids[position])
                position += 1
            else:
                out.extend(self._placeholders(found[1]))
                position += len(found[0])
        return out

    def _placeholders(self, info: EmbeddingInfo) -> list[int]:
        if info.path not in self._slots:
            if info.problem:
                raise UserError(f"the embedding {info.name!r} cannot be used: {info.problem}", field=self.field)
            widths = [encoder.config.hidden_size for encoder in self.encoders]
            self.library.check_widths(info, *widths)
            vectors = self.library.vectors(info)
            slot = sum(rows.shape[0] for rows in self._rows[0])
            for index, key in enumerate(KEYS):
                self._rows[index].append(vectors[key])
                self._tables[index] = None
            self._slots[info.path] = slot
            self.first_slots.add(PLACEHOLDER_BASE + slot)
            self._used.append((info.name, self.library.short_hash(info)))
        first = PLACEHOLDER_BASE + self._slots[info.path]
        return list(range(first, first + info.vectors))

    def _table(self, index: int) -> torch.Tensor:
        if self._tables[index] is None:
            self._tables[index] = torch.cat(self._rows[index])
        return self._tables[index]

    def _pre_hook(self, index: int):
        def hook(module, args, kwargs):
            in_kwargs = "input_ids" in kwargs
            ids = kwargs["input_ids"] if in_kwargs else args[0]
            placed = ids >= PLACEHOLDER_BASE
            if not bool(placed.any()):
                self._pending[index] = None
                return None
            self._pending[index] = (placed, ids[placed] - PLACEHOLDER_BASE)
            ids = torch.where(placed, torch.zeros_like(ids), ids)  # token 0, as A1111 puts in an embedding's place
            if in_kwargs:
                return args, {**kwargs, "input_ids": ids}
            return (ids, *args[1:]), kwargs

        return hook

    def _embedding_hook(self, index: int):
        def hook(module, args, output):
            pending, self._pending[index] = self._pending[index], None
            if pending is None:
                return None
            placed, rows = pending
            output = output.clone()
            output[placed] = self._table(index).to(output.device, output.dtype)[rows.to(output.device)]
            return output

        return hook


class _KeepVectorsTogether(EmbeddingsProvider):
    """compel's provider, splitting long prompts into chunks as before, but never inside an embedding's vectors:
    as in A1111, an embedding that does not fit in what is left of a chunk starts the next one."""

    substitution: Substitution

    def _find_next_best_split_point(self, token_ids, max_length, *args, **kwargs) -> int:
        visible = [0 if token >= PLACEHOLDER_BASE else token for token in token_ids]
        split = super()._find_next_best_split_point(visible, max_length, *args, **kwargs)
        start = split
        while 0 < start < len(token_ids) and token_ids[start] >= PLACEHOLDER_BASE \
                and token_ids[start] not in self.substitution.first_slots:
            start -= 1
        return start if start > 0 else split


def keep_vectors_together(substitution: Substitution, *providers: EmbeddingsProvider) -> None:
    for provider in providers:
        provider.__class__ = _KeepVectorsTogether  # compel builds its own provider; this only adds the override
        provider.substitution = substitution

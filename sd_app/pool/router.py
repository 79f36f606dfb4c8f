"""Which waiting piece of work runs on which free worker: fair between users, then affinity.

Pure bookkeeping, no Ray and no torch: the pool (`pool.py`) and the queueing simulation (`simulate.py`) run
this same code, so the simulated figures are those of the real routing.

Fairness: each user's pieces run in the order they were queued, and the next piece is taken from the user with
the fewest pieces running (ties: the one who queued first), so a 48-image grid does not hold everyone else back.
Affinity: a free worker that already has a piece's checkpoint and LoRA set loaded takes it first, even past a
fairer user's piece, since a switch costs seconds (a checkpoint) or a noticeable share of an image (LoRAs).
A piece is passed over at most `max_passed_over` times; then it goes to the next free worker, whatever that
has loaded, so affinity never starves anyone.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

from ..prompts import extract_lora_tags


@dataclass(frozen=True)
class Setup:
    """What a worker must have loaded for a request: switching either costs time."""

    checkpoint: str | None
    loras: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, prompt: str, checkpoint: str | None) -> "Setup":
        _, tags = extract_lora_tags(prompt)
        return cls(checkpoint, tuple(sorted((tag.name, tag.weight) for tag in tags)))


@dataclass(eq=False)
class Waiting:
    """A piece of work in the queue."""

    user: str
    setup: Setup
    arrived: int  # queue order: earlier first within a user, and between users at equal fairness
    passed_over: int = 0
    payload: object = None  # what the caller routes (the pool's piece); the router never reads it


@dataclass(eq=False)
class Free:
    """A worker with nothing to run."""

    name: object
    setup: Setup | None  # what it has loaded (None: nothing yet)
    payload: object = None


@dataclass
class Router:
    affinity: bool = True  # False: the next fair piece goes to a free worker drawn at random
    max_passed_over: int = 4
    rng: random.Random = field(default_factory=random.Random)

    def assign(self, waiting: list[Waiting], free: list[Free],
               running: dict[str, int] | None = None) -> list[tuple[Waiting, Free]]:
        """Pairs (piece, worker) to start now. `running`: pieces running per user (for fairness)."""
        waiting, free = list(waiting), list(free)
        running = dict(running or {})
        pairs = []
        while waiting and free:
            heads = self._fair_heads(waiting, running)
            piece, worker = self._pick(heads, free)
            for passed in heads[:heads.index(piece)]:
                passed.passed_over += 1
            pairs.append((piece, worker))
            waiting.remove(piece)
            free.remove(worker)
            running[piece.user] = running.get(piece.user, 0) + 1
        return pairs

    def _fair_heads(self, waiting: list[Waiting], running: dict[str, int]) -> list[Waiting]:
        """Each user's first piece, the fairest first."""
        heads: dict[str, Waiting] = {}
        for piece in sorted(waiting, key=lambda w: w.arrived):
            heads.setdefault(piece.user, piece)
        return sorted(heads.values(), key=lambda w: (running.get(w.user, 0), w.arrived))

    def _pick(self, heads: list[Waiting], free: list[Free]) -> tuple[Waiting, Free]:
        first = heads[0]
        if not self.affinity:
            return first, self.rng.choice(free)
        if first.passed_over < self.max_passed_over:
            for piece in heads:  # an exact match anywhere among the fair heads: no switch at all
                for worker in free:
                    if worker.setup == piece.setup:
                        return piece, worker
        return first, self._best_worker(first, free, heads)

    @staticmethod
    def _best_worker(piece: Waiting, free: list[Free], heads: list[Waiting]) -> Free:
        """The cheapest switch for this piece: none, else the same checkpoint (only LoRAs change); among those, a
        worker whose setup no other waiting piece wants, and the most common among the free ones (what it loses
        is worth least: other free workers still have it)."""
        wanted = {head.setup for head in heads if head is not piece}
        common = Counter(w.setup for w in free)
        return min(free, key=lambda w: (w.setup != piece.setup,
                                        w.setup is None or w.setup.checkpoint != piece.setup.checkpoint,
                                        w.setup in wanted, w.setup is not None and -common[w.setup]))

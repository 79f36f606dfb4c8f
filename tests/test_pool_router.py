"""The pool's routing: fairness between users, affinity for what a worker has loaded, no starving."""

from __future__ import annotations

import random

from sd_app.pool.router import Free, Router, Setup, Waiting

A = Setup("base", (("style", 1.0),))
B = Setup("base", (("detail", 0.8),))
PLAIN = Setup("base")


def test_a_setup_is_the_checkpoint_and_the_sorted_lora_tags():
    assert Setup.of("<lora:b:0.5> a cat <lora:a>", "base") == Setup("base", (("a", 1.0), ("b", 0.5)))
    assert Setup.of("<lora:a> <lora:b:0.5>", "base") == Setup.of("<lora:b:0.5>, <lora:a:1>", "base")
    assert Setup.of("a cat", "base") == PLAIN != Setup.of("a cat", "other")


def test_a_worker_that_has_the_setup_takes_the_piece():
    waiting = [Waiting("u1", A, 0), Waiting("u2", B, 1)]
    free = [Free("w0", A), Free("w1", B)]
    pairs = {w.user: f.name for w, f in Router().assign(waiting, free)}
    assert pairs == {"u1": "w0", "u2": "w1"}
    randomly = Router(affinity=False, rng=random.Random(3))
    assert any({w.user: f.name for w, f in randomly.assign(waiting, free)} != pairs for _ in range(20))


def test_fairness_the_user_with_fewest_running_goes_first():
    # u1 queued four pieces first (a big batch), u2 one piece later: with one worker free, u2's piece goes,
    # since u1 already runs one.
    waiting = [Waiting("u1", PLAIN, i) for i in range(4)] + [Waiting("u2", PLAIN, 4)]
    (piece, _), = Router().assign(waiting, [Free("w0", PLAIN)], running={"u1": 1})
    assert piece.user == "u2"
    # Each user's own pieces keep their order
    pairs = Router().assign(waiting, [Free(f"w{i}", PLAIN) for i in range(5)])
    assert [w.arrived for w, _ in pairs if w.user == "u1"] == [0, 1, 2, 3]


def test_affinity_jumps_the_queue_but_never_starves_a_piece():
    router = Router(max_passed_over=2)
    first = Waiting("u1", A, 0)  # fairest, but no free worker has its LoRAs
    waiting = [first] + [Waiting(f"u{i}", B, i) for i in range(2, 6)]
    order = []
    while waiting:
        (piece, _), = router.assign(waiting, [Free("w", B)])
        order.append(piece.user)
        waiting.remove(piece)
    assert order.index("u1") == 2  # passed over twice for a worker with B loaded, then it goes


def test_the_cheapest_switch_for_a_piece_no_worker_matches():
    waiting = [Waiting("u1", Setup("other"), 0), Waiting("u2", A, 1)]
    free = [Free("w0", A), Free("w1", Setup("other", (("x", 1.0),))), Free("w2", None)]
    pairs = {w.user: f.name for w, f in Router(max_passed_over=0).assign(waiting, free)}
    assert pairs["u1"] == "w1"  # the same checkpoint: only the LoRAs change

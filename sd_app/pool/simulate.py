"""A queueing simulation of the pool, toward many GPUs: N workers, users arriving at rate λ, each asking for one of
a few LoRA sets; random routing against affinity routing, with the pool's own `Router`.

Discrete events, no sleeping: a request costs `image_s` on a worker, plus `lora_switch_s` when the worker had
another LoRA set applied (plus `checkpoint_switch_s` for another checkpoint). The bench measures those costs on
the demo engine (`python -m sd_app.bench --cases pool`) or takes them as given. Pure Python, no Ray, no torch.
"""

from __future__ import annotations

import heapq
import random
import statistics
from dataclasses import dataclass

from .router import Free, Router, Setup, Waiting


@dataclass(frozen=True)
class Costs:
    image_s: float  # one image on a worker that has the request's setup loaded
    lora_switch_s: float  # applying another LoRA set (taking the old one off included)
    checkpoint_switch_s: float = 0.0  # loading another checkpoint (not in the default mix: one checkpoint)


@dataclass(frozen=True)
class Workload:
    load: float = 0.8  # arrivals as a share of the pool's capacity at `image_s` per image: λ = load · N / image_s
    users: int = 24
    lora_sets: int = 6  # set 0 is no LoRA
    loyalty: float = 0.8  # the chance a user asks for their own usual set (else any set)
    requests: int = 3000
    seed: int = 1


@dataclass(frozen=True)
class Outcome:
    workers: int
    routing: str
    rate: float  # λ, requests per second
    p50_wait: float  # seconds from arrival to start on a worker
    p95_wait: float
    utilisation: float  # busy share of the workers' time, switches included
    useful: float  # the share spent on images (utilisation minus switching)
    switches: float  # LoRA (or checkpoint) switches per request


def requests(workload: Workload, workers: int, costs: Costs) -> list[tuple[float, str, Setup]]:
    """(arrival time, user, setup): Poisson arrivals at λ, each user mostly loyal to one LoRA set."""
    rng = random.Random(workload.seed)
    rate = workload.load * workers / costs.image_s
    sets = [Setup("base")] + [Setup("base", ((f"lora{i}", 1.0),)) for i in range(1, workload.lora_sets)]
    usual = {f"user{u}": sets[u % len(sets)] for u in range(workload.users)}
    now, out = 0.0, []
    for _ in range(workload.requests):
        now += rng.expovariate(rate)
        user = f"user{rng.randrange(workload.users)}"
        out.append((now, user, usual[user] if rng.random() < workload.loyalty else rng.choice(sets)))
    return out


def simulate(workers: int, costs: Costs, workload: Workload, affinity: bool) -> Outcome:
    router = Router(affinity=affinity, rng=random.Random(workload.seed + 1))
    arrivals = requests(workload, workers, costs)
    events = [(t, 0, n) for n, (t, _, _) in enumerate(arrivals)]  # (time, 0 arrival / 1 done, request or worker)
    heapq.heapify(events)
    free = [Free(number, None) for number in range(workers)]
    waiting: list[Waiting] = []
    running: dict[str, int] = {}
    waits, busy, switching, switches, end = [], 0.0, 0.0, 0, 0.0
    while events:
        now, kind, what = heapq.heappop(events)
        if kind == 0:
            _, user, setup = arrivals[what]
            waiting.append(Waiting(user, setup, what, payload=now))
        else:
            worker, user = what
            free.append(worker)
            running[user] -= 1
            end = now
        for piece, worker in router.assign(waiting, free, running):
            waiting.remove(piece)
            free.remove(worker)
            switch = _switch_cost(worker.setup, piece.setup, costs)
            switches += switch > 0
            worker.setup = piece.setup
            busy += costs.image_s + switch
            switching += switch
            waits.append(now - piece.payload)
            running[piece.user] = running.get(piece.user, 0) + 1
            heapq.heappush(events, (now + costs.image_s + switch, 1, (worker, piece.user)))
    capacity = workers * end
    cuts = statistics.quantiles(waits, n=20)
    return Outcome(workers, "affinity" if affinity else "random", workload.load * workers / costs.image_s,
                   statistics.median(waits), cuts[18], busy / capacity, (busy - switching) / capacity,
                   switches / len(waits))


def _switch_cost(had: Setup | None, wants: Setup, costs: Costs) -> float:
    if had == wants:
        return 0.0
    if had is None or had.checkpoint != wants.checkpoint:
        return costs.checkpoint_switch_s + (costs.lora_switch_s if wants.loras else 0.0)
    return costs.lora_switch_s


def table(costs: Costs, workload: Workload, sizes=(1, 4, 16, 64)) -> list[Outcome]:
    return [simulate(n, costs, workload, affinity) for n in sizes for affinity in (False, True)]


def markdown(outcomes: list[Outcome]) -> str:
    rows = ["| workers | routing | λ (req/s) | p50 wait (s) | p95 wait (s) | GPU busy | on images | switches/req |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for o in outcomes:
        rows.append(f"| {o.workers} | {o.routing} | {o.rate:.3g} | {o.p50_wait:.3g} | {o.p95_wait:.3g} | "
                    f"{o.utilisation:.0%} | {o.useful:.0%} | {o.switches:.2f} |")
    return "\n".join(rows)

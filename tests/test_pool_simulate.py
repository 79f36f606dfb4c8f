"""The queueing simulation: the pool's router over simulated workers (figures: `python -m sd_app.bench --cases pool`)."""

from __future__ import annotations

from sd_app.pool.simulate import Costs, Workload, markdown, simulate, table

COSTS = Costs(image_s=1.0, lora_switch_s=0.5)
WORK = Workload(requests=600)


def test_affinity_switches_less_and_waits_less_than_random_routing():
    for workers in (1, 4):
        random_, affinity = simulate(workers, COSTS, WORK, False), simulate(workers, COSTS, WORK, True)
        assert affinity.switches < random_.switches
        assert affinity.p95_wait < random_.p95_wait
        assert 0 < affinity.useful <= affinity.utilisation <= 1


def test_without_switch_costs_routing_changes_nothing_but_the_order():
    free = Costs(1.0, 0.0)
    random_, affinity = simulate(4, free, WORK, False), simulate(4, free, WORK, True)
    assert random_.utilisation == random_.useful and affinity.utilisation == affinity.useful
    assert abs(random_.utilisation - affinity.utilisation) < 0.01  # the same work, the same busy share


def test_the_table_has_both_routings_for_each_size():
    outcomes = table(COSTS, Workload(requests=200), sizes=(1, 2))
    assert [(o.workers, o.routing) for o in outcomes] == [(1, "random"), (1, "affinity"), (2, "random"), (2, "affinity")]
    assert markdown(outcomes).count("\n") == 5

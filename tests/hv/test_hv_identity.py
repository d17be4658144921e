"""hv's instance ids come from its random source: fresh per run, replayable from a seed."""

from __future__ import annotations

import random

from hv import HvConfig, Hypervisor


def instances(hv: Hypervisor) -> list[str]:
    return [hv.instance, *(d.instance for d in hv.domains.values())]


def test_instances_differ_between_runs_by_default() -> None:
    a, b = Hypervisor(HvConfig(nr_gfns=8)), Hypervisor(HvConfig(nr_gfns=8))
    try:
        assert len(set(instances(a) + instances(b))) == 4
        assert all(len(i) == 32 and int(i, 16) >= 0 for i in instances(a))
    finally:
        a.close()
        b.close()


def test_a_seeded_source_gives_the_same_instances() -> None:
    runs = []
    for seed in (7, 7, 8):
        hv = Hypervisor(HvConfig(nr_gfns=8), rng=random.Random(seed))
        try:
            hv.create_domain(nr_gfns=4, vcpus=1)
            runs.append(instances(hv))
        finally:
            hv.close()
    assert runs[0] == runs[1] != runs[2]
    assert len(set(runs[0])) == 3  # hv and each domain: distinct

"""The chaos soak's own logic: a seed gives one schedule and one stream; the oracle's
counters follow the engine's rules (a repeated key counts once per occurrence)."""

from __future__ import annotations

from array import array
from pathlib import Path

from tests.soak.faults import KINDS, schedule
from tests.soak.stream import ABSENT, NO_METADATA, ChainBuilder, Content, GroupState, Plan, Rates


def test_the_same_seed_gives_the_same_fault_schedule_and_every_kind_comes_first() -> None:
    first, again = schedule(7, 600, 10, 3), schedule(7, 600, 10, 3)
    assert [f.as_dict() for f in first] == [f.as_dict() for f in again]
    assert [f.kind for f in first[:len(KINDS)]] == list(KINDS)
    assert schedule(8, 600, 10, 3)[0].as_dict() != first[0].as_dict()


def test_the_same_seed_gives_the_same_stream_content(tmp_path: Path) -> None:
    def contents(seed: int) -> list[tuple[int, ...]]:
        plan = Plan(seed, 120, Rates(max_rows=5000), tmp_path, 65536)
        out = []
        for event in plan.events:
            if event.chain is not None:
                for step in ChainBuilder(event.chain, plan.rates).build():
                    assert step.content is not None
                    out.append(tuple(step.content.keys) + tuple(step.content.versions or ()))
        return out

    assert contents(3) == contents(3)
    assert contents(3) != contents(4)


def test_the_oracle_counts_new_same_changed_and_repeated_keys_as_the_engine_does() -> None:
    group = GroupState("g", "d")
    first = group.apply(Content(array("i", [0, 1, 2, 2, -1]), array("i", [0, 0, 5, 6, 0])))
    # key 2 twice: inserted once and updated once (superseded), the blank row failed
    assert (first.total, first.failed, first.inserted, first.updated, first.unchanged) == \
        (5, 1, 3, 1, 0)
    second = group.apply(Content(array("i", [0, 1, 3]), array("i", [0, 9, 0])))
    assert (second.inserted, second.updated, second.unchanged) == (1, 1, 1)
    ids = group.apply(Content(array("i", [0, 4]), None, node_type=1))
    assert (ids.inserted, ids.updated, ids.unchanged) == (1, 1, 0)
    assert group.meta[4] == NO_METADATA and group.meta[0] == 0 and group.types[0] == 1
    assert ABSENT not in group.meta[:5]

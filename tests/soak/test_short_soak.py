"""The chaos soak, short: about 90 s, a fixed seed, 2 daemons, every kind of fault."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.soak.faults import KINDS

SEED = 11


def test_a_short_soak_with_every_kind_of_fault_ends_with_no_anomaly(
        soak: Callable[..., dict[str, Any]]) -> None:
    report = soak(minutes=1.0, seed=SEED, daemons=2, fault_every=5, max_rows=20_000,
                  quiet_max=180)
    injected = report["faults"]["by_kind"]
    assert all(injected[kind] >= 1 for kind in KINDS), injected
    assert report["work"]["jobs completed"] > 20
    assert report["anomalies"] == [], report["anomalies"]

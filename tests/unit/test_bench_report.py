"""The benchmark suite's verdicts and its saved results (benchmarks/report.py): pure logic."""

from __future__ import annotations

from pathlib import Path

import orjson

from benchmarks.harness import Result
from benchmarks.report import B_NAME, load, verdicts, with_ratios


def _run(fresh_cpu_s: float) -> list[Result]:
    return with_ratios([
        Result(B_NAME, "baseline", 1_000_000, 8.0),
        Result("seed design (500/batch, temp table, 4 thr)", "baseline", 1_000_000, 16.0),
        Result("naive executemany (1,000/txn)", "baseline", 1_000_000, 40.0),
        Result("fresh import", "scenario", 1_000_000, 10.0, client_cpu_s=fresh_cpu_s,
               client_peak_rss_mb=190.0, new_row_versions=2_000_000),
        Result("re-import unchanged", "scenario", 1_000_000, 5.0, new_row_versions=3),
    ])


def _verdict(results: list[Result], target: str) -> dict:
    return next(v for v in verdicts(results) if v["target"] == target)


def test_verdicts_judge_each_target_from_the_same_run() -> None:
    results = _run(fresh_cpu_s=1.2)
    assert _verdict(results, "fresh import: >= 0.6 B") == {
        "target": "fresh import: >= 0.6 B", "measured": 0.8, "met": True}
    assert _verdict(results, "fresh import: >= 1.5x seed design")["measured"] == 1.6
    assert _verdict(results, "fresh import: >= 3x naive")["measured"] == 4.0
    assert _verdict(results, "fresh import: client CPU <= 1.5 s per 1M rows")["met"] is True
    assert _verdict(results, "re-import unchanged: no new row versions")["met"] is False
    slow = _run(fresh_cpu_s=1.6)
    assert _verdict(slow, "fresh import: client CPU <= 1.5 s per 1M rows") == {
        "target": "fresh import: client CPU <= 1.5 s per 1M rows", "measured": 1.6, "met": False}


def test_a_saved_run_loads_back_with_the_same_verdicts(tmp_path: Path) -> None:
    results = _run(fresh_cpu_s=1.4)
    saved = tmp_path / "run.json"
    saved.write_bytes(orjson.dumps({
        "date": "2026-11-29T10:46:31+00:00", "machine": {"cpu": "x", "cores": 2},
        "postgres": "18.6", "results": [r.as_dict() for r in results],
        "targets": verdicts(results), "profile": None, "a later field": 1}))
    info, loaded, profile = load(saved)
    assert [r.as_dict() for r in loaded] == [r.as_dict() for r in results]
    assert verdicts(loaded) == verdicts(results)
    assert info["postgres"] == "18.6" and "results" not in info and profile is None


def test_the_large_import_is_judged_against_b_of_its_own_file() -> None:
    from benchmarks.report import big_b_name, large_ratios

    results = [*_run(fresh_cpu_s=1.0),
               Result(big_b_name(10000000), "baseline", 10000000, 160.0),
               Result("fresh import 10,000,000 rows", "scenario", 10000000, 200.0)]
    with_ratios(results)
    assert results[-1].ratio_b == 0.4  # against B of 1M rows (125k rows/s)
    large_ratios(results, 10_000_000)
    assert results[-1].ratio_b == 0.8  # against B of the same 10M rows (62.5k rows/s)
    assert next(r for r in results if r.name == "fresh import").ratio_b == 0.8  # 1M: as was


def test_client_cpu_is_also_told_as_a_multiple_of_the_same_runs_read_floor() -> None:
    from benchmarks.baselines import FLOOR_NAME
    from benchmarks.report import client_floor_ratios

    results = [*_run(fresh_cpu_s=0.9),
               Result(FLOOR_NAME, "baseline", 1000000, 0.3, client_cpu_s=0.3),
               Result("fresh import 10,000,000 rows", "scenario", 10000000, 150.0,
                      client_cpu_s=7.5)]
    assert client_floor_ratios(results) == [
        "fresh import: 0.90 s = 3.00x the floor (0.30 s)",
        "fresh import 10,000,000 rows: 7.50 s = 2.50x the floor (3.00 s)"]
    assert client_floor_ratios(results[:-2]) == []  # no floor measured: nothing claimed

"""The suite's report: ratios to B, the verdicts against the targets, tables, chart.

``benchmarks/run.py`` measures and saves the JSON; this module measures nothing: it sets
each result's ratio to the B of the same run, judges the targets of issue 6, prints the
tables, draws the PNG, and loads a saved run's JSON back (``run.py --from-json``).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks import baselines, dry_run, profile_import
from benchmarks.harness import Result

B_NAME = "B: COPY, 3 indexes"
# Targets of issue 6: scenario name prefix -> minimum ratio to B.
RATIO_TARGETS = {"fresh import": 0.6, "re-import unchanged": 0.8, "re-import 100% changed": 0.35}
# Issue 17, scenario 6: the fresh import against C★ (the schema's own limit), small table.
CSTAR_TARGETS = {"fresh import": 0.85}
CPU_TARGET_PER_M = 1.5  # client CPU seconds per 1M rows
RSS_TARGET_MB = 300
DAEMON_P50_TARGET_MS = 200
# Issue 17, scenario 1 (mixed load): small-job p95 while the large jobs run, and the
# large jobs' rows/s mixed over alone.
MIXED_P95_TARGET_MS = 300
MIXED_KEEP_TARGET = 0.9
# Issue 17, scenario 3: the fresh import into the 20M-row tables, over B into them.
BIG_TARGET = 0.95
# Issue 17, scenario 2: rows/s with 2 and 3 daemons over one daemon's.
DAEMONS_KEEP_TARGET = 0.95


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def table(results: list[Result]) -> str:
    """The result table (markdown, readable on a terminal too)."""
    head = ("| scenario | rows | s | rows/s | MB/s gz | x B | x C★ | client CPU s "
            "| CPU s/1M rows | client peak RSS MB | server CPU s | WAL MB | new row versions "
            "| dead versions |")
    lines = [head, "|" + "---|" * 14]
    for r in results:
        cpu_m = r.client_cpu_s / r.rows * 1e6 if r.client_cpu_s is not None and r.rows else None
        name = r.name if r.ok else f"{r.name} (FAILED)"
        lines.append(
            f"| {name} | {r.rows:,} | {r.seconds:.2f} | {r.rows_per_s:,.0f} | {r.mb_per_s:.2f} "
            f"| {_fmt(r.ratio_b, '.2f')} | {_fmt(r.ratio_cstar, '.2f')} "
            f"| {_fmt(r.client_cpu_s, '.2f')} | {_fmt(cpu_m, '.2f')} "
            f"| {_fmt(r.client_peak_rss_mb, '.0f')} | {_fmt(r.server_cpu_s, '.1f')} "
            f"| {_fmt(None if r.wal_bytes is None else r.wal_bytes / 1e6, '.0f')} "
            f"| {_fmt(r.new_row_versions, ',')} | {_fmt(r.dead_tuples, ',')} |")
    return "\n".join(lines)


def daemon_table(results: list[Result]) -> str:
    """The daemon step's own figures."""
    lines = [("| daemon scenario | jobs | wall s | jobs/s | p50 ms | p95 ms | max ms | rows/s "
              "| x B | x C★ | daemon+workers CPU s | peak RSS MB daemon / workers | ok |"),
             "|" + "---|" * 13]
    for r in results:
        if r.kind != "daemon" or r.params.get("several"):  # those: daemons_table
            continue
        p = r.params
        rss = (f"{p.get('peak_daemon_rss_mb', p.get('daemon_rss_mb'))} / "
               f"{p.get('peak_workers_rss_mb', p.get('workers_rss_mb'))}")
        lines.append(f"| {r.name} | {p.get('jobs')} | {r.seconds:.2f} | {p.get('jobs_per_s')} "
                     f"| {p.get('p50_ms')} | {p.get('p95_ms')} | {p.get('max_ms')} "
                     f"| {r.rows_per_s:,.0f} | {_fmt(r.ratio_b, '.2f')} "
                     f"| {_fmt(r.ratio_cstar, '.2f')} "
                     f"| {_fmt(r.client_cpu_s, '.2f')} | {rss} | {'yes' if r.ok else 'NO'} |")
    return "\n".join(lines)


def mixed_results(figures: dict[str, Any], file_bytes: int) -> list[Result]:
    """The mixed-load step's figures (``mixed_load.measure``) as result rows, per round:
    the large jobs alone, the same jobs with small ones meanwhile, the small jobs."""
    out = []
    for n, r in enumerate(figures["rounds"]):
        a, m = r["alone"], r["mixed"]
        large, small = m["large"], m["small"]
        count, rows = a["jobs"], a["rows_each"]
        tag = f" (round {n + 1})" if len(figures["rounds"]) > 1 else ""
        for name, phase, fig in (("alone", a, a), ("with small jobs meanwhile", m, large)):
            res = Result(f"mixed load: {count} x {rows:,}-row jobs, {name}{tag}", "daemon",
                         count * rows, fig["wall_s"] or 0.0, count * file_bytes,
                         client_cpu_s=phase.get("client_cpu_s"),
                         server_cpu_s=phase.get("server_cpu_s"),
                         wal_bytes=int(phase.get("wal_mb", 0) * 1e6) or None,
                         params={**fig, "mixed": "large", "phase": name,
                                 "executor": figures["executor"]},
                         ok=fig["completed"] == count)
            if phase is m:
                res.params["keep"] = r["keep"]
                res.notes = f"keeps {r['keep']} of its rows/s alone"
            out.append(res)
        out.append(Result(
            f"mixed load: {small['sent']} small jobs ({small['ids']} IDs) paced "
            f"{small['rate']:g}/s while they run{tag}", "daemon", small["sent"] * small["ids"],
            0.0, params={**small, "small": True, "mixed": "small",
                         "executor": figures["executor"]},
            notes=f"{small['jobs']} of {small['sent']} sent while a large job ran",
            ok=small["completed"] == small["sent"]))
    return out


def daemons_results(figures: list[dict[str, Any]], file_bytes: int) -> list[Result]:
    """The daemons step's figures (``daemons.measure``) as result rows, one per count."""
    out = []
    for f in figures:
        out.append(Result(
            f"{f['jobs']} x {f['rows_each']:,}-row jobs through {f['daemons']} daemon(s)",
            "daemon", f["jobs"] * f["rows_each"], f["wall_s"], f["jobs"] * file_bytes,
            server_cpu_s=f["server_cpu_s"], wal_bytes=int(f["wal_mb"] * 1e6) or None,
            params={**f, "several": True}, ok=f["completed"] == f["jobs"],
            notes=f"x{f['vs_first']} of one daemon's rows/s (mean)"))
    return out


def daemons_table(results: list[Result]) -> str:
    """The daemons step: rows/s against one daemon, connections and lock waits."""
    lines = [("| daemons | rows/s | x one daemon | x B | x C★ | jobs per daemon "
              "| connections peak / mean | peak by application | lock waits backend-s "
              "(peak at once) | ungranted locks peak | lease waits | server CPU s |"),
             "|" + "---|" * 12]
    for r in results:
        p = r.params
        if not p.get("several"):
            continue
        apps = ", ".join(f"{k or '(bench)'} {v}" for k, v in p["connections_peak_by_app"].items())
        lines.append(f"| {p['daemons']} | {r.rows_per_s:,.0f} | {p['vs_first']} "
                     f"| {_fmt(r.ratio_b, '.2f')} | {_fmt(r.ratio_cstar, '.2f')} "
                     f"| {p['jobs_per_daemon']} | {p['connections_peak']} / "
                     f"{p['connections_mean']} | {apps} | {p['lock_wait_backend_s']} "
                     f"({p['lock_waiting_peak']}) | {p['ungranted_locks_peak']} "
                     f"| {p['lease_waits']} | {_fmt(r.server_cpu_s, '.1f')} |")
    return "\n".join(lines)


def with_ratios(results: list[Result]) -> list[Result]:
    """Set ratio_b and ratio_cstar on every result from the B and C★ of the same run."""
    b = next((r for r in results if r.name == B_NAME), None)
    c = next((r for r in results if r.name == baselines.C_STAR_NAME and r.ok), None)
    for r in results:
        if not r.ok or r.name == baselines.FLOOR_NAME or r.kind == "dry-run":
            continue  # no database: not a load rate
        if b and b.rows_per_s:
            r.ratio_b = round(r.rows_per_s / b.rows_per_s, 3)
        if c and c.rows_per_s:
            r.ratio_cstar = round(r.rows_per_s / c.rows_per_s, 3)
    return results


def big_b_name(rows: int) -> str:
    return f"{B_NAME}, {rows:,} rows"


def large_ratios(results: list[Result], rows: int) -> None:
    """The large import's ratio to B of the same large file (B slows too as its indexes
    outgrow the cache), when the run measured it; B of 1M rows otherwise."""
    big_b = next((r for r in results if r.name == big_b_name(rows) and r.ok), None)
    if not rows or big_b is None or not big_b.rows_per_s:
        return
    for r in results:
        if r.kind == "scenario" and r.rows == rows and r.ok:
            r.ratio_b = round(r.rows_per_s / big_b.rows_per_s, 3)


def all_ratios(results: list[Result], large_rows: int) -> None:
    """Every ratio of a finished run: to B, the large import's to B of its own file, the
    sweep's to B of the sweep's rows; none for the small daemon jobs."""
    with_ratios([r for r in results if r.kind not in ("sweep", "big")])  # big: its own
    large_ratios(results, large_rows)
    for r in results:
        if r.kind == "daemon" and r.params.get("small"):
            r.ratio_b = r.ratio_cstar = None  # 5 IDs a job: per-job overhead, not a load rate
    swept = [r for r in results if r.kind == "sweep"]
    sweep_b_rate = next((r.rows_per_s for r in swept if r.name.startswith("B on")), 0)
    for r in swept:
        if sweep_b_rate and r.ok:
            r.ratio_b = round(r.rows_per_s / sweep_b_rate, 3)


def client_floor_ratios(results: list[Result]) -> list[str]:
    """Each 1M-row-or-more import's client CPU over the floor of the same run: the share of
    the client's CPU that is the engine's own, comparable between machines."""
    floor = next((r for r in results if r.name == baselines.FLOOR_NAME and r.client_cpu_s), None)
    if floor is None:
        return []
    per_row = floor.client_cpu_s / floor.rows
    return [f"{r.name}: {r.client_cpu_s:.2f} s = {r.client_cpu_s / (per_row * r.rows):.2f}x "
            f"the floor ({per_row * r.rows:.2f} s)"
            for r in results if r.kind == "scenario" and r.ok and r.client_cpu_s
            and r.rows >= 1_000_000]


def _scenario_verdicts(r: Result, seed: Result | None,
                       naive: Result | None) -> list[tuple[str, Any, bool]]:
    """The targets one scenario of 1M rows or more is judged by."""
    out = []
    for prefix, minimum in RATIO_TARGETS.items():
        if r.name == prefix or r.name.startswith(prefix + " ["):
            out.append((f"{r.name}: >= {minimum} B", r.ratio_b,
                        bool(r.ratio_b and r.ratio_b >= minimum)))
    for prefix, minimum in CSTAR_TARGETS.items():
        if (r.name == prefix or r.name.startswith(prefix + " [")) and r.rows <= 1_000_000:
            out.append((f"{r.name}: >= {minimum} C★ (small table)", r.ratio_cstar,
                        bool(r.ratio_cstar and r.ratio_cstar >= minimum)))
    if r.name.startswith("re-import unchanged"):
        out.append((f"{r.name}: no new row versions", r.new_row_versions,
                    r.new_row_versions == 0))
    if r.name.startswith("fresh import") and r.ok:
        if seed and seed.rows_per_s and seed.rows == r.rows:  # same file only
            ratio = round(r.rows_per_s / seed.rows_per_s, 2)
            out.append((f"{r.name}: >= 1.5x seed design", ratio, ratio >= 1.5))
        if naive and naive.rows_per_s and naive.rows == r.rows:
            ratio = round(r.rows_per_s / naive.rows_per_s, 2)
            out.append((f"{r.name}: >= 3x naive", ratio, ratio >= 3))
        if r.client_cpu_s is not None:
            per_m = round(r.client_cpu_s / r.rows * 1e6, 2)
            out.append((f"{r.name}: client CPU <= {CPU_TARGET_PER_M} s per 1M rows", per_m,
                        per_m <= CPU_TARGET_PER_M))
    if r.rows >= 5_000_000 and r.client_peak_rss_mb is not None:
        out.append((f"{r.name}: peak RSS < {RSS_TARGET_MB} MB", r.client_peak_rss_mb,
                    r.client_peak_rss_mb < RSS_TARGET_MB))
    return out


def verdicts(results: list[Result]) -> list[dict[str, Any]]:
    """Each target of issues 6 and 17 that this run measured, met or not."""
    seed = next((r for r in results if r.name.startswith("seed design")), None)
    naive = next((r for r in results if r.name.startswith("naive")), None)
    checks: list[tuple[str, Any, bool]] = []
    for r in results:
        if r.kind == "scenario" and r.rows >= 1_000_000:  # smaller runs are smoke tests
            checks += _scenario_verdicts(r, seed, naive)
    for r in results:
        if r.kind == "big" and r.name.startswith("fresh import") and r.rows >= 1_000_000:
            checks.append((f"{r.name}: >= {BIG_TARGET} of B into the same tables", r.ratio_b,
                           r.ok and r.ratio_b is not None and r.ratio_b >= BIG_TARGET))
        if r.params.get("several") and r.params["daemons"] > 1:
            keep = r.params.get("vs_first")
            checks.append((f"{r.name}: >= {DAEMONS_KEEP_TARGET} of one daemon's rows/s", keep,
                           r.ok and keep is not None and keep >= DAEMONS_KEEP_TARGET))
        elif r.params.get("mixed") == "small":
            p95 = r.params.get("p95_ms")
            checks.append((f"{r.name}: p95 < {MIXED_P95_TARGET_MS} ms", p95,
                           r.ok and p95 is not None and p95 < MIXED_P95_TARGET_MS))
        elif r.params.get("mixed") == "large" and "keep" in r.params:
            keep = r.params["keep"]
            checks.append((f"{r.name}: >= {MIXED_KEEP_TARGET} of the rows/s alone", keep,
                           r.ok and keep is not None and keep >= MIXED_KEEP_TARGET))
        elif r.kind == "dry-run" and r.rows >= 1_000_000:
            ratio = r.params["wall_ratio"]
            checks.append((f"{r.name}, {r.rows:,} rows: wall <= {dry_run.TARGET}x the client "
                           f"floor's (CPU {r.params['cpu_ratio']}x)", ratio,
                           ratio <= dry_run.TARGET))
        elif r.kind == "daemon" and r.params.get("small") and r.params.get("p50_ms") is not None:
            checks.append((f"{r.name}: median latency < {DAEMON_P50_TARGET_MS} ms",
                           r.params["p50_ms"], r.ok and r.params["p50_ms"] < DAEMON_P50_TARGET_MS))
    return [{"target": t, "measured": value, "met": met} for t, value, met in checks]


def _bars(ax: Any, results: list[Result]) -> None:
    """rows/s of every baseline and scenario, B as a line."""
    main = [r for r in results if r.kind in ("baseline", "scenario")
            and r.name != baselines.FLOOR_NAME]  # no database: not a load rate
    names = [r.name for r in main][::-1]
    values = [r.rows_per_s for r in main][::-1]
    colors = ["#888888" if r.kind == "baseline" else "#2a6fdb" for r in main][::-1]
    ax.barh(names, values, color=colors)
    b = next((r for r in main if r.name == B_NAME), None)
    if b:
        ax.axvline(b.rows_per_s, color="#d62728", linestyle="--", label="B")
        ax.legend()
    ax.set_xlabel("rows/s")
    ax.set_title("rows/s per scenario (grey: baselines)")
    ax.tick_params(axis="y", labelsize=7)


def _sweep_lines(ax: Any, results: list[Result], swept: list[Result]) -> None:
    """The sweep: rows/s over the batch size, a line per connection count, B as a line."""
    for par in sorted({r.params["parallel"] for r in swept}):
        pts = sorted((r.params["batch_size"], r.rows_per_s) for r in swept
                     if r.params["parallel"] == par)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                label=f"{par} connection(s)")
    sweep_b = next((r for r in results if r.kind == "sweep" and r.name.startswith("B on")), None)
    if sweep_b:
        ax.axhline(sweep_b.rows_per_s, color="#d62728", linestyle="--",
                   label=f"B ({sweep_b.rows:,} rows)")
    ax.set_xscale("log")
    ax.set_xlabel("node.import.batch.size (rows)")
    ax.set_ylabel("rows/s")
    ax.set_title(f"sweep: fresh import of {swept[0].rows:,} rows")
    ax.legend()


def _latencies(ax: Any, small: list[Result]) -> None:
    """Small-job latency p50/p95/max (log scale): alone (the daemon step) and while large
    jobs run (the mixed-load step), the 300 ms target as a line."""
    labels = [r.name.replace("daemon: ", "").replace("mixed load: ", "") for r in small]
    width = 0.27
    for k, (key, color) in enumerate((("p50_ms", "#2a6fdb"), ("p95_ms", "#ff7f0e"),
                                      ("max_ms", "#888888"))):
        ax.bar([n + (k - 1) * width for n in range(len(small))],
               [r.params.get(key) or 0 for r in small], width, color=color,
               label=key.replace("_ms", ""))
    ax.axhline(MIXED_P95_TARGET_MS, color="#d62728", linestyle="--",
               label=f"{MIXED_P95_TARGET_MS} ms (p95 target under load)")
    ax.set_yscale("log")
    ax.set_ylabel("ms, produce -> COMPLETED")
    ax.set_xticks(range(len(small)))
    ax.set_xticklabels([label[:40] for label in labels], rotation=20, ha="right", fontsize=7)
    ax.set_title("small-job latency")
    ax.legend(fontsize=7)


def chart(results: list[Result], path: Path) -> str | None:
    """rows/s per scenario against B and raw COPY; the sweep as lines; small-job latency.
    None: no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    swept = [r for r in results if r.kind == "sweep" and "batch_size" in r.params]
    small = [r for r in results if r.kind == "daemon" and r.params.get("small")
             and r.params.get("p50_ms") is not None]
    panels = 1 + bool(swept) + bool(small)
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 6.5), squeeze=False)
    _bars(axes[0][0], results)
    if swept:
        _sweep_lines(axes[0][1], results, swept)
    if small:
        _latencies(axes[0][panels - 1], small)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)


def draw(results: list[Result], path: Path) -> None:
    """Write the chart and say where (or why not), on stderr."""
    written = chart(results, path)
    print(f"PNG: {written}" if written else "PNG skipped: matplotlib is not installed "
          "(pip install -e '.[bench]')", file=sys.stderr)


def render(info: dict[str, Any], results: list[Result],
           prof: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Print the table, the daemon table, the verdicts, the floor ratios and the profile;
    return the verdicts (saved with the run)."""
    checks = verdicts(results)
    print(f"\n{info['date']}  {info['machine']['cpu']}, {info['machine']['cores']} cores, "
          f"PostgreSQL {info.get('postgres')}  ({info.get('seconds')} s)\n")
    print(table(results))
    if any(r.kind == "daemon" for r in results):
        print("\n" + daemon_table(results))
    if any(r.params.get("several") for r in results):
        print("\n" + daemons_table(results))
    if not checks:
        print("\ntargets (issue 6) are judged at 1,000,000 rows or more: none judged here.")
    else:
        print("\ntargets (issues 6 and 17):")
        for c in checks:
            print(f"  [{'met' if c['met'] else 'NOT met'}] {c['target']}: {c['measured']}")
    floor = client_floor_ratios(results)
    if floor:
        print("\nclient CPU against this machine's floor (read + parse alone, same run):")
        for line in floor:
            print(f"  {line}")
    big = info.get("big_table")
    if big:
        print(f"\nbig table: {big['base_rows']:,} base rows (built in {big['build_s']} s; 0: "
              f"cached), sizes MB {big['sizes']}\nEXPLAIN of one batch statement:\n"
              f"{big['explain']}")
    if prof:
        print("\n" + profile_import.format_profile(prof))
    return checks


def load(path: Path) -> tuple[dict[str, Any], list[Result], dict[str, Any] | None]:
    """A run's JSON back as (info, results, profile): to print or chart it again."""
    data = orjson.loads(path.read_bytes())
    known = {f.name for f in dataclasses.fields(Result)}
    results = [Result(**{k: v for k, v in r.items() if k in known}) for r in data["results"]]
    info = {k: v for k, v in data.items() if k not in ("results", "targets", "profile")}
    return info, results, data.get("profile")


def show_saved(path: Path, png_path: Path | None) -> None:
    """A saved run again: its tables and verdicts (and its chart with a PNG path)."""
    info, results, prof = load(path)
    render(info, results, prof)
    if png_path:
        draw(results, png_path)

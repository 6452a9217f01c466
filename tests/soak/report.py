"""The soak's report: faults by kind, work done, throughput held, recovery times, anomalies.

``build`` gathers one run into a JSON-ready dict; ``table`` prints it for a person;
``timeline_png`` draws throughput over time with the faults marked (only when matplotlib
is importable: the suite runs without it).
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tests.soak.faults import KINDS, Fault
from tests.soak.monitor import Monitor, Sample

WINDOW_S = 60.0  # throughput "held": the worst full minute of the run


def _rates(samples: list[Sample], start: float, end: float,
           window: float) -> list[dict[str, float]]:
    """Rows/s and jobs/s per ``window`` seconds between ``start`` and ``end``."""
    out = []
    t = start
    while t + window <= end + 1e-6:
        inside = [s for s in samples if t <= s.t <= t + window]
        if len(inside) >= 2:
            first, last = inside[0], inside[-1]
            span = max(last.t - first.t, 1e-6)
            out.append({"t": round(t, 1), "rows_s": (last.rows - first.rows) / span,
                        "jobs_s": (last.done - first.done) / span})
        t += window
    return out


def _recovery(faults: list[Fault], monitor: Monitor) -> dict[str, dict[str, Any]]:
    """Per kind: seconds from the fault's end (the link healed, the daemon or server back;
    the injection itself for instant faults) to the next committed batch anywhere."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for fault in faults:
        if fault.skipped or fault.started is None:
            continue
        ref = fault.ended if fault.ended is not None else fault.started
        nxt = monitor.progress_after(ref)
        if nxt is not None:
            by_kind[fault.kind].append(max(0.0, nxt - ref))
    out = {}
    for kind, values in by_kind.items():
        values.sort()
        out[kind] = {"n": len(values), "median_s": round(statistics.median(values), 2),
                     "p95_s": round(values[min(len(values) - 1, int(0.95 * len(values)))], 2),
                     "max_s": round(values[-1], 2)}
    return out


def build(*, args: dict[str, Any], faults: list[Fault], monitor: Monitor,
          figures: dict[str, Any], anomalies: list[dict[str, Any]], plan: dict[str, Any],
          timings: dict[str, float], notes: list[str]) -> dict[str, Any]:
    """The run as one JSON-ready dict."""
    injected = [f for f in faults if not f.skipped and f.started is not None]
    by_kind = Counter(f.kind for f in injected)
    samples = monitor.samples
    end = timings["faults_end"]
    minutes = _rates(samples, 0.0, end, WINDOW_S)
    first = samples[0] if samples else Sample(0, 0, 0, 0)
    last = samples[-1] if samples else first
    span = max(last.t - first.t, 1e-6)
    return {
        "pass": not anomalies,
        "args": args,
        "plan": plan,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "faults": {"injected": len(injected), "by_kind": {k: by_kind.get(k, 0) for k in KINDS},
                   "skipped": sum(1 for f in faults if f.skipped),
                   "planned": len(faults)},
        "work": {**figures},
        "throughput": {
            "rows_per_s_overall": round((last.rows - first.rows) / span, 1),
            "jobs_per_s_overall": round((last.done - first.done) / span, 2),
            "rows_per_s_worst_minute": round(min((m["rows_s"] for m in minutes), default=0), 1),
            "jobs_per_s_worst_minute": round(min((m["jobs_s"] for m in minutes), default=0), 2),
            "rows_per_s_best_minute": round(max((m["rows_s"] for m in minutes), default=0), 1),
            "per_minute": [{k: round(v, 2) for k, v in m.items()} for m in minutes],
        },
        "recovery_s": _recovery(faults, monitor),
        "anomalies": anomalies,
        "notes": notes,
        "schedule": [f.as_dict() for f in faults],
        "timeline": [[s.t, s.rows, s.done] for s in samples[::4]],
    }


def table(report: dict[str, Any]) -> str:
    """The report for a person: a few aligned blocks."""
    lines = []
    a = report["args"]
    lines.append(f"soak: seed {a['seed']}, {a['minutes']} min of faults, {a['daemons']} daemons,"
                 f" one fault every ~{a['fault_every']} s   ->   "
                 + ("PASS (0 anomalies)" if report["pass"] else
                    f"FAIL ({len(report['anomalies'])} anomalies)"))
    f = report["faults"]
    lines.append(f"\nfaults injected: {f['injected']} (planned {f['planned']},"
                 f" skipped {f['skipped']})")
    rec = report["recovery_s"]
    lines.append(f"  {'kind':<16}{'count':>6}  {'recovery median':>16} {'p95':>7} {'max':>7}")
    for kind, count in f["by_kind"].items():
        r = rec.get(kind, {})
        lines.append(f"  {kind:<16}{count:>6}  {r.get('median_s', '-'):>16} "
                     f"{r.get('p95_s', '-'):>7} {r.get('max_s', '-'):>7}")
    w = report["work"]
    lines.append("\nwork:")
    for key, value in w.items():
        lines.append(f"  {key:<58} {value}")
    t = report["throughput"]
    lines.append(f"\nthroughput: {t['rows_per_s_overall']} rows/s, {t['jobs_per_s_overall']} jobs/s"
                 f" overall; worst minute {t['rows_per_s_worst_minute']} rows/s,"
                 f" {t['jobs_per_s_worst_minute']} jobs/s; best minute"
                 f" {t['rows_per_s_best_minute']} rows/s")
    lines.append(f"timings: {report['timings_s']}")
    if report["anomalies"]:
        lines.append("\nANOMALIES:")
        for item in report["anomalies"]:
            lines.append(f"  - {item}")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


COLORS = {"daemon-kill": "#d62728", "worker-kill": "#ff7f0e", "daemon-term": "#9467bd",
          "pg-restart": "#8c564b", "pg-terminate": "#e377c2", "db-cut": "#1f77b4",
          "broker-cut": "#2ca02c", "db-latency": "#17becf", "broker-latency": "#bcbd22"}


def timeline_png(report: dict[str, Any], monitor: Monitor, faults: list[Fault],
                 path: Path) -> bool:
    """Rows/s and jobs/s over time (10 s steps), each fault a mark on its own lane."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    end = report["timings_s"].get("checked", monitor.samples[-1].t if monitor.samples else 0)
    steps = _rates(monitor.samples, 0.0, end, 10.0)
    fig, (ax, lanes) = plt.subplots(2, 1, figsize=(13, 6.5), sharex=True,
                                    gridspec_kw={"height_ratios": [3, 2]})
    ts = [(s["t"] + 5) / 60 for s in steps]
    ax.plot(ts, [s["rows_s"] for s in steps], color="#333", lw=1.2, label="rows/s")
    ax.set_ylabel("rows committed / s")
    ax2 = ax.twinx()
    ax2.plot(ts, [s["jobs_s"] for s in steps], color="#1f77b4", lw=0.8, alpha=0.7,
             label="jobs/s")
    ax2.set_ylabel("jobs finished / s", color="#1f77b4")
    quiet = report["timings_s"].get("faults_end", 0) / 60
    ax.axvspan(quiet, end / 60, color="#eee", zorder=0)
    ax.text(quiet, ax.get_ylim()[1] * 0.95, " quiet + check", fontsize=8, va="top")
    a = report["args"]
    ax.set_title(f"nodes-import chaos soak: seed {a['seed']}, {a['daemons']} daemons, "
                 f"{report['faults']['injected']} faults, "
                 + ("0 anomalies" if report["pass"] else f"{len(report['anomalies'])} anomalies"))
    kinds = list(COLORS)
    for fault in faults:
        if fault.skipped or fault.started is None:
            continue
        y = kinds.index(fault.kind)
        start = fault.started / 60
        stop = (fault.ended if fault.ended is not None else fault.started) / 60
        lanes.plot([start, max(stop, start + 0.05)], [y, y], color=COLORS[fault.kind], lw=6,
                   solid_capstyle="butt")
    lanes.set_yticks(range(len(kinds)))
    lanes.set_yticklabels(kinds, fontsize=8)
    lanes.set_ylim(-0.7, len(kinds) - 0.3)
    lanes.invert_yaxis()
    lanes.set_xlabel("minutes")
    lanes.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True

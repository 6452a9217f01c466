"""``bin/soak``: one chaos soak, start to verdict.

1. start PostgreSQL and the broker behind their fault proxies, and K daemons;
2. for ``--minutes``: the producer sends the seeded stream while the injector carries out
   the seeded fault schedule;
3. stop injecting (faults under way end: links heal, daemons come back), stop producing;
4. the quiet period: until every job sent is terminal and every offset committed (bounded
   by ``--quiet-max``);
5. SIGTERM every daemon (each must exit 0), then the checker;
6. the report: JSON (``--json``), a table on stdout, a PNG timeline beside the JSON.

Exit status 0 only with 0 anomalies.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from tests.soak import report as reports
from tests.soak.checker import Checker, committed
from tests.soak.cluster import MAX_MESSAGE_BYTES, Cluster
from tests.soak.faults import Injector, schedule
from tests.soak.monitor import Monitor
from tests.soak.producer import StreamProducer
from tests.soak.stream import Plan, Rates


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bin/soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=5.0, help="how long faults are injected")
    p.add_argument("--seed", type=int, default=1, help="the stream's and the faults' seed")
    p.add_argument("--daemons", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the report here (and the PNG beside it)")
    p.add_argument("--fault-every", type=float, default=10.0,
                   help="mean seconds between faults (default 10: ~180 in 30 min)")
    p.add_argument("--rate", type=float, default=1.0, help="multiplies every job rate")
    p.add_argument("--max-rows", type=int, default=500_000, help="largest file job")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--quiet-max", type=float, default=600.0,
                   help="longest quiet period (s) for the jobs to finish")
    p.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir,"
                   " removed after a pass)")
    p.add_argument("--schedule-only", action="store_true",
                   help="print the fault schedule and the stream's plan, run nothing")
    return p.parse_args(argv)


def _settled(cluster: Cluster, producer: StreamProducer, monitor: Monitor) -> bool:
    """Every job sent is terminal and every partition's offset committed at its end."""
    sample = monitor.read()
    if sample is None:
        return False
    try:
        with cluster.pg.connect() as conn:
            open_jobs = conn.execute("SELECT count(*) FROM job_status WHERE status NOT IN"
                                     " ('COMPLETED', 'FAILED')").fetchone()[0]
            known = conn.execute("SELECT count(*) FROM job_status WHERE id = ANY(%s::uuid[])",
                                 (list(producer.sent_jobs),)).fetchone()[0]
    except Exception:
        return False
    if open_jobs or known < len(producer.sent_jobs):
        return False
    ends: dict[int, int] = {}
    for _, step in producer.steps():
        for m in step.messages:
            for p, o in m.sent:
                ends[p] = max(ends.get(p, 0), o + 1)
    for odd in producer.odds:
        for p, o in odd.sent:
            ends[p] = max(ends.get(p, 0), o + 1)
    got = committed(cluster.broker.bootstrap, cluster.partitions)
    return all(got.get(p) == end for p, end in ends.items())


def _stop_daemons(cluster: Cluster, anomalies: list[dict[str, Any]]) -> None:
    """SIGTERM every daemon at once; each must drain and exit 0."""
    lives = [(slot, slot.current) for slot in cluster.slots if slot.up]
    for _, life in lives:
        life.process.proc.send_signal(signal.SIGTERM)
    for slot, life in lives:
        try:
            code = life.process.proc.wait(90)
        except Exception:
            life.process.proc.kill()
            code = life.process.proc.wait(30)
            anomalies.append({"check": "daemon did not exit within 90 s of the final SIGTERM",
                              "daemon": slot.index})
        cluster.ended(life, "final sigterm", code)
        if code != 0:
            anomalies.append({"check": "daemon exit code after the final SIGTERM is not 0",
                              "daemon": slot.index, "exit": code,
                              "log": str(life.process.log_path)})


def run(args: argparse.Namespace) -> dict[str, Any]:
    seconds = args.minutes * 60
    faults = schedule(args.seed, seconds, args.fault_every, args.daemons)
    rates = Rates().scaled(args.rate, args.max_rows)
    folder = args.workdir or Path(tempfile.mkdtemp(prefix="nodes-import-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    plan = Plan(args.seed, seconds, rates, folder / "files", MAX_MESSAGE_BYTES)
    print(f"soak: seed {args.seed}, {args.minutes} min, {args.daemons} daemons, "
          f"{len(faults)} faults planned, work dir {folder}")
    print(f"plan: {plan.summary()}")
    print("fault schedule (replay: the same --seed, --minutes, --fault-every, --daemons):")
    for fault in faults:
        print("  " + fault.line())
    (folder / "schedule.json").write_bytes(orjson.dumps([f.as_dict() for f in faults],
                                                        option=orjson.OPT_INDENT_2))
    if args.schedule_only:
        return {}
    anomalies: list[dict[str, Any]] = []
    notes: list[str] = []
    timings: dict[str, float] = {}
    started = time.monotonic()
    result: dict[str, Any] = {}
    cluster = Cluster(folder, args.daemons, args.partitions)
    try:
        for slot in cluster.slots:
            cluster.start(slot)
        for slot in cluster.slots:
            if not cluster.wait_started(slot, 120):
                raise RuntimeError(f"daemon {slot.index} did not start: "
                                   f"{slot.current.process.log_text()[-2000:]}")
        timings["setup"] = time.monotonic() - started
        t0 = time.monotonic()
        monitor = Monitor(cluster, t0)
        producer = StreamProducer(cluster, plan, t0)
        injector = Injector(cluster, faults, t0)
        monitor.start()
        producer.start()
        injector.start()
        while time.monotonic() - t0 < seconds:
            time.sleep(1.0)
            elapsed = time.monotonic() - t0
            if int(elapsed) % 60 == 0:
                last = monitor.samples[-1] if monitor.samples else None
                print(f"[{elapsed / 60:5.1f} min] jobs sent {len(producer.sent_jobs)}, "
                      f"finished {last.done if last else '?'}, rows {last.rows if last else '?'}",
                      flush=True)
        producer.join()
        injector.join()
        timings["faults_end"] = time.monotonic() - t0
        print("faults over; quiet period: waiting for every job and offset", flush=True)
        deadline = time.monotonic() + args.quiet_max
        while not _settled(cluster, producer, monitor):
            if time.monotonic() > deadline:
                notes.append(f"the quiet period ended after {args.quiet_max:.0f}s with work"
                             " left (see the anomalies)")
                break
            time.sleep(2.0)
        timings["settled"] = time.monotonic() - t0
        monitor.join()
        _stop_daemons(cluster, anomalies)
        time.sleep(1.0)  # workers die with their daemon (PR_SET_PDEATHSIG)
        checker = Checker(cluster, producer)
        checker.run(monitor.memory)
        timings["checked"] = time.monotonic() - t0
        anomalies = injector.anomalies + anomalies + checker.anomalies
        figures = {"jobs sent": len(producer.sent_jobs),
                   "messages sent": producer.sent_messages,
                   "late redeliveries sent": len(producer.redeliveries),
                   "chains started": len(producer.chains),
                   "daemon processes started": sum(len(s.lives) for s in cluster.slots),
                   "stack dumps (stacks/: a silent or oversized daemon)": monitor.dumps,
                   **checker.figures}
        result = reports.build(
            args={"seed": args.seed, "minutes": args.minutes, "daemons": args.daemons,
                  "fault_every": args.fault_every, "rate": args.rate,
                  "max_rows": args.max_rows, "partitions": args.partitions},
            faults=faults, monitor=monitor, figures=figures, anomalies=anomalies,
            plan=plan.summary(), timings=timings, notes=notes + injector.notes)
        print(reports.table(result))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            options = orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
            args.json.write_bytes(orjson.dumps(result, option=options))
            png = args.json.with_suffix(".png")
            if reports.timeline_png(result, monitor, faults, png):
                print(f"timeline: {png}")
            print(f"report: {args.json}")
        return result
    finally:
        cluster.close()
        if args.workdir is None and result.get("pass"):
            shutil.rmtree(folder, ignore_errors=True)
        elif args.workdir is None:
            print(f"work dir kept for inspection: {folder}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = run(args)
    if args.schedule_only:
        return 0
    return 0 if result.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())

"""The checker: after the quiet period, every invariant of the run, each failure an anomaly.

1. the job topic read back: every message the producer sent is there (a copy the broker
   holds twice is counted; a copy of a message without jobId is a job of its own);
2. every valid job COMPLETED with the counters the oracle predicts; every job of a missing
   file FAILED; no job the stream did not make; none PENDING/PROCESSING; no lease held;
3. ``nodes`` + ``node_metadata`` equal the oracle's state, row for row (metadata compared as
   stored); ``job_failures`` hold exactly the bad rows, per job;
4. the group's committed offset at the end of every partition;
5. every malformed message and failed job on the dead-letter topic; a letter more than once
   only for the same original offset (a redelivery: counted); no other letter;
6. processes: no orphan, nothing left in the daemons' TMPDIR, RSS under its bound.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import Consumer, KafkaError, TopicPartition

from nodes_import.jobs import derived_job_id
from nodes_import.kafka import deadletter as dl
from tests.soak.cluster import CONSUMER, DLQ, GROUP, QUIET, TOPIC, Cluster, pids_alive
from tests.soak.faults import ORPHAN_GRACE_S
from tests.soak.monitor import RSS_BOUND_MB, Memory
from tests.soak.producer import SEQ_HEADER, StreamProducer

# RSS bounds (MB). A worker: docs/reliability.md "Memory stays flat" (one import process
# under 300 MB with the default 35,000-row batches; the soak's are 10,000 rows). The
# daemon holds the Kafka client, the window and the admin API, no rows.
SAMPLES = 5  # examples kept per anomaly


def read_topic(bootstrap: str, topic: str, idle_s: float = 6.0,
               timeout_s: float = 180.0) -> list[Any]:
    """Every message of ``topic``, all partitions, from the start (Tansu's watermark
    offsets are wrong: read until nothing new came for ``idle_s``)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, **CONSUMER,
                         "group.id": f"soak-reader-{uuid.uuid4().hex[:8]}", **QUIET,
                         "enable.partition.eof": False})
    try:
        meta = consumer.list_topics(topic, timeout=20)
        partitions = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        consumer.assign([TopicPartition(topic, p, -2) for p in partitions])  # -2: beginning
        out: list[Any] = []
        last = time.monotonic()
        deadline = last + timeout_s
        while time.monotonic() - last < idle_s and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    last = time.monotonic()
                continue
            out.append(msg)
            last = time.monotonic()
        return out
    finally:
        consumer.close()


def committed(bootstrap: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP, **QUIET})
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(partitions)]
        return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=20)}
    finally:
        consumer.close()


def _with_tmpdir(tmp: Path) -> list[psutil.Process]:
    """Live processes whose environment has ``TMPDIR=tmp``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("TMPDIR") == str(tmp) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


class Checker:
    """Runs the checks; ``anomalies`` and ``figures`` hold the results."""

    def __init__(self, cluster: Cluster, producer: StreamProducer) -> None:
        self.cluster, self.producer = cluster, producer
        self.anomalies: list[dict[str, Any]] = []
        self.figures: dict[str, Any] = {}

    def anomaly(self, check: str, count: int = 1, **detail: Any) -> None:
        self.anomalies.append({"check": check, "count": count, **detail})

    # -- 1. the topic
    def topic(self) -> dict[str, list[tuple[int, int]]]:
        """seq -> [(partition, offset)] as the topic holds them."""
        found: dict[str, list[tuple[int, int]]] = defaultdict(list)
        ends: dict[int, int] = {}
        for msg in read_topic(self.cluster.broker.bootstrap, TOPIC):
            headers = dict(msg.headers() or [])
            seq = (headers.get(SEQ_HEADER) or b"?").decode()
            found[seq].append((msg.partition(), msg.offset()))
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
        self.ends = ends
        sent: dict[str, set[tuple[int, int]]] = defaultdict(set)
        for _, step in self.producer.steps():
            for m in step.messages:
                sent[m.seq].update(m.sent)
        for odd in self.producer.odds:
            sent[odd.seq].update(odd.sent)
        missing = [(s, c) for s, coords in sent.items() for c in coords
                   if c not in set(found.get(s, []))]
        if missing:
            self.anomaly("a message the producer sent is not on the topic", len(missing),
                         examples=missing[:SAMPLES])
        extra = {s: len(found[s]) - len(sent.get(s, ())) for s in found
                 if len(found[s]) > len(sent.get(s, ()))}
        self.figures["messages on the topic"] = sum(len(v) for v in found.values())
        self.figures["broker duplicates"] = sum(extra.values())
        self.figures["producer errors"] = len(self.producer.errors)
        return found

    # -- 2./3. the database
    def database(self, found: dict[str, list[tuple[int, int]]]) -> None:
        expected_jobs: dict[str, tuple[str, Any]] = {}  # job id -> (kind, what)
        steps = self.producer.steps()
        for chain, step in steps:
            ids: set[str] = set()
            for m in step.messages:
                if m.job_id is not None:
                    ids.add(m.job_id)
                else:
                    ids.update(derived_job_id(TOPIC, p, o) for p, o in found.get(m.seq, []))
            for job in ids:
                expected_jobs[job] = ("step", (chain, step))
            step.checked_ids = ids
        for odd in self.producer.odds:
            if odd.job_id is not None:
                expected_jobs[odd.job_id] = ("failing", odd)
        with self.cluster.pg.connect(timeout=10) as conn:
            rows = {str(r[0]): r for r in conn.execute(
                "SELECT id, status, total_nodes, success_count, failed_count, inserted_count,"
                " updated_count, unchanged_count, rows_committed, heartbeat_at IS NOT NULL,"
                " error, group_id FROM job_status")}
            self._jobs(expected_jobs, rows, steps)
            self._failures(conn, steps)
            self._nodes(conn)

    def _jobs(self, expected: dict[str, tuple[str, Any]], rows: dict[str, Any],
              steps: list[Any]) -> None:
        extra = sorted(set(rows) - set(expected))
        if extra:
            self.anomaly("a job row the stream did not make", len(extra),
                         examples=[(*rows[j][0:2], rows[j][11]) for j in extra[:SAMPLES]])
        missing = sorted(set(expected) - set(rows))
        if missing:
            self.anomaly("a job sent has no job row", len(missing), examples=missing[:SAMPLES])
        stuck = [j for j, r in rows.items() if r[1] not in ("COMPLETED", "FAILED")]
        if stuck:
            self.anomaly("a job left PENDING/PROCESSING", len(stuck),
                         examples=[(j, rows[j][1], rows[j][11]) for j in stuck[:SAMPLES]])
        leases = [j for j, r in rows.items() if r[1] not in ("COMPLETED", "FAILED") and r[9]]
        if leases:
            self.anomaly("a lease still held", len(leases), examples=leases[:SAMPLES])
        wrong_status, wrong_counts = [], []
        completed = failed = rows_done = 0
        for chain, step in steps:
            ids = sorted(step.checked_ids)
            exp = step.expected
            got = [rows[j] for j in ids if j in rows]
            for r in got:
                if r[1] != "COMPLETED":
                    wrong_status.append((r[0], r[1], chain.group, (r[10] or "")[:200]))
                else:
                    completed += 1
                    rows_done += int(r[2])
            if len(got) != len(ids) or any(r[1] != "COMPLETED" for r in got):
                continue
            want_basic = (exp.total, exp.total - exp.failed, exp.failed)
            for r in got:
                basic = (r[2], r[3], r[4])
                split_sum = r[5] + r[6] + r[7]
                if basic != want_basic or split_sum != r[3] or r[8] != exp.total:
                    wrong_counts.append({"job": str(r[0]), "group": chain.group,
                                         "want": want_basic, "got": (*basic, r[8]),
                                         "split": (r[5], r[6], r[7])})
            if len(got) == 1:
                r = got[0]
                if (r[5], r[6], r[7]) != (exp.inserted, exp.updated, exp.unchanged):
                    wrong_counts.append({"job": str(r[0]), "group": chain.group,
                                         "want": (exp.inserted, exp.updated, exp.unchanged),
                                         "got": (r[5], r[6], r[7])})
            elif sum(r[5] for r in got) != exp.new_keys:
                wrong_counts.append({"jobs": ids, "group": chain.group,
                                     "want inserted in all": exp.new_keys,
                                     "got": [(r[5], r[6], r[7]) for r in got]})
        for odd in self.producer.odds:
            if odd.job_id is not None:
                r = rows.get(odd.job_id)
                if r is not None and r[1] != "FAILED":
                    wrong_status.append((odd.job_id, r[1], "missing file", ""))
                elif r is not None:
                    failed += 1
        if wrong_status:
            self.anomaly("a job did not end as expected (COMPLETED, or FAILED for a missing "
                         "file)", len(wrong_status), examples=wrong_status[:SAMPLES])
        if wrong_counts:
            self.anomaly("a job's counters differ from the oracle", len(wrong_counts),
                         examples=wrong_counts[:SAMPLES])
        self.figures.update({"jobs completed": completed, "jobs failed (missing file)": failed,
                             "rows in completed jobs": rows_done, "job rows": len(rows)})

    def _failures(self, conn: Any, steps: list[Any]) -> None:
        want: Counter[tuple[str, int, str]] = Counter()
        for _, step in steps:
            for job in step.checked_ids:
                for number, reason in step.bad_rows:
                    want[(str(uuid.UUID(job)), number, reason)] += 1
        got: Counter[tuple[str, int, str]] = Counter(
            (str(r[0]), int(r[1]), str(r[2])) for r in conn.execute(
                "SELECT job_id, row_number, reason FROM job_failures"))
        missing, extra = want - got, got - want
        if missing:
            self.anomaly("a bad row missing from job_failures", sum(missing.values()),
                         examples=sorted(missing)[:SAMPLES])
        if extra:
            self.anomaly("a job_failures row that is no bad row (or twice)", sum(extra.values()),
                         examples=sorted(extra)[:SAMPLES])
        self.figures["job_failures rows"] = sum(got.values())

    def _nodes(self, conn: Any) -> None:
        conn.execute("CREATE TEMP TABLE soak_expected (group_id text, reference_id text,"
                     " type text, domain_id uuid, metadata jsonb)")
        expected = 0
        with conn.cursor().copy("COPY soak_expected FROM STDIN") as copy:
            for group in self.producer.groups.values():
                for ref, node_type, meta in group.rows():
                    copy.write_row((group.name, ref, node_type, group.domain, meta))
                    expected += 1
        conn.execute("ANALYZE soak_expected")
        actual = ("SELECT n.group_id, n.reference_id, n.type, n.domain_id, m.metadata"
                  " FROM nodes n LEFT JOIN node_metadata m ON m.node_id = n.id")
        exp = "SELECT group_id, reference_id, type, domain_id, metadata FROM soak_expected"
        for label, query in (("a node missing or different (expected, not stored)",
                              f"{exp} EXCEPT ALL {actual}"),
                             ("a node extra or different (stored, not expected)",
                              f"{actual} EXCEPT ALL {exp}")):
            count = conn.execute(f"SELECT count(*) FROM ({query}) d").fetchone()[0]
            if count:
                sample = conn.execute(f"SELECT * FROM ({query}) d ORDER BY 1, 2 LIMIT {SAMPLES}"
                                      ).fetchall()
                self.anomaly(label, int(count), examples=[tuple(map(str, r)) for r in sample])
        stored = conn.execute("SELECT count(*) FROM nodes").fetchone()[0]
        meta = conn.execute("SELECT count(*) FROM node_metadata").fetchone()[0]
        self.figures.update({"nodes expected": expected, "nodes stored": int(stored),
                             "node_metadata rows": int(meta)})
        conn.execute("DROP TABLE soak_expected")

    # -- 4. offsets
    def offsets(self) -> None:
        got = committed(self.cluster.broker.bootstrap, self.cluster.partitions)
        behind = {p: (got.get(p), end) for p, end in self.ends.items() if got.get(p) != end}
        if behind:
            self.anomaly("a partition's committed offset is not at its end", len(behind),
                         partitions=behind)
        self.figures["committed offsets"] = got

    # -- 5. dead letters
    def dead_letters(self, found: dict[str, list[tuple[int, int]]]) -> None:
        by_coord = {(p, o): s for s, coords in found.items() for p, o in coords}
        odd_by_seq = {o.seq: o for o in self.producer.odds}
        letters: dict[tuple[int, int], list[dict[str, str]]] = defaultdict(list)
        stray = []
        for msg in read_topic(self.cluster.broker.bootstrap, DLQ):
            info = dl.header_map(msg.headers() or [])
            try:
                coord = (int(info[dl.H_PARTITION]), int(info[dl.H_OFFSET]))
            except (KeyError, ValueError):
                stray.append(info.get(dl.H_MESSAGE, "?"))
                continue
            if info.get(dl.H_TOPIC) != TOPIC:
                stray.append(info.get(dl.H_TOPIC))
                continue
            letters[coord].append(info)
        wrong, unexpected = [], []
        for coord, infos in letters.items():
            odd = odd_by_seq.get(by_coord.get(coord, ""))
            if odd is None:
                unexpected.append({"coord": coord, "seq": by_coord.get(coord),
                                   "stage": infos[0].get(dl.H_STAGE),
                                   "reason": infos[0].get(dl.H_MESSAGE, "")[:200]})
                continue
            for info in infos:
                message = info.get(dl.H_MESSAGE, "")
                if info.get(dl.H_STAGE) != odd.stage or odd.reason not in message \
                        or (odd.job_id and info.get(dl.H_JOB_ID) != odd.job_id):
                    wrong.append({"seq": odd.seq, "kind": odd.kind, "stage": info.get(dl.H_STAGE),
                                  "reason": info.get(dl.H_MESSAGE, "")[:200]})
        missing = [(o.seq, o.kind) for o in self.producer.odds for c in o.sent if c not in letters]
        if missing:
            self.anomaly("a malformed message or failed job is not dead-lettered", len(missing),
                         examples=missing[:SAMPLES])
        if unexpected or stray:
            self.anomaly("a dead letter for a valid job (or of no known message)",
                         len(unexpected) + len(stray), examples=(unexpected + stray)[:SAMPLES])
        if wrong:
            self.anomaly("a dead letter with the wrong stage, reason or job id", len(wrong),
                         examples=wrong[:SAMPLES])
        self.figures["dead letters"] = sum(len(v) for v in letters.values()) + len(stray)
        self.figures["dead letters repeated (redelivered, same original offset)"] = sum(
            len(v) - 1 for v in letters.values() if len(v) > 1)

    # -- 6. processes
    def processes(self, memory: Memory) -> None:
        # A stopped daemon's helpers (multiprocessing's resource tracker) end once every
        # process holding its pipe has: give them the grace a killed daemon's workers get.
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while (left := pids_alive(self.cluster.seen_pids)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            self.anomaly("a process outlived the run (orphan)", len(left), examples=left[:SAMPLES])
        # And those the meter never saw (spawned just before their daemon was killed): every
        # process of the daemons carries their TMPDIR; none may be left.
        unseen = [(p.pid, " ".join(p.cmdline())[:120]) for p in _with_tmpdir(self.cluster.tmp)
                  if p.pid not in self.cluster.seen_pids]
        if unseen:
            self.anomaly("a process of the daemons outlived the run, never metered (orphan)",
                         len(unseen), examples=unseen[:SAMPLES])
        leftovers = sorted(str(p.relative_to(self.cluster.tmp))
                           for p in self.cluster.tmp.rglob("*"))
        if leftovers:
            self.anomaly("a temp file or directory left in the daemons' TMPDIR", len(leftovers),
                         examples=leftovers[:SAMPLES])
        for role, bound in RSS_BOUND_MB.items():
            over = [(pid, mb) for pid, (r, mb) in memory.by_pid.items() if r == role and mb > bound]
            if over:
                self.anomaly(f"a {role} process over its RSS bound ({bound:.0f} MB)", len(over),
                             examples=sorted(over, key=lambda x: -x[1])[:SAMPLES])
        self.figures["peak RSS MB"] = memory.peak
        self.figures["processes seen"] = len(self.cluster.seen_pids)

    def completions_logged(self) -> None:
        """Jobs whose "job finished" COMPLETED line appears more than once over all logs
        (a figure: a second runner may log the row it found finished)."""
        count: Counter[str] = Counter()
        for path in self.cluster.logs.glob("*.log"):
            for line in path.read_bytes().splitlines():
                if b'"job finished"' not in line or b"COMPLETED" not in line:
                    continue
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if entry.get("status") == "COMPLETED" and entry.get("jobId"):
                    count[entry["jobId"]] += 1
        self.figures["jobs whose completion was logged twice"] = sum(
            1 for n in count.values() if n > 1)

    def run(self, memory: Memory) -> None:
        found = self.topic()
        self.database(found)
        self.offsets()
        self.dead_letters(found)
        self.processes(memory)
        self.completions_logged()


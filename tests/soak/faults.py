"""The seeded fault schedule and the injector that carries it out.

``schedule(seed, seconds, every_s, daemons)`` draws the faults up front (Poisson arrivals,
a kind by weight, its duration and target): the same seed gives the same schedule, which
is printed and saved with the report so a failure can be replayed. Several faults may be
under way at once (a daemon killed while the database link is cut and the broker lags).

The injector runs each fault in a thread of its own at its time: a daemon fault on a
daemon that is already down (killed a moment ago, draining) goes to the next daemon that
is up, or is recorded as skipped. Latency faults on the same link overlap by taking the
largest active delay; outages on the same link merge (``FaultProxy.refuse_for``).
"""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.soak.cluster import Cluster, DaemonSlot, alive

# kind -> weight in the draw. Every kind of the issue; the schedule cycles through all of
# them first, so a short run still sees each at least once.
KINDS = {
    "daemon-kill": 2.0,  # SIGKILL a daemon (its workers die with it), restart it
    "worker-kill": 2.0,  # SIGKILL one worker process
    "daemon-term": 1.5,  # SIGTERM a daemon (drain), restart it
    "pg-restart": 1.0,  # pg_ctl restart -m fast
    "pg-terminate": 1.5,  # pg_terminate_backend of the importers' backends
    "db-cut": 1.5,  # the database link refused and cut for 1-20 s
    "broker-cut": 1.5,  # the broker link refused and cut for 1-15 s
    "db-latency": 1.0,  # added latency on the database link
    "broker-latency": 1.0,  # added latency on the broker link
}
INSTANT = {"worker-kill", "pg-terminate"}
ORPHAN_GRACE_S = 5.0  # a killed daemon's workers must be gone by then (PR_SET_PDEATHSIG)


@dataclass
class Fault:
    """One planned fault and, once injected, what happened."""

    number: int
    at: float  # seconds from the start of the run
    kind: str
    duration: float = 0.0  # link faults: how long; daemon faults: delay before the restart
    target: int = 0  # daemon slot, or the draw for a worker
    latency_ms: float = 0.0
    # filled by the injector
    started: float | None = None  # seconds from the start
    ended: float | None = None  # the link healed / the daemon back up / the server back
    skipped: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        what = {"db-cut": f"{self.duration:.1f}s", "broker-cut": f"{self.duration:.1f}s",
                "db-latency": f"+{self.latency_ms:.0f}ms for {self.duration:.1f}s",
                "broker-latency": f"+{self.latency_ms:.0f}ms for {self.duration:.1f}s",
                "daemon-kill": f"daemon {self.target}, restart after {self.duration:.1f}s",
                "daemon-term": f"daemon {self.target}, restart after {self.duration:.1f}s",
                "worker-kill": f"daemon {self.target}, worker draw {self.detail.get('draw', '')}",
                }.get(self.kind, "")
        return f"#{self.number:<4} t={self.at:7.1f}s  {self.kind:<15} {what}"


def schedule(seed: int, seconds: float, every_s: float, daemons: int) -> list[Fault]:
    """The faults of a run of ``seconds``, on average one every ``every_s`` seconds."""
    rng = random.Random(f"faults-{seed}")
    kinds, weights = list(KINDS), list(KINDS.values())
    out: list[Fault] = []
    t = rng.uniform(every_s / 2, every_s)
    while t < seconds:
        number = len(out)
        kind = kinds[number] if number < len(kinds) else rng.choices(kinds, weights)[0]
        fault = Fault(number, round(t, 2), kind, target=rng.randrange(daemons))
        if kind in ("db-cut",):
            fault.duration = round(rng.uniform(1, 20), 1)
        elif kind == "broker-cut":
            fault.duration = round(rng.uniform(1, 15), 1)
        elif kind in ("db-latency", "broker-latency"):
            fault.duration = round(rng.uniform(2, 20), 1)
            fault.latency_ms = round(rng.choice([5, 20, 50, 150, 400]) * rng.uniform(0.8, 1.2))
        elif kind in ("daemon-kill", "daemon-term"):
            fault.duration = round(rng.uniform(0.5, 5), 1)
        elif kind == "worker-kill":
            fault.detail["draw"] = rng.randrange(1000)
        out.append(fault)
        t += rng.expovariate(1.0 / every_s)
    return out


class Injector:
    """Carries out a schedule against a cluster; records what it did and any anomaly
    it sees on the way (a daemon that does not exit 0 on SIGTERM, orphan workers)."""

    def __init__(self, cluster: Cluster, faults: list[Fault], t0: float) -> None:
        self.cluster, self.faults, self.t0 = cluster, faults, t0
        self.anomalies: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._latency: dict[str, list[float]] = {"db": [], "broker": []}
        self._thread = threading.Thread(target=self._run, name="soak-faults", daemon=True)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float = 180.0) -> None:
        """Stop injecting; wait for the faults under way to end (links healed, daemons up)."""
        self.stop.set()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.1, deadline - time.monotonic()))

    def _run(self) -> None:
        for fault in self.faults:
            while not self.stop.is_set() and self.now() < fault.at:
                self.stop.wait(min(0.2, fault.at - self.now()))
            if self.stop.is_set():
                return
            thread = threading.Thread(target=self._inject, args=(fault,),
                                      name=f"fault-{fault.number}", daemon=True)
            self._threads.append(thread)
            thread.start()

    def _anomaly(self, fault: Fault, what: str, **detail: Any) -> None:
        with self._lock:
            self.anomalies.append({"check": what, "fault": fault.number, "kind": fault.kind,
                                   "t": round(self.now(), 1), **detail})

    def _inject(self, fault: Fault) -> None:
        try:
            getattr(self, "_" + fault.kind.replace("-", "_"))(fault)
        except Exception as exc:
            fault.skipped = fault.skipped or f"injector error: {type(exc).__name__}: {exc}"
        print(f"  fault {fault.line()}"
              + (f"  SKIPPED ({fault.skipped})" if fault.skipped else
                 f"  [{fault.started:.1f}s -> {fault.ended or fault.started:.1f}s]"), flush=True)

    # -- daemons
    def _claim(self, fault: Fault) -> DaemonSlot | None:
        """The target daemon if it is up and free, else the next one that is."""
        slots = self.cluster.slots
        for n in range(len(slots)):
            slot = slots[(fault.target + n) % len(slots)]
            with slot.lock:
                if slot.up and not slot.busy:
                    slot.busy = True
                    fault.detail["daemon"] = slot.index
                    return slot
        fault.skipped = "no daemon up and free"
        return None

    def _restart(self, slot: DaemonSlot, fault: Fault) -> None:
        time.sleep(fault.duration)
        if not self.cluster.start_until_up(slot):
            self._anomaly(fault, "daemon could not be started again", daemon=slot.index)
        fault.ended = self.now()
        slot.busy = False

    def _daemon_kill(self, fault: Fault) -> None:
        slot = self._claim(fault)
        if slot is None:
            return
        life = slot.current
        assert life is not None
        workers = [(p.pid, p.create_time()) for p in self.cluster.workers(slot)]
        fault.started = self.now()
        life.process.proc.send_signal(signal.SIGKILL)
        code = life.process.proc.wait(30)
        self.cluster.ended(life, "sigkill", code)
        fault.detail["workers"] = len(workers)
        deadline = time.monotonic() + ORPHAN_GRACE_S
        while time.monotonic() < deadline and any(alive(*w) for w in workers):
            time.sleep(0.1)
        orphans = [pid for pid, created in workers if alive(pid, created)]
        if orphans:
            self._anomaly(fault, "orphan worker outlived its SIGKILLed daemon",
                          daemon=slot.index, pids=orphans)
        self._restart(slot, fault)

    def _daemon_term(self, fault: Fault) -> None:
        slot = self._claim(fault)
        if slot is None:
            return
        life = slot.current
        assert life is not None
        fault.started = self.now()
        life.process.proc.send_signal(signal.SIGTERM)
        try:
            code = life.process.proc.wait(60)  # drain-timeout 10 s + closing
        except Exception:
            self._anomaly(fault, "daemon did not exit within 60 s of SIGTERM", daemon=slot.index)
            life.process.proc.kill()
            code = life.process.proc.wait(30)
        fault.detail["exit"] = code
        fault.detail["drainS"] = round(self.now() - fault.started, 2)
        self.cluster.ended(life, "sigterm", code)
        if code != 0:
            self._anomaly(fault, "daemon exit code after SIGTERM is not 0", daemon=slot.index,
                          exit=code, log=str(life.process.log_path))
        self._restart(slot, fault)

    def _worker_kill(self, fault: Fault) -> None:
        slots = self.cluster.slots
        for n in range(len(slots)):
            slot = slots[(fault.target + n) % len(slots)]
            with slot.lock:
                if not slot.up or slot.busy:
                    continue
                workers = self.cluster.workers(slot)
                if not workers:
                    continue
                victim = workers[fault.detail["draw"] % len(workers)]
                fault.started = fault.ended = self.now()
                fault.detail.update(daemon=slot.index, pid=victim.pid)
                victim.send_signal(signal.SIGKILL)
                return
        fault.skipped = "no worker found"

    # -- PostgreSQL
    def _pg_restart(self, fault: Fault) -> None:
        pg = self.cluster.pg
        if not pg.lock.acquire(blocking=False):
            fault.skipped = "a restart is under way"
            return
        try:
            fault.started = self.now()
            pg.restart()
            fault.ended = self.now()
        finally:
            pg.lock.release()

    def _pg_terminate(self, fault: Fault) -> None:
        fault.started = fault.ended = self.now()
        fault.detail["backends"] = self.cluster.pg.terminate_importers()

    # -- links
    def _cut(self, fault: Fault, link: str) -> None:
        proxy = self.cluster.pg.proxy if link == "db" else self.cluster.broker.proxy
        fault.started = self.now()
        proxy.refuse_for(fault.duration)
        time.sleep(fault.duration)
        while proxy.refusing:  # merged with a longer outage
            time.sleep(0.1)
        fault.ended = self.now()

    def _db_cut(self, fault: Fault) -> None:
        self._cut(fault, "db")

    def _broker_cut(self, fault: Fault) -> None:
        self._cut(fault, "broker")

    def _latency_fault(self, fault: Fault, link: str) -> None:
        proxy = self.cluster.pg.proxy if link == "db" else self.cluster.broker.proxy
        seconds = fault.latency_ms / 1000.0
        with self._lock:
            self._latency[link].append(seconds)
            proxy.set_latency(max(self._latency[link]))
        fault.started = self.now()
        time.sleep(fault.duration)
        with self._lock:
            self._latency[link].remove(seconds)
            proxy.set_latency(max(self._latency[link], default=0.0))
        fault.ended = self.now()

    def _db_latency(self, fault: Fault) -> None:
        self._latency_fault(fault, "db")

    def _broker_latency(self, fault: Fault) -> None:
        self._latency_fault(fault, "broker")

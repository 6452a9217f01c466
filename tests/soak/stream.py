"""The seeded job stream and its oracle: what is sent, and what the database must hold after.

Every group of nodes belongs to one *chain* of steps; a step is one content (a CSV file or
a list of reference IDs) sent as one or more messages. The steps of a chain are sent one
after the other, each once the previous one's jobs are terminal, so the state a step meets
is known and its counters (inserted / updated / unchanged) can be predicted exactly. An
*overlap* step sends the same content as several jobs at once (different job ids, one
group): their sum of ``inserted`` is the number of new keys, whatever the interleaving.

Content is a pure function of (key number, version), so the oracle keeps per group only
one int per key (the metadata version, or absent / no metadata) and one byte (the type):
a 30-minute run's millions of rows fit in a few tens of MB, and the files can be written
and checked without ever being read back.

Rules that keep the counters independent of how the engine cuts batches (pinned by
``tests/unit/test_soak_stream.py``): every occurrence of a key repeated in one file has a
version of its own, different from the key's stored one; reference-ID lists never repeat
an ID.
"""

from __future__ import annotations

import gzip
import itertools
import math
import random
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from nodes_import.cli.sample import COUNTRIES, FIRST_NAMES, LAST_NAMES, PLANS

TOPIC = "soak-jobs-users"  # the job topic (jobs without jobId get ids derived from it)
COLUMNS = ["reference_id", "email", "first_name", "last_name", "country", "plan", "note"]
TYPES = ["USER", "ADMIN", "SERVICE"]  # node types; index 0 is the default
ABSENT, NO_METADATA = -2, -1  # GroupState.meta values besides a version (>= 0)
# Bad rows and the reason job_failures must record for each.
BLANK, TOO_LONG, WRONG_WIDTH = -1, -2, -3
REASONS = {BLANK: "blank reference_id", TOO_LONG: "reference_id longer than 255 characters",
           WRONG_WIDTH: f"expected {len(COLUMNS)} fields, got 3"}
# Mostly empty (the key is dropped from the metadata); some values every layer must
# escape: a quote, a backslash, a comma, a tab, a newline inside a quoted cell, non-ASCII.
_NOTES = ["", "", "", "", "", "", "", "", "", "", 'says "hi"', "back\\slash", "a,b",
          "tab\there", "two\nlines", "café ☕", "ümlaut ß"]
FRESH_VERSION_BASE = 1_000_000  # versions of repeated occurrences and updates start here
# Most reference IDs in one message: 4,000 of 11 bytes each stay under the soak's
# kafka.max-message-bytes (64 KiB); a larger message is dead-lettered, as it should be.
MAX_IDS = 4000


def reference_id(n: int) -> str:
    """The n-th key of a group."""
    return f"u{n:07d}"


def values(n: int, version: int) -> list[str]:
    """Key n's metadata cells at ``version`` (an empty cell is no key in the JSON)."""
    return [f"u{n}.v{version}@example.com", FIRST_NAMES[(n + version) % 16],
            LAST_NAMES[(n * 7 + version) % 16],
            "" if (n + 3 * version) % 41 == 0 else COUNTRIES[(n + version) % 10],
            PLANS[(n + version) % 4], _NOTES[(n * 13 + version) % len(_NOTES)]]


def metadata(n: int, version: int) -> dict[str, str]:
    """What node_metadata.metadata must hold for key n at ``version``."""
    pairs = zip(COLUMNS[1:], values(n, version), strict=False)
    return {name: value for name, value in pairs if value}


def _csv_cell(value: str) -> str:
    if any(c in value for c in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


@dataclass
class Content:
    """One step's input: file rows ``(key, version)`` (key < 0: a bad row of that kind) or
    a list of reference IDs, and the node type of its messages."""

    keys: array  # int32: key number, or BLANK / TOO_LONG / WRONG_WIDTH for a file's bad row
    versions: array | None  # int32 per row for a file; None for a reference-ID list
    node_type: int = 0

    @property
    def is_file(self) -> bool:
        return self.versions is not None

    @property
    def rows(self) -> int:
        return len(self.keys)

    def bad_rows(self) -> list[tuple[int, str]]:
        """(data row number, reason) of each bad row, as job_failures must hold them."""
        return [(i + 1, REASONS[k]) for i, k in enumerate(self.keys) if k < 0]

    def reference_ids(self) -> list[str]:
        return [reference_id(k) for k in self.keys]

    def write_csv(self, path: Path) -> Path:
        """The file, GZIP CSV (level 1: the producer must keep up)."""
        assert self.versions is not None
        with gzip.open(path, "wt", encoding="utf-8", newline="", compresslevel=1) as out:
            out.write(",".join(COLUMNS) + "\n")
            lines: list[str] = []
            for k, v in zip(self.keys, self.versions, strict=False):
                if k >= 0:
                    cells = [reference_id(k), *values(k, v)]
                elif k == BLANK:
                    cells = ["", *values(v, 0)]
                elif k == TOO_LONG:
                    cells = ["x" * 300, *values(v, 0)]
                else:  # WRONG_WIDTH: a truncated line
                    cells = [f"broken{v}", "only", "three"]
                lines.append(",".join(_csv_cell(c) for c in cells) + "\n")
                if len(lines) >= 20_000:
                    out.write("".join(lines))
                    lines.clear()
            out.write("".join(lines))
        return path


@dataclass
class Expected:
    """What one job of a step must end with (single job: exact; overlap: see ``Step``)."""

    total: int
    failed: int
    inserted: int
    updated: int
    unchanged: int
    new_keys: int  # keys this step added to its group (the overlap jobs' sum of inserted)


class GroupState:
    """A group's expected nodes: per key its metadata version (ABSENT, NO_METADATA or >= 0)
    and its type index."""

    def __init__(self, name: str, domain: str) -> None:
        self.name, self.domain = name, domain
        self.meta = array("i")
        self.types = array("b")

    def _grow(self, n: int) -> None:
        if n >= len(self.meta):
            extra = n + 1 - len(self.meta)
            self.meta.extend(itertools.repeat(ABSENT, extra))
            self.types.extend(itertools.repeat(0, extra))

    @property
    def size(self) -> int:
        return sum(1 for m in self.meta if m != ABSENT)

    def apply(self, content: Content) -> Expected:
        """Apply one step's content; the counters a single job of it must report."""
        total, failed = content.rows, sum(1 for k in content.keys if k < 0)
        ins = upd = unch = 0
        if content.versions is None:  # reference IDs: no metadata, the message's type
            for k in content.keys:
                self._grow(k)
                if self.meta[k] == ABSENT:
                    ins += 1
                    self.meta[k] = NO_METADATA
                elif self.types[k] == content.node_type:
                    unch += 1
                else:
                    upd += 1
                self.types[k] = content.node_type
            return Expected(total, failed, ins, upd, unch, ins)
        last: dict[int, int] = {}
        seen: dict[int, int] = {}
        for k, v in zip(content.keys, content.versions, strict=False):
            if k >= 0:
                last[k] = v
                seen[k] = seen.get(k, 0) + 1
        for k, v in last.items():
            self._grow(k)
            before, count = self.meta[k], seen[k]
            if before == ABSENT:
                ins += 1
                upd += count - 1
            elif count == 1 and before == v and self.types[k] == content.node_type:
                unch += 1
            else:
                upd += count
            self.meta[k], self.types[k] = v, content.node_type
        return Expected(total, failed, ins, upd, unch, ins)

    def rows(self) -> Iterator[tuple[str, str, str | None]]:
        """(reference_id, type, metadata JSON or None) of every expected node."""
        for k, m in enumerate(self.meta):
            if m == ABSENT:
                continue
            meta = None if m == NO_METADATA else orjson.dumps(metadata(k, m)).decode()
            yield reference_id(k), TYPES[self.types[k]], meta


# ------------------------------------------------------------------ the plan

@dataclass
class Message:
    """One message the producer sends (``copies`` > 1: the same bytes again at once)."""

    seq: str  # the soak's own id of the message (header ``soak-seq``)
    job_id: str | None  # None: the daemon derives it from (topic, partition, offset)
    copies: int = 1
    sent: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) each copy
    value: bytes | None = None  # its bytes, once sent (a late redelivery sends them again)


@dataclass
class Step:
    """One content sent to a group as one or several jobs."""

    index: int  # position in its chain
    content: Content | None  # dropped once sent and applied (bad_rows kept)
    messages: list[Message]
    overlap: bool = False  # several job ids with identical content at once
    # set when sent
    expected: Expected | None = None
    bad_rows: list[tuple[int, str]] = field(default_factory=list)
    rows: int = 0
    is_file: bool = False
    file: str | None = None
    sent_at: float | None = None
    checked_ids: set[str] = field(default_factory=set)  # the checker's: from the topic read

    @property
    def job_ids(self) -> set[str]:
        """The jobs its messages became (derived ids known once the copies are sent)."""
        from nodes_import.jobs import derived_job_id

        out = set()
        for m in self.messages:
            if m.job_id is not None:
                out.add(m.job_id)
            else:
                out.update(derived_job_id(TOPIC, p, o) for p, o in m.sent)
        return out


@dataclass
class Chain:
    """A group's steps, sent one after the other; built from its own seed when it starts."""

    number: int
    kind: str  # file | ids | trickle | overlap
    group: str
    domain: str
    seed: str
    steps: list[Step] = field(default_factory=list)


@dataclass
class Odd:
    """A message that is no valid job (``stage`` expected on its dead letter), or a valid
    job that must end FAILED (``job_id``: a file that does not exist)."""

    seq: str
    kind: str
    value: bytes | None
    stage: str
    reason: str
    job_id: str | None = None
    sent: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Event:
    """Something the producer does at ``at`` seconds: start a chain, send an odd message,
    or send an earlier chain's first message again (a late redelivery)."""

    at: float
    chain: Chain | None = None
    odd: Odd | None = None
    redeliver: int | None = None  # chain number whose first message is sent again


@dataclass(frozen=True)
class Rates:
    """Events per minute of each kind, and the file sizes (log-uniform)."""

    file_chains: float = 4.0
    ids_chains: float = 8.0
    overlaps: float = 2.0
    trickle: float = 40.0
    malformed: float = 4.0
    failing: float = 1.0
    late_redeliveries: float = 3.0
    min_rows: int = 1_000
    max_rows: int = 500_000

    def scaled(self, factor: float, max_rows: int | None = None) -> Rates:
        """Every rate times ``factor``; files up to ``max_rows``."""
        top = max_rows or self.max_rows
        return Rates(self.file_chains * factor, self.ids_chains * factor,
                     self.overlaps * factor, self.trickle * factor, self.malformed * factor,
                     self.failing * factor, self.late_redeliveries * factor,
                     min(self.min_rows, top), top)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


class Plan:
    """The whole seeded stream for ``seconds`` of sending: when each chain starts and
    each odd message goes. Chains build their content from their own seed when they
    start, so the plan is cheap and memory holds only the chains under way."""

    def __init__(self, seed: int, seconds: float, rates: Rates, files: Path,
                 max_message_bytes: int) -> None:
        self.seed, self.seconds, self.rates, self.files = seed, seconds, rates, files
        self.max_message_bytes = max_message_bytes
        self.rng = random.Random(f"stream-{seed}")
        self.events: list[Event] = []
        self._build()

    def _arrivals(self, per_minute: float) -> Iterator[float]:
        if per_minute <= 0:
            return
        t = self.rng.expovariate(per_minute / 60.0)
        while t < self.seconds:
            yield t
            t += self.rng.expovariate(per_minute / 60.0)

    def _build(self) -> None:
        r, rng = self.rates, self.rng
        starts = [(at, kind) for kind, rate in (
            ("file", r.file_chains), ("ids", r.ids_chains), ("overlap", r.overlaps),
            ("trickle", r.trickle)) for at in self._arrivals(rate)]
        for number, (at, kind) in enumerate(sorted(starts)):
            chain = Chain(number, kind, f"{kind}-{self.seed}-{number:05d}", _uuid(rng),
                          f"chain-{self.seed}-{number}")
            self.events.append(Event(at, chain=chain))
        odd = itertools.count()
        for at in self._arrivals(r.malformed):
            self.events.append(Event(at, odd=self._malformed(f"o{next(odd)}")))
        for at in self._arrivals(r.failing):
            self.events.append(Event(at, odd=self._failing(f"o{next(odd)}")))
        redeliverable = [(e.at, e.chain.number) for e in self.events
                         if e.chain is not None and e.chain.kind in ("file", "ids")]
        for at in self._arrivals(r.late_redeliveries):
            earlier = [n for t, n in redeliverable if t < at - 5]
            if earlier:
                self.events.append(Event(at, redeliver=rng.choice(earlier)))
        self.events.sort(key=lambda e: e.at)

    def _malformed(self, seq: str) -> Odd:
        rng = self.rng
        ok = {"groupId": f"bad-{seq}", "domainId": _uuid(rng), "referenceIds": ["a"]}
        cases: list[tuple[str, bytes | None, str, str]] = [
            ("null", None, "parse", "empty message (null value)"),
            ("empty", b"", "parse", "empty message (zero bytes)"),
            ("not-json", b"{not json", "parse", "not valid JSON"),
            ("array", b"[1, 2]", "parse", "expected a JSON object, got array"),
            ("no-domain", orjson.dumps({"groupId": "g", "referenceIds": ["a"]}), "validate",
             "domainId is missing"),
            ("bad-domain", orjson.dumps({**ok, "domainId": "nope"}), "validate",
             "domainId: not a UUID"),
            ("both", orjson.dumps({**ok, "file": "/x.csv.gz"}), "validate",
             "both file and referenceIds"),
            ("bad-job-id", orjson.dumps({**ok, "jobId": "x"}), "validate", "jobId: not a UUID"),
            ("blank-group", orjson.dumps({**ok, "groupId": "  "}), "validate",
             "groupId is blank"),
            ("oversize", orjson.dumps({**ok, "pad": "x" * (self.max_message_bytes + 100)}),
             "parse", "over kafka.max-message-bytes"),
        ]
        kind, value, stage, reason = rng.choice(cases)
        return Odd(seq, kind, value, stage, reason)

    def _failing(self, seq: str) -> Odd:
        rng = self.rng
        job_id = _uuid(rng)
        body = {"groupId": f"missing-{self.seed}-{seq}", "domainId": _uuid(rng),
                "file": str(self.files / f"missing-{seq}.csv.gz"), "jobId": job_id}
        return Odd(seq, "missing-file", orjson.dumps(body), "import", "", job_id=job_id)

    def summary(self) -> dict[str, Any]:
        chains = [e.chain for e in self.events if e.chain is not None]
        return {"events": len(self.events),
                "chains": {k: sum(1 for c in chains if c.kind == k)
                           for k in ("file", "ids", "overlap", "trickle")},
                "malformed": sum(1 for e in self.events if e.odd and e.odd.stage != "import"),
                "failing": sum(1 for e in self.events if e.odd and e.odd.stage == "import"),
                "late redeliveries": sum(1 for e in self.events if e.redeliver is not None)}


class ChainBuilder:
    """A chain's steps from its own seed (so a chain is the same whenever it starts)."""

    def __init__(self, chain: Chain, rates: Rates) -> None:
        self.chain, self.rates = chain, rates
        self.rng = random.Random(chain.seed)
        self._version = itertools.count(FRESH_VERSION_BASE)

    def build(self) -> list[Step]:
        c, rng = self.chain, self.rng
        if c.kind == "file":
            size = self._rows()
            content, version = self._file(self._permuted(0, size), {})
            steps = [Step(0, content, self._messages(0, 1))]
            for index in range(1, rng.choice([1, 1, 2, 3])):
                steps.append(self._update(index, size, version))
                size = max(size, max(version) + 1)
            return steps
        if c.kind in ("ids", "trickle"):
            count = rng.randint(1, 20) if c.kind == "trickle" else (
                rng.randint(1, 1000) if rng.random() < 0.7 else rng.randint(1001, MAX_IDS))
            steps = [Step(0, Content(array("i", self._permuted(0, count)), None),
                          self._messages(0, 1))]
            if c.kind == "ids":
                for index in range(1, rng.choice([1, 2, 2, 3])):
                    lo = rng.randrange(count)
                    keys = list(range(lo, min(count, lo + rng.randint(1, 1000)))) + \
                        list(range(count, count + rng.randint(0, 300)))
                    count = max(count, keys[-1] + 1)
                    steps.append(Step(index, Content(array("i", keys), None,
                                                     rng.choice([0, 0, 1, 2])),
                                      self._messages(index, 1)))
            return steps
        # overlap: the same content as 2-3 jobs at once
        jobs = rng.choice([2, 2, 3])
        if rng.random() < 0.5:
            top = max(1001, min(50_000, self.rates.max_rows))
            size = int(math.exp(rng.uniform(math.log(1000), math.log(top))))
            content, _ = self._file(self._permuted(0, size), {})
        else:
            content = Content(array("i", self._permuted(0, rng.randint(1, 1000))), None)
        return [Step(0, content, self._messages(0, jobs, allow_derived=False), overlap=True)]

    def _messages(self, step: int, jobs: int, *, allow_derived: bool = True) -> list[Message]:
        out = []
        for m in range(jobs):
            derived = allow_derived and self.rng.random() < 0.2
            copies = 1 if derived or self.rng.random() > 0.1 else self.rng.choice([2, 3])
            out.append(Message(f"c{self.chain.number}.{step}.{m}",
                               None if derived else _uuid(self.rng), copies))
        return out

    def _rows(self) -> int:
        lo, hi = math.log(self.rates.min_rows), math.log(self.rates.max_rows)
        return int(math.exp(self.rng.uniform(lo, hi)))

    def _permuted(self, start: int, count: int) -> list[int]:
        """``start .. start+count-1`` in a seeded order (an affine permutation: cheap)."""
        if count <= 1:
            return list(range(start, start + count))
        a = self.rng.randrange(1, count)
        while math.gcd(a, count) != 1:
            a += 1
        b = self.rng.randrange(count)
        return [start + (a * i + b) % count for i in range(count)]

    def _file(self, keys: list[int], versions: dict[int, int]) -> tuple[Content, dict[int, int]]:
        """File rows for ``keys`` in order, at ``versions`` (default 0), with bad rows and
        repeated keys added: a repeated key gets a fresh version for every occurrence
        (the rule that keeps counters independent of batching). Returns the content and
        every key's final version."""
        rng = self.rng
        bad_every = rng.choice([0, 0, 200, 1000])
        dup_every = rng.choice([0, 0, 100, 500])
        ks, vs = array("i"), array("i")
        final = dict(versions)
        for i, k in enumerate(keys):
            v = versions.get(k, 0)
            if dup_every and i % dup_every == 7:  # an earlier occurrence, then this one
                ks.append(k)
                vs.append(next(self._version))
                v = next(self._version)
            ks.append(k)
            vs.append(v)
            final[k] = v
            if bad_every and i % bad_every == 3:
                ks.append(rng.choice([BLANK, BLANK, TOO_LONG, WRONG_WIDTH]))
                vs.append(i)
        return Content(ks, vs), final

    def _update(self, index: int, size: int, version: dict[int, int]) -> Step:
        """A later step of a file group: part of its keys (about half changed, the rest as
        stored) plus new keys; one time in four as a reference-ID list instead."""
        rng = self.rng
        lo = rng.randrange(size)
        hi = min(size, lo + max(1, int(size * rng.uniform(0.1, 0.5))))
        new = rng.randint(0, max(1, size // 10))
        if rng.random() < 0.25:
            keys = list(range(lo, min(hi, lo + MAX_IDS - 1000))) + \
                list(range(size, size + min(new, 1000)))
            for k in keys:
                version.setdefault(k, -1)  # present, no metadata
            return Step(index, Content(array("i", keys), None, rng.choice([0, 1])),
                        self._messages(index, 1))
        keys = list(range(lo, hi)) + list(range(size, size + new))
        wanted = {k: version[k] if version.get(k, -1) >= 0 and rng.random() < 0.5
                  else next(self._version) for k in keys}
        content, final = self._file(keys, wanted)
        version.update({k: final[k] for k in keys})
        return Step(index, content, self._messages(index, 1))


def message_value(chain: Chain, step: Step, message: Message) -> bytes:
    """The bytes of one of a step's messages."""
    assert step.content is not None
    body: dict[str, Any] = {"groupId": chain.group, "domainId": chain.domain}
    if step.content.is_file:
        assert step.file is not None
        body["file"] = step.file
    else:
        body["referenceIds"] = step.content.reference_ids()
    if step.content.node_type:
        body["nodeType"] = TYPES[step.content.node_type]
    if message.job_id is not None:
        body["jobId"] = message.job_id
    return orjson.dumps(body)

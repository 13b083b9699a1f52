"""Trio-native fakes of the outlet's external interfaces, for in-process pipeline tests.

- ``FakeTopic`` + ``FakeSource``: Kafka as a ``RecordSource`` (outlet/kafka_input.py):
  partitions of records named ``b"<partition>:<offset>"``, committed offsets with their
  metadata (the batch ledger), a consumer group of one or more members (``FakeSource``
  each) whose partitions the test moves (``move``, ``expire``), rebalance callbacks
  run inside ``poll()`` as librdkafka runs them inside ``consume()``; a member whose
  session expired is fenced (its commits fail, as the broker refuses a stale member).
- ``FakeEncoder``: an ``Encoder`` whose "Native" bytes are the JSON list of the records
  (so a fake writer can tell which records a batch holds); failures can be injected.
- ``FakeClickHouse`` + its ``Writer``: stores batches by deduplication token as ClickHouse
  does (a repeated token stores nothing); can hang, fail or be slow. Its writers answer
  probes (``ping``) and the deduplication audit's query from the fake's own insert log,
  as system.query_log/part_log would.
- ``inline``: runs the ledger's and spools' blocking disk calls in the Trio thread (the
  real file ledger and spool, without threads).
- ``FailingDisk``: the spool's and ledger's writes (outlet/diskio.py) under one directory
  fail as a full disk does (half the bytes written, then ENOSPC) while ``failing``.

All of them wait on Trio primitives only (no threads), so tests run deterministically
under ``trio.testing.MockClock(autojump_threshold=0)``.
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from outlet import diskio
from outlet.batch import EncodedJob
from outlet.codec import EncodedBatch
from outlet.config import ConnectionConfig, OutletConfig, parse_config
from outlet.kafka_input import (
    Chunk,
    ClusterFacts,
    CommitRequest,
    Polled,
    PollRequest,
    RecordSource,
    SourceHooks,
)
from outlet.ledger import RunSync
from outlet.metrics import Metrics
from outlet.notify import Notifier
from outlet.pipeline import Backends
from outlet.writer import InsertResult

PRIMARY_URL = "http://127.0.0.1:18123"
AZURE_URL = "http://127.0.0.1:28123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config(
    state: Any,
    *,
    azure: dict[str, Any] | None = None,
    kafka: dict[str, Any] | None = None,
    clickhouse: dict[str, Any] | None = None,
) -> OutletConfig:
    """A small outlet config: batches of 10, 1 s wait, 5 records per poll, 1-chunk channel."""
    data: dict[str, Any] = {
        "kafka": {"topic": "flows", "max-poll-records": 5, "queue-size": 1, **(kafka or {})},
        "clickhousedb": {"servers": [PRIMARY_URL]},
        "clickhouse": {
            "maximum-batch-size": 10,
            "maximum-wait-time": "1s",
            "grace-period": "10s",
            **(clickhouse or {}),
        },
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "state": {"path": str(state)},
    }
    if azure is not None:
        data["additional-clickhouses"] = [
            {
                "name": "azure",
                "connection": {
                    "servers": [AZURE_URL],
                    "max-retries": 3,
                    "retry-initial-backoff": "100ms",
                    "retry-max-backoff": "1s",
                },
                **azure,
            }
        ]
    return parse_config(data, env={})


def record(partition: int, offset: int) -> str:
    return f"{partition}:{offset}"


# -- Kafka --------------------------------------------------------------------------------
ILLEGAL_GENERATION = 22  # Kafka's error code for a commit from a stale group member


@dataclass
class FakeTopic:
    """One topic, its consumer group's committed offsets (and metadata) and members.

    ``auto_assign``: the first member to open gets every partition (a group of one);
    otherwise the test assigns partitions with ``assign``/``move``/``expire``.
    """

    partitions: int = 2
    logs: dict[int, list[bytes]] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)
    metadata: dict[int, str] = field(default_factory=dict)
    commit_log: list[dict[int, int]] = field(default_factory=list)
    grown: Notifier = field(default_factory=Notifier)
    auto_assign: bool = True
    members: list[FakeSource] = field(default_factory=list)
    cluster_id: str = "fake-cluster"  # what the brokers report
    metadata_max_bytes: int | None = 4096  # the brokers' offset.metadata.max.bytes

    def __post_init__(self) -> None:
        for p in range(self.partitions):
            self.logs.setdefault(p, [])

    def produce(self, partition: int, count: int) -> None:
        log = self.logs[partition]
        for _ in range(count):
            log.append(record(partition, len(log)).encode())
        self.grown.notify()

    def all_records(self) -> list[str]:
        return [r.decode() for p in sorted(self.logs) for r in self.logs[p]]

    def clear_commits(self) -> None:
        self.committed.clear()
        self.metadata.clear()

    # -- the group (the test scripts it) --------------------------------------------------
    def assign(self, member: FakeSource, partitions: set[int]) -> None:
        member.events.append(("assign", set(partitions)))
        self.grown.notify()

    def move(self, partitions: set[int], src: FakeSource, dst: FakeSource) -> None:
        """A graceful rebalance: `src` revokes (and commits), then `dst` is assigned."""
        src.events.append(("revoke", set(partitions)))
        src.then_assign.append((dst, set(partitions)))
        self.grown.notify()

    def expire(self, member: FakeSource, to: FakeSource | None = None) -> None:
        """The member's session times out: it is fenced at once (its commits fail), its
        partitions go to `to` (if given), and it learns of the loss at its next poll."""
        member.fenced = True
        lost = set(member.assignment)
        member.events.append(("lost", lost))
        if to is not None:
            self.assign(to, lost)
        self.grown.notify()


class FakeSource:
    """A consumer-group member (a group of one unless the test moves partitions)."""

    def __init__(self, topic: FakeTopic) -> None:
        self.topic = topic
        self.hooks: SourceHooks | None = None
        self.assignment: set[int] = set()
        self.positions: dict[int, int] = {}
        self.paused = False
        self.fenced = False
        self.pause_changes: list[tuple[float, bool]] = []
        self.events: deque[tuple[str, set[int]]] = deque()
        self.then_assign: deque[tuple[FakeSource, set[int]]] = deque()
        self.read = 0  # records handed to the input
        self.closed = False

    async def cluster(self) -> ClusterFacts:
        await trio.lowlevel.checkpoint()
        return ClusterFacts(self.topic.cluster_id, self.topic.metadata_max_bytes)

    async def open(self, hooks: SourceHooks) -> None:
        self.hooks = hooks
        self.topic.members.append(self)
        if self.topic.auto_assign and len(self.topic.members) == 1:
            self.events.append(("assign", set(range(self.topic.partitions))))

    def failure_reason(self) -> str:
        return ""

    def revoke(self, partitions: set[int]) -> None:
        self.events.append(("revoke", set(partitions)))
        self.topic.grown.notify()

    def assign(self, partitions: set[int]) -> None:
        self.events.append(("assign", set(partitions)))
        self.topic.grown.notify()

    async def poll(self, request: PollRequest) -> Polled:
        await trio.lowlevel.checkpoint()
        if request.paused != self.paused:
            self.paused = request.paused
            self.pause_changes.append((trio.current_time(), request.paused))
        answered: list[CommitRequest] = []
        for commit in request.commits:
            self._commit(commit, answered)
        await self._serve_events(answered)
        chunk = self._take(request.limit)
        if not chunk:
            with trio.move_on_after(request.timeout):
                await self.topic.grown.wait()
            await self._serve_events(answered)
            chunk = self._take(request.limit)
        return Polled(chunk, answered)

    def _commit(self, request: CommitRequest, answered: list[CommitRequest]) -> None:
        """As KafkaClient: only partitions assigned to us are sent; a fenced member's
        commit is refused by the broker."""
        request.offsets = {p: o for p, o in request.offsets.items() if p in self.assignment}
        answered.append(request)
        if not request.offsets:
            request.error, request.revoked = "partition not assigned any more", True
            return
        if self.fenced:
            request.error, request.code = "Broker: Specified group generation id is not valid", \
                ILLEGAL_GENERATION
            return
        self.topic.committed.update(request.offsets)
        for p in request.offsets:
            self.topic.metadata[p] = request.metadata.get(p, "")
        self.topic.commit_log.append(dict(request.offsets))

    async def _serve_events(self, answered: list[CommitRequest]) -> None:
        assert self.hooks is not None
        while self.events:
            kind, parts = self.events.popleft()
            if kind == "assign":
                self.fenced = False
                committed = {p: self.topic.committed[p] for p in parts if p in self.topic.committed}
                metadata = {p: self.topic.metadata.get(p, "") for p in committed}
                for p in parts:
                    self.positions[p] = committed.get(p, 0)
                self.assignment |= parts
                self.hooks.assigned(parts, committed, metadata)
            elif kind == "lost":
                self.assignment -= parts
                self.hooks.lost(parts)
            else:
                request = await self.hooks.revoking(parts)
                if request is not None:
                    self._commit(request, answered)
                self.assignment -= parts
                self.hooks.revoked(parts)
                if self.then_assign:
                    dst, moved = self.then_assign.popleft()
                    self.topic.assign(dst, moved)

    def _take(self, limit: int) -> Chunk:
        chunk = Chunk()
        if self.paused:
            return chunk
        for p in sorted(self.assignment):
            log = self.topic.logs[p]
            while self.positions[p] < len(log) and len(chunk) < limit:
                off = self.positions[p]
                chunk.partitions.append(p)
                chunk.offsets.append(off)
                chunk.values.append(log[off])
                self.positions[p] = off + 1
        self.read += len(chunk)
        return chunk

    async def aclose(self) -> None:
        """Leave the group: what we own is revoked (a clean close), unless we crashed."""
        self.closed = True
        if self in self.topic.members:
            self.topic.members.remove(self)


# -- codec ----------------------------------------------------------------------------------
class FakeEncoder:
    """Native bytes = JSON list of the records; records starting with b"bad" are skipped."""

    def __init__(self) -> None:
        self.compression = "none"  # not applied: the fake's bytes are always JSON
        self.fail: deque[BaseException] = deque()  # raised by the next encode() calls
        self.fail_if: Callable[[Sequence[bytes]], BaseException | None] | None = None
        self.calls = 0
        self.closed = False

    async def encode(self, records: Sequence[bytes]) -> EncodedBatch:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        if self.fail:
            raise self.fail.popleft()
        if self.fail_if is not None and (exc := self.fail_if(records)) is not None:
            raise exc
        good = [r.decode() for r in records if not r.startswith(b"bad")]
        bad = tuple(i for i, r in enumerate(records) if r.startswith(b"bad"))
        return EncodedBatch(json.dumps(good).encode(), len(good), bad, ("framing",) * len(bad))

    async def aclose(self) -> None:
        self.closed = True


def job_records(job: EncodedJob) -> list[str]:
    return list(json.loads(job.native)) if job.native else []


# -- ClickHouse --------------------------------------------------------------------------
@dataclass
class Insert:
    at: float
    token: str
    records: list[str]
    stored: bool  # False: a repeated token, dropped as ClickHouse does
    comment: str = ""  # the attempt's log_comment


class FakeClickHouse:
    """One destination's server. Behaviour knobs apply to every writer connected to it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.up = trio.Event()  # inserts wait while not set
        self.up.set()
        self.latency = 0.0
        self.fail: Callable[[EncodedJob], BaseException | None] | None = None
        self.tokens: dict[str, list[str]] = {}
        self.inserts: list[Insert] = []
        self.attempts = 0
        self.pings = 0
        self.password: str | None = None  # set: writers with another one fail auth (516)
        self._comments = 0

    def stop(self) -> None:
        """Inserts hang (a partitioned link: the writer's timeout fires) until start()."""
        if self.up.is_set():
            self.up = trio.Event()

    def start(self) -> None:
        self.up.set()

    @property
    def rows(self) -> list[str]:
        return [r for recs in self.tokens.values() for r in recs]

    async def insert(self, job: EncodedJob) -> InsertResult:
        self.attempts += 1
        await self.up.wait()
        if self.latency:
            await trio.sleep(self.latency)
        if self.fail is not None and (exc := self.fail(job)) is not None:
            raise exc
        records = job_records(job)
        stored = job.token not in self.tokens
        if stored:
            self.tokens[job.token] = records
        self._comments += 1
        comment = f"{self.name}-{self._comments}"
        self.inserts.append(Insert(trio.current_time(), job.token, records, stored, comment))
        # As the real engine: written_rows counts deduplicated rows too (dedup_audit.py).
        return InsertResult(comment, len(records))

    async def ping(self) -> None:
        self.pings += 1
        await self.up.wait()
        if self.latency:
            await trio.sleep(self.latency)

    def audit_rows(self, comments: Sequence[str]) -> list[tuple[str, int, int]]:
        """What AUDIT_SQL answers: per insert, rows stored and rows deduplicated."""
        wanted = set(comments)
        return [
            (i.comment, len(i.records) if i.stored else 0, 0 if i.stored else len(i.records))
            for i in self.inserts
            if i.comment in wanted
        ]


class FakeWriter:
    """A connection to a FakeClickHouse; an insert times out as clickhouse-connect's does."""

    def __init__(self, server: FakeClickHouse, conn: ConnectionConfig) -> None:
        self._server = server
        self.conn = conn
        self.server = conn.servers[0]
        self.timeout = conn.insert_timeout
        self.closed = False
        self.writes = 0

    def _authenticate(self) -> None:
        wanted = self._server.password
        if wanted is not None and self.conn.password.reveal() != wanted:
            raise RuntimeError(f"Code: 516. DB::Exception: {self._server.name}: Authentication"
                               " failed: password is incorrect")

    async def write(self, job: EncodedJob) -> InsertResult:
        assert not self.closed, "a write on a closed writer"
        self.writes += 1
        self._authenticate()
        with trio.fail_after(self.timeout):
            return await self._server.insert(job)

    async def ping(self) -> None:
        self._authenticate()
        with trio.fail_after(self.timeout):
            await self._server.ping()

    async def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        with trio.fail_after(self.timeout):
            await self._server.up.wait()
        return list(self._server.audit_rows(parameters["comments"]))

    def redact(self, text: str) -> str:
        return text

    async def aclose(self) -> None:
        self.closed = True


# -- everything together ---------------------------------------------------------------------
@dataclass
class World:
    """The outlet's surroundings in one process: Kafka, the codec, two ClickHouses."""

    topic: FakeTopic = field(default_factory=FakeTopic)
    encoder: FakeEncoder = field(default_factory=FakeEncoder)
    servers: dict[str, FakeClickHouse] = field(
        default_factory=lambda: {
            PRIMARY_URL: FakeClickHouse("primary"),
            AZURE_URL: FakeClickHouse("azure"),
        }
    )
    sources: list[FakeSource] = field(default_factory=list)
    writers: list[FakeWriter] = field(default_factory=list)

    @property
    def primary(self) -> FakeClickHouse:
        return self.servers[PRIMARY_URL]

    @property
    def azure(self) -> FakeClickHouse:
        return self.servers[AZURE_URL]

    @property
    def source(self) -> FakeSource:
        return self.sources[-1]

    def backends(
        self,
        source: Callable[[Any, Metrics], RecordSource] | None = None,
        disk: RunSync | None = None,
    ) -> Backends:
        """Fakes everywhere; `source` replaces FakeSource (e.g. KafkaClient over a fake
        librdkafka consumer, in real threads: then pass ``disk=trio.to_thread.run_sync``)."""

        def fake_source(cfg: Any, metrics: Metrics) -> FakeSource:
            s = FakeSource(self.topic)
            self.sources.append(s)
            return s

        def writer(conn: ConnectionConfig) -> FakeWriter:
            w = FakeWriter(self.servers[conn.servers[0]], conn)
            self.writers.append(w)
            return w

        async def encoder(cfg: Any) -> FakeEncoder:
            await trio.lowlevel.checkpoint()
            return self.encoder

        return Backends(
            source=source or fake_source,
            encoder=encoder,
            writer=writer,
            http=None,
            disk=disk or inline,
        )


async def inline(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Backends.disk for MockClock tests: blocking disk calls in the Trio thread."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


class FailingDisk:
    """Writes through outlet.diskio.write_all to files under `root` fail while `failing`:
    half of the bytes land, then OSError(`error`), as on a disk that fills up mid-write.
    Install with ``monkeypatch.setattr(diskio, "write_all", disk.write_all)``."""

    def __init__(self, root: Any, error: int = errno.ENOSPC) -> None:
        self.root = str(root)
        self.error = error
        self.failing = False
        self.failures = 0
        self._real = diskio.write_all

    def write_all(self, fd: int, data: bytes) -> None:
        if self.failing and os.readlink(f"/proc/self/fd/{fd}").startswith(self.root):
            self.failures += 1
            os.write(fd, bytes(data)[: len(data) // 2])
            raise OSError(self.error, os.strerror(self.error))
        self._real(fd, data)

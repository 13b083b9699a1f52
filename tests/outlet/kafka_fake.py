"""A fake of the librdkafka consumer surface the outlet uses (confluent_kafka.Consumer).

It behaves like librdkafka where our code depends on it: rebalance callbacks run inside
``consume()``, in the caller's thread; a synchronous ``commit()`` stores offsets with their
metadata and returns the partitions (``committed()`` reads both back); paused partitions
deliver nothing. It also checks the thread rule of outlet/kafka_client.py: every call
records its thread, and a call made while another thread is inside the consumer is
recorded in ``overlaps``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_INVALID, TopicPartition

Callback = Callable[[Any, list[TopicPartition]], None]


@dataclass
class FakeMessage:
    _partition: int
    _offset: int
    _value: bytes

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


@dataclass
class FakeBroker:
    """One topic's partitions and the group's committed offsets."""

    topic: str = "flows"
    partitions: int = 2
    logs: dict[int, list[bytes]] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)
    metadata: dict[int, str] = field(default_factory=dict)
    commit_log: list[dict[int, int]] = field(default_factory=list)
    consumers: list[FakeConsumer] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        for p in range(self.partitions):
            self.logs.setdefault(p, [])

    def produce(self, partition: int, count: int) -> None:
        """Append records whose value names their position: b"<partition>:<offset>"."""
        with self.cond:
            log = self.logs[partition]
            for _ in range(count):
                log.append(f"{partition}:{len(log)}".encode())
            self.cond.notify_all()

    def consumer_factory(self) -> Callable[..., FakeConsumer]:
        def make(settings: dict[str, Any], logger: Any = None) -> FakeConsumer:
            consumer = FakeConsumer(self, settings)
            self.consumers.append(consumer)
            return consumer

        return make

    def admin_factory(self) -> Callable[..., FakeAdmin]:
        """confluent_kafka.admin.AdminClient's part the outlet uses (the metadata cap)."""
        return lambda settings: FakeAdmin()

    def revoke(self, partitions: set[int]) -> None:
        """The group takes these partitions away at the member's next consume()."""
        with self.cond:
            for c in self.consumers:
                c.events.append(("revoke", set(partitions)))
            self.cond.notify_all()


class _Metadata:
    cluster_id = "fake-cluster"
    brokers: dict[int, Any] = {1: None}


class FakeAdmin:
    """Brokers that do not let us read their configs: the metadata cap is unknown."""

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        return _Metadata()

    def describe_configs(self, resources: list[Any]) -> Any:
        raise RuntimeError("CLUSTER_AUTHORIZATION_FAILED (fake)")


class FakeConsumer:
    def __init__(self, broker: FakeBroker, settings: dict[str, Any]) -> None:
        self.broker = broker
        self.settings = settings
        self.events: deque[tuple[str, set[int]]] = deque()
        self.assignment: set[int] = set()
        self.positions: dict[int, int] = {}
        self.paused: set[int] = set()
        self.closed = False
        self.calls: list[tuple[str, int]] = []  # (method, thread id)
        self.overlaps: list[str] = []
        self.revoke_started = threading.Event()
        self._on_assign: Callback | None = None
        self._on_revoke: Callback | None = None
        self._on_lost: Callback | None = None
        self._inside: dict[int, int] = {}  # thread id -> call depth
        self._guard = threading.Lock()

    @contextmanager
    def _call(self, name: str) -> Iterator[None]:
        me = threading.get_ident()
        with self._guard:
            self.calls.append((name, me))
            if any(t != me for t in self._inside):
                self.overlaps.append(name)
            self._inside[me] = self._inside.get(me, 0) + 1
        try:
            yield
        finally:
            with self._guard:
                self._inside[me] -= 1
                if not self._inside[me]:
                    del self._inside[me]

    def _tps(self, parts: set[int]) -> list[TopicPartition]:
        return [TopicPartition(self.broker.topic, p) for p in sorted(parts)]

    # -- the librdkafka surface ------------------------------------------------------
    def subscribe(
        self,
        topics: list[str],
        on_assign: Callback | None = None,
        on_revoke: Callback | None = None,
        on_lost: Callback | None = None,
    ) -> None:
        with self._call("subscribe"):
            self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost
            self.events.append(("assign", set(range(self.broker.partitions))))

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        with self._call("consume"):
            deadline = time.monotonic() + max(0.0, timeout)
            while True:
                self._serve_events()
                out = self._take(num_messages)
                if out:
                    return out
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                with self.broker.cond:
                    self.broker.cond.wait(min(left, 0.01))

    def _serve_events(self) -> None:
        while self.events:
            kind, parts = self.events.popleft()
            if kind == "assign":
                committed = self.broker.committed
                for p in parts:
                    self.positions[p] = committed.get(p, 0)
                self.assignment |= parts
                if self._on_assign is not None:
                    self._on_assign(self, self._tps(parts))
            else:
                self.revoke_started.set()
                if self._on_revoke is not None:
                    self._on_revoke(self, self._tps(parts))
                self.assignment -= parts
                # librdkafka keeps a partition's pause flag across a revoke: assigned back,
                # it is still paused until resumed (confluent-kafka-go issue 193,
                # librdkafka issue 1849)

    def _take(self, limit: int) -> list[FakeMessage]:
        out: list[FakeMessage] = []
        with self.broker.cond:
            for p in sorted(self.assignment - self.paused):
                log = self.broker.logs[p]
                while self.positions[p] < len(log) and len(out) < limit:
                    off = self.positions[p]
                    out.append(FakeMessage(p, off, log[off]))
                    self.positions[p] = off + 1
        return out

    def committed(self, partitions: list[TopicPartition], timeout: float = -1) -> list[Any]:
        with self._call("committed"):
            out = []
            for tp in partitions:
                offset = self.broker.committed.get(tp.partition, OFFSET_INVALID)
                meta = self.broker.metadata.get(tp.partition)  # librdkafka: None if never set
                kwargs = {"metadata": meta} if meta is not None else {}
                out.append(TopicPartition(tp.topic, tp.partition, offset, **kwargs))
            return out

    def commit(
        self, offsets: list[TopicPartition] | None = None, asynchronous: bool = True
    ) -> list[TopicPartition]:
        assert not asynchronous, "the outlet commits synchronously (see the thread rule)"
        with self._call("commit"):
            done = []
            with self.broker.cond:
                entry = {}
                for tp in offsets or []:
                    if tp.partition in self.assignment:
                        self.broker.committed[tp.partition] = tp.offset
                        self.broker.metadata[tp.partition] = tp.metadata or ""
                        entry[tp.partition] = tp.offset
                    done.append(TopicPartition(tp.topic, tp.partition, tp.offset))
                self.broker.commit_log.append(entry)
            return done

    def pause(self, partitions: list[TopicPartition]) -> None:
        with self._call("pause"):
            self.paused |= {tp.partition for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        with self._call("resume"):
            self.paused -= {tp.partition for tp in partitions}

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        with self._call("get_watermark_offsets"):
            return 0, len(self.broker.logs[partition.partition])

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        with self._call("list_topics"):

            return _Metadata()

    def close(self) -> None:
        with self._call("close"):
            if self.assignment and self._on_revoke is not None:
                self._on_revoke(self, self._tps(self.assignment))
            self.assignment = set()
            self.closed = True

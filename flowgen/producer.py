"""Produce generated flows to Kafka (confluent-kafka), paced or as fast as possible.

CLI (demo, chaos harness)::

    python -m flowgen.producer --bootstrap 127.0.0.1:9092 --topic flows \\
        --count 200000 --rate 20000 --seed 1 --unique [--run-id 3] [--start 0]

prints one JSON line: ``{"count", "records", "bytes_sum", "packets_sum", "seconds", ...}``
where ``bytes_sum``/``packets_sum`` are the sums of the flows' Bytes/Packets fields
(what the flows table must hold), and exits non-zero if any delivery failed.

The producer is idempotent (``enable.idempotence=true``, ``acks=all``): librdkafka's
internal retries never duplicate a record.

Every harness produces through this module: :func:`produce` (tests, benchmarks, demo),
:class:`ProducerThread` (chaos load with a changeable rate, capacity phases) and, for
Locust's gevent users that must never block, :func:`producer_config`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from flowgen.generator import FlowGenerator, GeneratorConfig, generator_config
from outlet.logs import librdkafka_logger

DEFAULT_PRODUCER_CONFIG: dict[str, Any] = {
    "linger.ms": 5,
    "batch.num.messages": 10000,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 500_000,
    "queue.buffering.max.kbytes": 512 * 1024,
    "compression.type": "none",
    "acks": "all",
    "enable.idempotence": True,
    "message.timeout.ms": 120_000,
}


class ProduceError(RuntimeError):
    """Some records were not delivered."""


@dataclass
class ProduceStats:
    records: int = 0
    payload_bytes: int = 0
    delivered: int = 0
    failed: int = 0
    seconds: float = 0.0  # first record to the end of the final flush
    enqueued_until: float = 0.0  # time.monotonic() when the last record was handed over
    errors: list[str] = field(default_factory=list)  # the first few delivery errors

    def on_delivery(self, err: KafkaError | None, _msg: Message | None = None) -> None:
        """librdkafka's delivery callback: count the outcome, keep the first errors."""
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        if len(self.errors) < 10:
            self.errors.append(str(err))

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class RateLimiter:
    """Paces items to ``rate`` per second in small slices (default 10 ms). After a stall
    (the thread not scheduled on a busy machine, a full local queue) it catches up on at
    most ``catch_up_s`` of items, one slice per call without sleeping: short stalls do not
    lower the average rate, long ones are not turned into a burst of the whole backlog."""

    def __init__(self, rate: float, slice_s: float = 0.01, catch_up_s: float = 0.2, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.slice_s = slice_s
        self.catch_up_s = max(catch_up_s, 2 * slice_s)
        self._clock, self._sleep = clock, sleep
        self._t0 = clock()
        self._done = 0.0
        self.dropped = 0.0  # items given up after stalls longer than catch_up_s

    def allowance(self) -> int:
        """Items that may be sent now (>= 1), sleeping as needed."""
        while True:
            now = self._clock()
            due = (now - self._t0) * self.rate - self._done
            if due >= 1.0:
                burst = max(1.0, self.rate * self.slice_s)
                debt_cap = max(burst, self.rate * self.catch_up_s)
                if due > debt_cap:  # a long stall: catch up on catch_up_s of it only
                    self.dropped += due - debt_cap
                    self._done += due - debt_cap
                    due = debt_cap
                return int(min(due, burst))
            self._sleep(min(self.slice_s, (1.0 - due) / self.rate))

    def consumed(self, n: int) -> None:
        self._done += n


def encode_chunk_for(rate: float | None) -> int:
    """Generator encode chunk for a paced producer: "now" timestamps are taken per chunk,
    so a chunk holds at most ~50 ms of flows (4096 at full speed)."""
    if not rate:
        return 4096
    return max(16, min(4096, math.ceil(rate / 20)))


def producer_config(bootstrap: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka settings of every harness producer (``extra`` wins)."""
    return {"bootstrap.servers": bootstrap, "logger": librdkafka_logger("flowgen.librdkafka"),
            **DEFAULT_PRODUCER_CONFIG, **(extra or {})}


def make_producer(bootstrap: str, extra: dict[str, Any] | None = None) -> Producer:
    return Producer(producer_config(bootstrap, extra))


Rate = float | None | Callable[[], float | None]


def produce(
    bootstrap: str | Producer,
    topic: str,
    records_iter: Iterable[bytes],
    rate: Rate = None,
    partitions: int | Sequence[int] | None = None,
    *,
    flows_per_record: int = 1,
    keyed: bool = False,
    config: dict[str, Any] | None = None,
    flush_timeout: float = 120.0,
    until: Callable[[], bool] | None = None,
    stats: ProduceStats | None = None,
) -> ProduceStats:
    """Send every record of ``records_iter`` to ``topic`` and wait for all deliveries.

    ``rate``: flows per second (records carry ``flows_per_record`` flows); None = as fast as
    possible; a callable is read before each slice, so the rate may change while producing
    (0 pauses). ``until``: checked before each slice; True ends the production early (what
    was sent is still flushed). ``partitions``: a count (round-robin over 0..n-1) or
    explicit partition ids; None lets librdkafka's partitioner spread unkeyed records
    (sticky batches). With ``keyed=True`` each record gets an 8-byte sequence key (ordering
    per key). ``stats`` is filled as it goes (for a reader in another thread). Raises
    :class:`ProduceError` if any record was not delivered.
    """
    stats = ProduceStats() if stats is None else stats
    parts: list[int] | None
    if isinstance(partitions, int):
        parts = list(range(partitions))
    elif partitions is not None:
        parts = list(partitions)
    else:
        parts = None
    if parts is not None and not parts:
        raise ValueError("partitions must not be empty")

    on_delivery = stats.on_delivery
    if isinstance(bootstrap, Producer):
        producer = bootstrap
        per_record: dict[str, Any] = {"on_delivery": on_delivery}
    else:
        # Delivery reports only for failures: no Python callback per delivered record.
        producer = make_producer(bootstrap, {"on_delivery": on_delivery,
                                             "delivery.report.only.error": True,
                                             **(config or {})})
        per_record = {}
    send = producer.produce
    poll = producer.poll
    pace: Callable[[], float | None] = rate if callable(rate) else (lambda: rate)
    limiter: RateLimiter | None = None
    limiter_rate: float | None = None
    cycle = itertools.cycle(parts) if parts is not None else None
    it = iter(records_iter)
    t0 = time.monotonic()
    seq = 0
    done = False
    while not done:
        if until is not None and until():
            break
        current = pace()
        if current is not None and current <= 0:  # paused
            poll(0.05)
            limiter, limiter_rate = None, None
            continue
        if limiter is None or current != limiter_rate:
            limiter = RateLimiter(current / flows_per_record) if current else None
            limiter_rate = current
        allowed = limiter.allowance() if limiter else 10_000
        if until is not None and until():
            break
        sent = 0
        nbytes = 0
        for rec in itertools.islice(it, allowed):
            if cycle is not None:
                per_record["partition"] = next(cycle)
            if keyed:
                per_record["key"] = seq.to_bytes(8, "big")
            while True:
                try:
                    send(topic, rec, **per_record)
                    break
                except BufferError:  # local queue full: serve delivery reports, retry
                    poll(0.05)
            seq += 1
            sent += 1
            nbytes += len(rec)
        stats.records += sent
        stats.payload_bytes += nbytes
        if limiter:
            limiter.consumed(sent)
        poll(0)
        done = sent < allowed
    stats.enqueued_until = time.monotonic()
    remaining = producer.flush(flush_timeout)
    stats.seconds = time.monotonic() - t0
    if remaining:
        stats.failed += remaining
        stats.errors.append(f"{remaining} records still queued after {flush_timeout}s flush")
    stats.delivered = stats.records - stats.failed
    if stats.failed:
        raise ProduceError(
            f"{stats.failed} of {stats.records} records not delivered: {stats.errors[:3]}")
    return stats


class ProducerThread(threading.Thread):
    """:func:`produce` in the background: ``records`` at ``rate`` flows/s (None = as fast as
    possible; assign :attr:`rate` to change it while running, 0 pauses), until the records
    run out, ``duration`` seconds pass or :meth:`stop` is called. Afterwards ``stats``
    holds the counts and ``error`` what went wrong ('' when every record was delivered)."""

    def __init__(self, bootstrap: str, topic: str, records: Iterable[bytes],
                 rate: float | None = None, *, duration: float | None = None,
                 flows_per_record: int = 1, config: dict[str, Any] | None = None,
                 name: str = "producer") -> None:
        super().__init__(name=name, daemon=True)
        self.bootstrap, self.topic, self.records = bootstrap, topic, records
        self.rate = rate
        self.duration = duration
        self.flows_per_record = flows_per_record
        self.config = config
        self.stats = ProduceStats()
        self.error = ""
        self.t_start = 0.0  # time.monotonic() at the start
        self.t_end = 0.0  # ... when the last record was handed over (before the flush)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        self.t_start = time.monotonic()
        end = None if self.duration is None else self.t_start + self.duration

        def until() -> bool:
            return self._halt.is_set() or (end is not None and time.monotonic() >= end)

        try:
            produce(self.bootstrap, self.topic, self.records, lambda: self.rate,
                    flows_per_record=self.flows_per_record, config=self.config, until=until,
                    stats=self.stats)
        except Exception as e:  # reported through .error
            self.error = f"{type(e).__name__}: {e}"
        self.t_end = self.stats.enqueued_until or time.monotonic()


class UniqueFlowsThread(ProducerThread):
    """A :class:`ProducerThread` of unique flows ``0..count-1`` of ``run_id`` ("now"
    timestamps): every flow carries its id, so each loss and each duplicate is detectable.
    ``produced`` and ``bytes_sum`` are readable while it runs."""

    def __init__(self, bootstrap: str, topic: str, run_id: int, *, count: int = 1 << 31,
                 rate: float | None = None, duration: float | None = None, seed: int = 1,
                 flows_per_record: int = 1, generator: Mapping[str, Any] | None = None,
                 config: dict[str, Any] | None = None, name: str = "producer") -> None:
        self.gen = FlowGenerator(generator_config(
            generator or {}, seed=seed, run_id=run_id, unique=True,
            flows_per_record=flows_per_record, time_mode="now",
            encode_chunk=encode_chunk_for(rate)))
        super().__init__(bootstrap, topic, self.gen.records(count), rate, duration=duration,
                         flows_per_record=flows_per_record, config=config, name=name)

    @property
    def produced(self) -> int:
        """Flows handed to librdkafka so far."""
        return self.gen.totals().flows

    @property
    def bytes_sum(self) -> int:
        return self.gen.totals().bytes_sum


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m flowgen.producer",
        description="Produce generated GoFlow2 flows to Kafka and print a JSON summary.")
    ap.add_argument("--bootstrap", required=True, help="host:port[,host:port]")
    ap.add_argument("--topic", default="flows")
    ap.add_argument("--count", type=int, required=True, help="flows to produce")
    ap.add_argument("--start", type=int, default=0, help="first flow number")
    ap.add_argument("--rate", type=float, default=None, help="flows/s (default: max)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--run-id", type=int, default=0)
    ap.add_argument("--unique", action="store_true", help="encode flow ids (chaos harness)")
    ap.add_argument("--exporters", type=int, default=4)
    ap.add_argument("--interfaces", type=int, default=8)
    ap.add_argument("--ipv6-share", type=float, default=0.2)
    ap.add_argument("--flows-per-record", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=None,
                    help="round-robin over partitions 0..N-1 (default: librdkafka)")
    ap.add_argument("--keyed", action="store_true")
    ap.add_argument("--compression", default="none", choices=["none", "lz4", "zstd", "snappy",
                                                              "gzip"])
    ap.add_argument("--fixed-time", type=int, default=None, metavar="START_NS",
                    help="deterministic time_received_ns = START_NS + k * step")
    ap.add_argument("--time-step-ns", type=int, default=1000)
    ap.add_argument("-X", action="append", default=[], metavar="KEY=VALUE",
                    help="extra librdkafka producer setting")
    args = ap.parse_args(argv)

    encode_chunk = encode_chunk_for(args.rate)
    cfg = GeneratorConfig(
        seed=args.seed, run_id=args.run_id, unique=args.unique, exporters=args.exporters,
        interfaces_per_exporter=args.interfaces, ipv6_share=args.ipv6_share,
        flows_per_record=args.flows_per_record, encode_chunk=encode_chunk,
        time_mode="fixed" if args.fixed_time is not None else "now",
        start_ns=args.fixed_time or 0, step_ns=args.time_step_ns)
    gen = FlowGenerator(cfg)
    extra: dict[str, Any] = {"compression.type": args.compression}
    for kv in args.X:
        k, _, v = kv.partition("=")
        extra[k] = v
    try:
        stats = produce(args.bootstrap, args.topic, gen.records(args.count, args.start),
                        rate=args.rate, partitions=args.partitions, keyed=args.keyed,
                        flows_per_record=args.flows_per_record, config=extra)
        ok = True
    except (ProduceError, KafkaException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        stats = None
        ok = False
    tot = gen.totals()
    summary: dict[str, Any] = {
        "ok": ok, "count": tot.flows, "records": tot.records, "bytes_sum": tot.bytes_sum,
        "packets_sum": tot.packets_sum, "start": args.start, "seed": args.seed,
        "run_id": args.run_id, "unique": args.unique, "topic": args.topic,
    }
    if stats is not None:
        summary.update(seconds=round(stats.seconds, 3),
                       flows_per_s=round(tot.flows / stats.seconds, 1) if stats.seconds else 0,
                       payload_bytes=stats.payload_bytes)
        summary["stats"] = {k: v for k, v in asdict(stats).items() if k != "errors"}
    print(json.dumps(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

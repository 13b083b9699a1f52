"""Locust: Kafka producers replaying a load profile (docs/loadtest.md).

    LOADTEST_BOOTSTRAP=127.0.0.1:9092 LOADTEST_PROFILE=steady \\
        locust -f loadtest/locustfile.py --headless --csv out/locust --html out/locust.html

``loadtest run PROFILE`` (``make load PROFILE=...``) does this for you, with the outlet and the
report.

* :class:`KafkaFlowUser` is a plain Locust ``User`` holding a confluent-kafka ``Producer``.
  Each task iteration takes up to ``LOADTEST_BATCH`` flows from the shared pacing bucket,
  produces them (GoFlow2 records from the shared unique-id FlowGenerator) and fires one
  ``request`` event per batch: request_type ``kafka``, name ``flows x N``, response time
  = produce start -> broker acknowledgement of the batch's last record, response length
  = payload bytes. Failed deliveries fire a ``delivery`` request event with the exception.
* :class:`ProfileShape` replays the profile: ``tick()`` returns (users, spawn rate) and
  announces the target rate; the users pace to the profile continuously through one shared
  token bucket (:class:`loadtest.loadgen.Pacer`).
* gevent does not patch librdkafka: the producer is only polled with ``poll(0)`` and the
  greenlet yields with ``gevent.sleep`` (never a blocking ``flush`` inside a greenlet).
* At test stop, leftover records are produced, every producer is flushed cooperatively and
  a JSON summary (``LOADTEST_SUMMARY``) records produced flows and their Bytes sums.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import gevent
from confluent_kafka import KafkaError, Producer
from locust import LoadTestShape, User, events, task
from locust.env import Environment

from flowgen.generator import generator_config
from flowgen.producer import make_producer
from loadtest.loadgen import (
    DeliveryStats,
    FlowSource,
    LoadSettings,
    Pacer,
    RunSummary,
    encode_chunk_for,
)
from loadtest.profile import Schedule

log = logging.getLogger("loadtest")

SETTINGS = LoadSettings.from_env()
PROFILE = SETTINGS.load_profile()
SCHEDULE = Schedule(PROFILE, SETTINGS.flows_per_user, SETTINGS.max_users)
PACER = Pacer(PROFILE)
SOURCE = FlowSource(generator_config(
    PROFILE.generator, seed=SETTINGS.seed, run_id=SETTINGS.run_id, unique=True,
    time_mode="now", encode_chunk=encode_chunk_for(PROFILE.peak_rate)))
STATS = DeliveryStats()
PRODUCERS: list[Producer] = []
TIMELINE: list[list[float]] = []
STARTED = [0.0]
FINAL_FLUSH_S = 60.0


def _new_producer() -> Producer:
    p = make_producer(SETTINGS.bootstrap, {"on_delivery": STATS.on_delivery, "linger.ms": 10,
                                           **SETTINGS.producer_config})
    PRODUCERS.append(p)
    return p


def _produce_all(producer: Producer, records: list[bytes], on_last: Any) -> int:
    """Enqueue every record (yielding to gevent while librdkafka's queue is full). Records
    not enqueued when the greenlet is killed go back to the shared source."""
    send = producer.produce
    topic = SETTINGS.topic
    sent = 0
    nbytes = 0
    last = len(records) - 1
    try:
        for i, rec in enumerate(records):
            while True:
                try:
                    if i == last and on_last is not None:
                        send(topic, rec, on_delivery=on_last)
                    else:
                        send(topic, rec)
                    break
                except BufferError:
                    producer.poll(0)
                    gevent.sleep(0.005)
            sent += 1
            nbytes += len(rec)
    finally:
        STATS.enqueued += sent
        if sent < len(records):
            SOURCE.give_back(records[sent:])
    return nbytes


class KafkaFlowUser(User):
    """A Kafka producer of GoFlow2 flow records, paced by the profile."""

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.producer = _new_producer()
        self.batch = max(1, SETTINGS.batch)

    @task
    def produce_batch(self) -> None:
        n = PACER.take(self.batch)
        if n == 0:
            self.producer.poll(0)
            gevent.sleep(PACER.wait_hint(self.batch))
            return
        records = SOURCE.take(n)
        events_ = self.environment.events
        t0 = time.perf_counter()
        name = f"flows x {self.batch}"

        def on_last(err: KafkaError | None, msg: Any) -> None:
            STATS.on_delivery(err, msg)
            events_.request.fire(
                request_type="kafka", name=name,
                response_time=(time.perf_counter() - t0) * 1000.0,
                response_length=nbytes_box[0],
                exception=None if err is None else RuntimeError(str(err)),
                context={"flows": n})

        nbytes_box = [0]
        nbytes_box[0] = _produce_all(self.producer, records, on_last)
        STATS.batches += 1
        self.producer.poll(0)
        gevent.sleep(0)  # let the other users and the shape run


class ProfileShape(LoadTestShape):
    """Replays ``LOADTEST_PROFILE`` (``LOADTEST_TIME_SCALE`` multiplies its duration,
    ``LOADTEST_RATE_SCALE`` its rates)."""

    def tick(self) -> tuple[int, float] | None:
        PACER.start()
        if SETTINGS.summary and Path(SETTINGS.summary).with_suffix(".stop").exists():
            return None  # the harness asked for an early, clean stop
        t = float(self.get_run_time())  # type: ignore[no-untyped-call]
        tk = SCHEDULE.tick(t)
        if tk is None:
            return None
        PACER.target = tk.rate
        TIMELINE.append([round(t, 2), round(tk.rate, 1), float(tk.users)])
        return tk.users, tk.spawn_rate


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _on_test_start(environment: Environment, **_kw: Any) -> None:
    STARTED[0] = time.time()
    if SETTINGS.summary:  # lets the harness align its clock with the load's start
        Path(SETTINGS.summary).with_suffix(".started").write_text(repr(STARTED[0]))
    log.info("profile %s: %.0f s, peak %.0f flows/s, ~%.0f flows, topic %s",
             PROFILE.name, PROFILE.wall_duration, PROFILE.peak_rate, PROFILE.total_flows(),
             SETTINGS.topic)


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def _on_test_stop(environment: Environment, **_kw: Any) -> None:
    producer = PRODUCERS[0] if PRODUCERS else _new_producer()
    while SOURCE.pending:  # records of users stopped mid-batch
        records = list(SOURCE.pending)
        SOURCE.pending.clear()
        _produce_all(producer, records, None)
    deadline = time.monotonic() + FINAL_FLUSH_S
    queued = sum(len(p) for p in PRODUCERS)
    while queued and time.monotonic() < deadline:
        for p in PRODUCERS:
            p.poll(0)
        gevent.sleep(0.01)
        queued = sum(len(p) for p in PRODUCERS)
    tot = SOURCE.totals()
    summary = RunSummary(
        profile=PROFILE.name, run_id=SETTINGS.run_id, topic=SETTINGS.topic, flows=tot.flows,
        records=tot.records, bytes_sum=tot.bytes_sum, packets_sum=tot.packets_sum,
        enqueued=STATS.enqueued, delivered=STATS.delivered, failed=STATS.failed,
        undelivered=queued, pending=len(SOURCE.pending), batches=STATS.batches,
        started_at=STARTED[0], ended_at=time.time(), timeline=TIMELINE, errors=STATS.errors)
    if summary.failed or summary.undelivered:
        environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type="kafka", name="delivery", response_time=0, response_length=0,
            exception=RuntimeError(f"{summary.failed} failed, {summary.undelivered} "
                                   f"undelivered: {summary.errors[:3]}"), context={})
    if SETTINGS.summary:
        summary.write(SETTINGS.summary)
    log.info("produced %d flows (%d delivered, %d failed, %d undelivered)", summary.flows,
             summary.delivered, summary.failed, summary.undelivered)

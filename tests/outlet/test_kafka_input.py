"""The Kafka input over a fake librdkafka consumer, in real worker threads.

tests/outlet/kafka_fake.py behaves like librdkafka where it matters here (rebalance
callbacks and commit answers inside consume(), in the calling thread) and records which
thread makes every call, so these tests check the thread rule of outlet/kafka_client.py
and the rebalance barrier across the real thread boundary. Real clock, short waits.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing

from outlet import metrics as names
from outlet.kafka_client import KafkaClient
from outlet.metrics import Metrics
from outlet.pipeline import Outlet
from tests.outlet.fakes import World, config
from tests.outlet.kafka_fake import FakeBroker


def outlet_over(broker: FakeBroker, world: World, state: Path) -> Outlet:
    def source(cfg: Any, metrics: Metrics) -> KafkaClient:
        return KafkaClient(cfg, metrics, consumer_factory=broker.consumer_factory(),
                           admin_factory=broker.admin_factory())

    backends = world.backends(source=source, disk=trio.to_thread.run_sync)
    return Outlet(config(state, clickhouse={"maximum-wait-time": "200ms"}), backends=backends)


@asynccontextmanager
async def running(outlet: Outlet) -> AsyncIterator[Outlet]:
    async with trio.open_nursery() as nursery:
        await nursery.start(outlet.run)
        yield outlet
        outlet.request_stop()


async def until(cond: Callable[[], bool], timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


async def test_every_consumer_call_from_one_worker_thread_at_a_time(tmp_path: Path) -> None:
    broker = FakeBroker(partitions=2)
    broker.produce(0, 30)
    broker.produce(1, 12)
    o = outlet_over(broker, World(), tmp_path)
    async with running(o):
        await until(lambda: broker.committed == {0: 30, 1: 12})
    consumer = broker.consumers[0]
    assert consumer.closed
    assert consumer.overlaps == [], "a call was made while another thread was inside"
    trio_thread = threading.get_ident()
    assert [name for name, thread in consumer.calls if thread == trio_thread] == []
    assert any(name == "commit" for name, _ in consumer.calls)
    assert o.parts is not None and o.parts.kafka.committed == {0: 30, 1: 12}


async def test_revoke_under_backpressure_commits_after_the_held_chunks(tmp_path: Path) -> None:
    broker = FakeBroker(partitions=2)
    for p in (0, 1):
        broker.produce(p, 50)
    w = World()
    w.primary.stop()
    o = outlet_over(broker, w, tmp_path)
    async with running(o):
        await until(lambda: o.metrics.registry.get_sample_value(names.KAFKA_PAUSED) == 1)
        broker.revoke({1})
        consumer = broker.consumers[0]
        await until(consumer.revoke_started.is_set)
        await trio.sleep(0.3)  # the callback waits for its barrier behind the held chunks
        w.primary.start()
        await until(lambda: 1 not in consumer.assignment and broker.committed.get(0) == 50)
    revoke_commit = broker.committed[1]
    p1 = sorted(int(r.split(":")[1]) for r in w.primary.rows if r.startswith("1:"))
    assert revoke_commit > 0
    assert p1 == list(range(revoke_commit)), "records past the revoke commit were stored"
    assert broker.consumers[0].overlaps == []


class _Hooks:
    """The pipeline's side of a rebalance, doing nothing."""

    def assigned(self, *args: Any) -> tuple[object, ...]:
        return ()

    async def revoking(self, partitions: set[int]) -> tuple[dict[int, int], dict[int, str]]:
        return {}, {}

    def revoked(self, partitions: set[int], lost: bool) -> None:
        pass


async def test_a_commit_queued_before_an_assignment_again_is_not_issued() -> None:
    """A partition assigned again without a revoke first starts a new assignment (its
    ledger state is read again from the broker): a commit made for the old one and not
    issued yet fails as revoked, as at a revoke; issued after the new assignment read the
    committed metadata, it would overwrite it with the old assignment's seals."""
    from outlet.config import KafkaConfig
    from outlet.kafka_input import KafkaCommitError, KafkaInput

    inp = KafkaInput(KafkaConfig(), Metrics(), source=None)  # type: ignore[arg-type]
    inp._hooks = _Hooks()
    inp.assigned({0, 1}, {}, {})
    outcome: list[BaseException | None] = []

    async def seal() -> None:
        try:
            await inp.commit({0: 5, 1: 7}, {0: "ol1;x", 1: "ol1;y"})
            outcome.append(None)
        except KafkaCommitError as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(seal)
        await trio.testing.wait_all_tasks_blocked()
        inp.assigned({0}, {}, {})
        queued = [r.offsets for r in inp._commits]
        assert queued == [{1: 7}], "partition 0's part of the commit is dropped"
        inp.assigned({1}, {}, {})
        await trio.testing.wait_all_tasks_blocked()
    assert len(outcome) == 1 and isinstance(outcome[0], KafkaCommitError)
    assert outcome[0].revoked


class _SourceHooks:
    """What librdkafka's callbacks reach on the Trio side, doing nothing."""

    def assigned(self, partitions: set[int], committed: dict[int, int],
                 metadata: dict[int, str]) -> None:
        pass

    async def revoking(self, partitions: set[int]) -> None:
        return None

    def revoked(self, partitions: set[int]) -> None:
        pass

    def lost(self, partitions: set[int]) -> None:
        pass


async def test_a_partition_revoked_while_paused_is_read_when_assigned_back() -> None:
    """librdkafka keeps a partition's pause across a revoke. Revoked while the pipeline was
    full (paused), then resumed while nothing was assigned (between the revoke and the
    next assignment of an eager rebalance), a partition assigned back stayed paused for
    good: never read again, a stall (group-crash-reassign, once in five runs)."""
    from outlet.config import KafkaConfig
    from outlet.kafka_input import PollRequest

    broker = FakeBroker(partitions=2)
    broker.produce(0, 5)
    client = KafkaClient(KafkaConfig(), Metrics(), consumer_factory=broker.consumer_factory())
    await client.open(_SourceHooks())  # type: ignore[arg-type]

    async def poll(paused: bool) -> list[int]:
        polled = await client.poll(PollRequest(100, 0.05, paused, []))
        return polled.chunk.offsets

    assert await poll(False) == [0, 1, 2, 3, 4]
    assert await poll(True) == []  # the pipeline is full: paused
    broker.revoke({0, 1})
    await poll(True)  # revoked while paused
    await poll(False)  # the pipeline emptied: resumed, with nothing assigned
    broker.produce(0, 3)
    broker.consumers[0].events.append(("assign", {0, 1}))
    read: list[int] = []
    for _ in range(5):
        read += await poll(False)
    assert read == [0, 1, 2, 3, 4, 5, 6, 7], "partition 0 read again from its commit"
    await client.aclose()

"""The pipeline in process: fake Kafka, codec and ClickHouses, on Trio's autojump clock.

Every test runs the real Outlet (batcher, sealer, fan-out, destinations, spool, ledger
file, committer, Kafka input) against tests/outlet/fakes.py; time is virtual
(``autojump_clock``: MockClock(autojump_threshold=0)), so timings are exact.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from outlet import metrics as names
from outlet.codec import CodecError
from outlet.fallback import GIVE_UP_REASONS, SPOOL_REASONS
from outlet.kafka_input import PAUSE_AFTER
from outlet.offset_ledger import decode
from outlet.pipeline import Outlet
from outlet.sealer import CODEC_RETRY
from tests.outlet.fakes import World, config


@asynccontextmanager
async def running(outlet: Outlet) -> AsyncIterator[Outlet]:
    """Run the outlet; on exit, stop it as SIGTERM does and wait until run() returns."""
    async with trio.open_nursery() as nursery:
        await nursery.start(outlet.run)
        yield outlet
        outlet.request_stop()


async def until(cond: Callable[[], bool], timeout: float = 600) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.01)


def metric(o: Outlet, name: str, **labels: str) -> float:
    value = o.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def sizes(inserts: list[Any]) -> list[int]:
    return [len(i.records) for i in inserts]


async def test_seal_by_size_then_by_time(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    w = World()
    w.topic.produce(0, 25)
    t0 = trio.current_time()
    o = Outlet(config(tmp_path, clickhouse={"maximum-wait-time": "5s"}), backends=w.backends())
    async with running(o):
        await until(lambda: len(w.primary.rows) == 25)
        await until(lambda: w.topic.committed.get(0) == 25)
    assert sizes(w.primary.inserts) == [10, 10, 5]
    first, second, last = (i.at - t0 for i in w.primary.inserts)
    # Full batches are cut at once; each seal then waits for its ledger commit, which the
    # next poll issues (an idle poll lasts kafka.fetch-max-wait, 100 ms).
    assert first < 0.15 and second < 0.25, "full batches are cut at once"
    assert 5 <= last < 5.3, "the last records wait maximum-wait-time"
    assert metric(o, names.BATCHES_SEALED_TOTAL, reason="size") == 2
    assert metric(o, names.BATCHES_SEALED_TOTAL, reason="time") == 1
    assert sorted(w.primary.rows) == sorted(w.topic.all_records())


async def test_primary_backpressure_pauses_input_then_resumes(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    w = World()
    w.topic.produce(0, 300)
    w.topic.produce(1, 300)
    w.primary.stop()
    o = Outlet(config(tmp_path), backends=w.backends())
    async with running(o):
        await trio.sleep(30)
        assert metric(o, names.KAFKA_PAUSED) == 1
        read = w.source.read
        # In flight while the primary is down: one batch in its insert, 4 queued, one in
        # the fan-out, one chunk in the channel, the outbox (a chunk or two).
        assert read <= 6 * 10 + 3 * 5, read
        await trio.sleep(60)
        assert w.source.read == read, "nothing is fetched while paused"
        assert w.primary.rows == [] and w.primary.attempts > 1  # retried, in vain
        w.primary.start()
        await until(lambda: w.topic.committed == {0: 300, 1: 300})
        assert metric(o, names.KAFKA_PAUSED) == 0
    paused_at, resumed_at = (t for t, _ in w.source.pause_changes[:2])
    assert [p for _, p in w.source.pause_changes[:3]] == [True, False, True]  # True: stop
    assert paused_at < PAUSE_AFTER + 0.2
    assert 90 <= resumed_at < 91
    assert sorted(w.primary.rows) == sorted(w.topic.all_records())


async def _primary_timeline(tmp_path: Path, azure: dict[str, Any], break_azure: bool) -> Any:
    w = World()
    for p in (0, 1):
        w.topic.produce(p, 200)
    if break_azure:
        w.azure.stop()  # a partitioned link: inserts hang
    o = Outlet(config(tmp_path, azure=azure), backends=w.backends())
    async with running(o):
        await until(lambda: len(w.primary.rows) == 400)
        await until(lambda: w.topic.committed == {0: 200, 1: 200})
    timeline = [(i.at, i.token) for i in w.primary.inserts]
    return w, o, timeline


async def test_additional_destination_giving_up_does_not_slow_primary(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    azure = {"spool": {"enable": False}, "queue-size": 2}
    _, _, healthy = await _primary_timeline(tmp_path / "a", azure, break_azure=False)
    w, o, broken = await _primary_timeline(tmp_path / "b", azure, break_azure=True)
    t0, t1 = healthy[0][0], broken[0][0]
    assert [(round(t - t0, 6), tok) for t, tok in healthy] == [
        (round(t - t1, 6), tok) for t, tok in broken
    ]
    assert metric(o, names.KAFKA_PAUSED) == 0
    assert w.azure.rows == []
    lost = sum(
        metric(o, names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL, destination="azure",
               reason=reason)
        for reason in GIVE_UP_REASONS
    )
    assert lost == 400, "every flow azure could not store is counted as lost there"


async def test_additional_destination_spooling_does_not_slow_primary(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    azure = {"queue-size": 2, "spool": {"path": str(tmp_path / "spool")}}
    _, _, healthy = await _primary_timeline(tmp_path / "a", azure, break_azure=False)
    w = World()
    for p in (0, 1):
        w.topic.produce(p, 200)
    w.azure.stop()
    o = Outlet(config(tmp_path / "b", azure=azure), backends=w.backends())
    async with running(o):
        await until(lambda: w.topic.committed == {0: 200, 1: 200})
        t0, t1 = healthy[0][0], w.primary.inserts[0].at
        assert [(round(t - t0, 6), tok) for t, tok in healthy] == [
            (round(i.at - t1, 6), i.token) for i in w.primary.inserts
        ]
        spooled = sum(
            metric(o, names.SPOOL_APPENDED_FLOWS_TOTAL, destination="azure", reason=reason)
            for reason in SPOOL_REASONS
        )
        assert spooled == 400
        w.azure.start()
        await until(lambda: len(w.azure.rows) == 400)
        await until(lambda: metric(o, names.SPOOL_BATCHES, destination="azure") == 0)
    assert sorted(w.azure.rows) == sorted(w.topic.all_records()), "exactly once on azure"
    assert metric(o, names.SPOOL_REPLAYED_FLOWS_TOTAL, destination="azure") == spooled


async def test_shutdown_flushes_the_open_batch_and_commits(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    w = World()
    w.topic.produce(0, 7)
    o = Outlet(config(tmp_path, clickhouse={"maximum-wait-time": "60s"}), backends=w.backends())
    async with running(o):
        # in the open batch, not only read: a stop drops what was read and not handed over
        # (past every commit, read again next time), which is not what this test is about
        await until(lambda: o.parts is not None
                    and sum(map(len, o.parts.batcher.open.values())) == 7)
        stopped_at = trio.current_time()
    assert trio.current_time() - stopped_at < 1
    assert sizes(w.primary.inserts) == [7]
    assert metric(o, names.BATCHES_SEALED_TOTAL, reason="shutdown") == 1
    assert w.topic.committed == {0: 7}
    assert w.source.closed and w.encoder.closed and all(wr.closed for wr in w.writers)


async def test_shutdown_waits_at_most_the_grace_period(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = World()
    w.topic.produce(0, 25)
    w.primary.stop()
    o = Outlet(config(tmp_path, clickhouse={"grace-period": "10s"}), backends=w.backends())
    async with running(o):
        await until(lambda: w.source.read == 25)
        stopped_at = trio.current_time()
    assert 10 <= trio.current_time() - stopped_at < 10.5
    # Nothing stored, nothing committed past: the offset stays where it was (0), and its
    # commit metadata lists the three sealed batches, rebuilt by whoever reads it next.
    assert w.topic.committed == {0: 0}
    assert len(decode(0, 0, w.topic.metadata[0])) == 3
    assert "grace period over" in caplog.text
    assert w.source.closed and all(wr.closed for wr in w.writers)


async def test_rebalance_barrier_does_not_overtake_held_chunks(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Under backpressure, chunks read before a revoke wait in the input; the barrier
    must come after them, or their records are batched after the partition's commit."""
    w = World()
    for p in (0, 1):
        w.topic.produce(p, 50)
    w.primary.stop()
    o = Outlet(config(tmp_path), backends=w.backends())
    async with running(o):
        await until(lambda: metric(o, names.KAFKA_PAUSED) == 1)
        w.source.revoke({1})
        await trio.sleep(2)  # the revoke is waiting for its barrier and batches
        w.primary.start()
        await until(lambda: 1 not in w.source.assignment)
        await until(lambda: w.topic.committed.get(0) == 50)
    revoke_commit = w.topic.committed[1]
    p1 = sorted(int(r.split(":")[1]) for r in w.primary.rows if r.startswith("1:"))
    assert p1 == list(range(revoke_commit)), (
        f"partition 1 committed at {revoke_commit} on revoke; stored after it: "
        f"{[o for o in p1 if o >= revoke_commit]}"
    )
    assert revoke_commit > 0
    assert sorted(r for r in w.primary.rows if r.startswith("0:")) == sorted(
        f"0:{i}" for i in range(50)
    )


async def test_codec_error_is_retried_with_backoff(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    w = World()
    w.topic.produce(0, 30)
    w.encoder.fail.extend([CodecError("engine failed"), CodecError("engine failed")])
    o = Outlet(config(tmp_path), backends=w.backends())
    async with running(o):
        await until(lambda: w.topic.committed.get(0) == 30)
    assert sorted(w.primary.rows) == sorted(w.topic.all_records())
    assert metric(o, names.CODEC_ERRORS_TOTAL, outcome="retried") == 2
    assert metric(o, names.CODEC_ERRORS_TOTAL, outcome="quarantined") == 0


async def test_codec_error_that_persists_quarantines_the_batch_only(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    w = World()
    w.topic.produce(0, 30)
    w.encoder.fail_if = lambda records: CodecError("engine failed") if b"0:10" in records else None
    o = Outlet(config(tmp_path), backends=w.backends())
    async with running(o):
        await until(lambda: w.topic.committed.get(0) == 30)
        assert o.parts is not None and o.parts.committer.tracker.pending_batches == 0
    assert sorted(w.primary.rows) == sorted(f"0:{i}" for i in [*range(10), *range(20, 30)])
    attempts = CODEC_RETRY.max_attempts
    assert metric(o, names.CODEC_ERRORS_TOTAL, outcome="retried") == attempts - 1
    assert metric(o, names.CODEC_ERRORS_TOTAL, outcome="quarantined") == 1
    assert metric(o, names.DECODE_ERRORS_TOTAL, reason="quarantined") == 10


async def test_restart_rebuilds_uncommitted_batches_with_their_tokens(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The ledger in the commit metadata across two runs: what the first run sealed and
    stored but did not commit (azure hangs) is rebuilt with the same tokens."""
    w = World()
    w.topic.produce(0, 25)
    w.azure.stop()
    o = Outlet(config(tmp_path, azure={}), backends=w.backends())
    async with trio.open_nursery() as nursery:
        await nursery.start(o.run)
        await until(lambda: len(w.primary.rows) == 20)
        nursery.cancel_scope.cancel()  # a crash: nothing flushed, nothing committed
    assert w.source.closed and w.encoder.closed and all(wr.closed for wr in w.writers), (
        "resources close on cancellation too"
    )
    first = {i.token for i in w.primary.inserts}
    assert w.topic.committed == {0: 0}
    w.azure.start()
    o = Outlet(config(tmp_path, azure={}), backends=w.backends())
    async with running(o):
        await until(lambda: w.topic.committed.get(0) == 25)
    tokens = [i.token for i in w.primary.inserts]
    assert first <= set(tokens) and len(tokens) == len(first) * 2 + 1
    assert sorted(w.primary.rows) == sorted(w.topic.all_records()), "no duplicate, no loss"
    assert sorted(w.azure.rows) == sorted(w.topic.all_records()), "no duplicate, no loss"
    assert metric(o, names.BATCHES_SEALED_TOTAL, reason="rebuild") == len(first)

"""Races found in review, reproduced against the pipeline as it is (monkeypatched fakes)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

import outlet.destination
import outlet.kafka_input
import outlet.ledger
import outlet.pipeline
from outlet.codec import CodecError, EncodedBatch
from outlet.config import parse_config
from outlet.ledger import Ledger
from outlet.pipeline import Outlet
from tests.outlet.kafka_fake import FakeBroker


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeCodec:
    fail: list[BaseException] = []

    def __init__(self, *a: Any, **k: Any) -> None:
        pass

    def encode(self, records: Any, **k: Any) -> EncodedBatch:
        if FakeCodec.fail:
            raise FakeCodec.fail.pop(0)
        return EncodedBatch(json.dumps([r.decode() for r in records]).encode(), len(records), ())

    def close(self) -> None:
        pass


class FakeWriter:
    gate = threading.Event()
    inserted: list[tuple[str, list[str]]] = []

    def __init__(self, conn: Any) -> None:
        self.server = conn.servers[0]

    def redact(self, text: str) -> str:
        return text

    def insert(self, job: Any) -> int:
        FakeWriter.gate.wait()
        FakeWriter.inserted.append((job.token, json.loads(job.native)))
        return int(job.rows)

    def close(self) -> None:
        pass


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeBroker:
    broker = FakeBroker(partitions=2)
    monkeypatch.setattr(outlet.kafka_input, "Consumer", broker.consumer_factory())
    monkeypatch.setattr(outlet.pipeline, "FlowCodec", FakeCodec)
    monkeypatch.setattr(outlet.destination, "ClickHouseWriter", FakeWriter)
    FakeWriter.gate = threading.Event()
    FakeWriter.inserted = []
    FakeCodec.fail = []
    return broker


def config(tmp_path: Path, **clickhouse: Any) -> Any:
    return parse_config(
        {
            "kafka": {"topic": "flows", "max-poll-records": 5, "queue-size": 1},
            "clickhousedb": {"servers": ["http://127.0.0.1:1"]},
            "clickhouse": {
                "maximum-batch-size": 10,
                "maximum-wait-time": "200ms",
                "grace-period": "10s",
                **clickhouse,
            },
            "http": {"listen": f"127.0.0.1:{free_port()}"},
            "state": {"path": str(tmp_path / "state")},
        }
    )


async def wait_for(cond: Any, timeout: float = 20) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


async def test_barrier_does_not_overtake_held_chunks(fakes: FakeBroker, tmp_path: Path) -> None:
    broker = fakes
    for p in (0, 1):
        broker.produce(p, 50)
    o = Outlet(config(tmp_path))
    async with trio.open_nursery() as n:
        n.start_soon(o.run)
        # The primary blocks: batches queue up, the channel fills, the input holds a chunk.
        await wait_for(lambda: o.metrics.kafka_paused._value.get() == 1)
        broker.revoke({1})
        await wait_for(broker.consumers[0].revoke_started.is_set)
        await trio.sleep(0.3)  # the barrier is now waiting for room in the channel
        FakeWriter.gate.set()
        await wait_for(lambda: not o.tracker.pending_batches and len(FakeWriter.inserted) > 3)
        await trio.sleep(1.0)
        o.request_stop()
    revoke_commit = broker.committed[1]
    late = [
        r
        for _, rows in FakeWriter.inserted
        for r in rows
        if r.startswith("1:") and int(r.split(":")[1]) >= revoke_commit
    ]
    assert not late, (
        f"partition 1 committed at {revoke_commit} on revoke, yet records past it were "
        f"batched and inserted afterwards (the next owner reads them again): {late[:5]}..."
    )


async def test_codec_error_is_not_fatal(fakes: FakeBroker, tmp_path: Path) -> None:
    fakes.produce(0, 30)
    FakeCodec.fail = [CodecError("engine failed")]
    FakeWriter.gate.set()
    o = Outlet(config(tmp_path))
    async with trio.open_nursery() as n:
        n.start_soon(o.run)
        await wait_for(lambda: sum(len(r) for _, r in FakeWriter.inserted) >= 30)
        o.request_stop()
    assert sorted(r for _, rows in FakeWriter.inserted for r in rows) == sorted(
        f"0:{i}" for i in range(30)
    )


async def test_every_consumer_call_from_one_thread_at_a_time(
    fakes: FakeBroker, tmp_path: Path
) -> None:
    fakes.produce(0, 30)
    FakeWriter.gate.set()
    o = Outlet(config(tmp_path))
    async with trio.open_nursery() as n:
        n.start_soon(o.run)
        await wait_for(lambda: fakes.committed.get(0) == 30)
        o.request_stop()
    assert fakes.consumers[0].overlaps == []


def test_ledger_record_racing_compact_loses_no_seal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outlet.ledger, "COMPACT_AFTER_LINES", 2)
    led = Ledger(tmp_path, "flows", "g")
    led.record({0: (0, 9)})
    led.record({0: (10, 19)})
    in_compact, release = threading.Event(), threading.Event()
    real_replace = os.replace

    def slow_replace(src: Any, dst: Any) -> None:
        in_compact.set()
        release.wait(5)
        real_replace(src, dst)

    monkeypatch.setattr(outlet.ledger.os, "replace", slow_replace)
    compact = threading.Thread(target=led.compact, args=({0: 10},))
    compact.start()
    assert in_compact.wait(5)
    record = threading.Thread(target=led.record, args=({0: (20, 29)},))
    record.start()
    record.join(0.3)  # lets an unsynchronised record finish inside the compaction
    release.set()
    compact.join(5)
    record.join(5)
    monkeypatch.setattr(outlet.ledger.os, "replace", real_replace)
    expected = [({0: (10, 19)}, {0: (10, 19)}), ({0: (20, 29)}, {0: (20, 29)})]
    assert led.pending({0: 10}) == expected, "the seal recorded during compaction is lost"
    led.close()
    assert Ledger(tmp_path, "flows", "g").pending({0: 10}) == expected

"""Disk faults in process: a spool's disk failing under the real spool and pipeline (fakes
for Kafka, the codec and ClickHouse; tests/outlet/fakes.py). The state disk no longer
holds the batch ledger (issue 12: it is in Kafka's offset-commit metadata), so its
failures cannot pause or endanger the seals: outlet/statedisk.py (the older outlet's
ledger file: tests/outlet/test_commit_ledger.py).

``FailingDisk`` makes the writes under one directory fail as a full disk does (half the
bytes land, then ENOSPC); time is Trio's autojump clock, so retry cadences are exact. The
same faults on a real tmpfs under a real outlet: the ``spool-disk-full`` chaos scenario.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from outlet import diskio
from outlet import metrics as names
from outlet.config import SpoolConfig
from outlet.pipeline import Outlet
from outlet.spool import Spool
from tests.outlet.fakes import FailingDisk, World, config
from tests.outlet.test_pipeline import metric, running, until

ENOSPC = errno.ENOSPC


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FailingDisk:
    d = FailingDisk(tmp_path / "faulty")
    monkeypatch.setattr(diskio, "write_all", d.write_all)
    return d


def spool_cfg(path: Path, **kw: Any) -> SpoolConfig:
    return SpoolConfig(path=str(path), **{"max_bytes": 1 << 20, **kw})


def drain(sp: Spool) -> list[str]:
    out = []
    while (b := sp.peek_oldest()) is not None:
        out.append(b.token)
        assert sp.ack_oldest(b)
    return out


def eio(fd: int, size: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


def errors_seen(sp: Spool) -> list[tuple[str, int | None]]:
    seen: list[tuple[str, int | None]] = []
    sp.on_error = lambda op, exc: seen.append((op, exc.errno))
    return seen


# -- the spool ------------------------------------------------------------------------------


def test_spool_write_error_is_a_result_and_leaves_no_partial_record(
    tmp_path: Path, disk: FailingDisk
) -> None:
    sp = Spool(spool_cfg(tmp_path / "faulty"), "azure")
    seen = errors_seen(sp)
    assert sp.append("t0", 1, b"a" * 500).accepted
    disk.failing = True
    r = sp.append("t1", 2, b"b" * 500)
    assert not r.accepted and not r.full and r.error is not None and r.error.errno == ENOSPC
    assert seen == [("append", ENOSPC)] and sp.batches == 1 and sp.flows == 1
    disk.failing = False
    assert sp.append("t2", 3, b"c" * 500).accepted
    sp.close()
    again = Spool(spool_cfg(tmp_path / "faulty"), "azure")
    assert (again.corrupt_records, again.truncated_bytes) == (0, 0), "half a record was left"
    assert drain(again) == ["t0", "t2"]


def test_spool_moves_to_a_new_segment_when_a_failed_write_cannot_be_cut_back(
    tmp_path: Path, disk: FailingDisk, monkeypatch: pytest.MonkeyPatch
) -> None:
    sp = Spool(spool_cfg(tmp_path / "faulty"), "azure")
    assert sp.append("t0", 1, b"a" * 500).accepted
    disk.failing = True
    with monkeypatch.context() as m:
        m.setattr(os, "ftruncate", eio)
        assert sp.append("t1", 2, b"b" * 500).error is not None
    disk.failing = False
    assert sp.append("t2", 3, b"c" * 500).accepted
    assert len(list((tmp_path / "faulty").glob("seg-*.spool"))) == 2
    sp.close()
    again = Spool(spool_cfg(tmp_path / "faulty"), "azure")
    assert drain(again) == ["t0", "t2"], "the half-written record is never returned"


def test_spool_directory_removed_counts_what_it_held_and_starts_again(tmp_path: Path) -> None:
    path = tmp_path / "spool"
    sp = Spool(spool_cfg(path), "azure")
    for i in range(3):
        assert sp.append(f"t{i}", 10, b"x" * 500).accepted
    shutil.rmtree(path)
    r = sp.append("t3", 10, b"y" * 500)
    assert r.accepted and (sp.vanished_batches, sp.vanished_flows) == (3, 30)
    assert drain(sp) == ["t3"] and path.is_dir()


def test_spool_that_cannot_be_opened_opens_at_the_next_append(tmp_path: Path) -> None:
    blocker = tmp_path / "spool"
    blocker.write_text("not a directory")  # mkdir fails as on a read-only parent
    sp = Spool(spool_cfg(blocker / "azure"), "azure")
    assert sp.open_error is not None and not sp.healthy
    assert sp.append("t0", 1, b"a").error is not None
    blocker.unlink()
    assert sp.append("t1", 1, b"b").accepted and sp.healthy
    assert drain(sp) == ["t1"]


# -- the pipeline: a spool's disk ----------------------------------------------------------


def spool_metric(o: Outlet, name: str, **labels: str) -> float:
    return metric(o, name, destination="azure", **labels)


def azure_lost(o: Outlet) -> float:
    return sum(
        spool_metric(o, names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL, reason=r)
        for r in ("spool_full", "spool_error", "retries_exceeded", "queue_full",
                  "permanent_error", "circuit_open")
    )


async def test_spool_disk_full_drop_oldest_never_stops_the_outlet_and_counts_its_loss(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, disk: FailingDisk
) -> None:
    w = World()
    w.topic.produce(0, 200)
    w.azure.stop()  # partitioned: everything goes to the spool, whose disk is full
    disk.failing = True
    azure = {"queue-size": 2, "spool": {"path": str(tmp_path / "faulty" / "azure")}}
    o = Outlet(config(tmp_path / "state", azure=azure), backends=w.backends())
    async with running(o):
        await until(lambda: w.topic.committed == {0: 200})
        assert sorted(w.primary.rows) == sorted(w.topic.all_records()), "the primary goes on"
        dropped = spool_metric(o, names.SPOOL_DROPPED_FLOWS_TOTAL)
        assert dropped > 0 and dropped == spool_metric(
            o, names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL, reason="spool_error")
        assert spool_metric(o, names.SPOOL_WRITE_FAILING) == 1
        assert spool_metric(o, names.SPOOL_WRITE_ERRORS_TOTAL, error="ENOSPC") >= 1
        assert o.ready() == (True, "ok, degraded: spool write failing on azure (ENOSPC)")
        disk.failing = False  # space returns: the next batch that needs the spool gets in
        w.topic.produce(0, 100)
        await until(lambda: w.topic.committed == {0: 300})
        assert spool_metric(o, names.SPOOL_WRITE_FAILING) == 0
        assert o.ready() == (True, "ok")
        w.azure.start()
        await until(lambda: spool_metric(o, names.SPOOL_BATCHES) == 0)
        await until(lambda: len(w.azure.rows) + azure_lost(o) >= 300)
    assert len(set(w.azure.rows)) == len(w.azure.rows), "no duplicates on azure"
    assert 300 - len(w.azure.rows) == azure_lost(o), "azure lost exactly what is reported"
    assert len(w.azure.rows) >= 100, "what came after the disk recovered is stored"


async def test_spool_disk_state_clears_when_the_destination_is_back_with_nothing_to_spool(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, disk: FailingDisk
) -> None:
    w = World()
    w.topic.produce(0, 50)
    w.azure.stop()
    disk.failing = True
    azure = {"queue-size": 2, "spool": {"path": str(tmp_path / "faulty" / "azure")}}
    o = Outlet(config(tmp_path / "state", azure=azure), backends=w.backends())
    async with running(o):
        await until(lambda: w.topic.committed == {0: 50})
        assert spool_metric(o, names.SPOOL_BATCHES) == 0, "every batch was dropped"
        assert spool_metric(o, names.SPOOL_WRITE_FAILING) == 1
        disk.failing = False
        w.azure.start()  # live again: no batch needs the spool, so no append tells
        await until(lambda: spool_metric(o, names.DESTINATION_CIRCUIT_STATE) == 2)  # probed
        w.topic.produce(0, 50)
        await until(lambda: len(w.azure.rows) == 50)
        await until(lambda: spool_metric(o, names.SPOOL_WRITE_FAILING) == 0, timeout=30)
        assert o.ready() == (True, "ok")
        appended = sum(spool_metric(o, names.SPOOL_APPENDED_FLOWS_TOTAL, reason=r)
                       for r in ("retries_exceeded", "queue_full", "circuit_open"))
        assert appended == 0, "cleared by the spool's own check, not by an append"
    assert azure_lost(o) == 50


async def test_spool_disk_full_block_holds_the_destination_then_loses_nothing(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, disk: FailingDisk
) -> None:
    w = World()
    w.topic.produce(0, 100)
    w.azure.stop()
    disk.failing = True
    azure = {"queue-size": 2,
             "spool": {"path": str(tmp_path / "faulty" / "azure"), "when-full": "block"}}
    o = Outlet(config(tmp_path / "state", azure=azure), backends=w.backends())
    async with running(o):
        await trio.sleep(120)
        held = disk.failures
        assert held >= 2, "the held batch is tried again at the retry cadence"
        assert spool_metric(o, names.SPOOL_DROPPED_FLOWS_TOTAL) == 0
        assert spool_metric(o, names.SPOOL_WRITE_FAILING) == 1
        assert metric(o, names.KAFKA_PAUSED) == 1, "block: the destination holds consumption"
        assert w.topic.committed.get(0, 0) < 100
        # at most the connection's retry-max-backoff (1 s) between two attempts
        await trio.sleep(10)
        assert disk.failures >= held + 9
        disk.failing = False
        await until(lambda: spool_metric(o, names.SPOOL_WRITE_FAILING) == 0)
        w.azure.start()
        await until(lambda: w.topic.committed == {0: 100})
        await until(lambda: len(w.azure.rows) == 100)
    assert sorted(w.azure.rows) == sorted(w.topic.all_records()), "exactly once on azure"
    assert sorted(w.primary.rows) == sorted(w.topic.all_records())
    assert azure_lost(o) == 0

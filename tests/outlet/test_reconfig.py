"""Live reconfiguration in process: what a plan allows, and applying it to a running outlet.

The outlet runs against tests/outlet/fakes.py on Trio's autojump clock; what a
destination "was given" is read from its fake server (every insert, by token), so the
invariants are exact: an added destination stores exactly the batches sealed after it
joined, a removed one exactly those sealed before it left, the others every record once.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from outlet import metrics as names
from outlet import reconfig
from outlet.commit import CommitTracker
from outlet.config import OutletConfig, parse_config
from outlet.pipeline import Outlet
from outlet.spool import Spool
from tests.outlet.fakes import AZURE_URL, PRIMARY_URL, FakeClickHouse, World
from tests.outlet.test_pipeline import running, until

EXTRA_URL = "http://127.0.0.1:38123"


def base(state: Path, **sections: Any) -> dict[str, Any]:
    """An outlet config document: batches of 10, 1 s wait, the primary only."""
    data: dict[str, Any] = {
        "kafka": {"topic": "flows", "max-poll-records": 5, "queue-size": 1},
        "clickhousedb": {"servers": [PRIMARY_URL], "password": "p1"},
        "clickhouse": {"maximum-batch-size": 10, "maximum-wait-time": "1s",
                       "grace-period": "10s"},
        "http": {"listen": "127.0.0.1:18080"},
        "state": {"path": str(state)},
    }
    data.update(sections)
    return data


def additional(name: str, url: str, **extra: Any) -> dict[str, Any]:
    connection = {"servers": [url], "max-retries": 3, "retry-initial-backoff": "100ms",
                  "retry-max-backoff": "1s", **extra.pop("connection", {})}
    return {"name": name, "connection": connection, **extra}


def parsed(data: dict[str, Any]) -> OutletConfig:
    return parse_config(copy.deepcopy(data), env={})


def world() -> World:
    w = World()
    w.servers[EXTRA_URL] = FakeClickHouse("extra")
    return w


def metric(o: Outlet, name: str, **labels: str) -> float | None:
    return o.metrics.registry.get_sample_value(name, labels)


async def produce(w: World, count: int, every: float = 0.1) -> None:
    """Records on both partitions, a few at a time (a steady stream)."""
    for _ in range(count // 2):
        w.topic.produce(0, 1)
        w.topic.produce(1, 1)
        await trio.sleep(every)


def tokens(server: FakeClickHouse) -> list[str]:
    return [i.token for i in server.inserts if i.stored]


def everything_once(w: World, server: FakeClickHouse) -> None:
    assert sorted(server.rows) == sorted(w.topic.all_records())
    assert len(server.rows) == len(set(server.rows))


# -- planning (pure) -------------------------------------------------------------------------
def test_plan_sorts_changes_into_live_and_refused(tmp_path: Path) -> None:
    old = base(tmp_path, **{"additional-clickhouses": [additional("azure", AZURE_URL)]})
    new = copy.deepcopy(old)
    new["clickhousedb"]["password"] = "n3w-s3cret"
    new["clickhouse"]["maximum-batch-size"] = 20
    new["log"] = {"level": "debug"}
    new["additional-clickhouses"][0]["connection"]["max-retries"] = 5
    new["additional-clickhouses"][0]["circuit-breaker"] = {"failure-threshold": 2}
    new["additional-clickhouses"].append(additional("extra", EXTRA_URL))
    p = reconfig.plan(parsed(old), parsed(new))
    assert p.refused == ()
    assert [c.path for c in p.changes] == [
        "clickhousedb.password", "clickhouse.maximum-batch-size", "log.level",
        "additional-clickhouses[azure].connection.max-retries",
        "additional-clickhouses[azure].circuit-breaker.failure-threshold",
        "additional-clickhouses[extra]",
    ]
    assert [d.name for d in p.added] == ["extra"] and [d.name for d in p.updated] == ["azure"]
    assert "n3w-s3cret" not in p.summary() and "[extra] added" in p.summary()
    assert reconfig.primary_changes(parsed(old), parsed(new)) is not None


@pytest.mark.parametrize(("change", "refused"), [
    (lambda d: d["kafka"].update(topic="other"), "kafka.topic"),
    (lambda d: d["kafka"].update({"consumer-group": "g2"}), "kafka.consumer-group"),
    (lambda d: d["kafka"].update(brokers=["k2:9092"]), "kafka.brokers"),
    (lambda d: d["clickhousedb"].update(servers=[EXTRA_URL]), "clickhousedb.servers"),
    (lambda d: d["clickhousedb"].update(database="other"), "clickhousedb.database"),
    (lambda d: d["clickhousedb"].update({"max-retries": 3}), "clickhousedb.max-retries"),
    (lambda d: d["state"].update(path="/elsewhere"), "state.path"),
    (lambda d: d["http"].update(listen="127.0.0.1:1"), "http.listen"),
    (lambda d: d.update(networks={"10.0.0.0/8": "lan"}), "networks"),
    (lambda d: d["clickhouse"].update({"maximum-flows-per-record": 5}),
     "clickhouse.maximum-flows-per-record"),
    (lambda d: d["additional-clickhouses"][0].update({"queue-size": 3}),
     "additional-clickhouses[azure].queue-size"),
    (lambda d: d["additional-clickhouses"][0].update(spool={"max-bytes": "1MiB"}),
     "additional-clickhouses[azure].spool.max-bytes"),
    (lambda d: d["additional-clickhouses"][0]["connection"].update({"max-retries": 0}),
     "additional-clickhouses[azure].connection.max-retries"),
])
def test_plan_refuses_what_needs_a_restart(
    tmp_path: Path, change: Callable[[dict[str, Any]], None], refused: str
) -> None:
    old = base(tmp_path, **{"additional-clickhouses": [additional("azure", AZURE_URL)]})
    new = copy.deepcopy(old)
    change(new)
    p = reconfig.plan(parsed(old), parsed(new))
    assert p.refused and p.refused[0].path == refused, p.changes
    assert p.refused == p.changes, "(state.path also moves the default spool paths)"
    assert p.refused[0].why  # says why, and what to do


def test_reserved_rebuild_waits_only_for_the_destinations_it_is_sealed_for() -> None:
    """A rebuild reserved while azure was configured, sealed after azure was removed."""
    t = CommitTracker()
    t.register(1, {0: (0, 9)}, 0, {"primary", "azure"}, sealed=False)
    t.register(1, {0: (0, 9)}, 10, {"primary"})
    assert t.settle(1, "primary") and t.committable() == {0: 10}


# -- applied to a running outlet --------------------------------------------------------------
async def test_added_destination_receives_the_batches_sealed_from_then_on(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    w = world()
    doc = base(tmp_path)
    o = Outlet(parsed(doc), backends=w.backends())
    async with running(o):
        async with trio.open_nursery() as load:
            load.start_soon(produce, w, 200)
            await until(lambda: len(w.primary.rows) >= 60)
            doc["additional-clickhouses"] = [additional("extra", EXTRA_URL)]
            before = len(tokens(w.primary))
            assert await o.reconfigure(parsed(doc)) == "applied"
        await until(lambda: w.topic.committed == {0: 100, 1: 100})
    extra = tokens(w.servers[EXTRA_URL])
    primary = tokens(w.primary)
    assert extra and extra == primary[len(primary) - len(extra):], "the batches sealed since"
    assert len(primary) - len(extra) >= before, "no backfill"
    everything_once(w, w.primary)
    assert metric(o, names.CONFIG_RELOADS_TOTAL, outcome="applied") == 1
    assert metric(o, names.CONFIG_OUTDATED) == 0
    assert "destination extra added" in caplog.text


async def test_removed_destination_stores_what_it_was_given_and_leaves(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    w = world()
    doc = base(tmp_path, **{"additional-clickhouses": [additional("azure", AZURE_URL)]})
    w.azure.latency = 0.5  # slower than the primary: batches wait in its queue
    o = Outlet(parsed(doc), backends=w.backends())
    async with running(o):
        async with trio.open_nursery() as load:
            load.start_soon(produce, w, 300, 0.02)
            await until(lambda: len(w.primary.rows) >= 100)
            given = {i.token for i in w.primary.inserts}  # at least what azure was given
            doc["additional-clickhouses"] = []
            assert await o.reconfigure(parsed(doc)) == "applied"
            queued = metric(o, names.DESTINATION_QUEUED_BATCHES, destination="azure")
        await until(lambda: w.topic.committed == {0: 150, 1: 150})
        await until(lambda: metric(o, names.DESTINATION_UP, destination="azure") is None)
        assert o.parts is not None and o.parts.destinations.get("azure") is None
    stored = tokens(w.azure)
    primary = tokens(w.primary)
    assert given <= set(primary) and set(stored) >= given - set(primary[len(stored):])
    assert stored == primary[: len(stored)], "a prefix: every batch sealed before removal"
    assert len(stored) < len(primary), "nothing after"
    assert queued is not None and queued > 0, "it held queued batches when removed"
    lost = sum(v for k, v in _samples(o, names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL))
    assert lost == 0, "the queue drained within the grace period"
    everything_once(w, w.primary)
    assert len(w.azure.rows) == len(set(w.azure.rows))


def _samples(o: Outlet, name: str) -> list[tuple[str, float]]:
    return [(str(s.labels), s.value) for f in o.metrics.registry.collect() for s in f.samples
            if s.name == name]


@pytest.mark.parametrize("spool", [True, False])
async def test_removed_destination_that_cannot_store_settles_after_the_grace_period(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, spool: bool
) -> None:
    w = world()
    azure = additional("azure", AZURE_URL, spool={"enable": spool}, **{"queue-size": 50},
                       connection={"max-retries": 1000})
    doc = base(tmp_path, **{"additional-clickhouses": [azure]})
    w.azure.stop()  # hangs: nothing stored there
    o = Outlet(parsed(doc), backends=w.backends())
    async with running(o):
        w.topic.produce(0, 100)
        await until(lambda: len(w.primary.rows) == 100)
        await trio.sleep(2)
        assert w.topic.committed.get(0) is None, "azure holds every batch"
        doc["additional-clickhouses"] = []
        removed_at = trio.current_time()
        assert await o.reconfigure(parsed(doc)) == "applied"
        await until(lambda: w.topic.committed.get(0) == 100)
        # grace 10 s, plus the attempt in flight (insert-timeout 30 s) at most
        assert trio.current_time() - removed_at <= 10 + 30 + 1
    reason = {"destination": "azure", "reason": "removed"}
    if spool:
        assert metric(o, names.SPOOL_APPENDED_FLOWS_TOTAL, **reason) == 100
        assert metric(o, names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL, **reason) == 0
    else:
        assert metric(o, names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL, **reason) == 100
    assert w.azure.rows == []


async def test_destination_removed_and_added_back_replays_its_spool(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    w = world()
    doc = base(tmp_path, **{"additional-clickhouses": [additional("azure", AZURE_URL)]})
    w.azure.stop()
    o = Outlet(parsed(doc), backends=w.backends())
    async with running(o):
        w.topic.produce(0, 60)
        await until(lambda: w.topic.committed.get(0) == 60)  # spooled (retries exceeded)
        without = copy.deepcopy(doc)
        without["additional-clickhouses"] = []
        assert await o.reconfigure(parsed(without)) == "applied"
        w.topic.produce(0, 40)  # sealed while azure is not configured
        await until(lambda: w.topic.committed.get(0) == 100)
        w.azure.start()
        assert await o.reconfigure(parsed(doc)) == "applied"
        w.topic.produce(0, 20)
        await until(lambda: len(w.azure.rows) == 80)
        await until(lambda: metric(o, names.SPOOL_BATCHES, destination="azure") == 0)
    assert sorted(w.azure.rows) == sorted(f"0:{i}" for i in [*range(60), *range(100, 120)])
    everything_once(w, w.primary)


async def test_new_credentials_replace_the_writers_between_inserts(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    w = world()
    doc = base(tmp_path, **{"additional-clickhouses": [additional("azure", AZURE_URL)]})
    o = Outlet(parsed(doc), backends=w.backends())
    async with running(o):
        async with trio.open_nursery() as load:
            load.start_soon(produce, w, 200)
            await until(lambda: len(w.azure.rows) >= 40)
            # primary: live, audit; azure: live, audit, probe (circuit), replay (spool)
            old = list(w.writers)
            assert len(old) == 6
            doc["clickhousedb"]["password"] = "p2"
            doc["additional-clickhouses"][0]["connection"]["password"] = "a2"
            assert await o.reconfigure(parsed(doc)) == "applied"
            writes = [wr.writes for wr in old]
            await until(lambda: len(w.primary.rows) >= 120 and len(w.azure.rows) >= 120)
            assert [wr.writes for wr in old] == writes, "no insert through an old writer"
            assert [wr.closed for wr in old] == [True, True, True, True, False, False], (
                "closed once replaced, at their next use (the unused probe and replay "
                "writers at their next probe or replay)")
        await until(lambda: w.topic.committed == {0: 100, 1: 100})
    new = w.writers[len(old):]
    assert sorted(wr.conn.password.reveal() for wr in new) == ["a2"] * 4 + ["p2"] * 2
    live, probe = new[2], new[4]  # primary's writers first, then azure's, in that order
    assert probe.timeout == probe.conn.dial_timeout != live.timeout, (
        "the probe's replacement keeps its dial-timeout bound")
    assert new[0].writes > 0 and new[2].writes > 0, "the new live writers insert"
    assert all(wr.closed for wr in w.writers)
    everything_once(w, w.primary)
    everything_once(w, w.azure)


async def test_fixed_credentials_end_an_authentication_outage_at_once(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A wrong password trips azure's circuit (a permanent error: probes would wait
    cool-down, 60 s here). Serving the right one live makes it probe at once: azure
    stores again within a second or two, its spool replays, every record once."""
    w = world()
    w.azure.password = "right"
    azure = additional("azure", AZURE_URL, connection={"password": "wrong"},
                       **{"circuit-breaker": {"cool-down": "60s"}})
    doc = base(tmp_path, **{"additional-clickhouses": [azure]})
    o = Outlet(parsed(doc), backends=w.backends())
    async with running(o):
        w.topic.produce(0, 50)
        await until(lambda: w.topic.committed.get(0) == 50)  # spooled: auth failed
        assert w.azure.rows == [] and metric(o, names.DESTINATION_CIRCUIT_STATE,
                                             destination="azure") == 1  # fmt: skip
        await trio.sleep(5)  # well inside the cool-down
        doc["additional-clickhouses"][0]["connection"]["password"] = "right"
        assert await o.reconfigure(parsed(doc)) == "applied"
        fixed_at = trio.current_time()
        w.topic.produce(0, 50)
        await until(lambda: len(w.azure.rows) == 100)
        assert trio.current_time() - fixed_at < 5, "not after the rest of the cool-down"
    everything_once(w, w.primary)
    everything_once(w, w.azure)


async def test_refused_change_keeps_the_running_configuration(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = world()
    doc = base(tmp_path)
    o = Outlet(parsed(doc), backends=w.backends())
    async with running(o):
        new = copy.deepcopy(doc)
        new["kafka"]["topic"] = "other"
        new["additional-clickhouses"] = [additional("extra", EXTRA_URL)]
        with caplog.at_level(logging.ERROR):
            assert await o.reconfigure(parsed(new)) == "refused"
        w.topic.produce(0, 30)
        await until(lambda: w.topic.committed.get(0) == 30)
        assert metric(o, names.CONFIG_OUTDATED) == 1
        assert await o.reconfigure(parsed(doc)) == "unchanged"
        assert metric(o, names.CONFIG_OUTDATED) == 0
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and "kafka.topic" in refusals[0], refusals
    assert "restart" in refusals[0]
    assert w.servers[EXTRA_URL].inserts == [], "nothing of a refused change applies"
    assert metric(o, names.CONFIG_RELOADS_TOTAL, outcome="refused") == 1
    assert o.cfg.kafka.topic == "flows"


async def test_batch_size_applies_to_the_next_batches(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    w = world()
    doc = base(tmp_path)
    o = Outlet(parsed(doc), backends=w.backends())
    async with running(o):
        w.topic.produce(0, 30)
        await until(lambda: w.topic.committed.get(0) == 30)
        doc["clickhouse"]["maximum-batch-size"] = 25
        assert await o.reconfigure(parsed(doc)) == "applied"
        w.topic.produce(0, 50)
        await until(lambda: w.topic.committed.get(0) == 80)
    assert [len(i.records) for i in w.primary.inserts] == [10, 10, 10, 25, 25]


async def test_removal_while_the_fan_out_waits_for_the_primary(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """The primary is down (backpressure): the fan-out call in progress registered azure;
    azure must still settle that batch, so the commit can move once the primary is back."""
    w = world()
    doc = base(tmp_path, **{"additional-clickhouses": [additional("azure", AZURE_URL)]})
    w.primary.stop()
    o = Outlet(parsed(doc), backends=w.backends())
    async with running(o):
        w.topic.produce(0, 100)
        await until(lambda: metric(o, names.KAFKA_PAUSED) == 1)
        doc["additional-clickhouses"] = []
        assert await o.reconfigure(parsed(doc)) == "applied"
        await trio.sleep(5)
        w.primary.start()
        await until(lambda: w.topic.committed.get(0) == 100)
        await until(lambda: o.parts is not None and o.parts.destinations.get("azure") is None)
    assert tokens(w.azure) == tokens(w.primary)[: len(tokens(w.azure))]
    assert len(w.azure.rows) == len(set(w.azure.rows))
    everything_once(w, w.primary)


async def test_destinations_churn_while_batches_flow(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """Destinations added and removed in quick succession while the fan-out is inside
    another destination's fallback (azure down, queue of 1: every batch goes to its spool,
    the fan-out waits on the spool's disk calls): a removed destination's queue must not
    close under a fan-out call that registered it (ClosedResourceError), and every batch
    sealed while a destination was in the fan-out is stored there exactly once."""
    w = world()
    azure = additional("azure", AZURE_URL, **{"queue-size": 1})
    doc = base(tmp_path, **{"additional-clickhouses": [azure]})
    w.azure.stop()

    async def slow_disk(fn: Callable[..., Any], *args: Any) -> Any:
        await trio.sleep(0.03)  # a disk call takes time (a worker thread in production)
        return fn(*args)

    o = Outlet(parsed(doc), backends=w.backends(disk=slow_disk))
    async with running(o):
        async with trio.open_nursery() as load:
            load.start_soon(produce, w, 400, 0.02)
            for i in range(12):
                name = f"extra{i % 2}"
                doc["additional-clickhouses"] = [azure, additional(name, EXTRA_URL)]
                assert await o.reconfigure(parsed(doc)) == "applied"
                await trio.sleep(0.35)
                doc["additional-clickhouses"] = [azure]
                assert await o.reconfigure(parsed(doc)) == "applied"
        await until(lambda: w.topic.committed == {0: 200, 1: 200})
    extra = w.servers[EXTRA_URL]
    assert len(extra.inserts) == len(tokens(extra)), "no batch inserted twice"
    assert set(tokens(extra)) <= set(tokens(w.primary)) and extra.rows
    everything_once(w, w.primary)


async def test_removal_waits_for_the_fan_out_call_that_registered_it(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    """A fan-out call registered a batch for [azure, extra, primary] and is inside azure's
    spool append (a slow disk) when extra is removed: extra must still receive and settle
    that batch (else its closed queue breaks the call, or the commit waits forever)."""
    w = world()
    azure = additional("azure", AZURE_URL, **{"queue-size": 1})
    doc = base(tmp_path, **{"additional-clickhouses": [azure, additional("extra", EXTRA_URL)]})
    w.azure.stop()  # its first batch hangs in the writer, the second fills its queue
    hold, entered, gate = [False], trio.Event(), trio.Event()

    async def disk(fn: Callable[..., Any], *args: Any) -> Any:
        if hold[0] and isinstance(getattr(fn, "__self__", None), Spool) and fn.__name__ == "append":
            entered.set()
            await gate.wait()
        await trio.lowlevel.checkpoint()
        return fn(*args)

    o = Outlet(parsed(doc), backends=w.backends(disk=disk))
    async with running(o):
        w.topic.produce(0, 20)
        await until(lambda: len(w.servers[EXTRA_URL].rows) == 20)
        hold[0] = True
        w.topic.produce(0, 10)  # the third batch: azure's fallback, on the slow disk
        await entered.wait()
        doc["additional-clickhouses"] = [azure]
        assert await o.reconfigure(parsed(doc)) == "applied"
        await trio.sleep(1)
        gate.set()
        await until(lambda: w.topic.committed.get(0) == 30)
    assert sorted(w.servers[EXTRA_URL].rows) == sorted(f"0:{i}" for i in range(30))
    everything_once(w, w.primary)

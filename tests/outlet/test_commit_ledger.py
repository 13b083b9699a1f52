"""Pure logic of the commit watermark, the ledger and deduplication tokens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from outlet.batch import BatchBuilder
from outlet.commit import CommitTracker
from outlet.ledger import LegacyLedger
from outlet.tokens import (
    make_token,
    make_token_v1,
    token_cluster_id,
    token_version,
    writer_identity,
)

DESTS = {"primary", "azure"}
CLUSTER = "9pPv-rJJSdakfHT0ptqtUQ"  # what Kafka 4's storage tool generates (URL-safe base64)
ID = writer_identity(CLUSTER)


def test_token_is_derived_from_cluster_topic_and_offsets_only() -> None:
    a = make_token(ID, "flows", {1: (10, 20), 0: (5, 9)})
    b = make_token(ID, "flows", {0: (5, 9), 1: (10, 20)})
    assert a == b == f"v2:{CLUSTER}/flows/0:5-9,1:10-20"
    assert make_token(ID, "flows", {0: (5, 10)}) != make_token(ID, "flows", {0: (5, 9)})
    assert make_token(ID, "flows", {0: (5, 9)}) != make_token(ID, "flows2", {0: (5, 9)})


def test_tokens_of_two_clusters_with_the_same_topic_and_offsets_differ() -> None:
    """Issue 10: two datacenters, topic `flows` everywhere, the same offsets."""
    ranges = {0: (0, 49_999)}
    dc_a = make_token(writer_identity("clusterA"), "flows", ranges)
    dc_b = make_token(writer_identity("clusterB"), "flows", ranges)
    assert dc_a != dc_b
    # clusters restored from one backup share an id: kafka.cluster-identity tells them apart
    restored_1 = make_token(writer_identity(CLUSTER, "paris"), "flows", ranges)
    restored_2 = make_token(writer_identity(CLUSTER, "london"), "flows", ranges)
    assert len({restored_1, restored_2, make_token(ID, "flows", ranges)}) == 3
    assert restored_1 == f"v2:{CLUSTER}+paris/flows/0:0-49999"


def test_identity_escapes_delimiters_so_tokens_cannot_be_confused() -> None:
    # "a/b" + topic "c" must not read like identity "a" + topic "b/c"
    t1 = make_token(writer_identity("a/b"), "c", {0: (1, 2)})
    t2 = make_token(writer_identity("a"), "b", {0: (1, 2)})
    assert t1 == "v2:a%2Fb/c/0:1-2" and t1 != t2
    assert writer_identity("x+y", "z") == "x%2By+z"
    with pytest.raises(ValueError):
        writer_identity("")
    with pytest.raises(ValueError):
        make_token("", "flows", {0: (1, 2)})
    with pytest.raises(ValueError):
        make_token(ID, "flows", {})


def test_token_versions_are_told_apart() -> None:
    old = make_token_v1("flows", {1: (10, 20), 0: (5, 9)})
    assert old == "flows/0:5-9,1:10-20"  # the format before issue 10, unchanged
    assert token_version(old) == 1
    assert token_version(make_token(ID, "flows", {0: (5, 9)})) == 2
    assert token_version(make_token_v1("v2", {0: (5, 9)})) == 1  # a topic named v2


def test_batch_builder_extend_tracks_ranges_per_partition() -> None:
    b = BatchBuilder()
    b.extend([0, 1, 0, 1], [5, 7, 6, 8], [b"a", b"b", b"c", b"d"], 0, 4)
    b.extend([0], [9], [b"e"], 0, 1)
    assert b.ranges == {0: (5, 9), 1: (7, 8)}
    assert b.records == [b"a", b"b", b"c", b"d", b"e"]


def test_commit_waits_for_every_destination_and_for_earlier_batches() -> None:
    t = CommitTracker()
    t.register(1, {0: (0, 9)}, 10, DESTS)
    t.register(2, {0: (10, 19), 1: (0, 4)}, 15, DESTS)
    assert not t.settle(2, "primary")
    assert t.settle(2, "azure")  # partition 1 moves; batch 1 holds partition 0 back
    assert t.committable() == {1: 5}  # ...but partition 1 can move
    assert not t.settle(1, "azure")
    assert t.settle(1, "primary")
    assert t.committable() == {0: 20, 1: 5}
    assert t.pending_batches == 0


def test_pending_in_and_revoked_partitions() -> None:
    t = CommitTracker()
    t.register(1, {0: (0, 9), 2: (0, 3)}, 14, DESTS)  # a rebuild of an older outlet's batch
    t.register(2, {2: (4, 9)}, 6, DESTS)
    assert t.pending_in({2}) and not t.pending_in({1})
    t.forget_partitions({2})
    assert not t.tracks(2), "a batch of revoked partitions only is not waited for any more"
    assert t.tracks(1), "one that also holds records of a partition still ours is"
    t.settle(1, "primary")
    t.settle(1, "azure")  # must not fail although partition 2 was forgotten
    assert t.committable() == {0: 10}
    assert not t.settle(2, "primary") and t.pending_batches == 0


async def test_waits_are_driven_by_settlement(autojump_clock: trio.testing.MockClock) -> None:
    t = CommitTracker()
    t.register(1, {0: (0, 9)}, 10, DESTS)
    t.register(2, {1: (0, 9)}, 0, DESTS, sealed=False)  # a rebuild not sealed yet
    done: list[str] = []

    async def wait(name: str, partitions: set[int] | None) -> None:
        await t.wait_settled(partitions)
        done.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "all sealed", None)
        nursery.start_soon(wait, "partition 1, unsealed", {1})
        await trio.sleep(1)
        assert done == ["partition 1, unsealed"], (
            "a rebuild not sealed yet is not being inserted: a revoke hands it over at once"
        )
        t.settle(1, "primary")
        t.settle(1, "azure")
        await trio.testing.wait_all_tasks_blocked()
        assert done[-1] == "all sealed", "shutdown does not wait for an unsealed rebuild"
        assert await t.wait_moved(0) == 1
        t.register(2, {1: (0, 9)}, 10, DESTS)  # sealed now
        nursery.start_soon(wait, "partition 1, sealed", {1})
        await trio.sleep(1)
        assert t.in_flight() and done[-1] == "all sealed"
        t.settle(2, "primary")
        t.settle(2, "azure")
    assert done[-1] == "partition 1, sealed"
    assert t.committable() == {0: 10, 1: 10}


def test_legacy_ledger_is_read_for_the_upgrade_and_goes_once_committed(tmp_path: Path) -> None:
    """The file an older outlet wrote: entries without a token (token version 1) and with
    one (version 2, its own cluster or another), a torn last line."""
    path = tmp_path / "ledger-g-flows.jsonl"
    lines = [
        {"ranges": {"0": [0, 9], "1": [0, 4]}},
        {"ranges": {"0": [10, 19]}, "token": "v2:fake-cluster/flows/0:10-19"},
        {"ranges": {"1": [5, 9]}, "token": "v2:other-cluster/flows/1:5-9"},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"ranges": {"0": [20,')
    led = LegacyLedger(tmp_path, "flows", "g", "fake-cluster", run_sync=_inline)
    # Partition 0 committed up to 10, partition 1 up to 0: the first batch is partly
    # committed; its partition-1 part is rebuilt under its original (v1) token.
    assert led.pending({0: 10, 1: 0}, {0, 1}) == [
        ("flows/0:0-9,1:0-4", {1: (0, 4)}),
        ("v2:fake-cluster/flows/0:10-19", {0: (10, 19)}),
    ]
    assert led.pending({0: 10, 1: 0}, {0}) == [("v2:fake-cluster/flows/0:10-19", {0: (10, 19)})]
    trio.run(led.compact, {0: 10, 1: 5})
    assert [json.loads(x)["ranges"] for x in path.read_text().splitlines()] == [{"0": [10, 19]}]
    trio.run(led.compact, {0: 20, 1: 5})
    assert not path.exists(), "the file goes with its last uncommitted batch"
    assert led.pending({0: 0, 1: 0}, {0, 1}) == []


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


def test_legacy_ledger_compaction_failing_is_counted_and_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full state disk only keeps the older outlet's file from shrinking: counted,
    logged with the path, the entries kept (in the file and in memory), and the next
    compaction succeeds once there is room."""
    import errno
    import os

    import outlet.ledger
    from outlet.metrics import Metrics
    from outlet.statedisk import StateDisk

    path = tmp_path / "ledger-g-flows.jsonl"
    lines = [{"ranges": {"0": [0, 9]}}, {"ranges": {"0": [10, 19]}}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    metrics = Metrics()
    disk = StateDisk(str(tmp_path), metrics)
    led = LegacyLedger(tmp_path, "flows", "g", "fake-cluster", run_sync=_inline,
                       on_compact_error=disk.compact_failed)
    real_fsync = os.fsync

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(outlet.ledger.os, "fsync", full)
    trio.run(led.compact, {0: 10})
    errors = metrics.registry.get_sample_value(
        "outlet_state_disk_errors_total", {"operation": "compact", "error": "ENOSPC"})
    assert errors == 1
    assert len(path.read_text().splitlines()) == 2
    assert any(str(tmp_path) in r.getMessage() and "ENOSPC" in r.getMessage()
               for r in caplog.records)
    monkeypatch.setattr(outlet.ledger.os, "fsync", real_fsync)
    trio.run(led.compact, {0: 10})  # the same commit: tried again, now with room
    assert [json.loads(x)["ranges"] for x in path.read_text().splitlines()] == [{"0": [10, 19]}]


async def test_unreachable_brokers_wait_for_the_cluster_id(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens without the cluster id collide between datacenters, so nothing is consumed
    before the brokers tell it; unreachable brokers (or a refused login) can heal, so the
    outlet waits with backoff instead of exiting into a crash loop: /readyz says why and
    the log says it once, naming the brokers."""
    import logging
    import socket

    import outlet.kafka_client
    from outlet.config import parse_config
    from outlet.metrics import Metrics
    from outlet.pipeline import Backends, Outlet

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(outlet.kafka_client, "CLUSTER_ID_TIMEOUT", 0.5)
    monkeypatch.setattr(outlet.kafka_client, "CLUSTER_ID_BACKOFF", (0.2, 0.5))
    cfg = parse_config({"kafka": {"brokers": [f"127.0.0.1:{port}"]},
                        "state": {"path": str(tmp_path / "state")}})
    metrics = Metrics()
    out = Outlet(cfg, metrics, Backends(http=None))
    caplog.set_level(logging.WARNING, logger="outlet.kafka_client")
    with trio.move_on_after(6):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(out.run)
            while metrics.kafka_errors.labels("_TRANSPORT")._value.get() < 3:
                await trio.sleep(0.1)
            assert out.parts is None  # still opening: nothing consumed
            assert out.ready() == (False, "waiting for the Kafka cluster id (transport)")
            nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if "cluster id" in r.getMessage()]
    assert len(lines) == 1, lines  # one line per distinct failure, not one per attempt
    assert f"kafka.brokers 127.0.0.1:{port} (_TRANSPORT)" in lines[0]


async def test_brokers_without_a_cluster_id_refuse_the_start() -> None:
    """Brokers that report no cluster id (Kafka before 0.10.1, some compatible services)
    will never report one: the outlet does not start, and says which brokers it asked."""
    from outlet.config import parse_config
    from outlet.kafka_client import KafkaClient
    from outlet.kafka_input import ClusterIdError
    from outlet.metrics import Metrics

    class NoIdConsumer:
        closed = False

        def __init__(self, settings: dict[str, Any], **_: Any) -> None: ...

        def list_topics(self, timeout: float) -> Any:
            return type("Metadata", (), {"cluster_id": None})()

        def close(self) -> None:
            NoIdConsumer.closed = True

    cfg = parse_config({"kafka": {"brokers": ["kafka-a:9092", "kafka-b:9092"]}})
    client = KafkaClient(cfg.kafka, Metrics(), consumer_factory=NoIdConsumer)
    with pytest.raises(ClusterIdError, match="the Kafka brokers kafka-a:9092,kafka-b:9092 "
                                             "report no cluster id"):
        await client.cluster()
    assert NoIdConsumer.closed


async def test_cluster_facts_read_the_smallest_metadata_cap_or_none() -> None:
    """Once the consumer read the cluster id, a short-lived admin client reads the
    brokers' offset.metadata.max.bytes (the smallest); without DescribeConfigs it is
    None (kafka.offset-metadata-max-bytes is trusted then)."""
    from concurrent.futures import Future

    from outlet.config import parse_config
    from outlet.kafka_client import METADATA_CAP, KafkaClient
    from outlet.metrics import Metrics

    class Consumer:
        def __init__(self, settings: dict[str, Any], **_: Any) -> None: ...

        def list_topics(self, timeout: float) -> Any:
            return type("Metadata", (), {"cluster_id": "c-1", "brokers": {1: None, 2: None}})()

    def admin(caps: dict[str, int] | None) -> Any:
        class Admin(Consumer):
            def describe_configs(self, resources: list[Any]) -> dict[Any, Future[Any]]:
                if caps is None:
                    raise RuntimeError("CLUSTER_AUTHORIZATION_FAILED")
                out: dict[Any, Future[Any]] = {}
                for r in resources:
                    f: Future[Any] = Future()
                    f.set_result({METADATA_CAP: type("Entry", (), {"value": caps[r.name]})()})
                    out[r] = f
                return out
        return Admin

    cfg = parse_config({"kafka": {"brokers": ["kafka-a:9092"]}})
    facts = await KafkaClient(cfg.kafka, Metrics(), Consumer,
                              admin({"1": 4096, "2": 2048})).cluster()
    assert (facts.cluster_id, facts.metadata_max_bytes) == ("c-1", 2048)
    facts = await KafkaClient(cfg.kafka, Metrics(), Consumer, admin(None)).cluster()
    assert (facts.cluster_id, facts.metadata_max_bytes) == ("c-1", None)


def test_only_the_cluster_id_names_where_a_batch_was_sealed() -> None:
    # the alias (kafka.cluster-identity) may change: only the cluster id counts
    assert token_cluster_id(make_token(writer_identity("a/b", "x"), "t", {0: (1, 1)})) == "a/b"
    assert token_cluster_id("flows/0:1-2") is None

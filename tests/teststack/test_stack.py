"""The native stack against real clients: clickhouse-connect through Toxiproxy, TLS, restarts,
a Kafka consumer-group round trip through the proxied listener, and `chaos stack down`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import psutil
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from teststack import stack as stk
from teststack.toxiproxy import Toxiproxy

pytestmark = pytest.mark.stack

ROWS = 1_000_000
BATCH = 50_000


def ch_client(ch: stk.ClickHouseEndpoints, *, proxied: bool = True, **kw: Any) -> Client:
    port = ch.proxied_port if proxied else ch.port
    opts: dict[str, Any] = {
        "connect_timeout": 5,
        "send_receive_timeout": 60,
        "query_retries": 0,
    }
    opts.update(kw)
    return clickhouse_connect.get_client(
        host="127.0.0.1", port=port, username=ch.username, password=ch.password, **opts
    )


def new_table(client: Client) -> str:
    name = f"t_{uuid.uuid4().hex[:12]}"
    client.command(
        f"CREATE TABLE {name} (id UInt64, v UInt32, s LowCardinality(String)) "
        "ENGINE = MergeTree ORDER BY id"
    )
    return name


def insert_rows(client: Client, table: str, start: int, n: int) -> None:
    ids = list(range(start, start + n))
    client.insert(
        table,
        [ids, [i % 1000 for i in ids], ["x"] * n],
        column_names=["id", "v", "s"],
        column_oriented=True,
    )


@pytest.fixture
def toxiproxy(stack: stk.Endpoints) -> Iterator[Toxiproxy]:
    client = stack.toxiproxy.client()
    yield client
    client.reset()  # no toxic or disabled proxy leaks into the next test


@pytest.mark.parametrize("server", ["local", "azure"])
def test_million_rows_through_proxy(stack: stk.Endpoints, server: str) -> None:
    ch = stack.clickhouse[server]
    client = ch_client(ch)
    table = new_table(client)
    t0 = time.monotonic()
    for start in range(0, ROWS, BATCH):
        insert_rows(client, table, start, BATCH)
    elapsed = time.monotonic() - t0
    result = client.query(f"SELECT count(), sum(id), sum(v) FROM {table}")
    count, total, vsum = result.result_rows[0]
    print(f"{server}: {ROWS} rows in {elapsed:.2f} s ({ROWS / elapsed:,.0f} rows/s)")
    assert count == ROWS
    assert total == ROWS * (ROWS - 1) // 2
    assert vsum == sum(i % 1000 for i in range(ROWS))
    client.command(f"DROP TABLE {table}")


def test_latency_toxic_delays_insert(stack: stk.Endpoints, toxiproxy: Toxiproxy) -> None:
    ch = stack.clickhouse["local"]
    client = ch_client(ch)
    table = new_table(client)

    def timed_insert(start: int) -> float:
        t = time.monotonic()
        insert_rows(client, table, start, 1000)
        return time.monotonic() - t

    baseline = min(timed_insert(i * 1000) for i in range(3))
    toxiproxy.add_toxic(ch.proxy, "latency", {"latency": 300, "jitter": 0}, name="lat300")
    try:
        delayed = timed_insert(10_000)
    finally:
        toxiproxy.remove_toxic(ch.proxy, "lat300")
    after = timed_insert(20_000)
    print(f"baseline {baseline * 1000:.0f} ms, with 300 ms latency {delayed * 1000:.0f} ms, "
          f"after removal {after * 1000:.0f} ms")
    assert delayed - baseline >= 0.250
    assert client.command(f"SELECT count() FROM {table}") == 5000


@pytest.mark.parametrize("server", ["local", "azure"])
def test_disabled_proxy_fails_then_recovers(
    stack: stk.Endpoints, toxiproxy: Toxiproxy, server: str
) -> None:
    ch = stack.clickhouse[server]
    client = ch_client(ch, connect_timeout=2)
    table = new_table(client)
    insert_rows(client, table, 0, 1000)
    toxiproxy.disable(ch.proxy)
    try:
        with pytest.raises(OperationalError) as err:
            insert_rows(client, table, 1000, 1000)
        print(f"disabled proxy: {str(err.value)[:200]}")
        msg = str(err.value).lower()
        assert any(w in msg for w in ("connection", "refused", "reset", "closed", "aborted"))
    finally:
        toxiproxy.enable(ch.proxy)
    insert_rows(client, table, 1000, 1000)
    assert client.command(f"SELECT count() FROM {table}") == 2000


def test_wrong_password_is_516(stack: stk.Endpoints) -> None:
    ch = stack.clickhouse["local"]
    for proxied in (False, True):
        with pytest.raises(DatabaseError) as err:
            clickhouse_connect.get_client(
                host="127.0.0.1",
                port=ch.proxied_port if proxied else ch.port,
                username=ch.username,
                password="wrong-" + ch.password,
                connect_timeout=5,
            )
        assert "516" in str(err.value), str(err.value)[:300]


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_https_verifies_with_stack_ca_only(stack: stk.Endpoints, tmp_path: Path) -> None:
    ch = stack.clickhouse["azure"]
    common: dict[str, Any] = {
        "host": "127.0.0.1", "port": ch.https_port, "username": ch.username,
        "password": ch.password, "secure": True, "connect_timeout": 5,
    }
    client = clickhouse_connect.get_client(verify=True, ca_cert=stack.ca_file, **common)
    assert client.command("SELECT 1") == 1
    # skip-verify also works (the outlet's tls.skip-verify)
    insecure = clickhouse_connect.get_client(verify=False, **common)
    assert insecure.command("SELECT 2") == 2
    other_ca, _ = stk.generate_ca(tmp_path / "other", "some other CA")
    with pytest.raises(OperationalError) as err:
        clickhouse_connect.get_client(verify=True, ca_cert=str(other_ca), **common)
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value) or "certificate" in str(err.value)


def test_restart_clickhouse_keeps_data(stack: stk.Endpoints) -> None:
    ch = stack.clickhouse["azure"]
    client = ch_client(ch)
    table = new_table(client)
    insert_rows(client, table, 0, 12_345)
    pid_before = stk.load_pids(Path(stack.stack_dir))["clickhouse-azure"].pid
    t0 = time.monotonic()
    stk.restart_clickhouse(stack.stack_dir, "azure")
    print(f"restart_clickhouse took {time.monotonic() - t0:.1f} s")
    pid_after = stk.load_pids(Path(stack.stack_dir))["clickhouse-azure"].pid
    assert pid_after != pid_before
    assert not psutil.pid_exists(pid_before) or psutil.Process(pid_before).status() == "zombie"
    for proxied in (False, True):  # same ports: direct and through the unchanged proxy
        again = ch_client(ch, proxied=proxied)
        assert again.command(f"SELECT count() FROM {table}") == 12_345


def test_second_server_on_same_data_dir_fails_clearly(stack: stk.Endpoints) -> None:
    ch = stack.clickhouse["local"]
    (port,) = stk.free_ports(1)
    cmd = stk.clickhouse_cmd(
        http_port=port, https_port=None, data_dir=ch.data_dir, password="whatever"
    )
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("a second server on the same data directory kept running")
    text = (out + err).decode(errors="replace")
    assert proc.returncode == 3, text[-2000:]
    assert f"data directory in use: {ch.data_dir}" in text or "data directory in use" in text
    # The running server is unaffected.
    assert ch_client(ch).command("SELECT 1") == 1


# ---------------------------------------------------------------------------------------
# Kafka
# ---------------------------------------------------------------------------------------


def _create_topic(bootstrap: str, partitions: int = 4) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)
    return topic


def _produce(bootstrap: str, topic: str, start: int, n: int) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 500_000,
         "acks": "all", "enable.idempotence": True}
    )
    failures: list[KafkaError] = []

    def report(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    for i in range(start, start + n):
        producer.produce(topic, key=str(i % 101).encode(), value=str(i).encode(),
                         on_delivery=report)
        if i % 10_000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    assert not failures, failures[:3]


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
            "session.timeout.ms": 10_000,
        }
    )


def _consume(consumer: Consumer, want: int, timeout: float) -> list[tuple[int, int, int]]:
    """(partition, offset, value) of up to `want` messages, then 2 s more to catch extras."""
    got: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + timeout
    extra_until: float | None = None
    while time.monotonic() < (extra_until or deadline):
        for msg in consumer.consume(num_messages=10_000, timeout=0.5):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                raise AssertionError(f"consume error: {err}")
            value = msg.value()
            assert value is not None
            got.append((msg.partition() or 0, msg.offset() or 0, int(value)))
        if len(got) >= want and extra_until is None:
            extra_until = time.monotonic() + 2.0
    return got


def test_kafka_round_trip_resumes_at_committed_offsets(stack: stk.Endpoints) -> None:
    direct, proxied = stack.kafka.bootstrap, stack.kafka.bootstrap_proxied
    topic = _create_topic(direct)
    group = f"g-{uuid.uuid4().hex[:8]}"
    n = 100_000
    t0 = time.monotonic()
    _produce(direct, topic, 0, n)
    t_produce = time.monotonic() - t0

    consumer = _consumer(proxied, group)
    consumer.subscribe([topic])
    t0 = time.monotonic()
    first = _consume(consumer, n, timeout=120)
    t_consume = time.monotonic() - t0
    values = [v for _, _, v in first]
    assert len(values) == n, f"got {len(values)} messages"
    assert set(values) == set(range(n))
    committed = consumer.commit(asynchronous=False)
    assert committed is not None
    next_offsets = {tp.partition: tp.offset for tp in committed}
    highs = {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in range(stack.kafka.partitions)
    }
    assert {p: next_offsets.get(p, 0) for p in highs} == highs
    consumer.close()
    print(f"kafka: produced {n} in {t_produce:.1f} s, consumed via proxy in {t_consume:.1f} s")

    _produce(direct, topic, n, 1000)
    consumer = _consumer(proxied, group)
    consumer.subscribe([topic])
    try:
        second = _consume(consumer, 1000, timeout=60)
    finally:
        consumer.close()
    assert sorted(v for _, _, v in second) == list(range(n, n + 1000))
    first_offsets: dict[int, int] = {}
    for p, off, _ in second:
        first_offsets[p] = min(off, first_offsets.get(p, off))
    for p, off in first_offsets.items():
        assert off == next_offsets[p], f"partition {p}: resumed at {off} != {next_offsets[p]}"


def test_restart_kafka_keeps_messages(stack: stk.Endpoints) -> None:
    direct = stack.kafka.bootstrap
    topic = _create_topic(direct)
    _produce(direct, topic, 0, 500)
    t0 = time.monotonic()
    stk.restart_kafka(stack.stack_dir)
    print(f"restart_kafka took {time.monotonic() - t0:.1f} s")
    consumer = _consumer(stack.kafka.bootstrap_proxied, f"g-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    try:
        got = _consume(consumer, 500, timeout=60)
    finally:
        consumer.close()
    assert sorted(v for _, _, v in got) == list(range(500))


# ---------------------------------------------------------------------------------------
# chaos stack down (CLI, on a stack of its own)
# ---------------------------------------------------------------------------------------


def test_cli_up_status_down_leaves_nothing(tmp_path: Path) -> None:
    sdir = tmp_path / "cli-stack"
    chaos = [sys.executable, "-m", "chaos.cli", "stack"]
    up = subprocess.run([*chaos, "up", "--dir", str(sdir), "--partitions", "2"],
                        capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "start-up time" in up.stdout
        endpoints = stk.Endpoints.load(sdir)
        assert endpoints.kafka.partitions == 2
        records = stk.load_pids(sdir)
        assert set(records) == {"kafka", "toxiproxy", "clickhouse-local", "clickhouse-azure"}
        status = subprocess.run([*chaos, "status", "--dir", str(sdir)],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stdout + status.stderr
        again = subprocess.run([*chaos, "up", "--dir", str(sdir)],
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout
        ports = [p for r in records.values() for p in r.ports.values()]
        ports += [endpoints.kafka.proxied_port]
        ports += [c.proxied_port for c in endpoints.clickhouse.values()]
        assert all(stk.port_open(p) for p in ports)
    finally:
        down = subprocess.run([*chaos, "down", "--dir", str(sdir)],
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (sdir / "pids.json").exists()
    for name, rec in records.items():
        assert not rec.alive(), f"{name} (pid {rec.pid}) still alive"
        assert not rec.group_alive(), f"{name}: process group {rec.pgid} not empty"
    still_open = [p for p in ports if stk.port_open(p)]
    assert not still_open, f"ports still open: {still_open}"
    leftovers = [
        p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
        if str(sdir) in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers, f"processes still running for {sdir}: {leftovers}"
    assert json.loads((sdir / "state.json").read_text())["partitions"] == 2

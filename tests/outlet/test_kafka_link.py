"""The Kafka link inside the real pipeline, over the fake librdkafka consumer
(tests/outlet/kafka_fake.py) in real worker threads: a rotation of kafka.tls files
recreates the consumer (its partitions settled and committed first, nothing lost or
stored twice, the thread rule kept), and a failure that needs action makes the client
close its consumer and back off instead of letting librdkafka retry every 50 ms. The
real broker: tests/outlet/test_secure_links.py."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from confluent_kafka import KafkaError, KafkaException

from outlet import kafka_client, kafka_link
from outlet import metrics as names
from outlet.kafka_client import KafkaClient
from outlet.metrics import Metrics
from outlet.pipeline import Outlet
from tests.outlet.fakes import World, config
from tests.outlet.kafka_fake import FakeBroker, FakeConsumer
from tests.outlet.test_kafka_input import running, until
from teststack.certs import Authority

AUTH = ("_AUTHENTICATION", "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: "
        "Authentication failed: Invalid username or password (after 302ms in state AUTH_REQ)")


class _Err:
    def __init__(self, name: str, text: str) -> None:
        self._name, self._text = name, text

    def name(self) -> str:
        return self._name

    def str(self) -> str:
        return self._text


def _outlet(broker: FakeBroker, world: World, state: Path, kafka: dict[str, Any],
            factory: Any = None) -> Outlet:
    def source(cfg: Any, metrics: Metrics) -> KafkaClient:
        return KafkaClient(cfg, metrics, consumer_factory=factory or broker.consumer_factory(),
                           admin_factory=broker.admin_factory())

    backends = world.backends(source=source, disk=trio.to_thread.run_sync)
    return Outlet(config(state, kafka=kafka, clickhouse={"maximum-wait-time": "200ms"}),
                  backends=backends)


async def test_rotated_tls_files_recreate_the_consumer_without_loss(tmp_path: Path) -> None:
    ca = Authority.create("unit CA")
    ca_file, _ = ca.write(tmp_path / "ca.pem", tmp_path / "ca-key.pem")
    cert, key = ca.issue("outlet-a", client=True).write(tmp_path / "c.pem", tmp_path / "k.pem")
    broker = FakeBroker(partitions=2)
    broker.produce(0, 20)
    broker.produce(1, 20)
    w = World()
    tls = {"enable": True, "ca-file": str(ca_file), "cert-file": str(cert), "key-file": str(key)}
    o = _outlet(broker, w, tmp_path / "state", {"tls": tls})
    async with running(o):
        await until(lambda: broker.committed == {0: 20, 1: 20})
        ca.issue("outlet-b", client=True).write(cert, key)
        await until(lambda: len(broker.consumers) == 2 and bool(broker.consumers[1].assignment))
        broker.produce(0, 15)
        broker.produce(1, 5)
        await until(lambda: broker.committed == {0: 35, 1: 25})
    first, second = broker.consumers
    assert first.closed and second.closed
    assert first.overlaps == [] and second.overlaps == []
    assert sorted(w.primary.rows) == sorted(f"{p}:{i}" for p, n in ((0, 35), (1, 25))
                                            for i in range(n))
    assert o.metrics.registry.get_sample_value(
        names.KAFKA_CONSUMER_RESTARTS_TOTAL, {"reason": "tls-files-changed"}) == 1


class _Refusing(FakeConsumer):
    """A consumer whose every connection attempt is refused (error_cb, never assigned)."""

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None,
                  on_lost: Any = None) -> None:
        with self._call("subscribe"):
            pass

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        with self._call("consume"):
            self.settings["error_cb"](_Err(*AUTH))
            return []


async def test_a_refused_login_closes_the_consumer_and_backs_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kafka_link, "BACKOFF_INITIAL", 0.05)  # 50, 100, 200, 400 ms...
    broker = FakeBroker(partitions=2)
    made: list[_Refusing] = []

    def factory(settings: dict[str, Any], logger: Any = None) -> _Refusing:
        made.append(_Refusing(broker, settings))
        return made[-1]

    sasl = {"mechanism": "PLAIN", "username": "u", "password": "not-this-one"}
    o = _outlet(broker, World(), tmp_path / "state", {"sasl": sasl}, factory)
    with caplog.at_level(logging.INFO):
        async with running(o):
            await until(lambda: len(made) >= 5)
            ready, why = o.ready()
    assert (ready, why) == (False, "waiting for Kafka partition assignment (auth)")
    attempts = o.metrics.registry.get_sample_value(
        names.KAFKA_CONNECTION_ERRORS_TOTAL, {"reason": "auth"})
    assert attempts is not None and len(made) <= attempts <= 2 * len(made)  # one a round
    assert all(c.closed for c in made)
    lines = [m for m in (r.getMessage() for r in caplog.records)
             if "SASL authentication failed" in m]
    assert len(lines) == 1, lines
    assert "not-this-one" not in caplog.text


class _RefusedAtStart(FakeConsumer):
    """Brokers that refuse the login until `refusing` is cleared (a SCRAM user created,
    an ACL fixed): metadata requests time out as librdkafka's do (_TRANSPORT), and the
    reason reaches error_cb when the consumer serves its callbacks."""

    refusing = True

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> Any:
        if _RefusedAtStart.refusing:
            with self._call("list_topics"):
                time.sleep(min(timeout, 0.01))
                raise KafkaException(KafkaError(KafkaError._TRANSPORT,
                                                "Failed to get metadata: Local: Broker "
                                                "transport failure"))
        return super().list_topics(topic, timeout)

    def poll(self, timeout: float = -1) -> None:
        with self._call("poll"):
            if _RefusedAtStart.refusing:
                self.settings["error_cb"](_Err(*AUTH))


async def test_a_login_refused_at_start_up_waits_with_backoff_instead_of_exiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The cluster id is read before anything else; no broker answers it while the login
    is refused. Past CLUSTER_ID_TIMEOUT the outlet does not exit (that is a crash loop
    under a supervisor, hammering the brokers): it waits, closing its consumer with
    backoff, says why in /readyz, and starts once the brokers accept it."""
    monkeypatch.setattr(kafka_client, "CLUSTER_ID_TIMEOUT", 0.2)
    monkeypatch.setattr(kafka_link, "BACKOFF_INITIAL", 0.05)
    monkeypatch.setattr(_RefusedAtStart, "refusing", True)
    broker = FakeBroker(partitions=2)
    broker.produce(0, 10)
    made: list[_RefusedAtStart] = []

    def factory(settings: dict[str, Any], logger: Any = None) -> _RefusedAtStart:
        made.append(_RefusedAtStart(broker, settings))
        broker.consumers.append(made[-1])
        return made[-1]

    sasl = {"mechanism": "SCRAM-SHA-256", "username": "u", "password": "not-this-one"}
    w = World()
    o = _outlet(broker, w, tmp_path / "state", {"sasl": sasl}, factory)
    with caplog.at_level(logging.INFO):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(o.run)
            await until(lambda: len(made) >= 5)
            assert o.ready() == (False, "waiting for the Kafka cluster id (auth)")
            assert all(c.closed for c in made[:-1])
            _RefusedAtStart.refusing = False
            await until(lambda: broker.committed == {0: 10})
            o.request_stop()
    restarts = o.metrics.registry.get_sample_value(
        names.KAFKA_CONSUMER_RESTARTS_TOTAL, {"reason": "backoff"})
    assert restarts is not None and restarts >= 4
    assert sorted(w.primary.rows) == sorted(f"0:{i}" for i in range(10))
    lines = [m for m in (r.getMessage() for r in caplog.records)
             if "SASL authentication failed" in m]
    assert len(lines) == 1, lines
    assert any("kafka: cluster id read after" in r.getMessage() for r in caplog.records)
    assert "not-this-one" not in caplog.text


async def test_a_stop_while_the_login_is_refused_at_start_up_is_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_link, "BACKOFF_INITIAL", 0.05)
    monkeypatch.setattr(_RefusedAtStart, "refusing", True)
    broker = FakeBroker(partitions=2)
    made: list[_RefusedAtStart] = []

    def factory(settings: dict[str, Any], logger: Any = None) -> _RefusedAtStart:
        made.append(_RefusedAtStart(broker, settings))
        return made[-1]

    sasl = {"mechanism": "PLAIN", "username": "u", "password": "p"}
    o = _outlet(broker, World(), tmp_path / "state", {"sasl": sasl}, factory)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(o.run)
            await until(lambda: len(made) >= 2)
            o.request_stop()
    assert o.parts is None and all(c.closed for c in made)

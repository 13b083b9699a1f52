"""The bounds of the librdkafka-bound keys are librdkafka's own: a real confluent_kafka
consumer is built at each bound check-config accepts (no error, no configuration warning),
and librdkafka itself refuses or warns just past it. No broker needed (nothing connects
before a poll; the bootstrap address is a closed port)."""

from __future__ import annotations

import logging
import re
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException

from outlet.config import (
    FETCH_MAX_WAIT_MAX,
    MAX_POLL_RECORDS_MAX,
    KafkaConfig,
    OutletConfig,
    parse_config,
)
from outlet.confspec import Duration, Int, describe
from outlet.kafka_client import consumer_settings

CLOSED = "127.0.0.1:1"


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _build(settings: dict[str, Any], poll: int = 1) -> list[str]:
    """Build a real consumer with ``settings``, poll once for ``poll`` messages, close it;
    the configuration warnings librdkafka logged."""
    logger = logging.getLogger(f"librdkafka-test-{id(settings)}")
    handler = _Lines()
    logger.addHandler(handler)
    logger.propagate = False
    consumer = Consumer({**settings, "bootstrap.servers": CLOSED}, logger=logger)
    try:
        consumer.consume(num_messages=poll, timeout=0)
    finally:
        consumer.close()
    return [line for line in handler.lines if "CONFWARN" in line or "onfiguration" in line]


def _kafka(**keys: Any) -> KafkaConfig:
    return parse_config({"kafka": keys}, {}).kafka


def _bounded_keys() -> list[tuple[str, Any, Any]]:
    """(key, lowest, highest) of every bounded Kafka key: from the declarations, so a new
    bounded key is built at its bounds here without being listed."""
    out = []
    for row in describe(KafkaConfig):
        kind = row.kind
        if isinstance(kind, Int):
            out.append((row.path, kind.lo, kind.hi))
        elif isinstance(kind, Duration):
            out.append((row.path, "0s" if not kind.positive else "1ms",
                        f"{kind.at_most}s" if kind.at_most is not None else None))
    return out


def test_every_numeric_kafka_key_has_an_upper_bound() -> None:
    keys = _bounded_keys()
    assert {k for k, _, _ in keys} >= {"fetch-max-wait", "max-poll-records", "queue-size"}
    assert all(hi is not None for _, _, hi in keys), keys


@pytest.mark.parametrize(("key", "lo", "hi"), _bounded_keys())
def test_librdkafka_takes_each_bound(key: str, lo: Any, hi: Any) -> None:
    for value in (lo, hi):
        cfg = _kafka(**{key: value})
        warnings = _build(consumer_settings(cfg), poll=cfg.max_poll_records)
        assert warnings == [], (key, value, warnings)


def test_just_past_the_bounds_librdkafka_refuses_or_warns() -> None:
    ms = int(FETCH_MAX_WAIT_MAX * 1000)
    base = consumer_settings(KafkaConfig())
    assert _build({**base, "fetch.wait.max.ms": ms}) == []
    assert any("fetch.wait.max.ms" in w for w in _build({**base, "fetch.wait.max.ms": ms + 1}))
    with pytest.raises(KafkaException, match=re.escape("outside allowed range 0..300000")):
        _build({**base, "fetch.wait.max.ms": 300_001})
    with pytest.raises(ValueError, match="num_messages must be between 0 and 1000000"):
        _build(base, poll=MAX_POLL_RECORDS_MAX + 1)


def test_our_bounds_sit_inside_librdkafkas_ranges() -> None:
    """librdkafka's own range of each property our keys feed, read from its error."""
    base = consumer_settings(KafkaConfig())
    for prop, ours in (("fetch.wait.max.ms", FETCH_MAX_WAIT_MAX * 1000),):
        with pytest.raises(KafkaException) as info:
            _build({**base, prop: 2**31 - 1})
        m = re.search(r"allowed range (\d+)\.\.(\d+)", str(info.value))
        assert m is not None, info.value
        assert int(m.group(1)) <= 0 and ours <= int(m.group(2))


def test_sasl_without_password_is_refused_by_both() -> None:
    """What check-config now refuses (kafka.sasl.password required) librdkafka refuses too."""
    refused = re.escape("sasl.username and sasl.password must be set")
    with pytest.raises(KafkaException, match=refused):
        _build({**consumer_settings(KafkaConfig()), "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN", "sasl.username": "u", "sasl.password": ""})
    with pytest.raises(Exception, match=re.escape("kafka.sasl.password: is required")):
        parse_config({"kafka": {"sasl": {"mechanism": "PLAIN", "username": "u"}}}, {})


def test_the_default_configuration_builds_cleanly() -> None:
    assert _build(consumer_settings(OutletConfig().kafka)) == []

"""Kafka as the harnesses see it: fresh topics, watermarks, committed lag, group members.

Everything reads the broker over the direct bootstrap address (never through Toxiproxy),
so injected faults cannot distort what a harness measures.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from teststack.stack import Endpoints, _admin, ensure_topic

_log = logging.getLogger("teststack.kafka.librdkafka")


def create_topic(ep: Endpoints, name: str, partitions: int | None = None) -> str:
    """A fresh topic, so a run never sees another run's records."""
    ensure_topic(ep.kafka.bootstrap, name, partitions or ep.kafka.partitions)
    return name


def delete_topic(ep: Endpoints, topic: str) -> None:
    """Best effort: a run's topic is deleted at its end (a failure only leaves it behind)."""
    with contextlib.suppress(Exception):
        admin = _admin(ep.kafka.bootstrap)
        admin.delete_topics([topic], operation_timeout=10)[topic].result(timeout=15)


def _consumer(bootstrap: str, group: str) -> Any:
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "enable.auto.commit": False, "socket.timeout.ms": 5000}, logger=_log)


class Watermarks:
    """The topic's high watermarks (= records produced) and a group's committed lag, read
    through one long-lived consumer that never joins the group."""

    def __init__(self, bootstrap: str, topic: str, group: str | None = None) -> None:
        from confluent_kafka import TopicPartition

        self._tp = TopicPartition
        self.topic = topic
        self.c = _consumer(bootstrap, group or f"wm-{topic}")
        md = self.c.list_topics(topic, timeout=10).topics.get(topic)
        if md is None or md.error is not None or not md.partitions:
            self.close()
            raise LookupError(f"topic {topic}: {md.error if md is not None else 'unknown'}")
        self.partitions = sorted(md.partitions)

    def per_partition(self) -> dict[int, int]:
        out = {}
        for p in self.partitions:
            _low, high = self.c.get_watermark_offsets(self._tp(self.topic, p), timeout=5,
                                                      cached=False)
            out[p] = int(high)
        return out

    def total(self) -> int:
        return sum(self.per_partition().values())

    def committed_lag(self) -> int:
        """High watermarks minus the consumer group's committed offsets, summed."""
        tps = [self._tp(self.topic, p) for p in self.partitions]
        committed = {tp.partition: tp.offset for tp in self.c.committed(tps, timeout=5)}
        return sum(high - max(committed.get(p, -1), 0)
                   for p, high in self.per_partition().items())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.c.close()


def consumer_lag(ep: Endpoints, topic: str, group: str) -> int | None:
    """What ``group`` has not committed yet on ``topic`` (None when Kafka cannot say)."""
    try:
        wm = Watermarks(ep.kafka.bootstrap, topic, group)
    except Exception:
        return None
    try:
        return wm.committed_lag()
    except Exception:
        return None
    finally:
        wm.close()


def group_assignment(ep: Endpoints, group: str) -> list[list[int]]:
    """Partitions of each member of the consumer group, from the broker (sorted)."""
    try:
        admin = _admin(ep.kafka.bootstrap)
        desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    except Exception:
        return []
    members = [sorted(tp.partition for tp in m.assignment.topic_partitions)
               for m in desc.members if m.assignment is not None]
    return sorted(members)

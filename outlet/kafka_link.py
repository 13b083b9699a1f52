"""The Kafka input's link to the brokers: failures reported clearly, backoff, rotation.

librdkafka reports every failed connection attempt (``error_cb``), up to twenty a
second, and logs each one again itself. :class:`KafkaLink` turns that into:

- one log line when a class of failure starts (or changes), a summary at most once a
  minute while it goes on, one line when the link works again (outlet/linkfailure.py
  names the classes; librdkafka's own copies of those lines are filtered out);
- ``outlet_kafka_connection_errors_total{reason}`` counting every attempt;
- backoff: librdkafka retries a refused login or certificate every ~50 ms, forever. When
  a failure that needs action (authentication, mechanism, certificates) hits a consumer
  that holds no partition, the input closes the consumer and creates a new one after a
  capped exponential delay (1 s doubling to 60 s, jittered), so a broker sees a few
  attempts a minute instead of thousands;
- rotation: librdkafka reads ``kafka.tls`` files once, when the consumer is created. The
  input checks the files before each poll; when they changed and load, it recreates the
  consumer (which leaves and rejoins its group: partitions are settled and committed
  first, as on any rebalance), so new connections use them within a poll or two.

All calls but :meth:`restart_due`/:meth:`backoff` happen in the consume thread (the
worker thread of a poll, or of ``open()`` while it waits for the cluster id: never two at
once).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from outlet import linkfailure as lf
from outlet.config import KafkaConfig
from outlet.metrics import Metrics
from outlet.tlsfiles import TLSFiles, track_expiry

log = logging.getLogger("outlet.kafka_client")

SUMMARY_INTERVAL = 60.0
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
PROBE_EVERY = 60.0  # seconds between diagnostic handshakes to one broker

TLS_ROTATED = "tls-files-changed"
BACKOFF = "backoff"
RESTART_REASONS = (TLS_ROTATED, BACKOFF)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s}s" if s < 120 else f"{s // 60}m{s % 60:02d}s"


class FailureLog:
    """One line when a failure class starts, a summary per interval, one on recovery."""

    def __init__(self, name: str, interval: float = SUMMARY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.interval = interval
        self._clock = clock
        self.last: lf.LinkFailure | None = None
        self._since: float | None = None
        self._counts: Counter[str] = Counter()
        self._since_summary = 0
        self._next_summary = 0.0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, failure: lf.LinkFailure) -> None:
        now = self._clock()
        level = logging.ERROR if failure.needs_action else logging.WARNING
        changed = self.last is None or failure.reason != self.last.reason
        if self._since is None:
            self._since = now
        self._counts[failure.reason] += 1
        self.last = failure
        if changed:
            self._since_summary = 0
            self._next_summary = now + self.interval
            log.log(level, "%s: %s [%s; retrying with backoff]", self.name, failure.message,
                    failure.reason)
            return
        self._since_summary += 1
        if now >= self._next_summary:
            self._next_summary = now + self.interval
            log.log(level, "%s: still failing for %s (%d more %s failures): %s", self.name,
                    _duration(now - self._since), self._since_summary, failure.reason,
                    failure.message)
            self._since_summary = 0

    def recovered(self, what: str) -> None:
        if self._since is None:
            return
        counts = ", ".join(f"{k} {n}" for k, n in self._counts.most_common())
        log.info("%s: %s after %s of failures (%s)", self.name, what,
                 _duration(self._clock() - self._since), counts)
        self._since, self.last = None, None
        self._counts.clear()


def quiet_connection_failures(logger: logging.Logger) -> logging.Logger:
    """librdkafka logs each failed connection (facility FAIL) besides reporting it through
    error_cb, which :class:`KafkaLink` logs without the flood: drop its copy."""
    if _drop_fail not in logger.filters:
        logger.addFilter(_drop_fail)
    return logger


def _drop_fail(record: logging.LogRecord) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    return not (args and args[0] == "FAIL")


class KafkaLink:
    """Failure reporting, backoff and TLS rotation of the input's consumer."""

    def __init__(self, cfg: KafkaConfig, metrics: Metrics,
                 assigned: Callable[[], bool],
                 uniform: Callable[[float, float], float] = random.uniform,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self._assigned = assigned
        self._uniform = uniform
        self._clock = clock
        self.log = FailureLog("kafka", clock=clock)
        tls = cfg.tls
        self.tls: TLSFiles | None = None
        if tls.enable:
            self.tls = TLSFiles(tls.verify, tls.ca_file, tls.cert_file, tls.key_file,
                                "kafka.tls")
            track_expiry(metrics.tls_client_cert_expiry, self.tls)
        for reason in lf.KAFKA_REASONS:
            metrics.kafka_connection_errors.labels(reason)
        for reason in RESTART_REASONS:
            metrics.kafka_consumer_restarts.labels(reason)
        self._lock = threading.Lock()
        self._backoff_wanted = False
        self._attempt = 0  # consecutive backoff restarts
        self._probed: dict[tuple[str, int], tuple[float, lf.LinkFailure | None]] = {}

    # -- librdkafka's callbacks (consume thread) ------------------------------------------
    def on_error(self, err: Any) -> None:
        """``error_cb``: classify, count, log without flooding, ask for backoff."""
        name, text = err.name(), err.str()
        if name == "_ALL_BROKERS_DOWN":
            return  # a summary of the per-broker errors already reported
        failure = self._refine(lf.kafka_failure(name, text), text)
        self.metrics.kafka_connection_errors.labels(failure.reason).inc()
        self.log.failed(failure)
        if failure.needs_action and not self._assigned():
            with self._lock:
                self._backoff_wanted = True

    def _refine(self, failure: lf.LinkFailure, text: str) -> lf.LinkFailure:
        """librdkafka says "certificate verify failed" for an untrusted, expired or
        mismatched certificate alike: a handshake of our own says which."""
        if failure.reason != lf.CERT_UNTRUSTED or self.tls is None:
            return failure
        where = lf.broker_address(text)
        if where is None:
            return failure
        now = self._clock()
        cached = self._probed.get(where)
        if cached is None or now - cached[0] >= PROBE_EVERY:
            cached = (now, lf.probe(where[0], where[1], self.tls.context))
            self._probed[where] = cached
        found = cached[1]
        if found is None:
            return failure
        return lf.LinkFailure(found.reason, f"broker {where[0]}:{where[1]}: {found.message}")

    def working(self, what: str) -> None:
        """The link works (partitions assigned, records received)."""
        if self.log.failing:
            self.log.recovered(what)
        self._attempt = 0

    # -- the input's loop (Trio thread) ---------------------------------------------------
    def restart_due(self) -> str | None:
        """Why the consumer must be recreated now (None: it must not)."""
        with self._lock:
            if self._backoff_wanted:
                self._backoff_wanted = False
                return BACKOFF
        if self.tls is not None and self.tls.changed() and self.tls.refresh():
            track_expiry(self.metrics.tls_client_cert_expiry, self.tls)
            return TLS_ROTATED
        return None

    def backoff(self) -> float:
        """The delay before the next consumer after a failure that needs action."""
        self._attempt += 1
        cap = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** min(self._attempt - 1, 10))
        return self._uniform(cap / 2, cap)

    def failure_reason(self) -> str:
        """The current failure's class, for /readyz ('' when none): a class, never the
        text (the log has it), as for the destinations."""
        last = self.log.last
        return last.reason if last is not None else ""

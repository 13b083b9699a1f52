"""A circuit breaker per destination: pure logic with an injectable clock.

::

    closed --(failure_threshold consecutive failures)--> open, probe after probe_interval
    closed, half-open --(trip(): permanent error)------> open, probe after cool_down
    open --(probe due: begin_probe())--> open + probing: one cheap probe (SELECT 1), no batch
    probing --(probe_succeeded())--> half-open: exactly one real attempt is let through
    probing --(probe_failed())-----> open, next probe after twice the last interval
                                     (at most probe_max_interval; cool_down after trip())
    half-open --(record_success())--> closed (intervals back to probe_interval)
    half-open --(record_failure())--> open, next probe after twice the last interval
    open --(connection_changed(): new settings)--> open, probe now (a trip is forgotten)

While open, callers make no real attempt at all (an additional destination sends its
batches straight to the spool). The destination probes the server with a query that
costs nothing, at a short interval that backs off (0.5 s, 1 s, 2 s, 2 s, ... by default),
so a link that comes back carries flows again within about ``probe_max_interval`` plus
one insert, and a dead one costs one cheap request every ``probe_max_interval``: no hot
loop, no retry storm, no batch sent blind. A permanent error (authentication, schema)
cannot be seen by such a probe, so after ``trip()`` the circuit waits ``cool_down``
between attempts instead. The numeric state is ``outlet_destination_circuit_state``
(probing counts as open).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class State(IntEnum):
    """Values of the circuit-state metric."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    """Not thread-safe: used from one Trio thread (the destination's tasks)."""

    def __init__(
        self,
        failure_threshold: int,
        *,
        probe_interval: float = 0.5,
        probe_max_interval: float = 2.0,
        cool_down: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State, State], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if probe_interval <= 0 or cool_down <= 0:
            raise ValueError("probe_interval and cool_down must be > 0")
        if probe_max_interval < probe_interval:
            raise ValueError("probe_max_interval must be >= probe_interval")
        self.failure_threshold = failure_threshold
        self.probe_interval = probe_interval
        self.probe_max_interval = probe_max_interval
        self.cool_down = cool_down
        self._clock = clock
        self._on_change = on_change
        self._state = State.CLOSED
        self._failures = 0
        self._interval = probe_interval  # the wait before the next probe (backs off)
        self._permanent = False  # opened by trip(): probes wait cool_down
        self._probe_at = 0.0
        self._probing = False
        self._attempt_out = False  # the half-open attempt was handed out

    @property
    def state(self) -> State:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    @property
    def probing(self) -> bool:
        return self._probing

    def _set(self, new: State) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if self._on_change is not None:
            self._on_change(old, new)

    # -- real attempts ----------------------------------------------------------------------
    def allow(self) -> bool:
        """May the caller make a real attempt now? In half-open, only the first caller may.

        A caller that got True must report record_success(), record_failure(), trip() or
        release().
        """
        if self._state is State.CLOSED:
            return True
        if self._state is State.HALF_OPEN and not self._attempt_out:
            self._attempt_out = True
            return True
        return False

    def release(self) -> None:
        """The attempt allow() granted was not made after all (nothing to send)."""
        self._attempt_out = False

    def record_success(self) -> None:
        self._failures = 0
        self._interval = self.probe_interval
        self._permanent = False
        self._probing = self._attempt_out = False
        self._set(State.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is State.HALF_OPEN:
            self._open(self._backed_off())
        elif self._state is State.CLOSED and self._failures >= self.failure_threshold:
            self._open(self.probe_interval)
        # already open: an attempt that was in flight when the circuit opened; the
        # probe schedule stands.

    def trip(self) -> None:
        """Open now (a permanent error such as failed authentication)."""
        self._failures = max(self._failures, self.failure_threshold)
        self._permanent = True
        self._open(self.probe_interval)

    def connection_changed(self) -> None:
        """New connection settings (live reconfiguration: credentials, servers, TLS): what
        opened the circuit may be fixed, a permanent error included, so an open circuit
        probes now and backs off from ``probe_interval`` again."""
        self._permanent = False
        if self._state is State.OPEN and not self._probing:
            self._interval = self.probe_interval
            self._probe_at = self._clock()

    # -- probes -------------------------------------------------------------------------------
    def retry_after(self) -> float:
        """Seconds until the next probe is due (0: now; inf: no probe to make)."""
        if self._state is not State.OPEN or self._probing:
            return float("inf")
        return max(0.0, self._probe_at - self._clock())

    def begin_probe(self) -> bool:
        """Start the probe if one is due; the caller reports probe_succeeded/failed()."""
        if self.retry_after() > 0:
            return False
        self._probing = True
        return True

    def probe_succeeded(self) -> None:
        if self._state is State.OPEN and self._probing:
            self._probing = False
            self._attempt_out = False
            self._set(State.HALF_OPEN)

    def probe_failed(self) -> None:
        if self._state is State.OPEN and self._probing:
            self._probing = False
            self._schedule(self._backed_off())

    # -- internals ------------------------------------------------------------------------------
    def _backed_off(self) -> float:
        return min(self.probe_max_interval, self._interval * 2)

    def _schedule(self, interval: float) -> None:
        self._interval = interval
        wait = self.cool_down if self._permanent else interval
        self._probe_at = self._clock() + wait

    def _open(self, interval: float) -> None:
        self._probing = self._attempt_out = False
        self._schedule(interval)
        self._set(State.OPEN)

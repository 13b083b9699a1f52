"""A circuit breaker per destination: pure logic with an injectable clock.

closed --(failure_threshold consecutive failures, or trip())--> open
open --(cool_down elapsed, next allow())--> half-open: exactly one probe is let through
half-open --(probe succeeds)--> closed
half-open --(probe fails)--> open again (a new cool-down starts)

While open, callers make no attempt at all (an additional destination sends its batches
straight to the spool), so a dead destination costs one probe per cool-down: no hot loop,
no retry storm. The numeric state is exported as ``outlet_destination_circuit_state``.
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
        cool_down: float,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[State, State], None] | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if cool_down <= 0:
            raise ValueError("cool_down must be > 0")
        self.failure_threshold = failure_threshold
        self.cool_down = cool_down
        self._clock = clock
        self._on_change = on_change
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_out = False

    @property
    def state(self) -> State:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def _set(self, new: State) -> None:
        old = self._state
        if old is new:
            return
        self._state = new
        if self._on_change is not None:
            self._on_change(old, new)

    def retry_after(self) -> float:
        """Seconds until allow() may let a probe through (0 when it would now)."""
        if self._state is State.OPEN:
            return max(0.0, self._opened_at + self.cool_down - self._clock())
        if self._state is State.HALF_OPEN and self._probe_out:
            return self.cool_down  # someone else is probing; their result decides
        return 0.0

    def allow(self) -> bool:
        """May the caller make an attempt now? In half-open, only the first caller may.

        A caller that got True must report record_success() or record_failure().
        """
        if self._state is State.CLOSED:
            return True
        if self._state is State.OPEN:
            if self._clock() - self._opened_at < self.cool_down:
                return False
            self._set(State.HALF_OPEN)
            self._probe_out = False
        if self._probe_out:
            return False
        self._probe_out = True
        return True

    def release(self) -> None:
        """The attempt allow() granted was not made after all (nothing to send)."""
        self._probe_out = False

    def record_success(self) -> None:
        self._failures = 0
        self._probe_out = False
        self._set(State.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is State.HALF_OPEN or self._failures >= self.failure_threshold:
            self._open()

    def trip(self) -> None:
        """Open now (a permanent error such as failed authentication)."""
        self._failures = max(self._failures, self.failure_threshold)
        self._open()

    def _open(self) -> None:
        self._opened_at = self._clock()
        self._probe_out = False
        self._set(State.OPEN)

"""Circuit breaker transitions with a fake clock."""

from __future__ import annotations

import pytest

from outlet.breaker import CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state(b: CircuitBreaker) -> State:
    """Read through a call: mypy would otherwise narrow the property across transitions."""
    return b.state


def make(threshold: int = 3, cool_down: float = 10.0) -> tuple[CircuitBreaker, Clock, list[int]]:
    clock = Clock()
    changes: list[int] = []
    b = CircuitBreaker(threshold, cool_down, clock, lambda old, new: changes.append(int(new)))
    return b, clock, changes


def test_opens_after_threshold_consecutive_failures() -> None:
    b, _, changes = make()
    assert state(b) is State.CLOSED and b.allow()
    b.record_failure()
    b.record_failure()
    assert state(b) is State.CLOSED and b.allow()
    b.record_success()  # resets the count: failures must be consecutive
    b.record_failure()
    b.record_failure()
    assert state(b) is State.CLOSED
    b.record_failure()
    assert state(b) is State.OPEN
    assert changes == [1]
    assert not b.allow()


def test_half_open_single_probe_then_closed() -> None:
    b, clock, changes = make()
    for _ in range(3):
        b.record_failure()
    clock.now += 9.9
    assert not b.allow()
    assert b.retry_after() == pytest.approx(0.1)
    clock.now += 0.1
    assert b.retry_after() == 0
    assert b.allow()  # the probe
    assert state(b) is State.HALF_OPEN
    assert not b.allow()  # only one probe at a time
    b.record_success()
    assert state(b) is State.CLOSED and b.consecutive_failures == 0
    assert b.allow() and b.allow()
    assert changes == [1, 2, 0]


def test_failed_probe_reopens_for_a_full_cool_down() -> None:
    b, clock, changes = make(threshold=5)
    for _ in range(5):
        b.record_failure()
    clock.now += 10
    assert b.allow()
    b.record_failure()  # one failure in half-open is enough
    assert state(b) is State.OPEN
    clock.now += 5
    assert not b.allow()
    clock.now += 5
    assert b.allow()
    assert changes == [1, 2, 1, 2]


def test_trip_opens_immediately_and_release_returns_the_probe() -> None:
    b, clock, _ = make(threshold=100)
    b.trip()
    assert state(b) is State.OPEN and not b.allow()
    clock.now += 10
    assert b.allow()
    b.release()  # nothing was sent: someone else may probe
    assert state(b) is State.HALF_OPEN
    assert b.allow()
    assert not b.allow()


def test_no_hot_loop_one_attempt_per_cool_down() -> None:
    b, clock, _ = make(threshold=2, cool_down=30)
    attempts = 0
    for _ in range(3000):  # 300 s of polling every 0.1 s against a dead destination
        if b.allow():
            attempts += 1
            b.record_failure()
        clock.now += 0.1
    assert attempts == 2 + 300 // 30 - 1 or attempts == 2 + 300 // 30


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0, 1)
    with pytest.raises(ValueError):
        CircuitBreaker(1, 0)

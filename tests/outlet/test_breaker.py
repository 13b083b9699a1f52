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


def make(threshold: int = 3, **kw: float) -> tuple[CircuitBreaker, Clock, list[int]]:
    clock = Clock()
    changes: list[int] = []
    b = CircuitBreaker(threshold, clock=clock,
                       on_change=lambda old, new: changes.append(int(new)), **kw)
    return b, clock, changes


def open_it(b: CircuitBreaker) -> None:
    for _ in range(b.failure_threshold):
        b.record_failure()


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
    assert not b.allow()  # no real attempt while open, ever


def test_probe_then_one_real_attempt_then_closed() -> None:
    b, clock, changes = make()
    open_it(b)
    assert b.retry_after() == pytest.approx(0.5)  # the first probe comes quickly
    assert not b.begin_probe()
    clock.now += 0.5
    assert b.retry_after() == 0
    assert b.begin_probe()
    assert b.probing and b.retry_after() == float("inf")  # one probe at a time
    assert not b.begin_probe()
    assert state(b) is State.OPEN and not b.allow()  # probing counts as open
    b.probe_succeeded()
    assert state(b) is State.HALF_OPEN
    assert b.allow()  # the one real attempt
    assert not b.allow()
    b.record_success()
    assert state(b) is State.CLOSED and b.consecutive_failures == 0
    assert b.allow() and b.allow()
    assert changes == [1, 2, 0]


def test_failed_probes_back_off_to_the_cap() -> None:
    b, clock, changes = make(probe_interval=0.5, probe_max_interval=2.0)
    open_it(b)
    waits = []
    for _ in range(5):
        waits.append(b.retry_after())
        clock.now += b.retry_after()
        assert b.begin_probe()
        b.probe_failed()
    assert waits == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert changes == [1]  # stayed open throughout
    # a real success (e.g. an insert that was in flight) resets the backoff
    b.record_success()
    open_it(b)
    assert b.retry_after() == pytest.approx(0.5)


def test_failed_half_open_attempt_reopens_with_a_longer_wait() -> None:
    b, clock, changes = make(threshold=5)
    open_it(b)
    clock.now += 0.5
    assert b.begin_probe()
    b.probe_succeeded()
    assert b.allow()
    b.record_failure()  # one failure in half-open is enough
    assert state(b) is State.OPEN
    assert b.retry_after() == pytest.approx(1.0)
    assert changes == [1, 2, 1]


def test_permanent_error_waits_cool_down_between_attempts() -> None:
    """A probe cannot see that a password or a schema got fixed: after trip() the circuit
    waits cool-down, probes, then lets one batch decide."""
    b, clock, changes = make(threshold=100, cool_down=30)
    b.trip()
    assert state(b) is State.OPEN and not b.allow()
    assert b.retry_after() == pytest.approx(30)
    clock.now += 30
    assert b.begin_probe()
    b.probe_failed()  # e.g. the probe itself fails authentication
    assert b.retry_after() == pytest.approx(30)
    clock.now += 30
    assert b.begin_probe()
    b.probe_succeeded()
    assert b.allow()
    b.trip()  # the batch hits the permanent error again
    assert b.retry_after() == pytest.approx(30)
    clock.now += 30
    assert b.begin_probe()
    b.probe_succeeded()
    assert b.allow()
    b.record_success()  # fixed: back to fast probes for the next outage
    open_it(b)
    assert b.retry_after() == pytest.approx(0.5)
    assert changes == [1, 2, 1, 2, 0, 1]


def test_new_connection_settings_probe_at_once_even_after_a_trip() -> None:
    """Live reconfiguration with new credentials may fix what tripped the circuit: it
    probes now, then backs off from probe-interval, not from cool-down."""
    b, clock, _ = make(threshold=100, cool_down=30, probe_interval=0.5, probe_max_interval=2)
    b.trip()
    clock.now += 5
    assert b.retry_after() == pytest.approx(25)
    b.connection_changed()
    assert b.retry_after() == 0 and b.begin_probe()
    b.connection_changed()  # a probe is out: it decides
    assert b.probing
    b.probe_failed()
    assert b.retry_after() == pytest.approx(1.0), "backed off from probe-interval"
    closed, _, _ = make()
    closed.connection_changed()
    assert state(closed) is State.CLOSED and closed.retry_after() == float("inf")


def test_release_returns_the_half_open_attempt() -> None:
    b, clock, _ = make()
    open_it(b)
    clock.now += 0.5
    assert b.begin_probe()
    b.probe_succeeded()
    assert b.allow()
    b.release()  # nothing was sent: someone else may try
    assert state(b) is State.HALF_OPEN
    assert b.allow()
    assert not b.allow()


def test_late_failure_of_an_attempt_in_flight_does_not_delay_the_probe() -> None:
    b, clock, _ = make()
    open_it(b)
    clock.now += 0.4
    b.record_failure()  # an insert that started before the circuit opened
    assert b.retry_after() == pytest.approx(0.1)


def test_dead_destination_costs_one_cheap_probe_per_max_interval() -> None:
    b, clock, _ = make(threshold=2, probe_interval=0.5, probe_max_interval=2.0)
    attempts = probes = 0
    for _ in range(3000):  # 300 s of callers asking every 0.1 s against a dead destination
        if b.allow():
            attempts += 1
            b.record_failure()
        if b.begin_probe():
            probes += 1
            b.probe_failed()
        clock.now += 0.1
    assert attempts == 2  # real batches: only the ones that opened the circuit
    assert 145 <= probes <= 152  # 0.5 + 1 + then every 2 s


def test_link_back_means_a_probe_within_the_max_interval() -> None:
    b, clock, _ = make(probe_max_interval=2.0)
    open_it(b)
    for _ in range(20):  # a long outage: the backoff is at its cap
        clock.now += b.retry_after()
        b.begin_probe()
        b.probe_failed()
    link_back = clock.now + 0.01  # just after a failed probe: the worst case
    clock.now = link_back + b.retry_after() - 0.01
    assert b.begin_probe()
    b.probe_succeeded()
    assert state(b) is State.HALF_OPEN
    assert clock.now - link_back <= 2.0


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, probe_interval=0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, cool_down=0)
    with pytest.raises(ValueError):
        CircuitBreaker(1, probe_interval=2, probe_max_interval=1)

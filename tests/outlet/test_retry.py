"""Insert failure classification and backoff (outlet/retry.py)."""

from __future__ import annotations

import pytest
import trio

from outlet.config import ConnectionConfig
from outlet.retry import PERMANENT_CODES, TRANSIENT_CODES, RetryPolicy, backoff_delay, classify


@pytest.mark.parametrize(
    ("exc", "kind", "retriable", "classified"),
    [
        (Exception("Code: 252. DB::Exception: Too many parts (TOO_MANY_PARTS)"), "server", True,
         True),
        (Exception("Code: 319. DB::Exception: Unknown status of insert"), "server", True, True),
        (Exception("Code: 60. DB::Exception: Table flows.flows does not exist"), "permanent",
         False, True),
        (Exception("Code: 516. DB::Exception: outlet: Authentication failed"), "auth", False,
         True),
        # In neither set: retried (bounded by max-retries), flagged for the log.
        (Exception("Code: 1002. DB::Exception: something new"), "server", True, False),
        (Exception("Code: 209. DB::Exception: Timeout exceeded: timed out"), "timeout", True,
         True),
        (TimeoutError(), "timeout", True, True),
        (trio.TooSlowError(), "timeout", True, True),
        (ConnectionRefusedError("Connection refused"), "connect", True, True),
        (ValueError("what"), "other", True, True),
    ],
)
def test_classify(exc: BaseException, kind: str, retriable: bool, classified: bool) -> None:
    failure = classify(exc)
    assert (failure.kind, failure.retriable, failure.classified) == (kind, retriable, classified)
    assert failure.message  # never empty: it goes to logs and /readyz


def test_every_listed_code_is_in_one_set_only() -> None:
    assert not TRANSIENT_CODES & PERMANENT_CODES
    for code in TRANSIENT_CODES:
        assert classify(Exception(f"Code: {code}. x")).retriable
    for code in PERMANENT_CODES:
        assert not classify(Exception(f"Code: {code}. x")).retriable


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    top = lambda lo, hi: hi  # noqa: E731 - the largest draw
    assert [backoff_delay(a, 0.2, 5.0, top) for a in (1, 2, 3, 6, 60)] == [0.2, 0.4, 0.8, 5.0, 5.0]
    assert backoff_delay(3, 0.2, 5.0, lambda lo, hi: lo) == 0


def test_retry_policy_from_connection() -> None:
    forever = RetryPolicy.of(ConnectionConfig(max_retries=0))
    assert forever.forever and not forever.exhausted(10_000)
    three = RetryPolicy.of(ConnectionConfig(max_retries=3))
    assert [three.exhausted(a) for a in (1, 2, 3)] == [False, False, True]

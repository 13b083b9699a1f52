"""outlet/outage.py and outlet/logs.py: what an operator reads while a destination fails.

The causes are taken from real clickhouse-connect exceptions (a refused connection, a
server that never answers); the per-attempt lines and transport filters are also proven
against the real stack in tests/outlet/test_outlet_logs.py.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import clickhouse_connect
import pytest

from outlet.logs import drop_transport_duplicates, librdkafka_logger
from outlet.outage import OutageLog, short_cause
from outlet.retry import classify


def _insert_error(port: int, timeout: float = 10) -> str:
    """The text of the exception a real raw_insert raises against 127.0.0.1:port."""
    with pytest.raises(Exception) as ei:
        client = clickhouse_connect.get_client(
            host="127.0.0.1", port=port, connect_timeout=1, send_receive_timeout=timeout,
            autogenerate_session_id=False)
        client.raw_insert("t", ["a"], insert_block=b"x", fmt="Native")
    return str(ei.value)


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers (a black-holed ClickHouse)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def test_short_cause_of_a_refused_connection() -> None:
    message = _insert_error(_closed_port())
    assert "Max retries exceeded with url" in message and len(message) > 200  # the chain
    assert classify(Exception(message)).kind in ("connect", "other")
    assert short_cause(message) == "connection refused"


def test_short_cause_of_a_server_that_never_answers(silent_server: int) -> None:
    message = _insert_error(silent_server, timeout=1)
    assert short_cause(message) == "read timed out"


@pytest.mark.parametrize(("message", "cause"), [
    ("HTTPDriver for http://127.0.0.1:8123 received ClickHouse error code 516\n Code: 516. "
     "DB::Exception: outlet: Authentication failed: password is incorrect, or there is no "
     "user with such name. (AUTHENTICATION_FAILED) (version 26.9.1.1)",
     "code 516 (AUTHENTICATION_FAILED): outlet: Authentication failed: password is "
     "incorrect, or there is no user with such name."),
    ("Code: 241. DB::Exception: Memory limit (total) exceeded: would use 9.31 GiB. "
     "(MEMORY_LIMIT_EXCEEDED)",
     "code 241 (MEMORY_LIMIT_EXCEEDED): Memory limit (total) exceeded: would use 9.31 GiB."),
    ("Error ('Connection aborted.', RemoteDisconnected('Remote end closed connection without"
     " response')) executing HTTP request attempt 1 (http://127.0.0.1:1/)",
     "connection aborted."),
    ("something odd at http://127.0.0.1:1/?query_id=x\nsecond line", "something odd at <url>"),
    ("", "unknown error"),
])
def test_short_cause(message: str, cause: str) -> None:
    assert short_cause(message) == cause


def test_short_cause_is_bounded() -> None:
    assert len(short_cause("x" * 1000)) == 160


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_one_line_per_attempt_a_summary_a_minute_and_one_on_recovery(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    outage = OutageLog("azure", interval=60, clock=clock)
    caplog.set_level(logging.INFO, logger="outlet.destination")
    for i in range(1, 8):  # an attempt every 20 s for 2 minutes
        outage.failed("insert", "connect" if i < 6 else "timeout", i, "http://c:8123",
                      "connection refused", logging.WARNING, lambda: "circuit open")
        clock.t += 20
    outage.recovered()
    outage.recovered()  # no second line
    lines = [r.getMessage() for r in caplog.records]
    attempts = [ln for ln in lines if " insert failed " in ln]
    assert len(attempts) == 7
    assert attempts[0] == ("destination azure: insert failed (connect, attempt 1, server "
                           "http://c:8123): connection refused")
    summaries = [ln for ln in lines if ": down for " in ln]
    assert summaries == [
        "destination azure: down for 1m00s, 4 failed attempts (connect 4); last: connection "
        "refused; circuit open",
        "destination azure: down for 2m00s, 7 failed attempts (connect 5, timeout 2); last: "
        "connection refused; circuit open",
    ]
    assert lines[-1] == ("destination azure: inserts succeed again after 2m20s down "
                         "(7 failed attempts (connect 5, timeout 2))")
    assert not outage.down


def _record(name: str, msg: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, None, None)


def test_transport_duplicates_are_dropped_other_lines_kept() -> None:
    assert not drop_transport_duplicates(_record(
        "urllib3.connectionpool", "Retrying (Retry(total=0, connect=None)) after connection "
                                  "broken by ..."))
    assert not drop_transport_duplicates(_record(
        "clickhouse_connect.driver._backend.http_sync", "Unexpected Http Driver Exception"))
    assert drop_transport_duplicates(_record("urllib3.connectionpool",
                                             "Connection pool is full, discarding connection"))
    assert drop_transport_duplicates(_record("outlet.destination", "Retrying (nothing)"))


def test_librdkafka_transient_warnings_become_info(caplog: pytest.LogCaptureFixture) -> None:
    logger = librdkafka_logger("test.librdkafka")
    caplog.set_level(logging.INFO, logger="test.librdkafka")
    logger.warning("GETPID [thrd:main]: Failed to acquire idempotence PID from broker: "
                   "Broker: Coordinator load in progress: retrying")
    logger.warning("FAIL [thrd:127.0.0.1:9092]: Connect to ipv4#127.0.0.1:9092 failed")
    assert [(r.levelname, r.getMessage()[:7]) for r in caplog.records] == [
        ("INFO", "GETPID "), ("WARNING", "FAIL [t")]
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="test.librdkafka")
    logger.warning("Coordinator load in progress")  # below the level now: dropped
    assert not caplog.records
    assert librdkafka_logger("test.librdkafka").filters == logger.filters  # added once

"""The outlet's log while an additional destination is partitioned, on the real stack:
one short line per failed attempt, none of the transport's duplicates, one on recovery."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from tests.conftest import OutletRun

pytestmark = pytest.mark.stack

FAILED = re.compile(r"WARNING outlet\.destination: destination azure: (insert|replay) failed "
                    r"\((\w+), attempt (\d+), server (\S+)\): (.*)$")


def test_partitioned_destination_logs_one_line_per_failed_attempt(
        outlet_run: Callable[..., OutletRun]) -> None:
    run = outlet_run(batch_size=2_000, wait_time="300ms", azure_max_retries=3,
                     additional_extra={"circuit-breaker": {"failure-threshold": 5,
                                                           "cool-down": "2s"}})
    toxi = run.ep.toxiproxy.client()
    outlet = run.outlet()
    outlet.start()
    run.produce(4_000)
    assert run.wait_rows("azure", 4_000) == 4_000
    toxi.disable(run.ch("azure").proxy)
    run.produce(20_000, rate=4_000)  # 5 s of traffic into the partition
    deadline = time.monotonic() + 30
    # failure-threshold (5) failed inserts open the circuit; then only probes (SELECT 1) go
    # out until the link answers, so no sixth insert fails
    while (outlet.metric("outlet_destination_insert_errors_total", destination="azure") < 5
           and time.monotonic() < deadline):
        time.sleep(0.2)
    toxi.enable(run.ch("azure").proxy)
    assert run.wait_rows("azure", 24_000) == 24_000  # replayed from the spool
    assert run.wait_rows("local", 24_000) == 24_000
    errors = outlet.metric("outlet_destination_insert_errors_total", destination="azure")
    assert outlet.stop() == 0

    log = outlet.log_path.read_text()
    failures = [m for line in log.splitlines() if (m := FAILED.search(line))]
    assert errors >= 5
    assert len(failures) == errors, "one line per failed attempt, exactly"
    proxied = run.ch("azure").proxied_url
    for m in failures:
        assert (m.group(2), m.group(4), m.group(5)) == ("connect", proxied, "connection refused")
    assert {m.group(3) for m in failures if m.group(1) == "insert"} >= {"1", "2", "3"}
    assert "Retrying (" not in log and "Unexpected Http Driver Exception" not in log
    assert "Max retries exceeded" not in log  # no exception chains
    assert re.search(r"destination azure: inserts succeed again after \d+s down "
                     rf"\({int(errors)} failed attempts \(connect {int(errors)}\)\)", log)
    assert "circuit closed -> open" in log

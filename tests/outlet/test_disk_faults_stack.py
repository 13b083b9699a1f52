"""The state disk filling up under a running outlet, against the real stack.

The outlet's state directory is a small tmpfs (root only: CI runs as root; skipped with
the reason otherwise). Filling it while flows arrive must pause consumption (the ledger
cannot be written: nothing sealed, inserted or committed), say so in the log, a metric and
/readyz, keep the same process running (no crash loop), and resume by itself when space
returns, with every flow stored exactly once. The spool's disk filling up is the
``spool-disk-full`` chaos scenario (tests/chaos/test_chaos.py).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from outlet import metrics as names
from teststack import tmpfs
from teststack.outlet_proc import OutletProcess

pytestmark = pytest.mark.stack

STATE_TMPFS = 64 << 20  # the codec's engine files and the ledger fit with room to spare


def readyz(o: OutletProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(o.http + "/readyz", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_for(cond: Callable[[], bool], timeout: float, step: float = 0.3) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


@pytest.mark.timeout(300)
def test_state_disk_full_pauses_consumption_and_resumes_exactly_once(outlet_run: Any) -> None:
    why = tmpfs.unavailable()
    if why:
        pytest.skip(why)
    # Small batches: the ledger's last page (4 KiB, ~25 lines) fills within seconds.
    run = outlet_run(destinations=("local",), batch_size=1_000, wait_time="500ms")
    state = run.workdir / "state"
    with tmpfs.mounted(state, STATE_TMPFS):
        outlet = run.outlet()
        try:
            outlet.start()
            pid = outlet.proc.pid if outlet.proc else 0
            run.produce(20_000)
            assert run.wait_rows("local", 20_000, timeout=90) == 20_000, outlet.log_tail()
            tmpfs.fill(state)  # the state disk is full
            producer = threading.Thread(target=run.produce, args=(40_000, 5_000))
            producer.start()
            assert wait_for(lambda: outlet.metric(names.STATE_DISK_FAILING) == 1, 60), \
                outlet.log_tail()
            status, body = readyz(outlet)
            assert (status, body) == (503, {
                "ready": False, "reason": "consumption paused: state disk failing (ENOSPC)"})
            producer.join(60)
            assert wait_for(lambda: outlet.metric(names.KAFKA_PAUSED) == 1, 30), \
                "consumption pauses (backpressure) while the ledger cannot be written"
            held = run.rows("local")
            committed = outlet.metric(names.KAFKA_COMMITTED_OFFSET)
            time.sleep(5)
            assert run.rows("local") == held < 60_000, "nothing is inserted without its seal"
            assert outlet.metric(names.KAFKA_COMMITTED_OFFSET) == committed
            assert outlet.alive() and outlet.proc is not None and outlet.proc.pid == pid
            errors = outlet.metric(names.STATE_DISK_ERRORS_TOTAL, operation="ledger",
                                   error="ENOSPC")
            assert errors >= 2, "retried while it fails"
            log = outlet.log_path.read_text()
            assert log.count("state disk: cannot write the ledger") == 1, "logged once"
            assert str(state) in log, "the log names the path"
            paused_at = time.monotonic()
            tmpfs.release(state)  # space returns
            assert run.wait_rows("local", 60_000, timeout=120) == 60_000, outlet.log_tail()
            resumed_in = time.monotonic() - paused_at
            assert outlet.metric(names.STATE_DISK_FAILING) == 0
            assert readyz(outlet) == (200, {"ready": True, "reason": "ok"})
            assert "consumption resumes" in outlet.log_path.read_text()
            run.wait_stable("local")
            stats = run.stats("local")
            assert (stats.rows, stats.duplicates, stats.bytes_sum) == (60_000, 0, run.bytes_sum)
            print(f"state disk full: held at {held} rows, {errors:g} failed ledger writes, "
                  f"resumed and caught up {resumed_in:.1f} s after space returned")
        finally:
            rc = outlet.stop()
        assert rc == 0, outlet.log_tail()

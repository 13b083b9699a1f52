"""Dual-write against the real stack: Toxiproxy in front of `local` and `azure` (issue 4).

The spool (issue 5) is disabled here so that what `azure` loses is exactly what the
`retries_exceeded` metrics report.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from outlet import metrics as names
from tests.conftest import OutletRun
from teststack import verify
from teststack.kafka import Watermarks, group_assignment
from teststack.toxiproxy import Toxiproxy

pytestmark = pytest.mark.stack

RunFactory = Callable[..., OutletRun]
NO_SPOOL: dict[str, Any] = {"spool": {"enable": False}}


def background(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def lost(outlet: Any, destination: str) -> float:
    return float(
        outlet.metric(names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL, destination=destination)
    )


def wait_lost(outlet: Any, destination: str, expected: float, timeout: float) -> float:
    """Poll the loss metric until it reaches `expected` or time runs out; return it."""
    deadline = time.monotonic() + timeout
    while lost(outlet, destination) < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return lost(outlet, destination)


def test_normal_operation_both_hold_exactly_n(outlet_run: RunFactory) -> None:
    run = outlet_run(additional_extra=NO_SPOOL)
    run.produce(200_000)
    outlet = run.outlet()
    outlet.start()
    for name in ("local", "azure"):
        assert run.wait_rows(name, 200_000) == 200_000
        stats = run.stats(name)
        assert (stats.rows, stats.duplicates, stats.bytes_sum) == (200_000, 0, run.bytes_sum)
    assert outlet.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL, destination="azure") == 200_000
    assert lost(outlet, "azure") == 0
    assert outlet.stop() == 0


@pytest.mark.parametrize("compression", ["lz4", "none"])  # lz4: the default
def test_compressed_once_or_not_stored_identically(outlet_run: RunFactory,
                                                   compression: str) -> None:
    run = outlet_run(compression=compression, wait_time="500ms", additional_extra=NO_SPOOL)
    run.produce(100_000)
    outlet = run.outlet()
    outlet.start()
    for name in ("local", "azure"):
        assert run.wait_rows(name, 100_000) == 100_000
        stats = run.stats(name)
        assert (stats.rows, stats.duplicates, stats.bytes_sum) == (100_000, 0, run.bytes_sum)
    assert outlet.stop() == 0


def test_azure_partition_loses_exactly_what_is_reported(outlet_run: RunFactory) -> None:
    run = outlet_run(
        batch_size=5_000, wait_time="500ms", azure_max_retries=3, additional_extra=NO_SPOOL
    )
    toxi = run.ep.toxiproxy.client()
    outlet = run.outlet()
    outlet.start()
    total = 400_000
    producer = background(lambda: run.produce(total, rate=10_000))
    time.sleep(5)
    toxi.disable(run.ch("azure").proxy)
    watermarks = Watermarks(run.ep.kafka.bootstrap, run.topic)
    local_before, produced_before = run.rows("local"), watermarks.total()
    time.sleep(30)
    stored = run.rows("local") - local_before
    offered = watermarks.total() - produced_before
    watermarks.close()
    toxi.enable(run.ch("azure").proxy)
    producer.join()
    assert run.wait_rows("local", total) == total
    run.wait_stable("azure")
    local, azure = run.stats("local"), run.stats("azure")
    assert (local.rows, local.duplicates, local.bytes_sum) == (total, 0, run.bytes_sum)
    reported = lost(outlet, "azure")
    assert reported > 0
    assert azure.duplicates == 0
    assert azure.rows == total - reported, f"azure {azure.rows}, reported loss {reported}"
    # The primary keeps up with what was offered during the partition (the ratio is
    # printed; batches in flight at the window's edges make it a little noisy).
    print(f"during the azure partition the primary stored {stored / offered:.3f} of the offered")
    assert stored >= 0.93 * offered, f"primary stored {stored} of {offered} offered flows"
    assert outlet.stop() == 0


def test_azure_latency_does_not_slow_primary(outlet_run: RunFactory) -> None:
    run = outlet_run(batch_size=10_000, wait_time="500ms", additional_extra=NO_SPOOL)
    toxi = run.ep.toxiproxy.client()
    toxi.add_toxic(run.ch("azure").proxy, "latency", {"latency": 500, "jitter": 100}, name="lat")
    run.produce(200_000)
    outlet = run.outlet()
    outlet.start()
    t0 = time.monotonic()
    assert run.wait_rows("local", 200_000, timeout=60) == 200_000
    local_seconds = time.monotonic() - t0
    run.wait_stable("azure")
    azure = run.stats("azure")
    assert azure.duplicates == 0
    assert azure.rows == 200_000 - lost(outlet, "azure")
    assert outlet.metric(names.DESTINATION_INSERT_ERRORS_TOTAL, destination="primary") == 0
    print(f"primary drained 200k flows in {local_seconds:.1f}s with azure at 500 ms latency")
    assert outlet.stop() == 0


def test_wrong_azure_password_no_retry_storm(outlet_run: RunFactory) -> None:
    run = outlet_run(batch_size=10_000, wait_time="500ms", additional_extra=NO_SPOOL)
    run.config["additional-clickhouses"][0]["connection"]["password"] = "wrong-password"
    run.produce(100_000)
    outlet = run.outlet()
    outlet.start()
    assert run.wait_rows("local", 100_000, timeout=60) == 100_000
    assert wait_lost(outlet, "azure", 100_000, timeout=20) == 100_000
    auth_errors = outlet.metric(
        names.DESTINATION_INSERT_ERRORS_TOTAL, destination="azure", error="auth"
    )
    batches = outlet.metric(names.BATCHES_SEALED_TOTAL)
    assert 0 < auth_errors <= batches, "a permanent error is not retried (one attempt per batch)"
    assert outlet.metric(names.DESTINATION_RETRIES_TOTAL, destination="azure") == 0
    assert run.rows("azure") == 0
    assert "wrong-password" not in outlet.log_tail(500)
    assert outlet.stop() == 0


def test_local_down_pauses_everything_and_azure_stays_bounded(outlet_run: RunFactory) -> None:
    batch = 5_000
    run = outlet_run(batch_size=batch, wait_time="500ms", additional_extra=NO_SPOOL)
    toxi = run.ep.toxiproxy.client()
    outlet = run.outlet()
    outlet.start()
    total = 250_000
    producer = background(lambda: run.produce(total, rate=10_000))
    time.sleep(3)
    toxi.disable(run.ch("local").proxy)
    max_ahead = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        max_ahead = max(max_ahead, run.rows("azure") - run.rows("local"))
        time.sleep(0.5)
    toxi.enable(run.ch("local").proxy)
    producer.join()
    for name in ("local", "azure"):
        assert run.wait_rows(name, total) == total
        stats = run.stats(name)
        assert (stats.rows, stats.duplicates, stats.bytes_sum) == (total, 0, run.bytes_sum)
    # Azure may run ahead by the primary's queue and the batches in flight, no more.
    assert max_ahead <= 8 * batch, f"azure ran {max_ahead} flows ahead of local"
    assert outlet.stop() == 0


def test_cut_after_server_stored_does_not_duplicate(outlet_run: RunFactory) -> None:
    """limit_data cuts each response: the server stored the insert, the client sees an error."""
    no_breaker = {**NO_SPOOL, "circuit-breaker": {"failure-threshold": 1000}}
    run = outlet_run(
        batch_size=10_000, wait_time="500ms", azure_max_retries=1000, additional_extra=no_breaker
    )
    toxi = run.ep.toxiproxy.client()
    outlet = run.outlet()
    outlet.start()
    run.produce(10_000)
    for name in ("local", "azure"):
        assert run.wait_rows(name, 10_000, timeout=30) == 10_000  # connections are pooled now
    # bytes 0: the request goes through and is stored, the response is dropped (a larger
    # limit lets a one-chunk insert response through whole and closes the connection only
    # after it, which cuts nothing). Pooled connections predate the toxic: drop them.
    for name in ("local", "azure"):
        toxi.add_toxic(run.ch(name).proxy, "limit_data", {"bytes": 0}, name="cut")
        toxi.disable(run.ch(name).proxy)
        toxi.enable(run.ch(name).proxy)
    run.produce(40_000)
    time.sleep(4)
    stored_during_cut = run.rows("local")
    for name in ("local", "azure"):
        toxi.remove_toxic(run.ch(name).proxy, "cut")
    for name in ("local", "azure"):
        assert run.wait_rows(name, 50_000) >= 50_000
        run.wait_stable(name)
        stats = run.stats(name)
        assert (stats.rows, stats.duplicates, stats.bytes_sum) == (50_000, 0, run.bytes_sum)
    # Inserts reached the server while every response was cut, so each was sent again
    # (by our retry loop or the HTTP client's own): the tokens made the repeats no-ops.
    assert stored_during_cut > 10_000, "the toxic must let an insert reach the server"
    for name in ("primary", "azure"):
        assert outlet.metric(names.DESTINATION_RETRIES_TOTAL, destination=name) > 0, name
    assert outlet.stop() == 0


def test_sigkill_with_batches_in_flight(outlet_run: RunFactory) -> None:
    run = outlet_run(batch_size=10_000, wait_time="500ms", additional_extra=NO_SPOOL)
    # Removing a latency toxic waits for the data it delays: allow it time.
    toxi = Toxiproxy(run.ep.toxiproxy.api, timeout=120)
    # Slow azure so that batches are in flight there when the outlet dies.
    toxi.add_toxic(run.ch("azure").proxy, "latency", {"latency": 300}, name="slow")
    producer = background(lambda: run.produce(150_000, rate=25_000))
    outlet = run.outlet()
    outlet.start()
    deadline = time.monotonic() + 60
    while run.rows("local") < 50_000 and time.monotonic() < deadline:
        time.sleep(0.2)
    outlet.kill()
    toxi.remove_toxic(run.ch("azure").proxy, "slow")
    producer.join()
    outlet.start()
    assert run.wait_rows("local", 150_000) >= 150_000
    for name in ("local", "azure"):
        run.wait_stable(name)
    local, azure = run.stats("local"), run.stats("azure")
    assert (local.distinct_flows, local.duplicates) == (150_000, 0)
    assert local.bytes_sum == run.bytes_sum
    assert azure.duplicates == 0
    assert azure.rows == 150_000 - lost(outlet, "azure")
    assert outlet.stop() == 0


def test_single_destination_config_unchanged(outlet_run: RunFactory) -> None:
    run = outlet_run(destinations=("local",))
    assert "additional-clickhouses" not in run.config
    run.produce(100_000)
    outlet = run.outlet()
    outlet.start()
    assert run.wait_rows("local", 100_000) == 100_000
    assert run.stats("local").duplicates == 0
    metrics = outlet.metrics()
    destinations = {
        key.split('destination="')[1].split('"')[0] for key in metrics if 'destination="' in key
    }
    assert destinations == {"primary"}
    assert outlet.stop() == 0


def _https_azure(run: OutletRun, ca_file: str | None, verify: bool = True) -> None:
    conn = run.config["additional-clickhouses"][0]["connection"]
    conn["servers"] = [run.ch("azure").https_url]
    conn["tls"] = {"enable": True, "verify": verify, **({"ca-file": ca_file} if ca_file else {})}


def test_azure_over_https_verified_with_its_ca(outlet_run: RunFactory) -> None:
    run = outlet_run(wait_time="500ms", additional_extra=NO_SPOOL)
    _https_azure(run, run.ep.ca_file)
    run.produce(50_000)
    outlet = run.outlet()
    outlet.start()
    for name in ("local", "azure"):
        assert run.wait_rows(name, 50_000, timeout=60) == 50_000
        assert run.stats(name).bytes_sum == run.bytes_sum
    log = outlet.log_tail(1000)
    for name in ("local", "azure"):
        assert run.ch(name).password not in log, "passwords never appear in logs"
    assert run.ch("azure").password not in "\n".join(outlet.metrics())
    assert outlet.stop() == 0


def test_azure_https_unknown_ca_fails_without_hurting_primary(outlet_run: RunFactory) -> None:
    run = outlet_run(wait_time="500ms", azure_max_retries=2, additional_extra=NO_SPOOL)
    _https_azure(run, None)  # verify on, system CAs only: the stack's CA is unknown
    run.produce(30_000)
    outlet = run.outlet()
    outlet.start()
    assert run.wait_rows("local", 30_000, timeout=60) == 30_000
    assert wait_lost(outlet, "azure", 30_000, timeout=30) == 30_000
    assert run.rows("azure") == 0
    assert outlet.metric(names.DESTINATION_INSERT_ERRORS_TOTAL, destination="azure") > 0
    assert outlet.stop() == 0


def test_two_outlets_rebalance_without_loss_or_duplicates(outlet_run: RunFactory) -> None:
    """Scale-out and back: one consumer group, two processes; the second joins mid-run and
    leaves. Azure is slowed and the rebalance grace period is 0, so the batches still
    unsettled at each rebalance are handed over in the commit metadata and rebuilt by the
    partitions' next owner under the same tokens, while their first owner may still be
    inserting them. Whatever the timing, both destinations hold every flow exactly once
    (on main before issue 12, 791 duplicates were once stored here)."""
    run = outlet_run(batch_size=10_000, wait_time="500ms")
    run.config["clickhouse"]["rebalance-grace-period"] = "0s"
    toxi = Toxiproxy(run.ep.toxiproxy.api, timeout=120)
    toxi.add_toxic(run.ch("azure").proxy, "latency", {"latency": 150}, name="slow")
    first, second = run.outlet("a"), run.outlet("b")
    first.start()
    producer = background(lambda: run.produce(100_000, rate=20_000))
    second.start()  # rebalance: partitions are split between the two
    # /healthz answers before an outlet has joined its group, and joining can take longer
    # than the first 100k flows on a loaded machine: flows keep coming until it leaves.
    assert second.wait_ready(90), "the second outlet never got partitions"
    producer.join()
    producer = background(lambda: run.produce(200_000, rate=20_000))
    time.sleep(3)
    assert second.stop() == 0  # rebalance again, flows in flight: the first takes all back
    producer.join()
    toxi.remove_toxic(run.ch("azure").proxy, "slow")
    for name in ("local", "azure"):
        assert run.wait_rows(name, 300_000) >= 300_000
        run.wait_stable(name)
        stats = run.stats(name)
        assert (stats.rows, stats.duplicates, stats.bytes_sum) == (300_000, 0, run.bytes_sum), name
    assert first.stop() == 0


def test_group_crash_reassign_without_loss_or_duplicates(outlet_run: RunFactory) -> None:
    """Issue 12's reproduction: three outlets in one consumer group, dual-write, azure
    slowed (batches stay stored on local and uncommitted), one outlet SIGKILLed mid-stream
    and never restarted. Its partitions move to the two others, which rebuild the batches
    it had sealed from the offset-commit metadata, under the same tokens: local drops what
    the dead process had stored, azure stores what it lacked. On main before issue 12
    (a local file ledger) the same run stored 359,103 rows on local and 306,603 on azure
    for 300,000 flows."""
    n = 300_000
    run = outlet_run(batch_size=10_000, wait_time="500ms", partitions=6)
    toxi = Toxiproxy(run.ep.toxiproxy.api, timeout=120)
    toxi.add_toxic(run.ch("azure").proxy, "latency", {"latency": 300}, name="slow")
    outlets = [run.outlet(name) for name in ("a", "b", "c")]
    for o in outlets:
        o.start()
    group = run.config["kafka"]["consumer-group"]
    deadline = time.monotonic() + 60
    while len(group_assignment(run.ep, group)) < 3:  # every member got partitions
        assert time.monotonic() < deadline, group_assignment(run.ep, group)
        time.sleep(0.5)
    producer = background(lambda: run.produce(n, rate=20_000))
    victim = outlets[1]
    deadline = time.monotonic() + 60
    while victim.metric(names.COMMIT_PENDING_FLOWS) == 0:  # sealed, not committed
        assert time.monotonic() < deadline, "the victim never had a batch in flight"
        time.sleep(0.2)
    time.sleep(2)
    pending = victim.metric(names.COMMIT_PENDING_FLOWS)
    victim.kill()  # not restarted: its partitions go to a and c
    producer.join()
    survivors = [outlets[0], outlets[2]]
    deadline = time.monotonic() + 60
    while sorted(p for m in group_assignment(run.ep, group) for p in m) != list(range(6)) \
            or len(group_assignment(run.ep, group)) != 2:
        assert time.monotonic() < deadline, group_assignment(run.ep, group)
        time.sleep(0.5)
    toxi.remove_toxic(run.ch("azure").proxy, "slow")
    for name in ("local", "azure"):
        assert run.wait_rows(name, n, timeout=180) >= n
        run.wait_stable(name)
        stats = run.stats(name)
        assert (stats.rows, stats.duplicates, stats.bytes_sum) == (n, 0, run.bytes_sum), name
    rebuilt = sum(o.metric(names.BATCHES_SEALED_TOTAL, reason="rebuild") for o in survivors)
    print(f"victim had {pending:g} flows pending at SIGKILL; survivors rebuilt {rebuilt:g} "
          "batches")
    assert pending > 0 and rebuilt > 0, "the crash must leave batches for the others to rebuild"
    for o in survivors:
        assert o.stop() == 0


def _log_age(run: OutletRun, name: str) -> float:
    """Seconds the server's query log reaches back."""
    c = verify.client(run.ch(name))
    try:
        return float(c.query("SELECT now() - min(event_time) FROM system.query_log")
                     .result_rows[0][0])
    finally:
        c.close()


def test_dedup_check_reads_the_real_query_log(outlet_run: RunFactory) -> None:
    """Issue 12, item 4, on the real server: azure's table deduplicates nothing (window 0:
    what a resend past `non_replicated_deduplication_window` meets). Three times, azure's
    responses are cut after the insert ran (the outcome is ambiguous) and the link then
    goes down for 5 s. Once it is back, each cut batch is looked up in azure's
    system.query_log (dedup-check after 10 ms) and not sent again: azure holds every flow
    once. Without the check each cut batch is stored twice. (The spool takes what the full
    queue cannot hold meanwhile: those batches were never sent, their replay is not looked
    up.)"""
    n = 40_000
    run = outlet_run(batch_size=2_000, wait_time="500ms")
    run.config["additional-clickhouses"][0]["connection"].update({
        "max-retries": 50, "retry-initial-backoff": "500ms", "retry-max-backoff": "2s",
        "dedup-check": {"after": "10ms"},
    })
    run.config["additional-clickhouses"][0]["circuit-breaker"] = {"failure-threshold": 1000}
    c = verify.client(run.ch("azure"))
    try:
        c.command(f"ALTER TABLE {run.database}.flows "
                  "MODIFY SETTING non_replicated_deduplication_window = 0")
    finally:
        c.close()
    deadline = time.monotonic() + 120  # a fresh server's log must reach back past SLACK
    while _log_age(run, "azure") < 70:
        assert time.monotonic() < deadline
        time.sleep(1)
    outlet = run.outlet()
    outlet.start()
    producer = background(lambda: run.produce(n, rate=2_000))
    proxy = run.ch("azure").proxy
    toxi = Toxiproxy(run.ep.toxiproxy.api, timeout=120)
    for _ in range(3):
        time.sleep(3)
        toxi.add_toxic(proxy, "limit_data", {"bytes": 1}, name="cut")  # responses cut
        time.sleep(1)
        toxi.disable(proxy)  # ... then the link is down: retries refused meanwhile
        toxi.remove_toxic(proxy, "cut")
        time.sleep(5)
        toxi.enable(proxy)
    producer.join()
    assert run.wait_rows("local", n) == n
    assert run.wait_rows("azure", n) >= n
    run.wait_stable("azure")
    stats = run.stats("azure")
    checks = {o: outlet.metric(names.DESTINATION_DEDUP_CHECKS_TOTAL, destination="azure",
                               outcome=o) for o in ("stored", "absent", "unknown_replayed")}
    print(f"azure: {stats.rows} rows, {stats.duplicates} duplicates; dedup checks {checks}")
    assert (stats.rows, stats.duplicates, stats.bytes_sum) == (n, 0, run.bytes_sum)
    assert checks["stored"] >= 1, "no cut insert was looked up: the fault did not bite"
    assert checks["unknown_replayed"] == 0
    assert lost(outlet, "azure") == 0
    assert outlet.stop() == 0

"""teststack/prometheus.py: the stack's Prometheus (rules on a compressed clock, file-based
discovery of the outlets a harness starts), against the real Prometheus binary."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest

from outlet.metrics import Metrics
from teststack import prometheus
from teststack.prometheus import RULES_FILE, alert_names, compress_rules, duration_ms
from teststack.stack import load_pids


@pytest.mark.parametrize(("text", "ms"), [("2m", 120_000), ("1h30m", 5_400_000),
                                          ("500ms", 500), ("15s", 15_000), ("1d", 86_400_000)])
def test_duration_ms(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


@pytest.mark.parametrize("bad", ["", "2", "2 m", "m", "1.5m"])
def test_duration_ms_rejects(bad: str) -> None:
    with pytest.raises(ValueError, match="bad Prometheus duration"):
        duration_ms(bad)


def test_compress_rules_divides_every_for_and_keeps_expressions() -> None:
    shipped = yaml.safe_load(RULES_FILE.read_text())["groups"][0]["rules"]
    compressed = yaml.safe_load(compress_rules(RULES_FILE.read_text(), 30))["groups"][0]["rules"]
    assert [r["alert"] for r in compressed] == alert_names()
    for orig, new in zip(shipped, compressed, strict=True):
        assert new["expr"] == orig["expr"]
        assert new.get("labels") == orig.get("labels")
        if "for" in orig:
            want = max(1000, duration_ms(orig["for"]) // 30)
            assert duration_ms(new["for"]) == want, orig["alert"]
        else:
            assert "for" not in new


class _MetricsHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_outlet() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving a real outlet registry's /metrics."""
    m = Metrics()
    m.dest_up.labels("azure").set(0)
    m.circuit_state.labels("azure").set(1)
    _MetricsHandler.body = generate_latest(m.registry)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MetricsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_scrapes_registered_targets_and_fires_compressed_rules(
        tmp_path: Path, fake_outlet: str) -> None:
    prom = prometheus.start(tmp_path)
    try:
        assert prom.url.startswith("http://127.0.0.1:")
        assert prometheus.running(tmp_path) == prom
        assert prometheus.start(tmp_path) == prom  # idempotent: reloads the running one
        [group] = prom.rule_groups()
        assert [r["name"] for r in group["rules"]] == alert_names()
        assert {r["health"] for r in group["rules"]} == {"ok"}
        down = next(r for r in group["rules"] if r["name"] == "OutletAdditionalDestinationDown")
        assert down["duration"] == 120 / prometheus.TIME_COMPRESSION

        targets = prom.targets(run="r1", datacenter="dc1")
        targets.add("outlet", fake_outlet)
        record = json.loads((prom.directory / "targets" / "r1-dc1-outlet.json").read_text())
        assert record == [{"targets": [fake_outlet],
                           "labels": {"run": "r1", "datacenter": "dc1", "outlet": "outlet"}}]
        assert prometheus.wait_for(
            lambda: prom.query('up{job="outlet", run="r1"} == 1'), timeout=30)
        # the outlet's series carry the target labels, and the 2m rule fires in seconds
        [series] = prom.query('outlet_destination_up{destination="azure"}')
        assert series["metric"]["datacenter"] == "dc1"
        assert prometheus.wait_for(lambda: prom.query(
            'ALERTS{alertname="OutletAdditionalDestinationDown", alertstate="firing", '
            'run="r1", destination="azure"}'), timeout=30)
        targets.remove("outlet")
        assert prometheus.wait_for(lambda: not prom.active_targets(), timeout=30)
        with pytest.raises(prometheus.PrometheusError, match="bad_data"):
            prom.query("sum(")
    finally:
        assert prometheus.stop(tmp_path)
    assert "prometheus" not in load_pids(tmp_path)
    assert prometheus.running(tmp_path) is None

"""A real GoFlow2 v2 feeds the outlet unchanged (issue 3).

NetFlow v5 / IPFIX datagrams (flowgen/netflow.py) -> goflow2 (``-format=bin
-transport=kafka``, built by ci/install-goflow2.sh) -> Kafka -> outlet -> ClickHouse; every
stored column is checked against the values that were exported.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from flowgen.netflow import FlowFields, ipfix_packet, netflow_v5_packets, send_udp
from outlet import metrics as names
from tests.conftest import OutletRun
from teststack import verify
from teststack.outlet_proc import free_port
from teststack.stack import tools_dir

pytestmark = [pytest.mark.stack, pytest.mark.timeout(120)]

RunFactory = Callable[..., OutletRun]

GOFLOW2_VERSION = "v2.2.6"  # ci/install-goflow2.sh


def goflow2_binary() -> Path:
    """The collector built by ci/install-goflow2.sh (``GOFLOW2_BIN`` overrides)."""
    return Path(os.environ.get("GOFLOW2_BIN", tools_dir() / "bin" / "goflow2"))


@dataclass
class GoFlow2:
    """A goflow2 subprocess (own process group) listening for NetFlow/IPFIX on UDP."""

    proc: subprocess.Popen[bytes]
    udp_port: int
    http_port: int
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def wait_collecting(self, timeout: float = 20) -> None:
        """Until /__health says OK (the UDP receivers are up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"goflow2 exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                url = f"http://127.0.0.1:{self.http_port}/__health"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"goflow2 not collecting after {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (goflow2 flushes its Kafka producer), SIGKILL after 10 s."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


GoFlow2Factory = Callable[[OutletRun], GoFlow2]


@pytest.fixture
def goflow2(tmp_path: Path) -> Iterator[GoFlow2Factory]:
    """Factory: a goflow2 writing to the run's topic on the stack's direct Kafka listener."""
    binary = goflow2_binary()
    if not os.access(binary, os.X_OK):
        pytest.fail(
            f"goflow2 not found at {binary}: run `bash ci/install-goflow2.sh` "
            f"(go install github.com/netsampler/goflow2/v2/cmd/goflow2@{GOFLOW2_VERSION})",
            pytrace=False,
        )
    started: list[GoFlow2] = []

    def start(run: OutletRun) -> GoFlow2:
        udp_port, http_port = free_port(), free_port()
        log_path = tmp_path / f"goflow2-{len(started)}.log"
        cmd = [
            str(binary),
            f"-listen=netflow://127.0.0.1:{udp_port}",
            f"-addr=127.0.0.1:{http_port}",
            "-format=bin",
            "-transport=kafka",
            f"-transport.kafka.brokers={run.ep.kafka.bootstrap}",
            f"-transport.kafka.topic={run.topic}",
            "-transport.kafka.flushfreq=100ms",
            "-loglevel=info",
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        gf = GoFlow2(proc, udp_port, http_port, log_path)
        started.append(gf)
        gf.wait_collecting()
        return gf

    yield start
    for gf in started:
        gf.stop()


def v5_flow(i: int) -> FlowFields:
    """Flow ``i``: every field distinct and computable from ``i`` (SrcPort = 10000 + i)."""
    tcp = i % 3 != 0
    return {
        "srcaddr": f"10.20.{i >> 8}.{i & 0xFF}",
        "dstaddr": f"192.0.2.{i % 250 + 1}",
        "nexthop": "198.51.100.1",
        "input": 1 + i % 4,
        "output": 100 + i % 3,
        "dPkts": 1 + i % 7,
        "dOctets": 1000 + 17 * i,
        "first": 3_590_000,
        "last": 3_599_000,
        "srcport": 10000 + i,
        "dstport": 443 if tcp else 53,
        "tcp_flags": 0x18 if tcp else 0,
        "prot": 6 if tcp else 17,
        "tos": 0,
        "src_as": 64512 + i % 100,
        "dst_as": 65000 + i % 50,
        "src_mask": 8 + i % 17,
        "dst_mask": 16 + i % 9,
    }


COLUMNS = (
    "SrcPort",
    "toString(ExporterAddress)",
    "toString(SrcAddr)",
    "toString(DstAddr)",
    "DstPort",
    "Proto",
    "EType",
    "Bytes",
    "Packets",
    "InIf",
    "OutIf",
    "SrcAS",
    "DstAS",
    "SrcNetMask",
    "DstNetMask",
    "TCPFlags",
    "ForwardingStatus",
    "SamplingRate",
)


def mapped(addr: str) -> str:
    """ClickHouse's text for an address stored as IPv6 (IPv4 as IPv4-mapped)."""
    return addr if ":" in addr else f"::ffff:{addr}"


def expected_row(f: FlowFields, sampling_rate: int) -> tuple[Any, ...]:
    v6 = ":" in f["srcaddr"]
    return (
        f["srcport"],
        "::ffff:127.0.0.1",
        mapped(f["srcaddr"]),
        mapped(f["dstaddr"]),
        f["dstport"],
        f["prot"],
        0x86DD if v6 else 0x0800,
        f["dOctets"],
        f["dPkts"],
        f["input"],
        f["output"],
        f["src_as"],
        f["dst_as"],
        f["src_mask"],
        f["dst_mask"],
        f["tcp_flags"],
        0,
        sampling_rate,
    )


def stored_rows(run: OutletRun) -> list[tuple[Any, ...]]:
    c = verify.client(run.ch("local"))
    try:
        result = c.query(
            f"SELECT {', '.join(COLUMNS)} FROM {run.database}.flows ORDER BY SrcPort"
        ).result_rows
        return [tuple(row) for row in result]
    finally:
        c.close()


def check_run(
    run: OutletRun, gf: GoFlow2, flows: list[FlowFields], sampling_rate: int, started: float
) -> None:
    outlet = run.outlet()
    outlet.start()
    stored = run.wait_rows("local", len(flows), timeout=40)
    assert stored == len(flows), f"{stored} rows\n{outlet.log_tail()}\n{gf.log_tail()}"
    rows = stored_rows(run)
    expected = [expected_row(f, sampling_rate) for f in flows]
    mismatches = [(got, want) for got, want in zip(rows, expected, strict=True) if got != want]
    assert not mismatches, f"{len(mismatches)} rows differ, first (got, want): {mismatches[0]}"

    c = verify.client(run.ch("local"))
    try:
        total, oldest, newest = c.query(
            f"SELECT sum(Bytes), min(TimeReceived), max(TimeReceived) FROM {run.database}.flows"
        ).result_rows[0]
    finally:
        c.close()
    assert total == sum(f["dOctets"] for f in flows)
    # TimeReceived is GoFlow2's receive time (second resolution).
    assert started - 2 <= oldest.timestamp() <= newest.timestamp() <= time.time() + 2

    assert outlet.metric(names.FLOWS_RECEIVED_TOTAL) == len(flows)
    assert outlet.metric(names.DECODE_ERRORS_TOTAL) == 0
    assert outlet.stop() == 0, outlet.log_tail()


def test_goflow2_netflow_v5(outlet_run: RunFactory, goflow2: GoFlow2Factory) -> None:
    """20 NetFlow v5 packets x 30 records through a real GoFlow2: 600 rows, exact values."""
    run = outlet_run(destinations=("local",))
    gf = goflow2(run)
    flows = [v5_flow(i) for i in range(600)]
    started = time.time()
    # sampling mode 1 (deterministic) in the top 2 bits: GoFlow2 keeps the low 14 bits.
    packets = netflow_v5_packets(flows, sampling_interval=1000, sampling_mode=1)
    assert len(packets) == 20
    send_udp(packets, gf.udp_port, interval=0.002)
    check_run(run, gf, flows, sampling_rate=1000, started=started)


def test_goflow2_ipfix_v4_v6(outlet_run: RunFactory, goflow2: GoFlow2Factory) -> None:
    """IPFIX with templates, a samplingInterval option and IPv4 + IPv6 data sets."""
    run = outlet_run(destinations=("local",))
    gf = goflow2(run)
    flows = [v5_flow(i) for i in range(300)]
    for i, f in enumerate(flows):
        if i % 2:
            f["srcaddr"] = f"2001:db8:20::{i:x}"
            f["dstaddr"] = f"2001:db8:ffff::{i % 250 + 1:x}"
            f["nexthop"] = "2001:db8::1"
            f["src_mask"], f["dst_mask"] = 48 + i % 17, 56 + i % 9
        f["dOctets"] = 1 << 33 | f["dOctets"]  # IPFIX counters are 64-bit
    started = time.time()
    packets = [
        ipfix_packet(flows[k : k + 20], sequence=k, observation_domain_id=42, sampling_interval=512)
        for k in range(0, len(flows), 20)
    ]
    send_udp(packets, gf.udp_port, interval=0.002)
    check_run(run, gf, flows, sampling_rate=512, started=started)

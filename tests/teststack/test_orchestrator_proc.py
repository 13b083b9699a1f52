"""teststack.orchestrator_proc without processes: what MultiDCSites asks of the OS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from teststack import orchestrator_proc
from teststack import stack as stk


def _ch(port: int) -> stk.ClickHouseEndpoints:
    return stk.ClickHouseEndpoints(url=f"http://127.0.0.1:{port}",
                                   proxied_url=f"http://127.0.0.1:{port + 1}", https_url="",
                                   username="u", password="p", data_dir="", proxy="")


def _multi_dc() -> stk.MultiDCEndpoints:
    toxi = stk.ToxiproxyEndpoints(api="http://127.0.0.1:1")
    views = {dc: stk.Endpoints(
        kafka=stk.KafkaEndpoints(bootstrap=f"127.0.0.1:{10 + i}",
                                 bootstrap_proxied=f"127.0.0.1:{20 + i}", topic="t",
                                 partitions=2, proxy=f"kafka-{dc}"),
        toxiproxy=toxi, ca_file="",
        clickhouse={"local": _ch(30 + 2 * i), stk.CENTRAL: _ch(40)})
        for i, dc in enumerate(("a", "b"))}
    return stk.MultiDCEndpoints(toxi, "", views)


def test_every_listener_of_the_sites_is_picked_together_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen in `make demo TOPOLOGY=multi-dc`: outlet a's HTTP port, picked free a moment
    before, was bound by site b's orchestrator (started on port 0) before outlet a
    started, and outlet a died (address in use). Every orchestrator and outlet port is
    therefore chosen at once, distinct, and none is left to the OS at bind time."""
    started: list[dict[str, Any]] = []

    class Orchestrator:
        def __init__(self, workdir: Path, cfg: dict[str, Any], **_: Any) -> None:
            self.cfg = cfg

        def start(self) -> None:
            started.append(self.cfg)

        def wait_ready(self) -> None: ...

    monkeypatch.setattr(orchestrator_proc, "OrchestratorProcess", Orchestrator)
    monkeypatch.setattr(orchestrator_proc, "ensure_topic", lambda *a: None)
    sites = orchestrator_proc.MultiDCSites(_multi_dc(), tmp_path, database="d", topic="t")
    sites.start_orchestrators()
    listens = [cfg["http"]["listen"] for cfg in started]
    listens += [entry["http"]["listen"] for entry in sites.entries.values()]
    ports = [int(x.rsplit(":", 1)[1]) for x in listens]
    assert len(ports) == 5 and 0 not in ports and len(set(ports)) == 5, listens

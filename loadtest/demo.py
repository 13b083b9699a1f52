"""`make demo`: the whole pipeline for about a minute, then what it stored.

Starts the native stack (or reuses a healthy one), applies the schema, runs the
outlet in dual-write (local primary + azure, through Toxiproxy), feeds it realistic
GoFlow2 flows at a modest rate, prints progress, then the rows stored on each
destination, the throughput, a sample of enriched data and key metrics.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import yaml

from flowgen.generator import FlowGenerator, GeneratorConfig
from flowgen.producer import produce
from teststack import verify
from teststack.outlet_proc import (
    OutletProcess,
    apply_schema,
    create_topic,
    free_port,
    outlet_config,
)
from teststack.stack import Endpoints, is_healthy, start_stack, stop_stack

KEY_METRICS: tuple[tuple[str, dict[str, str]], ...] = (
    ("outlet_kafka_received_messages_total", {}),
    ("outlet_flows_received_total", {}),
    ("outlet_decode_errors_total", {}),
    ("outlet_batches_sealed_total", {}),
    ("outlet_destination_flows_written_total", {"destination": "primary"}),
    ("outlet_destination_flows_written_total", {"destination": "azure"}),
    ("outlet_destination_insert_errors_total", {}),
    ("outlet_destination_retries_exceeded_flows_total", {}),
    ("outlet_kafka_consumergroup_lag_messages", {}),
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--rate", type=float, default=5_000, help="flows/s offered")
    ap.add_argument("--stack-dir", default=".stack")
    ap.add_argument("--workdir", default="reports/demo")
    args = ap.parse_args(argv)

    reused = is_healthy(args.stack_dir)
    print(
        "== stack:",
        "reusing the running one" if reused else "starting (Kafka, Toxiproxy, 2 ClickHouse)",
    )
    ep = Endpoints.load(args.stack_dir) if reused else start_stack(args.stack_dir)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    outlet: OutletProcess | None = None
    try:
        gen_cfg = GeneratorConfig(seed=int(time.time()) % 10_000)
        gen = FlowGenerator(gen_cfg)
        enrichment = gen.demo_metadata()
        topic = create_topic(ep, f"demo-{int(time.time())}")
        cfg = outlet_config(
            ep,
            state_path=str(workdir / "state"),
            http_port=free_port(),
            topic=topic,
            consumer_group=f"demo-{topic}",
            wait_time="2s",
            metadata=enrichment["metadata"],
            networks=enrichment["networks"],
        )
        for name in ("local", "azure"):
            c = verify.client(ep.clickhouse[name])
            c.command("DROP TABLE IF EXISTS flows.flows")
            c.close()
        config_path = workdir / "outlet.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        print(f"== schema: outlet schema apply --config {config_path}")
        apply_schema(config_path)
        outlet = OutletProcess(workdir, cfg)
        outlet.start()
        print(f"== outlet running (log {outlet.log_path}, metrics {outlet.http}/metrics)")
        total = int(args.rate * args.seconds)
        producer = threading.Thread(
            target=produce,
            args=(ep.kafka.bootstrap, topic, gen.records(total), args.rate),
            daemon=True,
        )
        started = time.monotonic()
        producer.start()
        print(f"== producing {total:,} flows at {args.rate:,.0f} flows/s for {args.seconds:.0f}s")
        while producer.is_alive():
            producer.join(10)
            local = verify.count_rows(ep.clickhouse["local"])
            azure = verify.count_rows(ep.clickhouse["azure"])
            print(f"   t={time.monotonic() - started:5.1f}s  local {local:>9,}  azure {azure:>9,}")
        verify.wait_rows(ep.clickhouse["local"], total, 60)
        verify.wait_rows(ep.clickhouse["azure"], total, 60)
        elapsed = time.monotonic() - started
        report(ep, outlet, total, elapsed)
        return 0
    finally:
        if outlet is not None:
            code = outlet.stop()
            print(f"== outlet stopped (exit {code})")
        if not reused:
            stop_stack(args.stack_dir)
            print("== stack stopped")


def report(ep: Endpoints, outlet: OutletProcess, total: int, elapsed: float) -> None:
    print("\n== stored")
    for name in ("local", "azure"):
        s = verify.table_stats(ep.clickhouse[name], where="1")
        print(f"   {name:6} rows {s.rows:>10,}  sum(Bytes) {s.bytes_sum:>16,}")
    print(
        f"   produced {total:,} flows; end to end "
        f"{total / elapsed:,.0f} flows/s over {elapsed:.0f}s"
    )
    c = verify.client(ep.clickhouse["local"])
    try:
        rows = c.query(
            "SELECT ExporterName, InIfName, InIfBoundary, SrcNetName, count() AS flows, "
            "sum(Bytes * SamplingRate) AS bytes FROM flows.flows "
            "GROUP BY ExporterName, InIfName, InIfBoundary, SrcNetName "
            "ORDER BY bytes DESC LIMIT 5"
        ).result_rows
    finally:
        c.close()
    print("\n== top 5 (exporter, in-interface, boundary, source network) by sampled bytes")
    for exporter, ifname, boundary, net, flows, nbytes in rows:
        print(
            f"   {exporter:10} {ifname:14} {boundary:9} {net or '-':14} "
            f"{flows:>8,} flows {nbytes:>18,} B"
        )
    print("\n== key metrics")
    for name, labels in KEY_METRICS:
        shown = ",".join(f'{k}="{v}"' for k, v in labels.items())
        print(f"   {name}{{{shown}}} {outlet.metric(name, **labels):,.0f}")


if __name__ == "__main__":
    sys.exit(main())

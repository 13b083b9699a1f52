"""``loadtest demo`` (``make demo``): the whole pipeline for about a minute, then what it stored.

Starts the native stack (or reuses a healthy one), applies the schema, runs the
outlet in dual-write (local primary + azure, through Toxiproxy), feeds it realistic
GoFlow2 flows at a modest rate, prints progress, then the rows stored on each
destination, the throughput, a sample of enriched data and key metrics.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flowgen.generator import FlowGenerator, GeneratorConfig
from flowgen.producer import ProducerThread
from outlet import metrics as names
from teststack import clikit, verify
from teststack.kafka import create_topic
from teststack.outlet_proc import (
    OutletProcess,
    apply_schema,
    free_port,
    outlet_config,
    write_config,
)
from teststack.paths import REPORTS_DIR
from teststack.runs import reuse_or_start
from teststack.stack import MULTI_DC, TOPOLOGIES, Endpoints, stop_stack

KEY_METRICS: tuple[tuple[str, dict[str, str]], ...] = (
    (names.KAFKA_RECEIVED_MESSAGES_TOTAL, {}),
    (names.FLOWS_RECEIVED_TOTAL, {}),
    (names.DECODE_ERRORS_TOTAL, {}),
    (names.BATCHES_SEALED_TOTAL, {}),
    (names.DESTINATION_FLOWS_WRITTEN_TOTAL, {"destination": "primary"}),
    (names.DESTINATION_FLOWS_WRITTEN_TOTAL, {"destination": "azure"}),
    (names.DESTINATION_INSERT_ERRORS_TOTAL, {}),
    (names.DESTINATION_RETRIES_EXCEEDED_FLOWS_TOTAL, {}),
    (names.KAFKA_CONSUMERGROUP_LAG_MESSAGES, {}),
)
WORKDIR = REPORTS_DIR / "demo"


def configure(ap: argparse.ArgumentParser) -> None:
    ap.description = ("The main job for about a minute: stack, schema, the outlet in dual-write "
                      "(local + azure, through Toxiproxy) on realistic flows, then what it "
                      "stored, a sample of enriched rows and key metrics.")
    ap.add_argument("--seconds", type=float, default=60,
                    help="how long flows are produced (default: 60)")
    ap.add_argument("--rate", type=float, default=None,
                    help="flows/s offered (default: 5000; multi-dc: 2000 per datacenter)")
    clikit.add_stack_dir(ap)
    ap.add_argument("--workdir", default=str(WORKDIR), metavar="DIR",
                    help="outlet config, state and log (default: reports/demo)")
    ap.add_argument("--topology", choices=TOPOLOGIES, default=TOPOLOGIES[0],
                    help="multi-dc: an orchestrator per site (a, b, central), an outlet per "
                         "datacenter, central rolled out live halfway (docs/deployment.md); "
                         "--stack-dir is then a multi-dc stack's")


def command(args: argparse.Namespace) -> int:
    if args.topology == MULTI_DC:
        from loadtest import demo_multidc

        args.rate = args.rate or 2_000
        return demo_multidc.command(args)
    args.rate = args.rate or 5_000
    ep, started_stack = reuse_or_start(args.stack_dir)  # prints when it starts one
    print("== stack:", "started (Kafka, Toxiproxy, 2 ClickHouse)" if started_stack
          else "reusing the running one")
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
        secrets = write_config(config_path, cfg)
        print(f"== schema: outlet schema apply --config {config_path}")
        apply_schema(config_path, secrets)
        outlet = OutletProcess(workdir, cfg)
        outlet.start()
        print(f"== outlet running (log {outlet.log_path}, metrics {outlet.http}/metrics)")
        total = int(args.rate * args.seconds)
        producer = ProducerThread(ep.kafka.bootstrap, topic, gen.records(total), args.rate)
        started = time.monotonic()
        producer.start()
        print(f"== producing {total:,} flows at {args.rate:,.0f} flows/s for {args.seconds:.0f}s")
        while producer.is_alive():
            producer.join(10)
            local = verify.count_rows(ep.clickhouse["local"])
            azure = verify.count_rows(ep.clickhouse["azure"])
            print(f"   t={time.monotonic() - started:5.1f}s  local {local:>9,}  azure {azure:>9,}")
        if producer.error:
            print(f"== producer failed: {producer.error}", file=sys.stderr)
            return 1
        verify.wait_rows(ep.clickhouse["local"], total, 60)
        verify.wait_rows(ep.clickhouse["azure"], total, 60)
        elapsed = time.monotonic() - started
        report(ep, outlet, total, elapsed)
        return 0
    finally:
        if outlet is not None:
            code = outlet.stop()
            print(f"== outlet stopped (exit {code})")
        if started_stack:
            stop_stack(Path(args.stack_dir).resolve())
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
    raise SystemExit(clikit.module_main("loadtest demo", configure, command))

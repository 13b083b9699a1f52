"""``loadtest demo --topology multi-dc`` (``make demo TOPOLOGY=multi-dc``): docs/deployment.md
on the multi-dc stack for about a minute.

Three orchestrators (datacenters a and b manage their local ClickHouse with 15 days of raw
flows, the central site manages central with 30 days), one outlet per datacenter started
from its site's orchestrator URL, realistic flows into each datacenter's Kafka; halfway,
central is rolled out live through both site orchestrators (file + SIGHUP, no outlet
restart). Then what each server stored, each site's retention, the resolution tables
against the raw sums, and the outlets' reload metrics.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from flowgen.generator import FlowGenerator, GeneratorConfig
from flowgen.producer import ProducerThread
from outlet import metrics as names
from teststack import verify
from teststack.orchestrator_proc import MultiDCSites, resolution_mismatches
from teststack.runs import reuse_or_start_multi_dc
from teststack.stack import stop_stack


def command(args: argparse.Namespace) -> int:
    mep, started_stack = reuse_or_start_multi_dc(args.stack_dir)
    print("== multi-dc stack:", "started (Kafka a and b, local-a, local-b, central, Toxiproxy)"
          if started_stack else "reusing the running one")
    stamp = f"demo_{int(time.time())}"
    gens = {dc: FlowGenerator(GeneratorConfig(seed=int(time.time()) % 10_000 + i))
            for i, dc in enumerate(mep.datacenters)}  # fmt: skip
    enrichment = next(iter(gens.values())).demo_metadata()
    sites = MultiDCSites(mep, Path(args.workdir).resolve() / "multi-dc", database=stamp,
                         topic=stamp, batch_size=10_000,
                         outlet_extra={"metadata": enrichment["metadata"],
                                       "networks": enrichment["networks"]})  # fmt: skip
    try:
        for site in sites.sites:
            verify.query(sites.server(site), f"DROP DATABASE IF EXISTS {stamp}")
        sites.start_orchestrators()
        for site, o in sites.orchestrators.items():
            print(f"== orchestrator {site:7} {o.url}  migrations done, raw retention "
                  f"{sites.raw_ttl_days(site):g} days (config {o.config_path})")
        sites.start_outlets()
        for dc, outlet in sites.outlets.items():
            print(f"== outlet {dc}: outlet run --config {outlet.source} (log {outlet.log_path})")
        return _run(sites, gens, args.rate, args.seconds)
    finally:
        codes = sites.stop()
        print(f"== outlets and orchestrators stopped (exit codes {codes})")
        if started_stack:
            stop_stack(Path(args.stack_dir).resolve())
            print("== stack stopped")


def _run(sites: MultiDCSites, gens: dict[str, FlowGenerator], rate: float,
         seconds: float) -> int:
    mep, db = sites.mep, sites.database
    total = int(rate * seconds)
    producers = {dc: ProducerThread(ep.kafka.bootstrap, sites.topic, gens[dc].records(total),
                                    rate) for dc, ep in mep.datacenters.items()}  # fmt: skip
    print(f"== producing {total:,} flows into each datacenter at {rate:,.0f} flows/s for "
          f"{seconds:.0f}s; the outlets write to their local server only")
    started = time.monotonic()
    for p in producers.values():
        p.start()
    rolled_out = False
    while any(p.is_alive() for p in producers.values()):
        time.sleep(5)
        elapsed = time.monotonic() - started
        if not rolled_out and elapsed >= seconds / 2:
            outcomes = sites.roll_out_central()
            print(f"== t={elapsed:.0f}s central rolled out live (site orchestrators reloaded: "
                  f"{outcomes}); the outlets keep running")
            rolled_out = True
        rows = "  ".join(f"{site} {verify.count_rows(sites.server(site), db):>9,}"
                         for site in sites.sites)
        print(f"   t={elapsed:5.1f}s  {rows}")
        if not _outlets_alive(sites):
            return 1
    failed = [dc for dc, p in producers.items() if p.error]
    if failed:
        print(f"== producer failed in {failed}", file=sys.stderr)
        return 1
    for dc in mep.datacenters:
        verify.wait_rows(sites.server(dc), total, 120, db)
    verify.wait_stable(mep.central, quiet=5, database=db)
    return 0 if _report(sites, total) else 1


def _outlets_alive(sites: MultiDCSites) -> bool:
    """A datacenter whose outlet exited stores nothing more: say so at once, with the
    end of its log, instead of reporting a demo with a datacenter missing."""
    dead = [dc for dc, o in sites.outlets.items() if not o.alive()]
    for dc in dead:
        o = sites.outlets[dc]
        print(f"== outlet {dc} exited (log {o.log_path}):\n{o.log_tail(15)}", file=sys.stderr)
    return not dead


def _report(sites: MultiDCSites, total: int) -> bool:
    """What each server stored; False (said on stderr) unless every local server holds
    its datacenter's flows and central exactly what the outlets wrote there."""
    db = sites.database
    stored = {site: verify.count_rows(sites.server(site), db) for site in sites.sites}
    print("\n== stored (raw table, resolution tables, retention)")
    for site in sites.sites:
        ch = sites.server(site)
        counts = "  ".join(f"{t} {verify.query(ch, f'SELECT count() FROM {db}.{t}').strip():>7}"
                           for t in ("flows_1m0s", "flows_5m0s", "flows_1h0m0s"))
        mismatched = sum(len(v) for v in resolution_mismatches(ch, db).values())
        rows = stored[site]
        print(f"   {site:7} flows {rows:>9,}  {counts}  buckets != raw sums: {mismatched}  "
              f"raw TTL {sites.raw_ttl_days(site):g} d")
    written = sum(o.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL, destination="central")
                  for o in sites.outlets.values())  # fmt: skip
    print(f"   each datacenter produced {total:,} flows; the outlets wrote {written:,.0f} to "
          "central")
    print("\n== per outlet")
    for dc, o in sites.outlets.items():
        central = o.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL, destination="central")
        local = o.metric(names.DESTINATION_FLOWS_WRITTEN_TOTAL, destination="primary")
        applied = o.metric(names.CONFIG_RELOADS_TOTAL, outcome="applied")
        print(f"   outlet {dc}: written local {local:,.0f}, central {central:,.0f} (the batches "
              f"sealed after the rollout); configurations applied live: {applied:.0f}")
    wrong = [f"{dc}: {stored[dc]:,} of {total:,}" for dc in sites.mep.datacenters
             if stored[dc] != total]
    if stored["central"] != written:
        wrong.append(f"central: {stored['central']:,} rows, {written:,.0f} written there")
    if wrong:
        print(f"== not every flow stored once: {'; '.join(wrong)}", file=sys.stderr)
    return not wrong

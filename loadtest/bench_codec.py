"""Codec benchmark (`make bench-codec`, `loadtest bench codec`): no stack needed.

Encodes batches of realistic GoFlow2 records in-process and prints CPU per flow
(``time.process_time``: every thread of the process, so chDB's too), min and median over
the rounds, for
- clean batches;
- batches with 1% garbage (the flowgen corpus and mutations that the reference refuses);
- the batcher's flow count (framing-only scan) alone;
- isolation: 200 records that only the engine rejects in a 20,000-record batch, with
  the scan told to check framing only (the path taken for a kind of garbage the scan
  does not know), i.e. the bisection budget at work: seconds held under the codec lock
  and good records quarantined.
``--baseline REF`` runs the codec of a git revision (e.g. ``main``) on the same batches in
the same run, alternating with this one, so the ratios compare like with like; with it,
the baseline's own isolation of those 200 records (unbounded bisection) is timed too.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import itertools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any
from unittest import mock

from flowgen.generator import (
    FlowGenerator,
    GeneratorConfig,
    decode_record,
    decode_varint,
    demo_metadata,
    encode_varint,
    garbage_records,
    mutate,
)
from outlet import codec as codec_module
from outlet import protoscan
from outlet.config import parse_config
from teststack.summary import add_summary_dir, write_summary

NOW = 1_800_000_000


def _metadata() -> Any:
    return parse_config(demo_metadata()).metadata


def _garbage(records: list[bytes], share: float, seed: int) -> list[bytes]:
    """``records`` with ``share`` of them replaced by bad ones (corpus + mutations)."""
    rng = random.Random(seed)
    corpus = garbage_records(seed)
    out = list(records)
    for i in rng.sample(range(len(out)), int(len(out) * share)):
        bad = rng.choice(corpus) if rng.random() < 0.5 else mutate(out[i], rng)
        while _good(bad):
            bad = mutate(out[i], rng)
        out[i] = bad
    return out


def _good(record: bytes) -> bool:
    try:
        decode_record(record)
    except ValueError:
        return False
    return True


def _load_baseline(ref: str) -> ModuleType:
    """outlet/codec.py as it is at git revision ``ref``, as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{ref}:outlet/codec.py"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-codec-")) / "codec_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("codec_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["codec_baseline"] = module
    spec.loader.exec_module(module)
    module.__dict__["_instances"] = itertools.count(1000)  # its own database names
    module.__dict__["_PROTO_PATH"] = Path(codec_module.__file__).parent / "pb" / "flow.proto"
    return module


def _cpu(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - w0, out


def _us_per_flow(codec: Any, records: Sequence[bytes], rounds: int) -> tuple[float, float, int]:
    samples = []
    rows = 0
    for _ in range(rounds):
        cpu, _, batch = _cpu(lambda: codec.encode(records, now=NOW))
        rows = batch.rows
        samples.append(cpu / len(records) * 1e6)
    return min(samples), statistics.median(samples), rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    gen = FlowGenerator(GeneratorConfig(seed=5, unique=True, time_mode="fixed"))
    clean = gen.batch(args.batch_size)
    dirty = _garbage(clean, 0.01, seed=5)
    workdir = Path(tempfile.mkdtemp(prefix="bench-codec-"))
    md = _metadata()
    codecs: dict[str, Any] = {"this": codec_module.FlowCodec(md, workdir)}
    if args.baseline:
        codecs[f"baseline {args.baseline}"] = _load_baseline(args.baseline).FlowCodec(md, workdir)
    results: dict[str, Any] = {"batch_records": len(clean), "rounds": args.rounds}
    try:
        for label, records in (("clean", clean), ("1% garbage", dirty)):
            for name, codec in codecs.items():
                # the baseline bisects engine-rejected garbage: seconds per batch
                rounds = args.rounds if name == "this" or label == "clean" else 1
                lo, med, rows = _us_per_flow(codec, records, rounds)
                bad = len(records) - rows
                results[f"{name} / {label}"] = {"min_us": lo, "median_us": med, "rows": rows}
                print(
                    f"{name:>16} {label:>11}: {lo:.3f} / {med:.3f} us/flow CPU (min/median), "
                    f"{rows:,} rows stored, {bad:,} records not stored",
                    flush=True,
                )
        samples = [
            _cpu(lambda: protoscan.scan(clean, 1000, framing_only=True))[0] for _ in range(5)
        ]
        weigh = min(samples) / len(clean) * 1e6
        results["batcher flow count us"] = weigh
        print(f"{'batcher':>16} flow count: {weigh:.3f} us/record (framing-only scan)")
        results.update(_isolation(codecs, gen, args.isolation_records))
    finally:
        for codec in codecs.values():
            codec.close()
    return results


def _isolation(codecs: dict[str, Any], gen: FlowGenerator, n_bad: int) -> dict[str, Any]:
    """200 records only the engine rejects (a group in an undeclared field) in 20,000."""
    if n_bad <= 0:
        return {}
    rng = random.Random(7)
    records = gen.batch(20_000, start=1_000_000)
    bad = set(rng.sample(range(len(records)), n_bad))
    for i in bad:
        group = records[i][decode_varint(records[i])[1] :] + b"\xfb\x07\x08\x01\xfc\x07"
        records[i] = encode_varint(len(group)) + group
    out: dict[str, Any] = {}
    this = codecs["this"]
    cpu, wall, batch = _cpu(lambda: this.encode(records, now=NOW))
    print(f"{'this':>16} isolation: scan finds the {n_bad}: {wall:.2f} s wall, "
          f"{len(batch.bad_records)} bad, {batch.rows:,} rows")
    out["this / scan"] = {"wall_s": wall, "cpu_s": cpu, "bad": len(batch.bad_records)}
    real_scan = protoscan.scan
    with mock.patch.object(protoscan, "scan", lambda r, mf: real_scan(r, mf, framing_only=True)):
        cpu, wall, batch = _cpu(lambda: this.encode(records, now=NOW))
    quarantined = batch.bad_reasons.count("quarantined")
    print(f"{'this':>16} isolation: engine only, budget {codec_module.MAX_ISOLATION_PROBES} "
          f"probes: {wall:.2f} s wall, {batch.bad_reasons.count('engine')} found, "
          f"{quarantined:,} quarantined, {batch.rows:,} rows", flush=True)
    out["this / engine only"] = {"wall_s": wall, "cpu_s": cpu, "quarantined": quarantined,
                                 "rows": batch.rows}
    for name, codec in codecs.items():
        if name == "this":
            continue
        cpu, wall, batch = _cpu(functools.partial(codec.encode, records, now=NOW))
        print(f"{name:>16} isolation: unbounded bisection: {wall:.2f} s wall, "
              f"{len(batch.bad_records)} found, {batch.rows:,} rows", flush=True)
        out[f"{name} / isolation"] = {"wall_s": wall, "cpu_s": cpu, "rows": batch.rows}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch-size", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--baseline", help="git revision whose codec runs alongside (e.g. main)")
    ap.add_argument("--isolation-records", type=int, default=200)
    ap.add_argument("--json", help="also write the results here")
    add_summary_dir(ap)
    args = ap.parse_args(argv)
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.summary_dir:
        cmd = (f"loadtest bench codec --batch-size {args.batch_size} --rounds {args.rounds} "
               f"--isolation-records {args.isolation_records}"
               + (f" --baseline {args.baseline}" if args.baseline else ""))
        print(f"summary: {write_summary(args.summary_dir, 'bench-codec', cmd, results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

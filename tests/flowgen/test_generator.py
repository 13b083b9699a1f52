"""Unit tests for flowgen.generator (and the broker-free parts of flowgen.producer)."""

from __future__ import annotations

import collections
import ipaddress
import random
import time
from typing import Any

import numpy as np
import pytest

from flowgen.generator import (
    BLOCK,
    DEFAULT_BIG_ASES,
    DEFAULT_MAX_FLOWS,
    FlowGenerator,
    GeneratorConfig,
    decode_record,
    decode_varint,
    demo_metadata,
    encode_varint,
    flow_id_from_columns,
    flow_id_from_message,
    flow_id_sql_expr,
    flow_index_sql_expr,
    flow_run_sql_expr,
    flow_uid,
    garbage_cases,
    garbage_records,
    mutate,
    split_uid,
    unique_rows_sql_filter,
)
from flowgen.producer import RateLimiter
from outlet.pb.flow_pb2 import FlowMessage

FIXED = GeneratorConfig(seed=7, time_mode="fixed")
FIELDS = [f.name for f in FlowMessage.DESCRIPTOR.fields]


def as_dict(m: FlowMessage) -> dict[str, object]:
    return {f: getattr(m, f) for f in FIELDS}


def stored_src_addr(m: FlowMessage) -> ipaddress.IPv6Address:
    """SrcAddr as the flows table stores it (IPv4 mapped into IPv6)."""
    if len(m.src_addr) == 4:
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + m.src_addr)
    return ipaddress.IPv6Address(m.src_addr)


def test_varint_roundtrip() -> None:
    for v in [0, 1, 127, 128, 300, 16383, 16384, 2**32 - 1, 2**40, 2**63, 2**64 - 1]:
        enc = encode_varint(v)
        assert decode_varint(enc) == (v, len(enc))
    with pytest.raises(ValueError):
        decode_varint(b"\x80\x80")


def test_same_seed_same_bytes() -> None:
    a = FlowGenerator(FIXED).batch(5000)
    b = FlowGenerator(FIXED).batch(5000)
    assert a == b
    c = FlowGenerator(GeneratorConfig(seed=8, time_mode="fixed")).batch(5000)
    assert a != c


def test_start_offset_matches_full_run() -> None:
    full = FlowGenerator(FIXED).batch(3 * BLOCK)
    part = FlowGenerator(FIXED).batch(BLOCK + 100, start=BLOCK - 50)
    assert part == full[BLOCK - 50: 2 * BLOCK + 50]
    # small encode chunks do not change the bytes in fixed-time mode
    small = FlowGenerator(GeneratorConfig(seed=7, time_mode="fixed", encode_chunk=97))
    assert small.batch(1000, start=10) == full[10:1010]


@pytest.mark.parametrize("cfg", [
    FIXED,
    GeneratorConfig(seed=3, time_mode="fixed", unique=True, run_id=9, ipv6_exporters=2,
                    exporters=5, ipv6_share=0.5),
    GeneratorConfig(seed=4, time_mode="fixed", ipv6_share=1.0, interfaces_per_exporter=1,
                    exporters=1),
    GeneratorConfig(seed=5, time_mode="fixed", ipv6_share=0.0, dropped_share=0.5),
])
def test_encoding_equals_serialize_and_decodes(cfg: GeneratorConfig) -> None:
    gen = FlowGenerator(cfg)
    cols = gen.columns(6000, start=1234)
    recs = gen.batch(6000, start=1234)
    assert len(recs) == 6000
    for i, rec in enumerate(recs):
        size, pos = decode_varint(rec)
        assert size == len(rec) - pos
        ref = cols.message(i)
        assert rec[pos:] == ref.SerializeToString()
        msgs = decode_record(rec)
        assert len(msgs) == 1
        assert as_dict(msgs[0]) == as_dict(ref)


def test_decoded_field_values_are_sane() -> None:
    gen = FlowGenerator(GeneratorConfig(seed=11, time_mode="fixed", ipv6_exporters=1))
    exporters = {e.packed: e for e in gen.exporters}
    for rec in gen.batch(20000):
        (m,) = decode_record(rec)
        assert m.sampling_rate == 1000
        assert m.sampler_address in exporters
        assert len(m.src_addr) == len(m.dst_addr)
        if m.etype == 0x800:
            assert len(m.src_addr) == 4 and m.src_net <= 32 and m.dst_net <= 32
        else:
            assert m.etype == 0x86DD and len(m.src_addr) == 16
        assert m.packets >= 1
        assert 64 * m.packets <= m.bytes <= 1500 * m.packets
        assert m.time_flow_start_ns <= m.time_flow_end_ns <= m.time_received_ns
        assert m.in_if != 0
        if m.forwarding_status == 128:
            assert m.out_if == 0 and m.next_hop == b""
        else:
            assert m.forwarding_status == 64 and m.out_if != 0
            assert len(m.next_hop) == len(m.src_addr)
        if m.proto in (1, 58):
            assert m.src_port == m.dst_port == 0
        if m.proto != 6:
            assert m.tcp_flags == 0
        if m.type == FlowMessage.SFLOW_5:
            assert m.packets == 1
        assert m.type in (FlowMessage.SFLOW_5, FlowMessage.NETFLOW_V9, FlowMessage.IPFIX)


def test_fixed_time_source() -> None:
    cfg = GeneratorConfig(seed=1, time_mode="fixed", start_ns=10**18, step_ns=500)
    msgs = FlowGenerator(cfg).messages(10, start=100)
    assert [m.time_received_ns for m in msgs] == [10**18 + (100 + i) * 500 for i in range(10)]


def test_now_time_source() -> None:
    before = time.time_ns()
    (m,) = decode_record(FlowGenerator(GeneratorConfig(seed=1)).batch(1)[0])
    assert before <= m.time_received_ns <= time.time_ns()


def test_flows_per_record_packs_messages() -> None:
    single = FlowGenerator(FIXED).batch(1001)
    packed = FlowGenerator(FIXED, flows_per_record=10).batch(1001)
    assert len(packed) == 101
    assert b"".join(packed) == b"".join(single)
    assert [len(decode_record(r)) for r in packed] == [10] * 100 + [1]
    gen = FlowGenerator(FIXED)
    gen.flows_per_record = 3
    assert b"".join(gen.batch(50)) == b"".join(single[:50])


@pytest.mark.parametrize("run_id,start", [(0, 0), (1, 65530), (255, 2**32 - 3000),
                                          (17, 2**24 - 100)])
def test_unique_id_roundtrip(run_id: int, start: int) -> None:
    cfg = GeneratorConfig(seed=2, run_id=run_id, unique=True, time_mode="fixed",
                          ipv6_share=0.3)
    n = 3000
    seen = set()
    v6 = 0
    for i, rec in enumerate(FlowGenerator(cfg).records(n, start)):
        (m,) = decode_record(rec)
        uid = flow_id_from_message(m)
        assert uid == flow_uid(run_id, start + i)
        assert split_uid(uid) == (run_id, start + i)
        # as the SQL expression computes it from the stored columns
        assert flow_id_from_columns(stored_src_addr(m).packed, m.src_port) == uid
        assert flow_id_from_columns(str(stored_src_addr(m)), m.src_port) == uid
        mapped = stored_src_addr(m).ipv4_mapped
        assert flow_id_from_columns(mapped or stored_src_addr(m), m.src_port) == uid
        assert m.proto in (6, 17)
        addr = ipaddress.ip_address(m.src_addr)
        if addr.version == 4:
            assert addr in ipaddress.ip_network(f"10.{run_id}.0.0/16")
            assert m.src_net == 8
        else:
            v6 += 1
            assert addr in ipaddress.ip_network("2001:db8:ffff::/48")
            assert m.src_net == 48
        seen.add(uid)
    assert len(seen) == n
    assert 0 < v6 < n


def test_unique_range_checked() -> None:
    gen = FlowGenerator(GeneratorConfig(unique=True))
    with pytest.raises(ValueError):
        next(gen.records(10, start=2**32 - 5))
    with pytest.raises(ValueError):
        GeneratorConfig(run_id=256).validate()


def test_flow_id_sql_expression_on_clickhouse_engine() -> None:
    chdb = pytest.importorskip("chdb")
    cfg = GeneratorConfig(seed=2, run_id=42, unique=True, time_mode="fixed", ipv6_share=0.5)
    msgs = FlowGenerator(cfg).messages(200, start=70000)
    rows = ",".join(f"(toIPv6('{stored_src_addr(m)}'), {m.src_port})" for m in msgs)
    sql = (f"SELECT {flow_id_sql_expr()}, {flow_index_sql_expr()}, {flow_run_sql_expr()}, "
           f"{unique_rows_sql_filter(42)}, {unique_rows_sql_filter(41)}, "
           f"{unique_rows_sql_filter()} FROM (SELECT c1 AS SrcAddr, toUInt16(c2) AS SrcPort "
           f"FROM values({rows}))")
    out = chdb.query(sql, "CSV").bytes().decode().split()
    assert len(out) == 200
    for i, line in enumerate(out):
        uid, k, run, mine, other, anyrun = (int(x) for x in line.split(","))
        assert (uid, k, run) == (flow_uid(42, 70000 + i), 70000 + i, 42)
        assert (mine, other, anyrun) == (1, 0, 1)


def test_running_totals_and_expected() -> None:
    gen = FlowGenerator(FIXED, flows_per_record=4)
    cols = gen.columns(10000)
    exp = gen.expected_totals(10000)
    assert exp.flows == 10000 and exp.records == 2500
    assert exp.bytes_sum == int(cols.bytes.sum()) and exp.packets_sum == int(cols.packets.sum())
    assert gen.expected_bytes_sum(10000) == exp.bytes_sum
    assert gen.totals().flows == 0
    it = gen.records(10000)
    got = [next(it) for _ in range(1100)]  # 4400 flows, partly into the second chunk
    t = gen.totals()
    assert (t.flows, t.records) == (4400, 1100)
    assert t.bytes_sum == int(cols.bytes[:4400].sum())
    assert t.packets_sum == int(cols.packets[:4400].sum())
    got.extend(it)
    t = gen.totals()
    assert (t.flows, t.records, t.bytes_sum, t.packets_sum) == (
        exp.flows, exp.records, exp.bytes_sum, exp.packets_sum)
    decoded = [m for r in got for m in decode_record(r)]
    assert sum(m.bytes for m in decoded) == exp.bytes_sum
    # totals keep accumulating over further calls; reset_totals starts over
    gen.batch(10, start=10000)
    assert gen.totals().flows == 10010
    gen.reset_totals()
    assert gen.totals().flows == 0
    # expected totals for an arbitrary range
    assert gen.expected_totals(300, 5000).bytes_sum == int(
        gen.columns(300, 5000).bytes.sum())


def test_distributions_roughly_as_configured() -> None:
    cfg = GeneratorConfig(seed=21, time_mode="fixed", ipv6_share=0.25, heavy_hitters=5,
                          heavy_hitter_share=0.4)
    gen = FlowGenerator(cfg)
    n = 60000
    c = gen.columns(n)
    assert abs(float((c.addr_len == 16).mean()) - 0.25) < 0.015
    # heavy hitters: the top 5 src/dst pairs carry ~40% of flows, Zipf among them
    pairs = collections.Counter(zip(c.src_hi.tolist(), c.src_lo.tolist(), c.dst_hi.tolist(),
                                    c.dst_lo.tolist(), strict=True))
    top = pairs.most_common(10)  # each pair exists in a v4 and a v6 variant
    hh = sum(cnt for _, cnt in top)
    assert 0.36 < hh / n < 0.44
    assert top[0][1] > top[-1][1] * 2
    assert pairs.most_common(11)[-1][1] < 20  # then the long tail
    # ports: 443 first among service ports, ephemeral range used
    svc = np.where(c.dst_port < 32768, c.dst_port, c.src_port)
    counts = collections.Counter(svc.tolist())
    assert counts.most_common(1)[0][0] == 443
    assert counts[80] > counts[22] > 0 and counts[53] > 0
    eph = (c.src_port >= 32768) & (c.src_port < 61000)
    assert 0.3 < float(eph.mean()) < 0.8
    # AS numbers: a few big ASes plus a long tail, local AS on the internal side
    ext_as = np.where(c.src_as == cfg.local_as, c.dst_as, c.src_as)
    assert (np.minimum(c.src_as, c.dst_as) > 0).all()
    assert ((c.src_as == cfg.local_as) | (c.dst_as == cfg.local_as)).all()
    big = {a for a, _ in DEFAULT_BIG_ASES}
    big_share = float(np.isin(ext_as, list(big)).mean())
    assert 0.6 < big_share < 0.85  # 65% + the heavy hitters' (big) ASes
    assert len(set(ext_as.tolist()) - big) > 300
    # sizes and protocols
    assert (c.bytes >= 64 * c.packets).all() and (c.bytes <= 1500 * c.packets).all()
    proto = collections.Counter(c.proto.tolist())
    assert proto[6] > proto[17] > proto[1] + proto[58] > 0
    assert abs(float((c.forwarding_status == 128).mean()) - 0.01) < 0.004
    # exporters: all used, the first more than the last
    exp_counts = collections.Counter(c.sampler_lo.tolist())
    assert len(exp_counts) == 4


def test_demo_metadata_matches_generated_flows() -> None:
    cfg = GeneratorConfig(seed=5, time_mode="fixed", exporters=6, ipv6_exporters=1,
                          interfaces_per_exporter=12)
    gen = FlowGenerator(cfg)
    meta = gen.demo_metadata()
    assert meta == demo_metadata(cfg)
    exporters = meta["metadata"]["exporters"]
    assert len(exporters) == 6
    assert "192.0.2.1" in exporters and "2001:db8:0:ffff::1" in exporters
    for e in exporters.values():
        assert set(e) >= {"name", "group", "role", "site", "region", "tenant", "default",
                          "if-indexes"}
        assert len(e["if-indexes"]) == 12
        for itf in e["if-indexes"].values():
            assert set(itf) == {"name", "description", "speed", "boundary"}
            assert itf["boundary"] in ("external", "internal")
    nets = {ipaddress.ip_network(k): v for k, v in meta["networks"].items()}
    for v in nets.values():
        assert set(v) == {"name", "role", "site", "region", "tenant"}
    named = unknown = 0
    for rec in gen.batch(5000):
        (m,) = decode_record(rec)
        e = exporters[str(ipaddress.ip_address(m.sampler_address))]
        assert m.in_if in e["if-indexes"]
        assert m.out_if == 0 or m.out_if in e["if-indexes"]
        b_in = e["if-indexes"][m.in_if]["boundary"]
        if m.out_if:
            assert {b_in, e["if-indexes"][m.out_if]["boundary"]} == {"external", "internal"}
        for a in (m.src_addr, m.dst_addr):
            ip = ipaddress.ip_address(a)
            match = [n for n in nets if ip.version == n.version and ip in n]
            if match:
                named += 1
            else:
                unknown += 1
    assert named > unknown > 0  # some addresses fall outside every configured network
    # longest prefix matters: some addresses match both a covering and a specific network
    assert "198.18.0.0/15" in meta["networks"] and "198.18.0.0/17" in meta["networks"]


def test_garbage_records_all_rejected() -> None:
    cases = garbage_cases(3)
    assert len({c.name for c in cases}) == len(cases) >= 6
    assert [c.data for c in cases] == garbage_records(3)
    assert garbage_records(3) == garbage_records(3)
    for c in cases:
        assert c.description
        with pytest.raises(ValueError):
            decode_record(c.data, DEFAULT_MAX_FLOWS)
    names = {c.name for c in cases}
    assert {"truncated-message", "zero-length", "absurd-length", "random-bytes",
            "invalid-wire-type", "prefix-exceeds-record"} <= names
    # issue 14: what ClickHouse's reader accepted although it should not
    assert {"zero-payload-2", "zero-payload-100", "type-then-zeros", "trailing-field-zero",
            "bytes-length-delimited", "bytes-fixed64", "src-addr-fixed32", "src-addr-twice",
            "uint32-overflow", "varint-overflow", "unknown-group", "too-many-flows"} <= names
    many = next(c for c in cases if c.name == "too-many-flows")
    assert len(decode_record(many.data)) == DEFAULT_MAX_FLOWS + 1  # only the cap refuses it
    absurd = next(c for c in cases if c.name == "absurd-length")
    assert decode_varint(absurd.data)[0] == 2**40


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="ipv6_share"):
        FlowGenerator(GeneratorConfig(ipv6_share=1.5))
    with pytest.raises(ValueError, match="flows_per_record"):
        FlowGenerator(GeneratorConfig(flows_per_record=0))


def test_encode_rate_smoke() -> None:
    """Not a benchmark (see `python -m flowgen.generator --bench`): catches a 10x regression."""
    gen = FlowGenerator(GeneratorConfig(seed=1, time_mode="fixed", unique=True))
    gen.batch(BLOCK)  # warm-up
    t0 = time.perf_counter()
    n = sum(1 for _ in gen.records(100_000, start=BLOCK))
    rate = n / (time.perf_counter() - t0)
    assert rate > 40_000, rate


def test_rate_limiter_paces() -> None:
    lim = RateLimiter(2000.0)
    t0 = time.monotonic()
    sent = 0
    while sent < 1000:
        k = min(lim.allowance(), 1000 - sent)
        assert 1 <= k <= 40
        lim.consumed(k)
        sent += k
    assert 0.4 < time.monotonic() - t0 < 0.8


class _Clock:
    """Fake time for the limiter: sleeping advances it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s
        self.slept += s


def _take(lim: RateLimiter, n: int) -> None:
    sent = 0
    while sent < n:
        k = min(lim.allowance(), n - sent)
        lim.consumed(k)
        sent += k


def test_rate_limiter_catches_up_after_a_short_stall() -> None:
    """A stall shorter than catch_up_s (a busy machine) does not lower the average rate:
    the items due are handed out one slice at a time without sleeping."""
    clock = _Clock()
    lim = RateLimiter(10_000.0, clock=clock, sleep=clock.sleep)
    _take(lim, 1000)  # 0.1 s of items, paced
    assert 0.09 < clock.now < 0.11
    clock.now += 0.15  # stalled for 150 ms: 1500 items due
    slept = clock.slept
    assert lim.allowance() == 100  # one slice at a time, never the whole debt at once
    lim.consumed(100)
    _take(lim, 1400)
    assert clock.slept - slept < 0.01  # caught up without sleeping
    assert lim.dropped == 0
    _take(lim, 10_000)  # then paced again: 1 s more
    assert 1.2 < clock.now < 1.3


def test_rate_limiter_bounds_the_catch_up_after_a_long_stall() -> None:
    clock = _Clock()
    lim = RateLimiter(10_000.0, catch_up_s=0.2, clock=clock, sleep=clock.sleep)
    clock.now += 5.0  # 50,000 items due: only 0.2 s of them are caught up on
    slept = clock.slept
    _take(lim, 2000)
    assert clock.slept - slept < 0.01
    assert lim.dropped == pytest.approx(48_000, abs=1)
    _take(lim, 100)
    assert clock.slept - slept > 0.009  # the debt is gone: paced again


@pytest.mark.stack
def test_produce_to_kafka(stack: Any) -> None:
    import uuid

    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    from flowgen.producer import produce

    bootstrap = stack.kafka.bootstrap
    topic = f"gentest-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 2, 1)])[topic].result(timeout=30)
    gen = FlowGenerator(GeneratorConfig(seed=1, unique=True, run_id=5))
    stats = produce(bootstrap, topic, gen.records(20000), partitions=2)
    assert stats.records == stats.delivered == 20000 and stats.failed == 0
    cons = Consumer({"bootstrap.servers": bootstrap, "group.id": topic,
                     "auto.offset.reset": "earliest"})
    cons.subscribe([topic])
    ids: set[int] = set()
    deadline = time.monotonic() + 60
    while len(ids) < 20000 and time.monotonic() < deadline:
        for msg in cons.consume(5000, timeout=1.0):
            assert msg.error() is None
            value = msg.value()
            assert value is not None
            ids.update(flow_id_from_message(m) for m in decode_record(value))
    cons.close()
    assert ids == {flow_uid(5, k) for k in range(20000)}


def test_strict_reference_and_mutations() -> None:
    """decode_record refuses what upb accepts but the outlet's schema does not; mutate()
    gives both good and bad records, deterministically."""
    gen = FlowGenerator(GeneratorConfig(seed=2, time_mode="fixed"))
    (rec,) = gen.batch(1)
    msg = rec[decode_varint(rec)[1]:]
    frame = lambda m: encode_varint(len(m)) + m  # noqa: E731
    assert len(decode_record(frame(msg + b"\xf8\x07\x05"))) == 1  # undeclared field: fine
    for bad, why in ((msg + b"\x48\x01", "given twice"), (msg + b"\xfb\x07\xfc\x07", "group"),
                     (b"\x70" + encode_varint(1 << 32), r">= 2\^32"),
                     (b"\x4a\x02ab", "wire type 2 instead of 0"),
                     (b"\x48" + b"\xff" * 9 + b"\x7f", "beyond 64 bits")):
        with pytest.raises(ValueError, match=why):
            decode_record(frame(bad))
    with pytest.raises(ValueError, match="zero-length"):
        decode_record(b"\x00")

    def outcomes(seed: int) -> list[bytes]:
        rng = random.Random(seed)
        return [mutate(rec, rng) for _ in range(500)]

    assert outcomes(1) == outcomes(1)
    verdicts = set()
    for m in outcomes(1):
        try:
            decode_record(m)
            verdicts.add("good")
        except ValueError:
            verdicts.add("bad")
    assert verdicts == {"good", "bad"}

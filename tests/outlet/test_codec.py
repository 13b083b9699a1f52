"""Unit tests for outlet.codec (decode + enrich + encode in chDB) and outlet.schema.

No external services: chDB runs in-process. chDB allows one data path per process, so
all tests share one codec (module scope) and verify the Native output by inserting it,
through another session on the same path, into a MergeTree table created with
``schema.create_table_sql``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from chdb import session as chdb_session

from flowgen.generator import (
    DEFAULT_MAX_FLOWS,
    FlowGenerator,
    GeneratorConfig,
    decode_record,
    garbage_cases,
    mutate,
)
from outlet import codec as codec_module
from outlet import protoscan, schema
from outlet.batch import EncodedJob
from outlet.codec import (
    BAD_REASONS,
    MAX_ISOLATION_PROBES,
    CodecError,
    EncodedBatch,
    FlowCodec,
    _frame,
    _varint,
)
from outlet.config import (
    ConnectionConfig,
    ExporterInfo,
    InterfaceInfo,
    MetadataConfig,
    NetworkInfo,
    Secret,
)
from outlet.pb.flow_pb2 import FlowMessage
from outlet.writer import ClickHouseWriter
from teststack.chserver_proc import start_chserver

NOW = 1_800_000_000
T0 = 1_700_000_000

IF10 = InterfaceInfo(name="Gi0/10", description="transit A", speed=10000, boundary="external")
IF11 = InterfaceInfo(name="Gi0/11", description="core", speed=40000, boundary="internal")
DEFAULT_IF = InterfaceInfo(name="default", description="dflt", speed=1000, boundary="internal")

METADATA = MetadataConfig(
    exporters=(
        ExporterInfo(
            prefix="192.0.2.1/32",
            name="edge1",
            group="g1",
            role="edge",
            site="par1",
            region="eu",
            tenant="t1",
            default_interface=DEFAULT_IF,
            interfaces=types.MappingProxyType({10: IF10, 11: IF11}),
        ),
        ExporterInfo(
            prefix="192.0.2.0/24",
            name="lab",
            group="g2",
            role="lab",
            site="ams",
            region="eu2",
            tenant="t2",
        ),
        ExporterInfo(
            prefix="2001:db8:ffff::1/128",
            name="edge6",
            group="g6",
            role="core",
            site="fra",
            region="eu3",
            tenant="t6",
            interfaces=types.MappingProxyType({7: IF10}),
        ),
    ),
    networks=(
        NetworkInfo(
            prefix="10.0.0.0/16", name="big", role="r16", site="s16", region="g16", tenant="t16"
        ),
        NetworkInfo(
            prefix="10.0.1.0/24", name="small", role="r24", site="s24", region="g24", tenant="t24"
        ),
        NetworkInfo(
            prefix="2001:db8:100::/40", name="v6net", role="r6", site="s6", region="g6", tenant="t6"
        ),
    ),
)

V4 = "::ffff:"


def msg(i: int, **kw: Any) -> bytes:
    """A flow message; Bytes = 1000 + i identifies it in the output."""
    fields: dict[str, Any] = {
        "time_received_ns": (T0 + i) * 1_000_000_000 + 123,
        "sampler_address": bytes([192, 0, 2, 1]),
        "bytes": 1000 + i,
        "packets": 1,
        "src_addr": bytes([10, 9, 9, 9]),
        "dst_addr": bytes([172, 16, 0, 1]),
    }
    fields.update(kw)
    return FlowMessage(**fields).SerializeToString()


def rec(i: int, **kw: Any) -> bytes:
    return _frame(msg(i, **kw))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("codec")


@pytest.fixture(scope="module")
def env(workdir: Path) -> Iterator[tuple[FlowCodec, Any]]:
    codec = FlowCodec(METADATA, workdir)
    verify: Any = chdb_session.Session(str(workdir))  # type: ignore[no-untyped-call]
    verify.query(schema.create_database_sql("verify"))
    # No TTL: it would drop (fuzzed) flows older than the TTL at insert time.
    verify.query(schema.create_table_sql("verify"))
    try:
        yield codec, verify
    finally:
        verify.close()
        codec.close()


@pytest.fixture
def codec(env: tuple[FlowCodec, Any]) -> FlowCodec:
    return env[0]


def stored(env: tuple[FlowCodec, Any], batch: EncodedBatch) -> list[dict[str, Any]]:
    """Insert the Native bytes into verify.flows (fresh) and read the rows back."""
    _, verify = env
    verify.query("TRUNCATE TABLE verify.flows")
    if batch.native:
        ins = verify.send_insert(
            schema.insert_sql("verify").removesuffix(" FORMAT Native"), "Native"
        )
        ins.append(batch.native)
        assert ins.finish().rows_written == batch.rows
    out = (
        verify.query(
            "SELECT * REPLACE (toUnixTimestamp(TimeReceived) AS TimeReceived) FROM verify.flows"
            " ORDER BY Bytes SETTINGS output_format_json_quote_64bit_integers = 0",
            "JSONEachRow",
        )
        .bytes()
        .decode()
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == batch.rows
    return rows


# --- schema -----------------------------------------------------------------------------


def test_schema_sql(env: tuple[FlowCodec, Any]) -> None:
    _, verify = env
    assert schema.TABLE == "flows"
    assert schema.COLUMN_NAMES[0] == "TimeReceived" and len(schema.COLUMN_NAMES) == 43
    ddl = schema.create_table_sql("db")
    assert "CREATE TABLE IF NOT EXISTS db.flows" in ddl
    assert "non_replicated_deduplication_window = 10000" in ddl
    assert "PARTITION BY toYYYYMMDD(TimeReceived)" in ddl
    assert "TTL" not in ddl
    assert "TTL TimeReceived + INTERVAL 30 DAY" in schema.create_table_sql("db", ttl="30 days")
    assert schema.insert_sql("db") == (
        f"INSERT INTO db.flows ({', '.join(schema.COLUMN_NAMES)}) FORMAT Native"
    )
    with pytest.raises(ValueError):
        schema.create_table_sql("db; DROP", None)
    with pytest.raises(ValueError):
        schema.create_table_sql("db", ttl="forever")
    # Idempotent, and the engine agrees with COLUMNS.
    verify.query(schema.create_database_sql("verify"))
    verify.query(schema.create_table_sql("verify", ttl="3650 DAY"))
    described = verify.query("DESCRIBE TABLE verify.flows", "TSVRaw").bytes().decode()
    types_ = tuple(tuple(line.split("\t")[:2]) for line in described.splitlines())
    assert types_ == schema.COLUMNS
    settings = (
        verify.query(
            "SELECT engine_full FROM system.tables WHERE database = 'verify' AND name = 'flows'",
            "TSVRaw",
        )
        .bytes()
        .decode()
    )
    assert "non_replicated_deduplication_window = 10000" in settings


# --- decoding -----------------------------------------------------------------------------


def test_every_field(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    m = FlowMessage(
        type=FlowMessage.IPFIX,
        time_received_ns=T0 * 1_000_000_000 + 999_999_999,
        sequence_num=77,
        sampling_rate=4096,
        sampler_address=bytes([192, 0, 2, 1]),
        time_flow_start_ns=1,
        time_flow_end_ns=2,
        bytes=1500,
        packets=3,
        src_addr=bytes([10, 0, 1, 5]),
        dst_addr=bytes([10, 0, 2, 6]),
        etype=0x800,
        proto=17,
        src_port=53,
        dst_port=65535,
        in_if=10,
        out_if=11,
        forwarding_status=64,
        tcp_flags=0x1FF,
        src_as=64500,
        dst_as=4_200_000_000,
        next_hop=bytes([10, 0, 0, 254]),
        src_net=24,
        dst_net=16,
    )
    batch = codec.encode([_frame(m.SerializeToString())], now=NOW)
    assert batch.rows == 1 and batch.bad_records == ()
    [row] = stored(env, batch)
    assert row == {
        "TimeReceived": T0,
        "SamplingRate": 4096,
        "ExporterAddress": V4 + "192.0.2.1",
        "ExporterName": "edge1",
        "ExporterGroup": "g1",
        "ExporterRole": "edge",
        "ExporterSite": "par1",
        "ExporterRegion": "eu",
        "ExporterTenant": "t1",
        "SrcAddr": V4 + "10.0.1.5",
        "DstAddr": V4 + "10.0.2.6",
        "SrcAS": 64500,
        "DstAS": 4_200_000_000,
        "SrcNetName": "small",
        "DstNetName": "big",
        "SrcNetRole": "r24",
        "DstNetRole": "r16",
        "SrcNetSite": "s24",
        "DstNetSite": "s16",
        "SrcNetRegion": "g24",
        "DstNetRegion": "g16",
        "SrcNetTenant": "t24",
        "DstNetTenant": "t16",
        "SrcNetMask": 24,
        "DstNetMask": 16,
        "InIf": 10,
        "OutIf": 11,
        "InIfName": "Gi0/10",
        "OutIfName": "Gi0/11",
        "InIfDescription": "transit A",
        "OutIfDescription": "core",
        "InIfSpeed": 10000,
        "OutIfSpeed": 40000,
        "InIfBoundary": "external",
        "OutIfBoundary": "internal",
        "EType": 0x800,
        "Proto": 17,
        "SrcPort": 53,
        "DstPort": 65535,
        "Bytes": 1500,
        "Packets": 3,
        "ForwardingStatus": 64,
        "TCPFlags": 0x1FF,
    }
    assert list(row) == list(schema.COLUMN_NAMES)


def test_addresses_ipv4_mapping_and_ipv6(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    v6src = bytes.fromhex("20010db8010000000000000000000001")  # in 2001:db8:100::/40
    v6dst = bytes.fromhex("20010db8ffff00000000000000000002")  # no network
    records = [
        rec(
            0,
            src_addr=v6src,
            dst_addr=v6dst,
            etype=0x86DD,
            sampler_address=bytes.fromhex("20010db8ffff00000000000000000001"),
            in_if=7,
        ),
        rec(1, src_addr=b"", dst_addr=b"", sampler_address=b""),  # empty -> '::'
        rec(2, src_addr=bytes(4), dst_addr=bytes([255] * 4)),
        rec(3, src_addr=b"\x01\x02\x03", dst_addr=bytes(16)),  # odd length -> '::'
    ]
    rows = stored(env, codec.encode(records, now=NOW))
    assert [(r["SrcAddr"], r["DstAddr"], r["ExporterAddress"]) for r in rows] == [
        ("2001:db8:100::1", "2001:db8:ffff::2", "2001:db8:ffff::1"),
        ("::", "::", "::"),
        (V4 + "0.0.0.0", V4 + "255.255.255.255", V4 + "192.0.2.1"),
        ("::", "::", V4 + "192.0.2.1"),
    ]
    assert (rows[0]["SrcNetName"], rows[0]["DstNetName"]) == ("v6net", "")
    assert (rows[0]["ExporterName"], rows[0]["InIfName"]) == ("edge6", "Gi0/10")
    assert rows[1]["ExporterName"] == "" and rows[1]["InIfBoundary"] == "undefined"


def test_time_received(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    records = [rec(0, time_received_ns=0), rec(1, time_received_ns=T0 * 10**9 + 5)]
    rows = stored(env, codec.encode(records, now=NOW))
    assert [r["TimeReceived"] for r in rows] == [NOW, T0]


# --- enrichment ---------------------------------------------------------------------------


def test_network_longest_prefix(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    records = [
        rec(0, src_addr=bytes([10, 0, 1, 200]), dst_addr=bytes([10, 0, 2, 1])),
        rec(1, src_addr=bytes([10, 0, 0, 1]), dst_addr=bytes([10, 0, 1, 0])),
        rec(2, src_addr=bytes([10, 1, 0, 1]), dst_addr=bytes([10, 0, 1, 255])),
    ]
    rows = stored(env, codec.encode(records, now=NOW))
    assert [(r["SrcNetName"], r["DstNetName"]) for r in rows] == [
        ("small", "big"),
        ("big", "small"),
        ("", "small"),
    ]
    assert rows[2]["SrcNetRole"] == rows[2]["SrcNetTenant"] == ""
    assert rows[0]["SrcNetTenant"] == "t24" and rows[0]["DstNetSite"] == "s16"


def test_exporter_and_interfaces(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    records = [
        # single address, known ifIndexes
        rec(0, sampler_address=bytes([192, 0, 2, 1]), in_if=10, out_if=11),
        # single address, unknown ifIndex -> the exporter's default interface
        rec(1, sampler_address=bytes([192, 0, 2, 1]), in_if=99, out_if=0),
        # in the /24 only: subnet attributes, no interfaces configured -> empty default
        rec(2, sampler_address=bytes([192, 0, 2, 7]), in_if=10, out_if=11),
        # unknown exporter
        rec(3, sampler_address=bytes([203, 0, 113, 1]), in_if=10, out_if=11),
    ]
    rows = stored(env, codec.encode(records, now=NOW))
    exp = [
        (
            r["ExporterName"],
            r["ExporterGroup"],
            r["ExporterRole"],
            r["ExporterSite"],
            r["ExporterRegion"],
            r["ExporterTenant"],
        )
        for r in rows
    ]
    assert exp == [
        ("edge1", "g1", "edge", "par1", "eu", "t1"),
        ("edge1", "g1", "edge", "par1", "eu", "t1"),
        ("lab", "g2", "lab", "ams", "eu2", "t2"),
        ("", "", "", "", "", ""),
    ]
    ifs = [
        (
            r["InIfName"],
            r["InIfDescription"],
            r["InIfSpeed"],
            r["InIfBoundary"],
            r["OutIfName"],
            r["OutIfDescription"],
            r["OutIfSpeed"],
            r["OutIfBoundary"],
        )
        for r in rows
    ]
    assert ifs == [
        ("Gi0/10", "transit A", 10000, "external", "Gi0/11", "core", 40000, "internal"),
        ("default", "dflt", 1000, "internal", "default", "dflt", 1000, "internal"),
        ("", "", 0, "undefined", "", "", 0, "undefined"),
        ("", "", 0, "undefined", "", "", 0, "undefined"),
    ]
    assert [(r["InIf"], r["OutIf"]) for r in rows] == [(10, 11), (99, 0), (10, 11), (10, 11)]


def test_empty_metadata(workdir: Path, env: tuple[FlowCodec, Any]) -> None:
    # Same chDB path as the module codec (one path per process).
    with FlowCodec(MetadataConfig(), workdir) as bare:
        rows = stored(env, bare.encode([rec(0, in_if=10)], now=NOW))
    assert rows[0]["ExporterName"] == rows[0]["SrcNetName"] == rows[0]["InIfName"] == ""
    assert rows[0]["InIfBoundary"] == "undefined"
    with pytest.raises(ValueError):
        FlowCodec(
            MetadataConfig(
                exporters=(
                    ExporterInfo(
                        prefix="192.0.2.1/32",
                        default_interface=InterfaceInfo(boundary="sideways"),
                    ),
                )
            ),
            workdir,
        )


# --- batches, garbage, determinism ---------------------------------------------------------


def test_multi_message_records(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    records = [
        _frame(msg(0)) + _frame(msg(1)) + _frame(msg(2)),
        rec(3),
        _frame(msg(4)) + _frame(msg(5, src_addr=bytes(16), next_hop=bytes(200))),
    ]
    batch = codec.encode(records, now=NOW)
    assert batch.rows == 6 and batch.bad_records == ()
    assert [r["Bytes"] for r in stored(env, batch)] == [1000 + i for i in range(6)]


def garbage_batch() -> tuple[list[bytes], set[int], list[int]]:
    """(records, indexes of bad records, Bytes of the valid flows)."""
    rnd = random.Random(1234)
    good = msg(0)
    unknown = msg(50) + b"\xf8\x07\x05" + b"\x82\x08\x03abc" + b"\xc5\x3e\x01\x02\x03\x04"
    entries: list[tuple[bytes, bool]] = [
        (b"", False),  # zero-length record
        (_frame(good)[:-5], False),  # truncated message
        (_varint(1 << 40) + good, False),  # absurd length
        (b"\x00", False),  # zero-length message
        (rnd.randbytes(97), False),  # random bytes
        (_frame(bytes([0xFF] * 30)), False),  # framed random content (bad tag/wire type)
        (_frame(good + b"\x4f"), False),  # wire type 7 (upb and chDB reject)
        (_frame(good + b"\x30\x05"), False),  # bytes field as varint: wrong wire type
        (_frame(unknown), True),  # unknown fields: valid
        (_frame(good)[:1] + b"\x82" + _frame(good)[1:], False),  # broken content
        (_frame(msg(60)) + b"\x05abc", False),  # good message + truncated second frame
    ]
    records: list[bytes] = []
    bad: set[int] = set()
    valid: list[int] = []
    k = 100
    for data, ok in entries:
        records.append(rec(k))
        valid.append(1000 + k)
        k += 1
        if ok:
            valid.append(1050)
        else:
            bad.add(len(records))
        records.append(data)
    records.append(rec(k))
    valid.append(1000 + k)
    return records, bad, sorted(valid)


def test_garbage_records_are_skipped(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    records, bad, valid = garbage_batch()
    batch = codec.encode(records, now=NOW)
    assert set(batch.bad_records) == bad
    assert list(batch.bad_records) == sorted(batch.bad_records)
    assert batch.rows == len(valid)
    assert [r["Bytes"] for r in stored(env, batch)] == valid
    assert len(batch.bad_reasons) == len(bad) and set(batch.bad_reasons) <= set(BAD_REASONS)
    # Each bad record alone: nothing encoded, the record reported.
    for i in sorted(bad):
        alone = codec.encode([records[i]], now=NOW)
        assert (alone.native, alone.rows, alone.bad_records) == (b"", 0, (0,))


def _engine_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let framing-valid garbage through the scan, as an unknown kind the engine alone
    rejects would be."""
    scan = protoscan.scan
    monkeypatch.setattr(
        codec_module.protoscan, "scan", lambda records, mf: scan(records, mf, framing_only=True)
    )


def test_engine_rejected_records_are_isolated(
    env: tuple[FlowCodec, Any], codec: FlowCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What passes the scan but the engine rejects is found by bisection with the engine."""
    _engine_only(monkeypatch)
    records = [rec(i) for i in range(40)]
    for i in (3, 17, 18, 39):
        records[i] = _frame(msg(i) + b"\x4f")  # wire type 7
    batch = codec.encode(records, now=NOW)
    assert batch.bad_records == (3, 17, 18, 39)
    assert batch.bad_reasons == ("engine",) * 4
    assert [r["Bytes"] for r in stored(env, batch)] == [
        1000 + i for i in range(40) if i not in (3, 17, 18, 39)
    ]


def test_isolation_is_bounded(
    env: tuple[FlowCodec, Any], codec: FlowCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 engine-rejected records in 4,000: at most MAX_ISOLATION_PROBES parse-only
    probes and 4 batch queries (the issue measured 37 s for 200 in 20,000 without a
    bound); what is left unresolved is quarantined (counted, never stored), every bad
    record is reported."""
    _engine_only(monkeypatch)
    rnd = random.Random(5)
    bad = set(rnd.sample(range(4000), 200))
    records = [_frame(msg(i) + b"\x4f") if i in bad else rec(i) for i in range(4000)]
    calls = {"_run": 0, "_accepts": 0}

    def counting(name: str) -> Any:
        method = getattr(FlowCodec, name)

        def wrapper(self: FlowCodec, *args: Any) -> Any:
            calls[name] += 1
            return method(self, *args)

        return wrapper

    for name in calls:
        monkeypatch.setattr(FlowCodec, name, counting(name))
    batch = codec.encode(records, now=NOW)
    # the batch query, a canary before and after the search, the final batch query
    assert calls == {"_run": 4, "_accepts": MAX_ISOLATION_PROBES}
    reasons = dict(zip(batch.bad_records, batch.bad_reasons, strict=True))
    assert bad <= set(reasons)
    assert set(reasons.values()) <= {"engine", "quarantined"}
    assert "quarantined" in reasons.values()
    kept = [1000 + i for i in range(4000) if i not in reasons]
    assert batch.rows == len(kept) == 4000 - len(reasons)
    assert [r["Bytes"] for r in stored(env, batch)] == kept


def test_engine_failure_is_not_bad_input(codec: FlowCodec, monkeypatch: pytest.MonkeyPatch) -> None:
    """If chDB rejects even a known-good flow, encode raises instead of dropping records."""
    monkeypatch.setattr(FlowCodec, "_run", lambda self, data, rows, now: None)
    with pytest.raises(CodecError):
        codec.encode([rec(1), rec(2)], now=NOW)


def test_deterministic(codec: FlowCodec) -> None:
    records = [rec(i, src_addr=bytes([10, 0, i % 3, i % 256]), in_if=i % 13) for i in range(500)]
    records.insert(17, _frame(msg(1) + b"\x30\x05"))  # bytes field as varint
    records.insert(300, _frame(msg(2) + b"\x4f"))
    first = codec.encode(records, now=NOW)
    assert first.bad_records == (17, 300) and first.rows == 500
    assert codec.encode(records, now=NOW) == first
    clean = [r for i, r in enumerate(records) if i not in (17, 300)]
    assert codec.encode(clean, now=NOW).native == first.native
    assert codec.encode([], now=NOW) == EncodedBatch(native=b"", rows=0, bad_records=())
    assert first.bad_reasons == ("schema", "protobuf")


def test_concurrent_encode(codec: FlowCodec) -> None:
    """encode() is called from worker threads: concurrent calls serialize on the lock."""
    batches = [[rec(k * 100 + i) for i in range(200)] for k in range(4)]
    expected = [codec.encode(b, now=NOW) for b in batches]
    results: dict[int, EncodedBatch] = {}

    def work(k: int) -> None:
        results[k] = codec.encode(batches[k], now=NOW)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[k] for k in range(4)] == expected


# --- garbage the engine accepted although it should not (issue 14) ------------------------


def _between_good(
    env: tuple[FlowCodec, Any], codec: FlowCodec, bad: list[bytes]
) -> EncodedBatch:
    """Encode good, bad..., good: the bad records are reported, only the good stored."""
    records = [rec(0), *bad, rec(1)]
    batch = codec.encode(records, now=NOW)
    assert batch.bad_records == tuple(range(1, len(bad) + 1))
    assert batch.rows == 2
    assert [r["Bytes"] for r in stored(env, batch)] == [1000, 1001]  # no phantom, no extra
    return batch


def test_field_number_zero_is_bad(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    """The engine read these as an all-zero phantom flow, or stored the real flow and
    ignored the garbage; upb rejects them (field number 0)."""
    zeros = [_frame(bytes(n)) for n in range(2, 101, 2)]
    batch = _between_good(env, codec, [*zeros, _frame(b"\x08\x01" + bytes(8))])
    assert set(batch.bad_reasons) == {"protobuf"}
    batch = _between_good(env, codec, [_frame(msg(5) + b"\x00\x01")])
    assert batch.bad_reasons == ("protobuf",)


def test_wrong_wire_type_is_bad(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    """``bytes`` (uint64) sent length-delimited "ab" was stored as Bytes = 98."""
    no_bytes = FlowMessage(sampler_address=bytes([192, 0, 2, 1]), packets=1).SerializeToString()
    cases = [
        _frame(no_bytes + b"\x4a\x02ab"),  # length-delimited
        _frame(no_bytes + b"\x49" + bytes(8)),  # fixed64
        _frame(no_bytes + b"\x4d" + bytes(4)),  # fixed32
        _frame(msg(3, src_addr=b"") + b"\x35\x0a\x00\x00\x01"),  # bytes field as fixed32
        _frame(msg(4) + b"\x32\x04\x0a\x00\x00\x02"),  # src_addr twice: stored as '::'
        _frame(msg(5) + b"\x70\x80\x80\x80\x80\x10"),  # src_as = 2^32
    ]
    batch = _between_good(env, codec, cases)
    assert batch.bad_reasons == ("schema",) * len(cases)


def test_garbage_corpus_is_never_stored(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    cases = garbage_cases(5)
    batch = _between_good(env, codec, [c.data for c in cases])
    got = dict(zip((c.name for c in cases), batch.bad_reasons, strict=True))
    assert got["too-many-flows"] == "too-many-flows"
    assert got["zero-length"] == "empty"
    assert got["zero-payload-2"] == got["trailing-field-zero"] == "protobuf"
    assert got["bytes-length-delimited"] == "schema"


def test_flows_per_record_cap(workdir: Path, env: tuple[FlowCodec, Any]) -> None:
    """What one record may expand to is bounded: beyond the cap the record is bad."""
    with FlowCodec(METADATA, workdir, max_flows_per_record=3) as small:
        three = b"".join(_frame(msg(i)) for i in range(3))
        four = b"".join(_frame(msg(10 + i)) for i in range(4))
        batch = small.encode([three, four, rec(20)], now=NOW)
    assert (batch.bad_records, batch.bad_reasons) == ((1,), ("too-many-flows",))
    assert [r["Bytes"] for r in stored(env, batch)] == [1000, 1001, 1002, 1020]


def test_codec_errors_are_engine_failures(workdir: Path) -> None:
    """CodecError: the codec cannot work (closed, spool unwritable); never for records."""
    other = FlowCodec(METADATA, workdir)
    try:
        os.close(other._spool_fd)  # the spool is gone: every batch fails the same way
        with pytest.raises(CodecError, match="cannot write the codec spool"):
            other.encode([rec(1)], now=NOW)
    finally:
        other._spool_fd = -1
        other.close()
    with pytest.raises(CodecError, match="closed"):
        other.encode([rec(1)], now=NOW)


# --- fuzz: mutated records inside good batches ---------------------------------------------

_COMPARED = ("Bytes", "Packets", "SrcAS", "DstAS", "InIf", "OutIf", "EType", "Proto",
             "SrcNetMask", "DstNetMask", "SamplingRate")
_FIELDS = ("bytes", "packets", "src_as", "dst_as", "in_if", "out_if", "etype", "proto",
           "src_net", "dst_net", "sampling_rate")


def _expected(m: FlowMessage) -> tuple[Any, ...]:
    values = [getattr(m, f) for f in _FIELDS]
    values[8], values[9] = values[8] & 0xFF, values[9] & 0xFF  # UInt8 masks
    return (*values, _address(m.src_addr), _address(m.dst_addr), m.src_port & 0xFFFF)


def _address(b: bytes) -> str:
    if len(b) == 4:
        return V4 + ".".join(map(str, b))
    if len(b) == 16:
        return str(ipaddress.IPv6Address(b))
    return "::"


def _fuzz(env: tuple[FlowCodec, Any], codec: FlowCodec, seed: int, batches: int) -> None:
    """Every good record stored with the values upb reads, every bad one counted, no
    phantom: the engine must agree with the reference on whatever the scan lets through."""
    rnd = random.Random(seed)
    gen = FlowGenerator(GeneratorConfig(seed=seed, time_mode="fixed", ipv6_share=0.3))
    pool = gen.batch(256)
    garbage = [c.data for c in garbage_cases(seed)]
    bad_seen = good_mutants = 0
    for _ in range(batches):
        records = rnd.sample(pool, 24)
        for _ in range(rnd.randint(1, 6)):
            at = rnd.randrange(len(records) + 1)
            if rnd.random() < 0.15:
                records.insert(at, rnd.choice(garbage))
            else:
                records.insert(at, mutate(rnd.choice(pool), rnd))
        expected_bad, flows = [], []
        for i, r in enumerate(records):
            try:
                flows.extend(decode_record(r, DEFAULT_MAX_FLOWS))
            except ValueError:
                expected_bad.append(i)
        batch = codec.encode(records, now=NOW)
        assert list(batch.bad_records) == expected_bad, [records[i].hex() for i in expected_bad]
        assert set(batch.bad_reasons) <= set(protoscan.REASONS.values())  # the scan found all
        rows = stored(env, batch)
        got = sorted(
            (*(r[c] for c in _COMPARED), r["SrcAddr"], r["DstAddr"], r["SrcPort"]) for r in rows
        )
        assert got == sorted(_expected(m) for m in flows)
        bad_seen += len(expected_bad)
        good_mutants += len(records) - 24 - len(expected_bad)
    assert bad_seen > batches and good_mutants > 0  # both kinds exercised


def test_fuzz_mutated_records_in_good_batches(
    env: tuple[FlowCodec, Any], codec: FlowCodec
) -> None:
    _fuzz(env, codec, seed=14, batches=300)


@pytest.mark.slow
def test_fuzz_long(env: tuple[FlowCodec, Any], codec: FlowCodec) -> None:
    _fuzz(env, codec, seed=int(os.environ.get("FUZZ_SEED", "1")), batches=5000)


# --- a batch spanning more than 100 days -------------------------------------------------


def _many_days(codec: FlowCodec) -> EncodedBatch:
    records = [rec(i, time_received_ns=(T0 + i * 86_400) * 10**9) for i in range(150)]
    encoded = codec.encode(records, now=NOW)
    assert encoded.rows == 150
    return encoded


def test_many_days_guard_is_what_the_engine_needs(
    env: tuple[FlowCodec, Any], codec: FlowCodec, tmp_path: Path
) -> None:
    """A batch whose flows span 150 days (bogus exporter clocks) touches 150 daily
    partitions; the ClickHouse engine refuses more than 100 per insert (code 252) unless
    the insert carries schema.INSERT_SETTINGS, else the batch is retried forever."""
    _, verify = env
    native = tmp_path / "many-days.native"
    native.write_bytes(_many_days(codec).native)
    verify.query("TRUNCATE TABLE verify.flows")
    insert = (
        f"{schema.insert_sql('verify').removesuffix(' FORMAT Native')}"
        f" SELECT * FROM file('{native}', 'Native')"
    )
    with pytest.raises(Exception, match="Too many partitions"):
        verify.query(insert)
    guard = ", ".join(f"{k} = {v}" for k, v in schema.INSERT_SETTINGS.items())
    verify.query(f"{insert} SETTINGS {guard}")
    days = verify.query(
        "SELECT count(), uniqExact(toYYYYMMDD(TimeReceived)) FROM verify.flows", "CSV"
    )
    assert days.bytes().decode().strip() == "150,150"


def test_many_days_batch_through_the_writer(
    codec: FlowCodec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outlet's writer stores that batch on a ClickHouse server (chserver) and sends
    the guard with it. (chserver streams inserts through chDB's send_insert, which does
    not enforce max_partitions_per_insert_block, so the refusal itself is shown above.)"""
    user, password = "outlet", "guard-pw"
    srv = start_chserver(tmp_path / "ch", user, password, die_with_parent=True)
    try:
        client = clickhouse_connect.get_client(
            host=srv.host, port=srv.http_port, username=user, password=password
        )
        client.command(schema.create_database_sql("guard"))
        client.command(schema.create_table_sql("guard"))
        encoded = _many_days(codec)
        conn = ConnectionConfig(
            servers=(srv.url,), database="guard", username=user, password=Secret(password)
        )
        writer = ClickHouseWriter(conn)
        sent: list[dict[str, Any]] = []
        raw_insert = writer.client().raw_insert

        def spy(*args: Any, **kwargs: Any) -> Any:
            sent.append(kwargs["settings"])
            return raw_insert(*args, **kwargs)

        monkeypatch.setattr(writer.client(), "raw_insert", spy)
        job = EncodedJob(seq=1, token="guard/0:0-149", native=encoded.native, rows=150, ranges={})
        assert writer.insert(job).written_rows == 150
        assert sent[0]["throw_on_max_partitions_per_insert_block"] == "0"
        got = client.query(
            "SELECT count(), uniqExact(toYYYYMMDD(TimeReceived)) FROM guard.flows"
        ).result_rows
        assert got == [(150, 150)]
        writer.close()
    finally:
        assert srv.stop() == 0

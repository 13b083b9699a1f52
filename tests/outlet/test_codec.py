"""Unit tests for outlet.codec (decode + enrich + encode in chDB) and outlet.schema.

No external services: chDB runs in-process. chDB allows one data path per process, so
all tests share one codec (module scope) and verify the Native output by inserting it,
through another session on the same path, into a MergeTree table created with
``schema.create_table_sql``.
"""

from __future__ import annotations

import json
import random
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chdb import session as chdb_session

from outlet import codec as codec_module
from outlet import schema
from outlet.codec import (
    CodecError,
    EncodedBatch,
    FlowCodec,
    _frame,
    _varint,
    check_framing,
    count_messages,
    frame_batch,
)
from outlet.config import ExporterInfo, InterfaceInfo, MetadataConfig, NetworkInfo
from outlet.pb.flow_pb2 import FlowMessage

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
    verify.query(schema.create_table_sql("verify", ttl="3650 DAY"))
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


# --- framing ----------------------------------------------------------------------------


def test_check_framing() -> None:
    m = msg(1)
    assert check_framing(_frame(m)) == 1
    assert check_framing(_frame(m) + _frame(msg(2)) + _frame(msg(3))) == 3
    big = msg(1, src_addr=bytes(16), dst_addr=bytes(16), next_hop=bytes(200))
    assert len(big) > 127 and check_framing(_frame(big)) == 1  # 2-byte varint
    assert check_framing(b"") == -1
    assert check_framing(b"\x00") == -1  # zero-length message
    assert check_framing(_frame(m)[:-1]) == -1  # truncated message
    assert check_framing(_frame(m) + b"\x01") == -1  # trailing truncated frame
    assert check_framing(b"\x80") == -1  # truncated varint
    assert check_framing(_varint(1 << 40) + m) == -1  # absurd length
    assert check_framing(b"\xff" * 11 + b"\x01") == -1  # varint longer than 10 bytes
    assert check_framing(_varint(len(m)) + m + b"\x00") == -1
    # Non-minimal varint for the size (valid protobuf framing).
    assert check_framing(bytes([0x80 | len(m), 0x00]) + m) == 1
    for r in (_frame(m), b"", b"\x00", _varint(1 << 40) + m, _frame(m) * 2):
        assert check_framing(r) == count_messages(r)


def test_frame_batch_matches_check_framing() -> None:
    rnd = random.Random(7)
    records = [rec(i) for i in range(50)]
    records += [rnd.randbytes(rnd.randint(0, 300)) for _ in range(300)]
    records += [_frame(bytes(n)) for n in (1, 127, 128, 300, 16383, 16384)]
    records += [b"", b"\x00", b"\x81", b"\x81\x00\x00", _frame(msg(1)) * 3]
    counts, data = frame_batch(records)
    assert counts.tolist() == [check_framing(r) for r in records]
    assert data == b"".join(records)
    empty_counts, empty = frame_batch([])
    assert empty_counts.tolist() == [] and empty == b""


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
    # Each bad record alone: nothing encoded, the record reported.
    for i in sorted(bad):
        alone = codec.encode([records[i]], now=NOW)
        assert alone == EncodedBatch(native=b"", rows=0, bad_records=(0,))


def test_bad_records_found_by_bisection(
    env: tuple[FlowCodec, Any], codec: FlowCodec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When upb accepts everything chDB rejects, bisection with chDB finds the records."""
    monkeypatch.setattr(codec_module, "_upb_ok", lambda record: True)
    records = [rec(i) for i in range(40)]
    for i in (3, 17, 18, 39):
        records[i] = _frame(msg(i) + b"\x4f")  # wire type 7
    batch = codec.encode(records, now=NOW)
    assert batch.bad_records == (3, 17, 18, 39)
    assert [r["Bytes"] for r in stored(env, batch)] == [
        1000 + i for i in range(40) if i not in (3, 17, 18, 39)
    ]


def test_engine_failure_is_not_bad_input(codec: FlowCodec, monkeypatch: pytest.MonkeyPatch) -> None:
    """If chDB rejects even a known-good flow, encode raises instead of dropping records."""
    monkeypatch.setattr(FlowCodec, "_run", lambda self, data, rows, now: None)
    with pytest.raises(CodecError):
        codec.encode([rec(1), rec(2)], now=NOW)


def test_deterministic(codec: FlowCodec) -> None:
    records = [rec(i, src_addr=bytes([10, 0, i % 3, i % 256]), in_if=i % 13) for i in range(500)]
    records.insert(17, _frame(msg(1) + b"\x30\x05"))  # rejected by chDB, found by upb
    records.insert(300, _frame(msg(2) + b"\x4f"))
    first = codec.encode(records, now=NOW)
    assert first.bad_records == (17, 300) and first.rows == 500
    assert codec.encode(records, now=NOW) == first
    clean = [r for i, r in enumerate(records) if i not in (17, 300)]
    assert codec.encode(clean, now=NOW).native == first.native
    assert codec.encode([], now=NOW) == EncodedBatch(native=b"", rows=0, bad_records=())


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

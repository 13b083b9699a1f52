"""Decode + enrich + encode a batch of Kafka records into one Native block, in chDB.

Records are GoFlow2 FlowMessage protobufs, length-delimited (varint prefix), one or more
per record. Per-flow Python work is out of budget (see ../shared/NOTES.md), so the batch
is handed to chDB (the ClickHouse engine in-process; it releases the GIL) as ONE query:

    SELECT <flows columns computed from protobuf fields + dictGet enrichment>
    FROM file('<spool>.bin', 'Protobuf', '<proto field columns>')   -> FORMAT Native

Enrichment uses dictionaries built from the static metadata at construction time:
IP_TRIE for exporters (longest prefix on the exporter address -> exporter id and
attributes) and networks (-> network id); HASHED for interfaces keyed by
exporter id << 33 | ifIndex, the exporter's default interface at id << 33 | 1 << 32, and
for network attributes by id. Output column types equal the flows table's exactly
(outlet/schema.py; checked with DESCRIBE at construction), so the Native bytes insert
without conversion.

Contract of ``encode(records)``:
- it never raises because of what the records hold. A bad record is skipped, never
  stored, and reported: ``bad_records`` (indexes) and ``bad_reasons`` (one of
  ``BAD_REASONS`` each, the ``reason`` label of outlet_decode_errors_total);
- it raises ``CodecError`` only when the engine itself fails (codec closed, spool not
  writable, chDB rejecting a known-good canary flow): the batch should be retried, the
  same records then give the same output. Any other exception is a bug.
The same records always give the same output, bit for bit (pass ``now`` for records
whose time_received_ns is 0, otherwise the wall clock is used for those).

How bad records are kept from the engine: chDB's Protobuf reader is lenient (field
number 0 decodes as an all-zero phantom flow, a declared field with another wire type is
read anyway, a repeated bytes field reads as empty), so every record is first checked by
``protoscan.scan`` (one compiled pass over the joined batch: framing, wire format,
schema, at most ``max_flows_per_record`` flows; its docstring has the rules and the
measured alternatives) and only the records that pass are given to the engine. If the
engine still rejects the batch (no such kind of record is known: the fuzz harness in
tests/outlet/test_codec.py ran 5,300 mutated batches without one), a canary flow tells
engine failure from bad input, then bisection with parse-only probes (~2.4 ms each)
isolates the records, at most ``MAX_ISOLATION_PROBES`` probes (~1 s at 20,000-50,000
records); whatever is unresolved then is quarantined (reason ``quarantined``), so an
unknown kind of garbage costs a bounded time under the codec lock instead of seconds per
bad record (the unbounded bisection took 37 s for 200 such records in 20,000; measured
now: see ``make bench-codec``).
Python does per record only the join and the lengths (~0.04 us) and one tmpfs write.

chDB is process-global: one data path per process. The codec's session lives at
``workdir``; any other in-process chDB user must use the same path (or close its
sessions first).

Measured (2 cores shared with other jobs, chdb-core 26.9, Python 3.11; GoFlow2-like
messages with 24 fields set, ~77 B, one per record, 1/3 IPv6; 4 exporters with 49
interfaces each, 4 networks); ``encode()`` end to end (framing + join + spool write +
query + Native bytes in Python), time.process_time() covers all chDB threads; 9 runs,
min / median (before the scan replaced the numpy framing check, +~0.06-0.1 us/flow
since: ``make bench-codec`` measures both codecs side by side, see docs/codec.md):
  batch    max_threads  wall (min)               CPU per flow (min / median)
  50,000   1            57 ms  (870k flows/s)    1.14 / 1.23 us
  200,000  1            197 ms (1.0M flows/s)    0.96 / 1.02 us
  50,000   2            60 ms                    1.13 / 1.20 us
  200,000  2            196 ms                   1.03 / 1.14 us
  (under heavy load from other jobs, medians reached 1.4-1.7 us and wall 2-3x)
Output: 127 bytes/flow of Native (LowCardinality columns carry 1-byte indexes).
Breakdown (200k): query 0.81-0.9 us/flow, of which protobuf parsing ~0.45-0.5 (the
floor: ClickHouse's row-wise Protobuf reader; ProtobufList measured 0.85, slower), Native
output ~0.1, conversion + enrichment ~0.25; Python ~0.13 us (then: numpy framing incl.
join 0.10, tmpfs pwrite 0.03; now the scan incl. join is ~0.16-0.19). Fixed cost per
query ~14 ms (analysis of ~45 expressions; a 1-record batch costs that), i.e. +0.28
us/flow at 50k, +0.07 at 200k.
What helped: string attributes looked up on LowCardinality keys (dictGet runs on the
distinct keys only, output is already LowCardinality: -0.4 us/flow vs tuple dictGet +
CAST); CAST only where types differ (-2 ms/batch); pwrite over kept tmpfs pages instead
of truncate+write (-0.03 us); max_threads=1 (2 gives no CPU gain; keep the other core
for Kafka/HTTP).
What did not: nested subqueries per dependency layer (+4 ms analysis), format_schema
from a file (same as 'string'), ProtobufList, os.writev instead of join+write.
IPv4 -> IPv6: binary ``toIPv6(toFixedString(concat(::ffff: prefix, addr), 16))`` costs
~27 ns per address; note ``toIPv6(String)`` PARSES TEXT, so it fails on 16-byte binary
addresses: binary IPv6 must go through toFixedString(.., 16) first.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from chdb import session as chdb_session

from outlet import protoscan, schema
from outlet.config import BatchConfig

if TYPE_CHECKING:
    from outlet.config import InterfaceInfo, MetadataConfig

__all__ = ["BAD_REASONS", "CodecError", "EncodedBatch", "FlowCodec"]

_PROTO_PATH: Final = Path(__file__).parent / "pb" / "flow.proto"

# Protobuf fields read by the query (name, ClickHouse type). Others are skipped.
_PROTO_COLUMNS: Final[tuple[tuple[str, str], ...]] = (
    ("time_received_ns", "UInt64"),
    ("sampling_rate", "UInt64"),
    ("sampler_address", "String"),
    ("src_addr", "String"),
    ("dst_addr", "String"),
    ("src_as", "UInt32"),
    ("dst_as", "UInt32"),
    ("src_net", "UInt32"),
    ("dst_net", "UInt32"),
    ("in_if", "UInt32"),
    ("out_if", "UInt32"),
    ("etype", "UInt32"),
    ("proto", "UInt32"),
    ("src_port", "UInt32"),
    ("dst_port", "UInt32"),
    ("bytes", "UInt64"),
    ("packets", "UInt64"),
    ("forwarding_status", "UInt32"),
    ("tcp_flags", "UInt32"),
)

_BOUNDARIES: Final[Mapping[str, int]] = {"undefined": 0, "external": 1, "internal": 2}

# --- result -----------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedBatch:
    native: bytes  # one or more Native blocks, columns = schema.COLUMNS (exact types)
    rows: int  # flows encoded
    bad_records: tuple[int, ...]  # indexes (into the input) of skipped records, ascending
    bad_reasons: tuple[str, ...] = ()  # why, one per bad record (see BAD_REASONS)


#: Every reason a record can be skipped for: protoscan's, plus the engine's verdicts.
BAD_REASONS: Final = (*protoscan.REASONS.values(), "engine", "quarantined")

#: Parse-only engine probes allowed to isolate records that pass the scan but that the
#: engine rejects (no such kind is known: this bounds what an unknown one costs while the
#: codec lock is held; what is unresolved then is quarantined). See the module doc.
MAX_ISOLATION_PROBES: Final = 256


class CodecError(RuntimeError):
    """The engine itself failed, not the input (the codec is closed, the spool cannot be
    written, or chDB rejects a known-good canary flow). The same records give the same
    result once the engine works again: the caller should retry the batch."""


# --- SQL building -------------------------------------------------------------------------


def _sql_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ipv6_expr(col: str) -> str:
    """Protobuf bytes (4 = IPv4, 16 = IPv6, else '::') -> IPv6, binary only (no text)."""
    return (
        f"toIPv6(toFixedString(multiIf(length({col}) = 16, {col}, "
        f"length({col}) = 4, concat(unhex('00000000000000000000FFFF'), {col}),"
        f" unhex('00000000000000000000000000000000')), 16))"
    )


# Interface dictionary keys: exporter id << 33 | ifIndex; the exporter's default
# interface is at exporter id << 33 | 1 << 32 (no collision with any 32-bit ifIndex).
_IF_DEFAULT: Final = 1 << 32
_IF_EXPORTER_MASK: Final = ~((1 << 33) - 1) & ((1 << 64) - 1)
_SIDES: Final = (("in", "in_if"), ("out", "out_if"))


def _select_sql(
    db: str,
    spool: str,
    proto_text: str,
    now: int,
    max_threads: int,
    casts: frozenset[str] | None = None,
) -> str:
    """The one query per batch.

    Per-row work is kept to what is inherently per row (protobuf parsing, address
    conversion, one IP_TRIE lookup per address, hashing small keys); every string
    attribute is looked up on a LowCardinality key, so ClickHouse runs dictGet on the
    (few) distinct keys only and the result is already LowCardinality(String)."""
    # Intermediates, in dependency order (aliases may reference earlier ones).
    layers: list[list[str]] = [
        [
            f"CAST({_ipv6_expr('sampler_address')}, 'LowCardinality(IPv6)') AS _exporter",
            f"{_ipv6_expr('src_addr')} AS _src",
            f"{_ipv6_expr('dst_addr')} AS _dst",
        ],
        [
            f"bitShiftLeft(toUInt64(dictGet('{db}.exporters', 'id', _exporter)), 33) AS _ekey",
            f"toLowCardinality(dictGet('{db}.networks', 'id', _src)) AS _srcnet",
            f"toLowCardinality(dictGet('{db}.networks', 'id', _dst)) AS _dstnet",
        ],
        [f"toLowCardinality(bitOr(_ekey, {col})) AS _{side}0" for side, col in _SIDES],
        [
            f"toLowCardinality(if(dictHas('{db}.interfaces', _{side}0), _{side}0,"
            f" bitOr(bitAnd(_{side}0, {_IF_EXPORTER_MASK}), {_IF_DEFAULT}))) AS _{side}"
            for side, _ in _SIDES
        ],
    ]

    def exporter(attr: str) -> str:
        return f"dictGet('{db}.exporters', '{attr}', _exporter)"

    def interface(side: str, attr: str) -> str:
        return f"dictGet('{db}.interfaces', '{attr}', _{side})"

    def network(side: str, attr: str) -> str:
        return f"dictGet('{db}.network_attributes', '{attr}', _{side}net)"

    exprs: dict[str, str] = {
        "TimeReceived": (f"if(time_received_ns = 0, {now}, intDiv(time_received_ns, 1000000000))"),
        "SamplingRate": "sampling_rate",
        "ExporterAddress": "_exporter",
        "ExporterName": exporter("name"),
        "ExporterGroup": exporter("grp"),
        "ExporterRole": exporter("role"),
        "ExporterSite": exporter("site"),
        "ExporterRegion": exporter("region"),
        "ExporterTenant": exporter("tenant"),
        "SrcAddr": "_src",
        "DstAddr": "_dst",
        "SrcAS": "src_as",
        "DstAS": "dst_as",
        "SrcNetMask": "src_net",
        "DstNetMask": "dst_net",
        "InIf": "in_if",
        "OutIf": "out_if",
        "EType": "etype",
        "Proto": "proto",
        "SrcPort": "src_port",
        "DstPort": "dst_port",
        "Bytes": "bytes",
        "Packets": "packets",
        "ForwardingStatus": "forwarding_status",
        "TCPFlags": "tcp_flags",
    }
    for side, prefix in (("in", "InIf"), ("out", "OutIf")):
        for attr in ("name", "description", "speed", "boundary"):
            exprs[prefix + attr.capitalize()] = interface(side, attr)
    for side, prefix in (("src", "SrcNet"), ("dst", "DstNet")):
        for attr in ("name", "role", "site", "region", "tenant"):
            exprs[prefix + attr.capitalize()] = network(side, attr)
    assert set(exprs) == set(schema.COLUMN_NAMES), set(exprs) ^ set(schema.COLUMN_NAMES)
    # CAST only the columns whose expression type differs from the table's (each CAST
    # adds ~0.1 ms of analysis per batch); ``casts=None`` casts all of them.
    select = ",\n  ".join(
        f"CAST({exprs[name]}, {_sql_str(ctype)}) AS {name}"
        if casts is None or name in casts
        else f"{exprs[name]} AS {name}"
        for name, ctype in schema.COLUMNS
    )
    source = _protobuf_source(spool)
    # One subquery computes the intermediates; the outer SELECT sees plain columns.
    # (Measured: one subquery level per dependency layer costs ~4 ms more analysis.)
    source = f"(SELECT *, {', '.join(e for layer in layers for e in layer)} FROM {source})"
    return (
        f"SELECT\n  {select}\nFROM {source}\n"
        f"SETTINGS {_protobuf_settings(proto_text)}, max_threads = {max_threads},"
        " allow_suspicious_low_cardinality_types = 1, output_format_parallel_formatting = 0"
    )


def _probe_sql(spool: str, proto_text: str) -> str:
    """Parse every field the batch query reads, and nothing else: does the engine accept
    these records? (~2.4 ms + ~0.55 us/row, against ~21 ms + ~0.8 us for the batch query;
    enrichment and conversions cannot fail on data, the reader is what rejects.)"""
    return (
        f"SELECT count() FROM {_protobuf_source(spool)} WHERE NOT ignore(*)"
        f" SETTINGS {_protobuf_settings(proto_text)}, max_threads = 1,"
        " optimize_count_from_files = 0"
    )


def _protobuf_source(spool: str) -> str:
    structure = ", ".join(f"{n} {t}" for n, t in _PROTO_COLUMNS)
    return f"file({_sql_str(spool)}, 'Protobuf', {_sql_str(structure)})"


def _protobuf_settings(proto_text: str) -> str:
    return (
        f"format_schema = {_sql_str(proto_text)}, format_schema_source = 'string',"
        " format_schema_message_name = 'FlowMessage', input_format_parallel_parsing = 0"
    )


# --- the codec ----------------------------------------------------------------------------

_instances = itertools.count(1)


class FlowCodec:
    """Decode + enrich + encode once per batch. Thread-safe (one lock per codec)."""

    def __init__(
        self,
        metadata: MetadataConfig,
        workdir: Path,
        *,
        spool_dir: Path | None = None,
        max_threads: int = 1,
        max_flows_per_record: int = BatchConfig.maximum_flows_per_record,
    ) -> None:
        self._lock = threading.Lock()
        self._max_threads = max_threads
        self._max_flows = max_flows_per_record
        protoscan.warm_up()  # compile (~0.9 s, or load the cache) before the first batch
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if spool_dir is None:
            shm = Path("/dev/shm")
            spool_dir = shm if shm.is_dir() and os.access(shm, os.W_OK) else workdir
        self._db = f"outlet_codec_{next(_instances)}"
        _remove_stale_spools(spool_dir)
        fd, spool = tempfile.mkstemp(
            prefix=f"outlet-codec-{os.getpid()}-", suffix=".bin", dir=spool_dir
        )
        self._spool_fd = fd  # kept open: pwrite over already-allocated tmpfs pages
        self._spool = Path(spool)
        self._proto_text = _PROTO_PATH.read_text()
        self._session: Any = None
        self._casts: frozenset[str] | None = None
        try:
            # chDB is process-global: this fails if another path is open in the process.
            self._session = chdb_session.Session(str(workdir))  # type: ignore[no-untyped-call]
            self._load_metadata(metadata)
            self._casts = self._needed_casts()
        except BaseException:
            self.close()
            raise

    # -- setup --

    def _q(self, sql: str, fmt: str = "TSV") -> Any:
        return self._session.query(sql, fmt)

    def _insert_rows(self, table: str, rows: list[dict[str, object]]) -> None:
        if not rows:
            return
        body = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows)
        self._q(f"INSERT INTO {self._db}.{table} FORMAT JSONEachRow\n{body}")

    def _load_metadata(self, md: MetadataConfig) -> None:
        db = self._db
        self._q(f"DROP DATABASE IF EXISTS {db} SYNC")
        self._q(f"CREATE DATABASE {db} ENGINE = Atomic")
        exp_cols = (
            "prefix String, id UInt32, name String, grp String, role String, site String,"
            " region String, tenant String"
        )
        if_cols = "key UInt64, name String, description String, speed UInt32, boundary UInt8"
        net_cols = "prefix String, id UInt32"
        attr_cols = "id UInt64, name String, role String, site String, region String, tenant String"
        exporters: list[dict[str, object]] = []
        interfaces: list[dict[str, object]] = []
        for eid, e in enumerate(md.exporters, start=1):
            exporters.append(
                {
                    "prefix": e.prefix,
                    "id": eid,
                    "name": e.name,
                    "grp": e.group,
                    "role": e.role,
                    "site": e.site,
                    "region": e.region,
                    "tenant": e.tenant,
                }
            )
            ifaces: list[tuple[int, InterfaceInfo]] = [(_IF_DEFAULT, e.default_interface)]
            for ifindex, i in sorted(e.interfaces.items()):
                if not 0 <= ifindex < 1 << 32:
                    raise ValueError(f"exporter {e.prefix}: ifIndex {ifindex} out of range")
                ifaces.append((ifindex, i))
            for ifindex, i in ifaces:
                interfaces.append(
                    {
                        "key": (eid << 33) | ifindex,
                        "name": i.name,
                        "description": i.description,
                        "speed": _u32(i.speed),
                        "boundary": _boundary(i.boundary),
                    }
                )
        networks: list[dict[str, object]] = []
        attributes: list[dict[str, object]] = []
        for nid, n in enumerate(md.networks, start=1):
            networks.append({"prefix": n.prefix, "id": nid})
            attributes.append(
                {
                    "id": nid,
                    "name": n.name,
                    "role": n.role,
                    "site": n.site,
                    "region": n.region,
                    "tenant": n.tenant,
                }
            )
        for table, cols, rows, key, layout in (
            ("exporters", exp_cols, exporters, "prefix", "IP_TRIE"),
            ("interfaces", if_cols, interfaces, "key", "HASHED"),
            ("networks", net_cols, networks, "prefix", "IP_TRIE"),
            ("network_attributes", attr_cols, attributes, "id", "HASHED"),
        ):
            self._q(f"CREATE TABLE {db}.{table}_src ({cols}) ENGINE = Memory")
            self._insert_rows(f"{table}_src", rows)
            self._q(
                f"CREATE DICTIONARY {db}.{table} ({cols}) PRIMARY KEY {key}"
                f" SOURCE(CLICKHOUSE(DB '{db}' TABLE '{table}_src'))"
                f" LAYOUT({layout}) LIFETIME(0)"
            )
            # Load now: a bad prefix fails here, not on the first batch.
            self._q(f"SYSTEM RELOAD DICTIONARY {db}.{table}")

    def _write_spool(self, data: bytes) -> None:
        # Overwrite then truncate (not truncate then write): tmpfs keeps its pages, which
        # halves the cost (~0.03 us/flow instead of ~0.06).
        try:
            written = os.pwrite(self._spool_fd, data, 0)
            os.ftruncate(self._spool_fd, len(data))
        except OSError as exc:  # tmpfs full (ENOSPC), or the spool file went away
            raise CodecError(f"cannot write the codec spool {self._spool}: {exc}") from exc
        if written != len(data):  # pragma: no cover - short write on tmpfs
            raise CodecError(f"short write to {self._spool}: {written}/{len(data)}")

    def _describe(self, casts: frozenset[str] | None) -> tuple[tuple[str, str], ...]:
        self._write_spool(_CANARY)
        sql = _select_sql(self._db, str(self._spool), self._proto_text, 0, 1, casts)
        out = self._q(f"DESCRIBE ({sql})", "TSVRaw").bytes().decode()
        return tuple((c[0], c[1]) for c in (line.split("\t") for line in out.splitlines()))

    def _needed_casts(self) -> frozenset[str]:
        bare = dict(self._describe(frozenset()))
        casts = frozenset(n for n, t in schema.COLUMNS if bare.get(n) != t)
        got = self._describe(casts)
        if got != schema.COLUMNS:  # pragma: no cover - engine/schema drift
            raise CodecError(f"codec output types {got} differ from {schema.COLUMNS}")
        return casts

    # -- encode --

    def encode(self, records: Sequence[bytes], *, now: int | None = None) -> EncodedBatch:
        """Blocking: run it in a worker thread (``trio.to_thread.run_sync``).

        Never raises because of what the records hold: a bad record is skipped and
        reported in ``bad_records`` / ``bad_reasons``; raises ``CodecError`` only when
        the engine fails (see the class). ``now`` (unix seconds) is used as
        TimeReceived for flows whose time_received_ns is 0; default: the current time.
        Pass it for bit-identical rebuilds."""
        if now is None:
            now = int(time.time())
        codes, data = protoscan.scan(records, self._max_flows)
        ok = codes > 0
        rows = int(codes.sum(where=ok))
        with self._lock:
            if self._session is None:
                raise CodecError("codec is closed")
            if ok.all():  # the usual case: no per-record Python work at all
                native = self._run(data, rows, now) if rows else b""
                if native is not None:
                    return EncodedBatch(native=native, rows=rows, bad_records=())
            good: list[int] = np.flatnonzero(ok).tolist()
            bad = {i: protoscan.REASONS[c] for i, c in _bad_codes(codes)}
            if bad:
                joined = b"".join([records[i] for i in good])
                native = self._run(joined, rows, now) if rows else b""
            if native is None:
                counts: list[int] = codes.tolist()
                native, rejected = self._isolate(records, good, counts, now)
                bad.update(rejected)
                rows -= sum(counts[i] for i in rejected)
        order = sorted(bad)
        return EncodedBatch(
            native=native,
            rows=rows,
            bad_records=tuple(order),
            bad_reasons=tuple(bad[i] for i in order),
        )

    def _run(self, data: bytes, expected_rows: int, now: int) -> bytes | None:
        """Native bytes, or None if chDB rejects the data (or reads another row count)."""
        self._write_spool(data)
        sql = _select_sql(
            self._db, str(self._spool), self._proto_text, now, self._max_threads, self._casts
        )
        try:
            res = self._session.query(sql, "Native")
        except Exception:
            return None
        if res.rows_read() != expected_rows:
            return None
        out: bytes = res.bytes()
        return out

    def _try(
        self, records: Sequence[bytes], idx: Sequence[int], counts: Sequence[int], now: int
    ) -> bytes | None:
        if not idx:
            return b""
        data = b"".join([records[i] for i in idx])
        return self._run(data, sum(counts[i] for i in idx), now)

    def _accepts(self, records: Sequence[bytes], idx: Sequence[int], rows: int) -> bool:
        """One isolation probe: the engine parses exactly ``rows`` rows from them."""
        self._write_spool(b"".join([records[i] for i in idx]))
        try:
            res = self._session.query(_probe_sql(str(self._spool), self._proto_text), "CSV")
        except Exception:
            return False
        return bool(res.bytes().strip() == str(rows).encode())

    def _check_engine(self, now: int, when: str) -> None:
        if self._run(_CANARY, 1, now) is None:
            raise CodecError(
                f"chDB rejects a known-good flow {when}: engine failure, not bad input"
            )

    def _isolate(
        self, records: Sequence[bytes], good: list[int], counts: list[int], now: int
    ) -> tuple[bytes, dict[int, str]]:
        """The engine rejected records that passed the scan: find them (bisection with
        parse-only probes, breadth first, at most MAX_ISOLATION_PROBES) and return
        (Native of the others, {index: "engine" | "quarantined"}). Parts still unresolved
        when the budget is spent are quarantined (skipped and counted, not stored).
        Deterministic for a given input."""
        self._check_engine(now, "before isolating bad records")
        rejected: dict[int, str] = {}
        budget = MAX_ISOLATION_PROBES

        def accepts(part: list[int]) -> bool:
            return self._accepts(records, part, sum(counts[i] for i in part))

        suspects: collections.deque[list[int]] = collections.deque([good])  # each fails
        while suspects:
            part = suspects.popleft()
            if len(part) == 1:
                rejected[part[0]] = "engine"
                continue
            if budget == 0:
                rejected.update((i, "quarantined") for p in (part, *suspects) for i in p)
                break
            left, right = part[: len(part) // 2], part[len(part) // 2 :]
            budget -= 1
            if accepts(left):
                suspects.append(right)  # the part fails and its left half does not
                continue
            suspects.append(left)
            if budget == 0:
                rejected.update((i, "quarantined") for i in right)
                continue
            budget -= 1
            if not accepts(right):
                suspects.append(right)
        kept = [i for i in good if i not in rejected]
        native = self._try(records, kept, counts, now)
        if native is None:  # not explained by single records: keep nothing, say so
            self._check_engine(now, "after isolating bad records")
            rejected.update((i, "quarantined") for i in kept)
            native = b""
        elif rejected:
            self._check_engine(now, "after isolating bad records")
        return native, rejected

    def close(self) -> None:
        with self._lock:
            sess, self._session = self._session, None
            if sess is not None:
                with contextlib.suppress(Exception):
                    sess.query(f"DROP DATABASE IF EXISTS {self._db} SYNC")
                with contextlib.suppress(Exception):
                    sess.close()
            if self._spool_fd >= 0:
                os.close(self._spool_fd)
                self._spool_fd = -1
            with contextlib.suppress(FileNotFoundError):
                self._spool.unlink()

    def __enter__(self) -> FlowCodec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- helpers ------------------------------------------------------------------------------


def _remove_stale_spools(spool_dir: Path) -> None:
    """Spool files of dead processes (crash, SIGKILL) would pin tmpfs memory."""
    for path in spool_dir.glob("outlet-codec-*-*.bin"):
        pid = path.name.split("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            with contextlib.suppress(OSError):
                path.unlink()


def _u32(v: int) -> int:
    return min(max(int(v), 0), (1 << 32) - 1)


def _boundary(b: str) -> int:
    try:
        return _BOUNDARIES[b]
    except KeyError:
        raise ValueError(
            f"invalid interface boundary {b!r}: expected one of {', '.join(_BOUNDARIES)}"
        ) from None


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _frame(msg: bytes) -> bytes:
    return _varint(len(msg)) + msg


def _bad_codes(codes: np.ndarray[Any, np.dtype[np.int64]]) -> list[tuple[int, int]]:
    """(index, reason code) of the records the scan refused."""
    idx = np.flatnonzero(codes <= 0)
    return list(zip(idx.tolist(), codes[idx].tolist(), strict=True))


# time_received_ns=1, bytes=1 (field 110 varint, field 9 varint)
_CANARY: Final = _frame(b"\xf0\x06\x01\x48\x01")

"""Realistic, deterministic GoFlow2 v2 flow generator.

Produces Kafka record values exactly as ``goflow2 -format=bin`` writes them: each FlowMessage
(``outlet/pb/flow.proto``) is preceded by its varint length; a record holds one message by
default, or several concatenated (``flows_per_record``).

Design
------
* Deterministic: flow ``k`` depends only on ``(seed, k)`` (and ``run_id`` for its unique id,
  and the time source). Flows are drawn in RNG blocks of :data:`BLOCK` flows, each block
  seeded with ``SeedSequence([seed, block_index])``, so ``records(n, start=s)`` yields the
  same bytes as the matching slice of ``records(s + n)``. With ``time_mode="fixed"`` the
  bytes are fully reproducible; with ``time_mode="now"`` only the three time fields change.
* Fast: fields are drawn as numpy columns and encoded column-wise (vectorized varints, one
  boolean-mask gather per chunk), producing bytes identical to ``SerializeToString()``
  (fields in field-number order, proto3 zero values omitted). See ``python -m
  flowgen.generator --bench``.
* Unique mode (``unique=True``): flow ``k`` of run ``run_id`` carries the 40-bit id
  ``uid = run_id << 32 | k``: the low 16 bits in ``src_port``, the high 24 bits in the low
  24 bits of the source address, taken from ``10.0.0.0/8`` (IPv4: run ``r`` lives in
  ``10.r.0.0/16``) or ``2001:db8:ffff::/48`` (IPv6). :func:`flow_id_sql_expr` computes it
  back from the stored ``SrcAddr``/``SrcPort`` columns, :func:`flow_id_from_message` from a
  decoded message. Unique flows are TCP/UDP only (no ICMP), with the service port as
  destination port.
* Running totals: :meth:`FlowGenerator.totals` reports count, Bytes and Packets sums of the
  flows handed out so far; :meth:`FlowGenerator.expected_totals` computes them for any range
  without encoding anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from google.protobuf.descriptor import FieldDescriptor

from outlet.config import BatchConfig
from outlet.pb.flow_pb2 import FlowMessage
from outlet.varint import decode_varint as decode_varint  # the one varint codec, re-exported
from outlet.varint import encode_varint as encode_varint

U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
BoolArr = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]

BLOCK = 4096
"""Flows per RNG block (flow k is drawn in block k // BLOCK). Changing it changes the data."""

MAX_RUN_ID = 255
MAX_FLOWS_PER_RUN = 1 << 32

UNIQUE_V4_NET = ipaddress.IPv4Network("10.0.0.0/8")
UNIQUE_V6_NET = ipaddress.IPv6Network("2001:db8:ffff::/48")

FLOW_TYPE_SFLOW5 = 1
FLOW_TYPE_NETFLOW_V9 = 3
FLOW_TYPE_IPFIX = 4

ETYPE_IPV4 = 0x0800
ETYPE_IPV6 = 0x86DD

FORWARDED = 64  # NetFlow/IPFIX forwardingStatus: forwarded, unknown reason
DROPPED = 128  # dropped, unknown reason

# Well-known service ports and their weights among flows that have a service side.
DEFAULT_SERVICE_PORTS: tuple[tuple[int, float], ...] = (
    (443, 0.46),
    (80, 0.14),
    (53, 0.10),
    (22, 0.04),
    (123, 0.03),
    (25, 0.03),
    (993, 0.03),
    (8080, 0.03),
    (8443, 0.03),
    (3306, 0.02),
    (5060, 0.02),
    (3389, 0.02),
    (1194, 0.01),
    (5432, 0.02),
    (6379, 0.02),
)
# Probability that a flow on this service port is UDP (rest TCP); absent ports: TCP only.
UDP_SHARE_BY_PORT: dict[int, float] = {53: 0.9, 123: 1.0, 443: 0.12, 5060: 0.6, 1194: 1.0}
EPHEMERAL_UDP_SHARE = 0.3
EPHEMERAL_LOW, EPHEMERAL_HIGH = 32768, 61000  # Linux ip_local_port_range (high exclusive)

# A few big ASes carry most of the traffic: CDNs, clouds, big eyeballs.
DEFAULT_BIG_ASES: tuple[tuple[int, float], ...] = (
    (15169, 0.22),  # Google
    (13335, 0.14),  # Cloudflare
    (16509, 0.13),  # Amazon
    (32934, 0.10),  # Meta
    (8075, 0.09),  # Microsoft
    (20940, 0.08),  # Akamai
    (2906, 0.08),  # Netflix
    (714, 0.06),  # Apple
    (3320, 0.05),  # Deutsche Telekom
    (3215, 0.05),  # Orange
)

TCP_FLAGS: tuple[tuple[int, float], ...] = (
    (0x18, 0.50),  # PSH|ACK
    (0x10, 0.25),  # ACK
    (0x02, 0.08),  # SYN
    (0x12, 0.05),  # SYN|ACK
    (0x11, 0.05),  # FIN|ACK
    (0x1B, 0.04),  # FIN|SYN|PSH|ACK (aggregated flow)
    (0x04, 0.03),  # RST
)

SITES: tuple[tuple[str, str], ...] = (
    ("par1", "eu-west"),
    ("fra1", "eu-central"),
    ("ams1", "eu-west"),
    ("lon1", "eu-west"),
    ("nyc1", "us-east"),
    ("sjc1", "us-west"),
)
EXTERNAL_IF_DESCRIPTIONS = (
    "Transit: Cogent AS174",
    "Transit: Lumen AS3356",
    "PNI: Google AS15169",
    "IX: France-IX",
    "PNI: Netflix AS2906",
    "IX: DE-CIX Frankfurt",
)


@dataclass(frozen=True)
class NetworkSpec:
    """A prefix flows are drawn from (``weight`` within its side and family)."""

    cidr: str
    side: Literal["internal", "external"]
    weight: float
    name: str | None = None  # None: not in demo networks (enrichment leaves it empty)
    role: str = ""
    site: str = ""
    region: str = ""
    tenant: str = ""


DEFAULT_NETWORKS: tuple[NetworkSpec, ...] = (
    # Internal (our data centers), inside the benchmark range 198.18.0.0/15 (RFC 2544).
    NetworkSpec("198.18.0.0/17", "internal", 4, "dc1-web", "servers", "par1", "eu-west", "web"),
    NetworkSpec("198.18.128.0/17", "internal", 2, "dc1-storage", "storage", "par1", "eu-west",
                "storage"),
    NetworkSpec("198.19.0.0/18", "internal", 3, "dc2-web", "servers", "fra1", "eu-central",
                "web"),
    NetworkSpec("198.19.64.0/18", "internal", 2, "dc2-compute", "compute", "fra1", "eu-central",
                "compute"),
    # Only covered by the /15 below: longest-prefix falls back to it.
    NetworkSpec("198.19.128.0/18", "internal", 1),
    NetworkSpec("2001:db8:1::/48", "internal", 4, "dc1-web-v6", "servers", "par1", "eu-west",
                "web"),
    NetworkSpec("2001:db8:2::/48", "internal", 3, "dc2-web-v6", "servers", "fra1", "eu-central",
                "web"),
    NetworkSpec("2001:db8:3::/48", "internal", 1),  # only covered by 2001:db8::/32
    # External (customers, peers, "the Internet"), documentation ranges.
    NetworkSpec("198.51.100.0/24", "external", 3, "customers-acme", "customers", "", "",
                "acme"),
    NetworkSpec("203.0.113.0/25", "external", 2, "peering-lan", "peering", "", "", ""),
    NetworkSpec("203.0.113.128/25", "external", 3),  # unknown network: stays empty
    NetworkSpec("2001:db8:100::/40", "external", 3, "customers-acme-v6", "customers", "", "",
                "acme"),
    NetworkSpec("2001:2::/48", "external", 2, "bench-v6", "peering", "", "", ""),
    NetworkSpec("3fff::/20", "external", 3),  # RFC 9637 documentation, unknown network
)
# Covering networks present only in the demo `networks:` section (longest prefix tests).
COVERING_NETWORKS: dict[str, dict[str, str]] = {
    "198.18.0.0/15": {"name": "lab-benchmark", "role": "internal", "site": "", "region": "",
                      "tenant": ""},
    "2001:db8::/32": {"name": "lab-documentation", "role": "internal", "site": "",
                      "region": "", "tenant": ""},
    str(UNIQUE_V4_NET): {"name": "loadtest-unique", "role": "loadtest", "site": "",
                         "region": "", "tenant": "loadtest"},
    str(UNIQUE_V6_NET): {"name": "loadtest-unique-v6", "role": "loadtest", "site": "",
                         "region": "", "tenant": "loadtest"},
}


@dataclass(frozen=True)
class GeneratorConfig:
    """Knobs of the flow generator. Defaults give a small, realistic edge network."""

    seed: int = 1
    run_id: int = 0  # 0..255, part of the unique flow id
    unique: bool = False
    exporters: int = 4  # IPv4 192.0.2.1.. then 198.19.252.0/22
    ipv6_exporters: int = 0  # of `exporters`, how many (the last ones) export from IPv6
    interfaces_per_exporter: int = 8  # a quarter (at least 1) are external
    ipv6_share: float = 0.2
    heavy_hitters: int = 8  # src/dst pairs...
    heavy_hitter_share: float = 0.3  # ...carrying this share of flows, Zipf among them
    heavy_hitter_zipf: float = 1.2
    service_ports: tuple[tuple[int, float], ...] = DEFAULT_SERVICE_PORTS
    ephemeral_share: float = 0.08  # flows with ephemeral ports on both sides
    big_ases: tuple[tuple[int, float], ...] = DEFAULT_BIG_ASES
    big_as_share: float = 0.65  # the rest: a Zipf long tail of `as_tail_size` ASes
    as_tail_size: int = 2000
    local_as: int = 64500  # AS of the internal side (documentation ASN)
    sampling_rate: int = 1000
    packets_mu: float = 1.2  # NetFlow/IPFIX packets = 1 + floor(lognormal(mu, sigma))
    packets_sigma: float = 1.5
    max_packets: int = 1_000_000
    min_packet_size: int = 64
    max_packet_size: int = 1500
    heavy_hitter_packets_factor: int = 8
    icmp_share: float = 0.01
    dropped_share: float = 0.01  # forwarding_status 128, out_if 0, no next hop
    time_mode: Literal["now", "fixed"] = "now"
    start_ns: int = 1_700_000_000_000_000_000  # fixed mode: flow k at start_ns + k * step_ns
    step_ns: int = 1_000
    flows_per_record: int = 1
    encode_chunk: int = BLOCK  # flows encoded at once; "now" timestamps are per chunk
    networks: tuple[NetworkSpec, ...] = DEFAULT_NETWORKS

    def validate(self) -> None:
        problems = []
        if not 0 <= self.run_id <= MAX_RUN_ID:
            problems.append(f"run_id must be 0..{MAX_RUN_ID}")
        if not 1 <= self.exporters <= 254 + 1020:
            problems.append("exporters must be 1..1274")
        if not 0 <= self.ipv6_exporters <= self.exporters:
            problems.append("ipv6_exporters must be 0..exporters")
        if not 1 <= self.interfaces_per_exporter <= 10000:
            problems.append("interfaces_per_exporter must be 1..10000")
        for name in ("ipv6_share", "heavy_hitter_share", "ephemeral_share", "big_as_share",
                     "icmp_share", "dropped_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be within [0, 1]")
        if self.heavy_hitters < 1:
            problems.append("heavy_hitters must be >= 1")
        if not 1 <= self.sampling_rate < 1 << 32:
            problems.append("sampling_rate must be 1..2^32-1")
        if not 64 <= self.min_packet_size <= self.max_packet_size <= 65535:
            problems.append("need 64 <= min_packet_size <= max_packet_size <= 65535")
        if self.flows_per_record < 1:
            problems.append("flows_per_record must be >= 1")
        if self.encode_chunk < 1:
            problems.append("encode_chunk must be >= 1")
        if self.time_mode not in ("now", "fixed"):
            problems.append("time_mode must be 'now' or 'fixed'")
        if self.as_tail_size < 1:
            problems.append("as_tail_size must be >= 1")
        for fam in ("v4", "v6"):
            for side in ("internal", "external"):
                if not any(n.side == side and _family(n.cidr) == fam for n in self.networks):
                    problems.append(f"networks need at least one {side} {fam} prefix")
        if problems:
            raise ValueError("invalid GeneratorConfig: " + "; ".join(problems))


def _family(cidr: str) -> str:
    return "v6" if ipaddress.ip_network(cidr).version == 6 else "v4"


@dataclass(frozen=True)
class Interface:
    ifindex: int
    name: str
    description: str
    speed: int  # Mbps
    boundary: Literal["external", "internal"]


@dataclass(frozen=True)
class Exporter:
    address: str
    packed: bytes  # 4 or 16 bytes, as in sampler_address
    name: str
    group: str
    role: str
    site: str
    region: str
    tenant: str
    flow_type: int
    external: tuple[Interface, ...]
    internal: tuple[Interface, ...]


@dataclass(frozen=True)
class Totals:
    """Count and sums of the flows handed out (or expected) for a range of flow numbers."""

    flows: int = 0
    records: int = 0
    bytes_sum: int = 0
    packets_sum: int = 0


@dataclass
class FlowColumns:
    """One column per FlowMessage field (addresses as hi/lo uint64 plus a length)."""

    k: U64  # flow number
    type: U64
    sampling_rate: U64
    sequence_num: U64
    src_hi: U64
    src_lo: U64
    dst_hi: U64
    dst_lo: U64
    addr_len: U64  # 4 or 16, for src and dst
    bytes: U64
    packets: U64
    sampler_hi: U64
    sampler_lo: U64
    sampler_len: U64
    nh_hi: U64
    nh_lo: U64
    nh_len: U64  # 0 (no next hop), 4 or 16
    src_as: U64
    dst_as: U64
    src_net: U64
    dst_net: U64
    in_if: U64
    out_if: U64
    proto: U64
    src_port: U64
    dst_port: U64
    forwarding_status: U64
    tcp_flags: U64
    etype: U64
    time_received_ns: U64
    time_flow_start_ns: U64
    time_flow_end_ns: U64

    def __len__(self) -> int:
        return int(self.k.shape[0])

    def slice(self, a: int, b: int) -> FlowColumns:
        return FlowColumns(**{f.name: getattr(self, f.name)[a:b] for f in _COLUMN_FIELDS})

    @staticmethod
    def concat(parts: Sequence[FlowColumns]) -> FlowColumns:
        if len(parts) == 1:
            return parts[0]
        return FlowColumns(**{
            f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in _COLUMN_FIELDS
        })

    def message(self, i: int) -> FlowMessage:
        """Flow ``i`` as a FlowMessage (slow reference path)."""
        n4 = int(self.addr_len[i])
        return FlowMessage(
            type=int(self.type[i]),  # type: ignore[arg-type]
            time_received_ns=int(self.time_received_ns[i]),
            sequence_num=int(self.sequence_num[i]),
            sampling_rate=int(self.sampling_rate[i]),
            sampler_address=_pack(self.sampler_hi[i], self.sampler_lo[i],
                                  int(self.sampler_len[i])),
            time_flow_start_ns=int(self.time_flow_start_ns[i]),
            time_flow_end_ns=int(self.time_flow_end_ns[i]),
            bytes=int(self.bytes[i]),
            packets=int(self.packets[i]),
            src_addr=_pack(self.src_hi[i], self.src_lo[i], n4),
            dst_addr=_pack(self.dst_hi[i], self.dst_lo[i], n4),
            etype=int(self.etype[i]),
            proto=int(self.proto[i]),
            src_port=int(self.src_port[i]),
            dst_port=int(self.dst_port[i]),
            in_if=int(self.in_if[i]),
            out_if=int(self.out_if[i]),
            forwarding_status=int(self.forwarding_status[i]),
            tcp_flags=int(self.tcp_flags[i]),
            src_as=int(self.src_as[i]),
            dst_as=int(self.dst_as[i]),
            next_hop=_pack(self.nh_hi[i], self.nh_lo[i], int(self.nh_len[i])),
            src_net=int(self.src_net[i]),
            dst_net=int(self.dst_net[i]),
        )

    def messages(self) -> list[FlowMessage]:
        return [self.message(i) for i in range(len(self))]


_COLUMN_FIELDS = dataclasses.fields(FlowColumns)


def _pack(hi: Any, lo: Any, length: int) -> bytes:
    if length == 0:
        return b""
    if length == 4:
        return int(lo).to_bytes(4, "big")
    return int(hi).to_bytes(8, "big") + int(lo).to_bytes(8, "big")


def _split(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int, int]:
    """(hi, lo, length) of an address: IPv4 lives in lo."""
    v = int(addr)
    if addr.version == 4:
        return 0, v, 4
    return v >> 64, v & 0xFFFFFFFFFFFFFFFF, 16


def _weights(values: Sequence[float]) -> F64:
    w = np.asarray(values, dtype=np.float64)
    return np.asarray(w / w.sum(), dtype=np.float64)


def _zipf(n: int, s: float) -> F64:
    return _weights([1.0 / (r + 1) ** s for r in range(n)])


def _u64(a: Any) -> U64:
    return np.asarray(a, dtype=np.uint64)


# --------------------------------------------------------------------------------------------
# Column-wise protobuf encoding (scalar varints: outlet.varint)
# --------------------------------------------------------------------------------------------

I64 = npt.NDArray[np.int64]
_Byte = U8 | int  # one byte column of a field: per-flow values, or a constant


def _varint_width(maxv: int) -> int:
    nbytes = 1
    while nbytes < 10 and maxv >= 1 << (7 * nbytes):
        nbytes += 1
    return nbytes


def _varint_bytes(values: U64, tag: bytes, omit_zero: bool = True) -> tuple[list[_Byte], I64]:
    """Byte columns (tag bytes then the widest varint in ``values``) and used length per
    flow (0 when a zero value is omitted, as proto3 does)."""
    out: list[_Byte] = list(tag)
    nbytes = _varint_width(int(values.max()))
    v = values if nbytes > 4 else values.astype(np.uint32)
    used = np.full(values.shape[0], len(tag) + 1, dtype=np.int64)
    x = v
    for j in range(nbytes):
        if j == nbytes - 1:
            out.append(x.astype(np.uint8))
            break
        nxt = x >> np.uint32(7) if x.dtype == np.uint32 else x >> np.uint64(7)
        cont = nxt != 0
        used += cont
        out.append((x.astype(np.uint8) & np.uint8(0x7F)) | (cont.view(np.uint8) << np.uint8(7)))
        x = nxt
    if omit_zero:
        used[values == 0] = 0
    return out, used


def _address_bytes(hi: U64, lo: U64, length: U64, tag: bytes) -> tuple[list[_Byte], I64]:
    """Byte columns of tag + len + address (4 bytes from lo, or 16 from hi|lo)."""
    n = hi.shape[0]
    maxlen = int(length.max())
    out: list[_Byte] = [tag[0], length.astype(np.uint8)]
    b4 = lo.astype(">u4").view(np.uint8).reshape(n, 4)
    if maxlen == 16:
        both = np.empty((n, 2), dtype=">u8")
        both[:, 0] = hi
        both[:, 1] = lo
        b16 = both.view(np.uint8).reshape(n, 16)
        v6 = length == 16
        out.extend(np.where(v6, b16[:, k], b4[:, k]) for k in range(4))
        out.extend(np.ascontiguousarray(b16[:, k]) for k in range(4, 16))
    else:
        out.extend(np.ascontiguousarray(b4[:, k]) for k in range(4))
    used = np.where(length == 0, 0, length.astype(np.int64) + 2)
    return out, used


def _tag(field_number: int, wire_type: int) -> bytes:
    return encode_varint(field_number << 3 | wire_type)


# (kind, field number, column name(s)) in field-number order: what SerializeToString writes
_LAYOUT: tuple[tuple[str, int, tuple[str, ...]], ...] = (
    ("v", 1, ("type",)),
    ("v", 3, ("sampling_rate",)),
    ("v", 4, ("sequence_num",)),
    ("b", 6, ("src_hi", "src_lo", "addr_len")),
    ("b", 7, ("dst_hi", "dst_lo", "addr_len")),
    ("v", 9, ("bytes",)),
    ("v", 10, ("packets",)),
    ("b", 11, ("sampler_hi", "sampler_lo", "sampler_len")),
    ("b", 12, ("nh_hi", "nh_lo", "nh_len")),
    ("v", 14, ("src_as",)),
    ("v", 15, ("dst_as",)),
    ("v", 16, ("src_net",)),
    ("v", 17, ("dst_net",)),
    ("v", 18, ("in_if",)),
    ("v", 19, ("out_if",)),
    ("v", 20, ("proto",)),
    ("v", 21, ("src_port",)),
    ("v", 22, ("dst_port",)),
    ("v", 24, ("forwarding_status",)),
    ("v", 26, ("tcp_flags",)),
    ("v", 30, ("etype",)),
    ("v", 110, ("time_received_ns",)),
    ("v", 111, ("time_flow_start_ns",)),
    ("v", 112, ("time_flow_end_ns",)),
)
_TAGS = {num: _tag(num, 0 if kind == "v" else 2) for kind, num, _ in _LAYOUT}


def encode_columns(cols: FlowColumns, flows_per_record: int = 1) -> list[bytes]:
    """Length-delimited FlowMessages, ``flows_per_record`` per record, field-number order.

    The message bytes equal ``cols.message(i).SerializeToString()``. Column-wise: each
    field is turned into byte columns and its per-flow length; the byte columns are
    scattered, in field order, at each flow's running offset, always at the field's full
    width: the unused tail of a field is overwritten by the next field, and records are
    separated by a gap in the buffer that absorbs the last field's tail.
    """
    n = len(cols)
    if n == 0:
        return []
    fields: list[tuple[list[_Byte], I64]] = []
    for kind, num, names in _LAYOUT:
        arrays = [getattr(cols, name) for name in names]
        if kind == "v":
            fields.append(_varint_bytes(arrays[0], _TAGS[num]))
        elif int(arrays[2].max()) > 0:
            fields.append(_address_bytes(arrays[0], arrays[1], arrays[2], _TAGS[num]))
    msg_len = np.zeros(n, dtype=np.int64)
    for _, used in fields:
        msg_len += used
    prefix = _varint_bytes(msg_len.astype(np.uint64), b"", omit_zero=False)
    fields.insert(0, prefix)
    sizes = prefix[1] + msg_len
    gap = max(len(cols_) for cols_, _ in fields)
    if flows_per_record > 1:
        last = np.zeros(n, dtype=np.int64)
        last[flows_per_record - 1::flows_per_record] = gap
        last[-1] = gap
        rec_first = np.arange(0, n, flows_per_record)
    else:
        last = np.full(n, gap, dtype=np.int64)
        rec_first = None
    spans = sizes + last
    row_end = np.cumsum(spans)
    pos = row_end - spans  # start of each flow in the buffer
    buf = np.empty(int(row_end[-1]) + gap, dtype=np.uint8)
    for byte_cols, used in fields:
        for k, col in enumerate(byte_cols):
            buf[pos + k if k else pos] = col
        pos = pos + used
    data = buf.tobytes()
    starts = pos - sizes  # pos is now each flow's end
    if rec_first is None:
        starts_l: list[int] = starts.tolist()
        ends_l: list[int] = pos.tolist()
    else:
        rec_last = np.minimum(rec_first + flows_per_record - 1, n - 1)
        starts_l = starts[rec_first].tolist()
        ends_l = pos[rec_last].tolist()
    return [data[a:z] for a, z in zip(starts_l, ends_l, strict=True)]


def decode_record(record: bytes, max_flows: int | None = None) -> list[FlowMessage]:
    """Strictly split a record into FlowMessages: raises ValueError on any framing or
    protobuf error, on an empty record or message, and on what the outlet's schema
    refuses although upb accepts it (:func:`schema_problem`), and on more than
    ``max_flows`` messages. The reference for what is
    garbage (written independently of the outlet's compiled scanner, which tests compare
    against it)."""
    if not record:
        raise ValueError("empty record")
    out = []
    pos = 0
    while pos < len(record):
        size, pos = decode_varint(record, pos)
        if size == 0:
            raise ValueError("zero-length message")
        if size > len(record) - pos:
            raise ValueError(f"message length {size} exceeds the {len(record) - pos} bytes left")
        data = record[pos:pos + size]
        try:
            out.append(FlowMessage.FromString(data))
        except Exception as exc:  # google.protobuf.message.DecodeError
            raise ValueError(f"bad FlowMessage: {exc}") from exc
        problem = schema_problem(data)
        if problem:
            raise ValueError(f"bad FlowMessage: {problem}")
        pos += size
        if max_flows is not None and len(out) > max_flows:
            raise ValueError(f"more than {max_flows} flows in one record")
    return out


_WIRE_TYPES = {FieldDescriptor.TYPE_BYTES: 2}  # every other declared type: varint (0)
_DECLARED = {f.number: (_WIRE_TYPES.get(f.type, 0), f.type == FieldDescriptor.TYPE_UINT32)
             for f in FlowMessage.DESCRIPTOR.fields}


def schema_problem(message: bytes) -> str | None:
    """What makes a message that upb parses unfit for the outlet, or None: a group, a
    declared field with another wire type or given twice, a uint32 value >= 2^32, a
    varint beyond 64 bits (upb tolerates all of these; ClickHouse rejects or misreads
    them). ``message`` must parse with upb."""
    pos = 0
    seen: set[int] = set()
    while pos < len(message):
        tag, pos = decode_varint(message, pos)
        number, wire = tag >> 3, tag & 7
        if wire in (3, 4):
            return f"field {number}: group (wire type {wire})"
        if number in _DECLARED:
            expected = _DECLARED[number][0]
            if wire != expected:
                return f"field {number}: wire type {wire} instead of {expected}"
            if number in seen:
                return f"field {number}: given twice"
            seen.add(number)
        if wire == 0:
            value, pos = decode_varint(message, pos)
            if value >= 1 << 64:
                return f"field {number}: varint beyond 64 bits"
            if number in _DECLARED and _DECLARED[number][1] and value >= 1 << 32:
                return f"field {number}: uint32 value {value} >= 2^32"
        elif wire == 2:
            length, pos = decode_varint(message, pos)
            pos += length
        else:
            pos += 8 if wire == 1 else 4
    return None


# --------------------------------------------------------------------------------------------
# Unique flow ids
# --------------------------------------------------------------------------------------------

def flow_uid(run_id: int, k: int) -> int:
    """40-bit id of flow ``k`` of run ``run_id``."""
    if not 0 <= run_id <= MAX_RUN_ID or not 0 <= k < MAX_FLOWS_PER_RUN:
        raise ValueError("run_id must be 0..255 and k 0..2^32-1")
    return run_id << 32 | k


def split_uid(uid: int) -> tuple[int, int]:
    """(run_id, k) of a 40-bit id."""
    return uid >> 32, uid & 0xFFFFFFFF


def flow_id_sql_expr(src_addr: str = "SrcAddr", src_port: str = "SrcPort") -> str:
    """ClickHouse expression giving the 40-bit id ``run_id << 32 | k`` of a unique-mode row.

    ``SrcAddr`` is IPv6 (IPv4 mapped): ``toUInt128`` gives its numeric value, whose low 24
    bits are the id's high bits for both families.
    """
    return (f"bitOr(bitShiftLeft(toUInt64(bitAnd(toUInt128({src_addr}), 16777215)), 16), "
            f"toUInt64({src_port}))")


def flow_index_sql_expr(src_addr: str = "SrcAddr", src_port: str = "SrcPort") -> str:
    """ClickHouse expression for the flow number ``k`` (drops the run id)."""
    return f"bitAnd({flow_id_sql_expr(src_addr, src_port)}, 4294967295)"


def flow_run_sql_expr(src_addr: str = "SrcAddr", src_port: str = "SrcPort") -> str:
    """ClickHouse expression for the ``run_id`` of a unique-mode row."""
    return f"bitShiftRight({flow_id_sql_expr(src_addr, src_port)}, 32)"


def unique_rows_sql_filter(run_id: int | None = None, src_addr: str = "SrcAddr") -> str:
    """WHERE condition selecting the unique-mode rows (of one run when ``run_id`` is given)."""
    if run_id is None:
        v4 = f"::ffff:{UNIQUE_V4_NET.network_address}/{96 + UNIQUE_V4_NET.prefixlen}"
        v6 = str(UNIQUE_V6_NET)
    else:
        if not 0 <= run_id <= MAX_RUN_ID:
            raise ValueError("run_id must be 0..255")
        v4 = f"::ffff:10.{run_id}.0.0/112"
        v6 = f"{ipaddress.IPv6Address(int(UNIQUE_V6_NET.network_address) | run_id << 16)}/112"
    return (f"(isIPAddressInRange(toString({src_addr}), '{v4}') OR "
            f"isIPAddressInRange(toString({src_addr}), '{v6}'))")


def flow_id_from_message(msg: FlowMessage) -> int:
    """Same computation as :func:`flow_id_sql_expr`, from a decoded message."""
    src: bytes = bytes(msg.src_addr)
    return (int.from_bytes(src[-3:], "big") << 16) | msg.src_port


def flow_id_from_columns(
    src_addr: bytes | str | ipaddress.IPv4Address | ipaddress.IPv6Address, src_port: int
) -> int:
    """Same computation from a stored row: SrcAddr as 16 bytes, text, or the address
    object a client returns (clickhouse-connect gives IPv4Address for IPv4-mapped values)."""
    addr = ipaddress.ip_address(src_addr) if isinstance(src_addr, str) else (
        ipaddress.IPv6Address(src_addr) if isinstance(src_addr, bytes) else src_addr)
    return ((int(addr) & 0xFFFFFF) << 16) | src_port


# --------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------

@dataclass
class _Pools:
    """Prefix table for one (side, family)."""

    net_hi: U64
    net_lo: U64
    mask_hi: U64
    mask_lo: U64
    plen: U64
    p: F64


@dataclass
class _HeavyHitters:
    exporter: U64
    inbound: BoolArr
    ext_slot: U64
    int_slot: U64
    ext_as: U64
    # [family 0=v4, 1=v6] x pair
    ext_hi: list[U64] = field(default_factory=list)
    ext_lo: list[U64] = field(default_factory=list)
    ext_plen: list[U64] = field(default_factory=list)
    int_hi: list[U64] = field(default_factory=list)
    int_lo: list[U64] = field(default_factory=list)
    int_plen: list[U64] = field(default_factory=list)
    p: F64 = field(default_factory=lambda: np.ones(1))


@dataclass
class _Progress:
    base: Totals
    cum_flows: list[int]
    cum_bytes: list[int]
    cum_packets: list[int]
    pos: int = 0

    def totals(self) -> Totals:
        if self.pos == 0:
            return self.base
        j = self.pos - 1
        return Totals(
            flows=self.base.flows + self.cum_flows[j],
            records=self.base.records + self.pos,
            bytes_sum=self.base.bytes_sum + self.cum_bytes[j],
            packets_sum=self.base.packets_sum + self.cum_packets[j],
        )


class FlowGenerator:
    """Deterministic GoFlow2 FlowMessage generator; see the module docstring."""

    def __init__(self, cfg: GeneratorConfig | None = None,
                 flows_per_record: int | None = None) -> None:
        self.cfg = cfg or GeneratorConfig()
        self.cfg.validate()
        self.flows_per_record = (flows_per_record if flows_per_record is not None
                                 else self.cfg.flows_per_record)
        if self.flows_per_record < 1:
            raise ValueError("flows_per_record must be >= 1")
        self._progress = _Progress(Totals(), [], [], [])
        self._block_cache: dict[int, FlowColumns] = {}
        c = self.cfg
        init = np.random.Generator(np.random.PCG64(np.random.SeedSequence([c.seed, 0xFFFFFFFF])))
        self.exporters = self._make_exporters()
        n_exp = len(self.exporters)
        self._exp_p = _zipf(n_exp, 0.5)
        self._exp_type = _u64([e.flow_type for e in self.exporters])
        samp = [_split(ipaddress.ip_address(e.address)) for e in self.exporters]
        self._exp_hi = _u64([s[0] for s in samp])
        self._exp_lo = _u64([s[1] for s in samp])
        self._exp_len = _u64([s[2] for s in samp])
        self._n_ext = len(self.exporters[0].external)
        self._n_int = len(self.exporters[0].internal)
        self._ext_ifindex = _u64([[i.ifindex for i in e.external] for e in self.exporters])
        self._int_ifindex = _u64([[i.ifindex for i in e.internal] for e in self.exporters])
        self._pools = {
            (side, fam): self._make_pool(side, fam)
            for side in ("internal", "external") for fam in ("v4", "v6")
        }
        self._svc_ports = _u64([0, *[p for p, _ in c.service_ports]])
        self._svc_p = _weights([c.ephemeral_share,
                                *[(1 - c.ephemeral_share) * w
                                  for w in _weights([w for _, w in c.service_ports])]])
        self._svc_udp = np.asarray(
            [EPHEMERAL_UDP_SHARE, *[UDP_SHARE_BY_PORT.get(p, 0.0) for p, _ in c.service_ports]],
            dtype=np.float64)
        self._flags = _u64([f for f, _ in TCP_FLAGS])
        self._flags_p = _weights([w for _, w in TCP_FLAGS])
        self._big_as = _u64([a for a, _ in c.big_ases])
        self._big_as_p = _weights([w for _, w in c.big_ases])
        excluded = {a for a, _ in c.big_ases} | {c.local_as}
        tail: list[int] = []
        for a in init.permutation(np.arange(1, 400_000, dtype=np.int64)).tolist():
            if a not in excluded and not 64496 <= a <= 65535:
                tail.append(a)
                if len(tail) == c.as_tail_size:
                    break
        self._tail_as = _u64(tail)
        self._tail_as_p = _zipf(len(tail), 1.1)
        self._hh = self._make_heavy_hitters(init)

    # -- setup ---------------------------------------------------------------------------
    def _make_exporters(self) -> list[Exporter]:
        c = self.cfg
        n_ext = max(1, c.interfaces_per_exporter // 4)
        if c.interfaces_per_exporter == 1:
            n_ext = 1
        n_int = max(1, c.interfaces_per_exporter - n_ext)
        types = (FLOW_TYPE_IPFIX, FLOW_TYPE_NETFLOW_V9, FLOW_TYPE_SFLOW5, FLOW_TYPE_IPFIX)
        out = []
        first_v6 = c.exporters - c.ipv6_exporters
        for i in range(c.exporters):
            addr: ipaddress.IPv4Address | ipaddress.IPv6Address
            if i >= first_v6:
                addr = ipaddress.IPv6Address(f"2001:db8:0:ffff::{i - first_v6 + 1:x}")
            elif i < 254:
                addr = ipaddress.IPv4Address(f"192.0.2.{i + 1}")
            else:
                addr = ipaddress.IPv4Address("198.19.252.1") + (i - 254)
            site, region = SITES[i % len(SITES)]
            ext = tuple(
                Interface(500 + j, f"et-0/0/{j}",
                          EXTERNAL_IF_DESCRIPTIONS[(i + j) % len(EXTERNAL_IF_DESCRIPTIONS)],
                          100000, "external")
                for j in range(n_ext))
            internal = tuple(
                Interface(600 + j, f"et-0/1/{j}", f"Core: spine{j % 4 + 1}-{site}",
                          40000, "internal")
                for j in range(n_int))
            out.append(Exporter(
                address=str(addr), packed=addr.packed, name=f"edge{i + 1}-{site}",
                group="edge", role="edge", site=site, region=region, tenant="network",
                flow_type=types[i % len(types)], external=ext, internal=internal))
        return out

    def _make_pool(self, side: str, fam: str) -> _Pools:
        specs = [n for n in self.cfg.networks if n.side == side and _family(n.cidr) == fam]
        nets = [ipaddress.ip_network(s.cidr) for s in specs]
        parts = [_split(n.network_address) for n in nets]
        hostmasks = [_split(n.hostmask) for n in nets]
        return _Pools(
            net_hi=_u64([p[0] for p in parts]), net_lo=_u64([p[1] for p in parts]),
            mask_hi=_u64([m[0] for m in hostmasks]), mask_lo=_u64([m[1] for m in hostmasks]),
            plen=_u64([n.prefixlen for n in nets]), p=_weights([s.weight for s in specs]))

    def _draw_addr(self, rng: np.random.Generator, pool: _Pools, n: int
                   ) -> tuple[U64, U64, U64]:
        idx = rng.choice(len(pool.p), size=n, p=pool.p)
        r_hi = rng.integers(0, 1 << 64, size=n, dtype=np.uint64, endpoint=False)
        r_lo = rng.integers(0, 1 << 64, size=n, dtype=np.uint64, endpoint=False)
        hi = pool.net_hi[idx] | (r_hi & pool.mask_hi[idx])
        lo = pool.net_lo[idx] | (r_lo & pool.mask_lo[idx])
        return hi, lo, pool.plen[idx]

    def _make_heavy_hitters(self, rng: np.random.Generator) -> _HeavyHitters:
        c = self.cfg
        h = c.heavy_hitters
        hh = _HeavyHitters(
            exporter=_u64(rng.choice(len(self.exporters), size=h, p=self._exp_p)),
            inbound=rng.random(h) < 0.7,
            ext_slot=_u64(rng.integers(0, self._n_ext, size=h)),
            int_slot=_u64(rng.integers(0, self._n_int, size=h)),
            ext_as=self._big_as[rng.choice(len(self._big_as), size=h, p=self._big_as_p)],
            p=_zipf(h, c.heavy_hitter_zipf),
        )
        for fam in ("v4", "v6"):
            e_hi, e_lo, e_pl = self._draw_addr(rng, self._pools[("external", fam)], h)
            i_hi, i_lo, i_pl = self._draw_addr(rng, self._pools[("internal", fam)], h)
            hh.ext_hi.append(e_hi)
            hh.ext_lo.append(e_lo)
            hh.ext_plen.append(e_pl)
            hh.int_hi.append(i_hi)
            hh.int_lo.append(i_lo)
            hh.int_plen.append(i_pl)
        return hh

    # -- drawing columns -----------------------------------------------------------------
    def _block(self, b: int) -> FlowColumns:
        """Columns of RNG block ``b`` with relative times (received 0, start/end negative
        offsets stored as positive ``delay``/``duration`` in the time columns)."""
        cached = self._block_cache.get(b)
        if cached is not None:
            return cached
        c = self.cfg
        n = BLOCK
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([c.seed, b])))
        k = np.arange(b * BLOCK, (b + 1) * BLOCK, dtype=np.uint64)

        is_v6 = rng.random(n) < c.ipv6_share
        hh = rng.random(n) < c.heavy_hitter_share
        hh_idx = rng.choice(c.heavy_hitters, size=n, p=self._hh.p)
        inbound = rng.random(n) < 0.5
        exporter = _u64(rng.choice(len(self.exporters), size=n, p=self._exp_p))
        ext_slot = _u64(rng.integers(0, self._n_ext, size=n))
        int_slot = _u64(rng.integers(0, self._n_int, size=n))

        # addresses: external and internal side, per family, then heavy-hitter overrides
        ext_hi = np.zeros(n, np.uint64)
        ext_lo = np.zeros(n, np.uint64)
        ext_pl = np.zeros(n, np.uint64)
        int_hi = np.zeros(n, np.uint64)
        int_lo = np.zeros(n, np.uint64)
        int_pl = np.zeros(n, np.uint64)
        for fi, (fam, sel) in enumerate((("v4", ~is_v6), ("v6", is_v6))):
            m = int(sel.sum())
            e = self._draw_addr(rng, self._pools[("external", fam)], m)
            i = self._draw_addr(rng, self._pools[("internal", fam)], m)
            ext_hi[sel], ext_lo[sel], ext_pl[sel] = e
            int_hi[sel], int_lo[sel], int_pl[sel] = i
            hsel = sel & hh
            hidx = hh_idx[hsel]
            ext_hi[hsel] = self._hh.ext_hi[fi][hidx]
            ext_lo[hsel] = self._hh.ext_lo[fi][hidx]
            ext_pl[hsel] = self._hh.ext_plen[fi][hidx]
            int_hi[hsel] = self._hh.int_hi[fi][hidx]
            int_lo[hsel] = self._hh.int_lo[fi][hidx]
            int_pl[hsel] = self._hh.int_plen[fi][hidx]
        inbound = np.where(hh, self._hh.inbound[hh_idx], inbound)
        exporter = np.where(hh, self._hh.exporter[hh_idx], exporter)
        ext_slot = np.where(hh, self._hh.ext_slot[hh_idx], ext_slot)
        int_slot = np.where(hh, self._hh.int_slot[hh_idx], int_slot)

        # AS numbers: external side from big ASes + long tail, internal side local
        ext_as = np.where(
            rng.random(n) < c.big_as_share,
            self._big_as[rng.choice(len(self._big_as), size=n, p=self._big_as_p)],
            self._tail_as[rng.choice(len(self._tail_as), size=n, p=self._tail_as_p)])
        ext_as = np.where(hh, self._hh.ext_as[hh_idx], ext_as)
        local_as = np.uint64(c.local_as)

        # ports and protocol
        svc_idx = rng.choice(len(self._svc_ports), size=n, p=self._svc_p)
        svc = self._svc_ports[svc_idx]
        eph1 = _u64(rng.integers(EPHEMERAL_LOW, EPHEMERAL_HIGH, size=n))
        eph2 = _u64(rng.integers(EPHEMERAL_LOW, EPHEMERAL_HIGH, size=n))
        server_is_dst = (rng.random(n) < 0.5) | c.unique
        svc = np.where(svc == 0, eph2, svc)
        src_port = np.where(server_is_dst, eph1, svc)
        dst_port = np.where(server_is_dst, svc, eph1)
        udp = rng.random(n) < self._svc_udp[svc_idx]
        icmp = (rng.random(n) < c.icmp_share) & (not c.unique)
        proto = np.where(udp, np.uint64(17), np.uint64(6))
        proto = np.where(icmp, np.where(is_v6, np.uint64(58), np.uint64(1)), proto)
        src_port = np.where(icmp, np.uint64(0), src_port)
        dst_port = np.where(icmp, np.uint64(0), dst_port)
        flags = self._flags[rng.choice(len(self._flags), size=n, p=self._flags_p)]
        tcp_flags = np.where(proto == 6, flags, np.uint64(0))

        # sizes
        ftype = self._exp_type[exporter]
        sflow = ftype == FLOW_TYPE_SFLOW5
        pk = 1.0 + np.floor(rng.lognormal(c.packets_mu, c.packets_sigma, size=n))
        pk = np.where(hh, pk * c.heavy_hitter_packets_factor, pk)
        packets = _u64(np.minimum(np.where(sflow, 1.0, pk), float(c.max_packets)))
        u = rng.random(n)
        lo_sz, hi_sz = float(c.min_packet_size), float(c.max_packet_size)
        small = lo_sz + rng.random(n) * min(64.0, hi_sz - lo_sz)
        mid = lo_sz + rng.random(n) * (hi_sz - lo_sz)
        large = hi_sz - rng.random(n) * min(300.0, hi_sz - lo_sz)
        avg = np.where(u < 0.35, small, np.where(u < 0.55, mid, large))
        byts = _u64(np.floor(packets.astype(np.float64) * avg))
        byts = np.clip(byts, packets * np.uint64(c.min_packet_size),
                       packets * np.uint64(c.max_packet_size))

        # forwarding, interfaces, next hop
        dropped = rng.random(n) < c.dropped_share
        ext_if = self._ext_ifindex[exporter, ext_slot]
        int_if = self._int_ifindex[exporter, int_slot]
        in_if = np.where(inbound, ext_if, int_if)
        out_if = np.where(dropped, np.uint64(0), np.where(inbound, int_if, ext_if))
        out_slot = np.where(inbound, int_slot, ext_slot)
        nh4 = np.where(inbound, np.uint64(0xC6120000), np.uint64(0xCB007100)) + out_slot + 1
        nh_hi = np.where(is_v6, np.uint64(0x20010DB800000000), np.uint64(0))
        nh_lo = np.where(is_v6, np.where(inbound, np.uint64(0xFE00000000000000),
                                         np.uint64(0xFF00000000000000)) + out_slot + 1, nh4)
        nh_len = np.where(dropped, np.uint64(0), np.where(is_v6, np.uint64(16), np.uint64(4)))

        # times (relative): export delay and flow duration, 0 for sFlow
        delay = _u64(np.where(sflow, 0.0, rng.random(n) * 10e9))
        dur = _u64(np.where(sflow, 0.0, np.minimum(rng.lognormal(7.0, 2.0, size=n), 120e3)
                            * 1e6))

        src_hi = np.where(inbound, ext_hi, int_hi)
        src_lo = np.where(inbound, ext_lo, int_lo)
        dst_hi = np.where(inbound, int_hi, ext_hi)
        dst_lo = np.where(inbound, int_lo, ext_lo)
        src_net = np.where(inbound, ext_pl, int_pl)
        dst_net = np.where(inbound, int_pl, ext_pl)
        if c.unique:
            uid = (np.uint64(c.run_id) << np.uint64(32)) | k
            high = uid >> np.uint64(16)
            src_port = uid & np.uint64(0xFFFF)
            src_hi = np.where(is_v6, np.uint64(int(UNIQUE_V6_NET.network_address) >> 64),
                              np.uint64(0))
            src_lo = np.where(is_v6, high, np.uint64(int(UNIQUE_V4_NET.network_address)) | high)
            src_net = np.where(is_v6, np.uint64(UNIQUE_V6_NET.prefixlen),
                               np.uint64(UNIQUE_V4_NET.prefixlen))

        cols = FlowColumns(
            k=k,
            type=ftype,
            sampling_rate=np.full(n, c.sampling_rate, dtype=np.uint64),
            sequence_num=((k // np.uint64(8)) + np.uint64(1)) & np.uint64(0xFFFFFFFF),
            src_hi=_u64(src_hi), src_lo=_u64(src_lo), dst_hi=_u64(dst_hi), dst_lo=_u64(dst_lo),
            addr_len=np.where(is_v6, np.uint64(16), np.uint64(4)),
            bytes=_u64(byts), packets=packets,
            sampler_hi=self._exp_hi[exporter], sampler_lo=self._exp_lo[exporter],
            sampler_len=self._exp_len[exporter],
            nh_hi=_u64(nh_hi), nh_lo=_u64(nh_lo), nh_len=_u64(nh_len),
            src_as=_u64(np.where(inbound, ext_as, local_as)),
            dst_as=_u64(np.where(inbound, local_as, ext_as)),
            src_net=_u64(src_net), dst_net=_u64(dst_net),
            in_if=_u64(in_if), out_if=_u64(out_if), proto=_u64(proto),
            src_port=_u64(src_port), dst_port=_u64(dst_port),
            forwarding_status=np.where(dropped, np.uint64(DROPPED), np.uint64(FORWARDED)),
            tcp_flags=_u64(tcp_flags),
            etype=np.where(is_v6, np.uint64(ETYPE_IPV6), np.uint64(ETYPE_IPV4)),
            time_received_ns=np.zeros(n, np.uint64),
            time_flow_start_ns=delay + dur,  # offsets before time_received_ns
            time_flow_end_ns=delay,
        )
        if len(self._block_cache) >= 2:
            self._block_cache.pop(next(iter(self._block_cache)))
        self._block_cache[b] = cols
        return cols

    def _relative_columns(self, start: int, n: int) -> FlowColumns:
        parts = []
        pos, end = start, start + n
        while pos < end:
            b = pos // BLOCK
            blk = self._block(b)
            a = pos - b * BLOCK
            z = min(end - b * BLOCK, BLOCK)
            parts.append(blk.slice(a, z))
            pos = b * BLOCK + z
        return FlowColumns.concat(parts)

    def _check_range(self, n: int, start: int) -> None:
        if n < 0 or start < 0:
            raise ValueError("n and start must be >= 0")
        if self.cfg.unique and start + n > MAX_FLOWS_PER_RUN:
            raise ValueError("unique mode supports 2^32 flows per run")

    def columns(self, n: int, start: int = 0) -> FlowColumns:
        """Columns of flows ``start .. start+n-1`` with absolute times."""
        self._check_range(n, start)
        rel = self._relative_columns(start, n)
        return self._absolute(rel)

    def _absolute(self, rel: FlowColumns) -> FlowColumns:
        c = self.cfg
        if c.time_mode == "fixed":
            recv = np.uint64(c.start_ns) + rel.k * np.uint64(c.step_ns)
        else:
            recv = np.full(len(rel), time.time_ns(), dtype=np.uint64)
        return dataclasses.replace(
            rel, time_received_ns=_u64(recv),
            time_flow_start_ns=_u64(recv - rel.time_flow_start_ns),
            time_flow_end_ns=_u64(recv - rel.time_flow_end_ns))

    def messages(self, n: int, start: int = 0) -> list[FlowMessage]:
        """Flows as FlowMessage objects (slow reference path)."""
        return self.columns(n, start).messages()

    # -- records -------------------------------------------------------------------------
    def records(self, n: int, start: int = 0) -> Iterator[bytes]:
        """Kafka record values for flows ``start .. start+n-1``: each ``varint(len) +
        message``, ``flows_per_record`` messages per record (the last one may hold fewer).

        Updates :meth:`totals` as records are handed out."""
        self._check_range(n, start)
        fpr = self.flows_per_record
        chunk = max(fpr, self.cfg.encode_chunk // fpr * fpr)
        pos, end = start, start + n
        while pos < end:
            m = min(chunk, end - pos)
            cols = self._absolute(self._relative_columns(pos, m))
            recs = encode_columns(cols, fpr)
            fl = np.minimum(np.arange(1, len(recs) + 1, dtype=np.int64) * fpr, m)
            idx = fl - 1
            prog = _Progress(
                base=self._progress.totals(),
                cum_flows=fl.tolist(),
                cum_bytes=np.cumsum(cols.bytes, dtype=np.uint64)[idx].tolist(),
                cum_packets=np.cumsum(cols.packets, dtype=np.uint64)[idx].tolist(),
            )
            self._progress = prog
            for j, rec in enumerate(recs, 1):
                prog.pos = j
                yield rec
            pos += m

    def batch(self, n: int, start: int = 0) -> list[bytes]:
        """``list(records(n, start))``."""
        return list(self.records(n, start))

    def totals(self) -> Totals:
        """Flows, records, Bytes and Packets sums handed out so far by :meth:`records`."""
        return self._progress.totals()

    def reset_totals(self) -> None:
        self._progress = _Progress(Totals(), [], [], [])

    def expected_totals(self, n: int, start: int = 0) -> Totals:
        """Count and sums for flows ``start .. start+n-1``, without encoding them."""
        self._check_range(n, start)
        flows = bytes_sum = packets_sum = 0
        pos, end = start, start + n
        while pos < end:
            b = pos // BLOCK
            blk = self._block(b)
            a = pos - b * BLOCK
            z = min(end - b * BLOCK, BLOCK)
            flows += z - a
            bytes_sum += int(blk.bytes[a:z].sum(dtype=np.uint64))
            packets_sum += int(blk.packets[a:z].sum(dtype=np.uint64))
            pos = b * BLOCK + z
        fpr = self.flows_per_record
        return Totals(flows=flows, records=-(-flows // fpr), bytes_sum=bytes_sum,
                      packets_sum=packets_sum)

    def expected_bytes_sum(self, n: int, start: int = 0) -> int:
        return self.expected_totals(n, start).bytes_sum

    # -- config for the outlet -----------------------------------------------------------
    def demo_metadata(self) -> dict[str, Any]:
        """``metadata:`` and ``networks:`` sections of the outlet config matching the
        generated exporters, interfaces and networks."""
        exporters: dict[str, Any] = {}
        for e in self.exporters:
            exporters[e.address] = {
                "name": e.name, "group": e.group, "role": e.role, "site": e.site,
                "region": e.region, "tenant": e.tenant,
                "default": {"name": "unknown", "description": "not in inventory",
                            "speed": 1000, "boundary": "undefined"},
                "if-indexes": {
                    i.ifindex: {"name": i.name, "description": i.description,
                                "speed": i.speed, "boundary": i.boundary}
                    for i in (*e.external, *e.internal)
                },
            }
        networks: dict[str, dict[str, str]] = dict(COVERING_NETWORKS)
        for s in self.cfg.networks:
            if s.name is not None:
                networks[s.cidr] = {"name": s.name, "role": s.role, "site": s.site,
                                    "region": s.region, "tenant": s.tenant}
        return {"metadata": {"exporters": exporters}, "networks": networks}


def demo_metadata(cfg: GeneratorConfig | None = None) -> dict[str, Any]:
    """See :meth:`FlowGenerator.demo_metadata`."""
    return FlowGenerator(cfg).demo_metadata()


# --------------------------------------------------------------------------------------------
# Garbage records
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GarbageRecord:
    name: str
    data: bytes
    description: str


def garbage_cases(seed: int = 0) -> list[GarbageRecord]:
    """Bad Kafka record values, each rejected by :func:`decode_record` (with
    ``max_flows=DEFAULT_MAX_FLOWS``), none holding a flow that may be stored (so "all
    valid flows stored" stays well defined when they are interleaved): a record that
    holds a valid message next to garbage is bad as a whole.

    Besides what upb rejects, the cases ClickHouse's Protobuf reader accepts although it
    should not (field number 0: all-zero phantom flows; declared fields with another wire
    type, given twice, or out of range) and records expanding to too many flows.
    """
    gen = FlowGenerator(GeneratorConfig(seed=seed, time_mode="fixed"))
    good = gen.batch(4)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0xBAD])))
    msg0 = good[0][decode_varint(good[0])[1]:]
    cases: list[GarbageRecord] = []

    # 1. inner message truncated in the middle of a field, prefix consistent with it
    cut = msg0[: len(msg0) * 2 // 3]
    while True:
        try:
            FlowMessage.FromString(cut)
        except Exception:
            break
        cut = cut[:-1]
    cases.append(GarbageRecord(
        "truncated-message", encode_varint(len(cut)) + cut,
        "a valid message cut mid-field; the varint prefix matches the cut length, so "
        "framing is fine but protobuf decoding fails"))

    # 2. zero-length record
    cases.append(GarbageRecord("zero-length", b"", "an empty Kafka record value"))

    # 3. absurd varint length
    cases.append(GarbageRecord(
        "absurd-length", encode_varint(1 << 40) + msg0,
        "varint prefix claims 2^40 bytes followed by a real message: must not allocate"))

    # 4. random bytes (redrawn until they are not accidentally valid)
    while True:
        data = rng.integers(0, 256, size=int(rng.integers(16, 256)), dtype=np.uint8).tobytes()
        try:
            decode_record(data)
        except ValueError:
            break
    cases.append(GarbageRecord("random-bytes", data, "seeded random bytes"))

    # 5. valid prefix, inner fields with invalid wire types
    bad_inner = msg0[:6] + bytes([9 << 3 | 7, 0x01]) + msg0[6:]  # field 9, wire type 7
    cases.append(GarbageRecord(
        "invalid-wire-type", encode_varint(len(bad_inner)) + bad_inner,
        "consistent prefix; inside, a tag for field 9 with wire type 7 (does not exist)"))
    grp = msg0 + bytes([6 << 3 | 3])  # start-group for field 6, never ended
    cases.append(GarbageRecord(
        "unterminated-group", encode_varint(len(grp)) + grp,
        "consistent prefix; the message ends with a start-group tag (wire type 3) for "
        "field 6 (declared bytes) that is never closed"))
    zero_field = bytes([0 << 3 | 0, 0x05]) + msg0
    cases.append(GarbageRecord(
        "field-number-zero", encode_varint(len(zero_field)) + zero_field,
        "consistent prefix; the first tag has field number 0, which is invalid"))

    # 6. prefix length exceeds the record
    cases.append(GarbageRecord(
        "prefix-exceeds-record", good[1][: len(good[1]) - 10],
        "a real record with its last 10 bytes missing: the prefix claims more bytes "
        "than the record holds"))

    # 7. a varint prefix that never ends
    cases.append(GarbageRecord(
        "unterminated-varint", b"\xff" * 12,
        "the length prefix has its continuation bit set on every byte"))

    # 8. field number 0, which ClickHouse reads as "no field" (upb rejects it)
    for n in (2, 8, 100):
        cases.append(GarbageRecord(
            f"zero-payload-{n}", encode_varint(n) + bytes(n),
            f"{n} zero bytes, framed: tags with field number 0; ClickHouse decoded them "
            "as one all-zero flow (a phantom with TimeReceived = now)"))
    cases.append(GarbageRecord(
        "type-then-zeros", _frame(b"\x08\x01" + bytes(6)),
        "type = 1 then zero bytes (field number 0): stored as a phantom flow before"))
    cases.append(GarbageRecord(
        "trailing-field-zero", _frame(msg0 + b"\x00\x01"),
        "a valid message followed by 00 01 (field 0): the real flow was stored and the "
        "garbage not counted"))

    # 9. declared fields that ClickHouse reads although upb keeps them as unknown fields
    cases.append(GarbageRecord(
        "bytes-length-delimited", _frame(_strip_field(msg0, 9) + b"\x4a\x02ab"),
        "uint64 bytes (field 9) sent length-delimited \"ab\": read as a packed varint, "
        "stored as Bytes = 98"))
    cases.append(GarbageRecord(
        "bytes-fixed64", _frame(_strip_field(msg0, 9) + b"\x49" + bytes(range(1, 9))),
        "uint64 bytes (field 9) sent as fixed64 (wire type 1)"))
    cases.append(GarbageRecord(
        "src-addr-fixed32", _frame(_strip_field(msg0, 6) + b"\x35\x0a\x00\x00\x01"),
        "bytes src_addr (field 6) sent as fixed32: read as a 4-byte address"))
    cases.append(GarbageRecord(
        "src-addr-twice", _frame(msg0 + b"\x32\x04\x0a\x00\x00\x02"),
        "src_addr given twice: upb keeps the last, ClickHouse stored an empty address"))
    cases.append(GarbageRecord(
        "uint32-overflow", _frame(_strip_field(msg0, 14) + b"\x70" + encode_varint(1 << 32)),
        "src_as (uint32) = 2^32: upb truncates it to 0, ClickHouse rejects the batch"))
    cases.append(GarbageRecord(
        "varint-overflow", _frame(_strip_field(msg0, 9) + b"\x48" + b"\xff" * 9 + b"\x7f"),
        "a 10-byte varint beyond 64 bits: upb drops the overflow, ClickHouse rejects it"))
    cases.append(GarbageRecord(
        "unknown-group", _frame(msg0 + b"\xfb\x07\x08\x01\xfc\x07"),
        "a group (wire types 3/4) in an undeclared field: upb accepts it, ClickHouse "
        "rejects the whole batch (bisection used to find such records one query at a time)"))

    # 10. more flows than one record may expand to
    cases.append(GarbageRecord(
        "too-many-flows", _frame(b"\x48\x01") * (DEFAULT_MAX_FLOWS + 1),
        f"{DEFAULT_MAX_FLOWS + 1} valid 3-byte flows in one record, more than "
        "clickhouse.maximum-flows-per-record allows by default"))
    return cases


#: ``clickhouse.maximum-flows-per-record``'s default: a record with more flows is bad.
DEFAULT_MAX_FLOWS: int = BatchConfig.maximum_flows_per_record


def _frame(message: bytes) -> bytes:
    return encode_varint(len(message)) + message


def _strip_field(message: bytes, number: int) -> bytes:
    """``message`` without declared field ``number`` (so a case adds it exactly once)."""
    m = FlowMessage.FromString(message)
    m.ClearField(FlowMessage.DESCRIPTOR.fields_by_number[number].name)
    return m.SerializeToString()


def mutate(record: bytes, rng: random.Random) -> bytes:
    """A random mutation of a record (fuzzing): a byte changed, a field injected (any
    number, wire type and value), bytes deleted or appended, a truncation, the record
    re-framed or not. The result may still be good: classify it with
    :func:`decode_record`."""
    size, pos = decode_varint(record)
    msg = bytearray(record[pos:pos + size])
    op = rng.randrange(6)
    if op == 0 and msg:
        for _ in range(rng.randint(1, 3)):
            msg[rng.randrange(len(msg))] = rng.randrange(256)
    elif op in (1, 2):
        at = rng.randrange(len(msg) + 1) if op == 1 else len(msg)
        msg[at:at] = _random_field(rng)
    elif op == 3 and msg:
        at = rng.randrange(len(msg))
        del msg[at:at + rng.randint(1, 4)]
    elif op == 4:
        msg = bytearray(msg[: rng.randrange(len(msg) + 1)])
    else:
        msg += bytes(rng.choice((b"\x00\x01", b"\x00\x00", b"\x08", rng.randbytes(3))))
    if rng.random() < 0.1:  # framing broken too
        return bytes(record[:pos] + msg)
    return _frame(bytes(msg))


def _random_field(rng: random.Random) -> bytes:
    number = rng.choice((0, 1, 3, 6, 9, 11, 14, 30, 63, 110, 127, 1000, 19000, (1 << 29) - 1,
                         rng.randrange(1, 1 << 29)))
    wire = rng.randrange(8)
    if wire == 0:
        value = encode_varint(rng.choice((0, 1, 127, 128, 1 << 32, 1 << 35, (1 << 64) - 1)))
        if rng.random() < 0.1:
            value = b"\xff" * 9 + bytes([rng.choice((0x01, 0x02, 0x7f))])
    elif wire == 2:
        n = rng.choice((0, 1, 2, 4, 16, 200))
        value = encode_varint(n) + rng.randbytes(n)
    elif wire in (1, 5):
        value = rng.randbytes(8 if wire == 1 else 4)
    else:
        value = b""
    return encode_varint(number << 3 | wire) + value


def garbage_records(seed: int = 0) -> list[bytes]:
    """The record values of :func:`garbage_cases`."""
    return [c.data for c in garbage_cases(seed)]


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------

def benchmark(n: int = 2_000_000, flows_per_record: int = 1, seed: int = 1
              ) -> dict[str, float]:
    """Measure encode rates: the vectorized path over ``n`` flows, and the FlowMessage +
    SerializeToString path over a sample."""
    import gc

    cfg = GeneratorConfig(seed=seed, time_mode="fixed", unique=True)
    gen = FlowGenerator(cfg, flows_per_record=flows_per_record)
    gc.collect()
    t0 = time.perf_counter()
    total = 0
    count = 0
    for rec in gen.records(n):
        total += len(rec)
        count += 1
    t_vec = time.perf_counter() - t0

    t0 = time.perf_counter()
    for b in range(n // BLOCK):
        gen.expected_totals(BLOCK, b * BLOCK)
    t_cols = time.perf_counter() - t0

    sample = min(n, 100_000)
    cols = gen.columns(sample)
    t0 = time.perf_counter()
    msgs = cols.messages()
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    for m in msgs:
        s = m.SerializeToString()
        _ = encode_varint(len(s)) + s
    t_ser = time.perf_counter() - t0
    return {
        "flows": n,
        "records": count,
        "avg_record_bytes": total / max(count, 1),
        "vectorized_flows_per_s": n / t_vec,
        "draw_only_flows_per_s": (n // BLOCK * BLOCK) / t_cols if t_cols else 0.0,
        "protobuf_build_flows_per_s": sample / t_build,
        "protobuf_serialize_flows_per_s": sample / t_ser,
        "protobuf_build_and_serialize_flows_per_s": sample / (t_build + t_ser),
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--bench", type=int, metavar="N", default=2_000_000,
                    help="flows to encode (default 2,000,000)")
    ap.add_argument("--flows-per-record", type=int, default=1)
    ap.add_argument("--metadata", action="store_true",
                    help="print demo metadata/networks as JSON instead")
    args = ap.parse_args(argv)
    if args.metadata:
        print(json.dumps(demo_metadata(), indent=2))
        return 0
    print(json.dumps(benchmark(args.bench, args.flows_per_record)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


_GEN_FIELDS = {f.name: f for f in dataclasses.fields(GeneratorConfig)}
_GEN_ALLOWED = ("seed", "exporters", "ipv6_exporters", "interfaces_per_exporter", "ipv6_share",
                "heavy_hitters", "heavy_hitter_share", "heavy_hitter_zipf", "ephemeral_share",
                "big_as_share", "as_tail_size", "local_as", "sampling_rate", "packets_mu",
                "packets_sigma", "icmp_share", "dropped_share", "flows_per_record")


def generator_config(overrides: Mapping[str, Any], **fixed: Any) -> GeneratorConfig:
    """GeneratorConfig from a profile's ``generator:`` section (kebab- or snake-case keys)
    plus ``fixed`` values set by the harness (run_id, unique, time_mode, ...)."""
    kwargs: dict[str, Any] = {}
    for key, value in overrides.items():
        name = str(key).replace("-", "_")
        if name not in _GEN_ALLOWED:
            raise ValueError(f"unknown generator setting {key!r} (known: "
                             f"{', '.join(k.replace('_', '-') for k in _GEN_ALLOWED)})")
        kind = _GEN_FIELDS[name].type
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"generator setting {key!r} must be a number")
        if kind == "int" and float(value) != int(value):
            raise ValueError(f"generator setting {key!r} must be an integer")
        kwargs[name] = int(value) if kind == "int" else float(value)
    kwargs.update(fixed)
    cfg = GeneratorConfig(**kwargs)
    cfg.validate()
    return cfg

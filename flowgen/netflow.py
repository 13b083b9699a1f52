"""NetFlow v5 and IPFIX packet builder, and a UDP sender, to feed a real flow collector.

Used to drive a real GoFlow2 (``tests/outlet/test_goflow2.py``): the packets are what a router
exports, so the collector's own decoding and FlowMessage encoding are exercised end to end.

Formats (all fields big-endian):

* NetFlow v5 (Cisco): a 24-byte header (version=5, count, sys_uptime ms, unix_secs,
  unix_nsecs, flow_sequence, engine_type, engine_id, sampling_interval: 2-bit mode + 14-bit
  interval) then ``count`` (at most 30) 48-byte records, IPv4 only.
* IPFIX (RFC 7011): a 16-byte message header (version=10, length, export time, sequence,
  observation domain), then sets: a template set (id 2) with an IPv4 template
  (:data:`IPFIX_TEMPLATE_V4`) and an IPv6 one (:data:`IPFIX_TEMPLATE_V6`), an options
  template set (id 3) announcing ``samplingInterval`` (IE 34) scoped by
  ``observationDomainId`` (IE 149), its options data, then one data set per template.

Flows are plain dicts (:class:`FlowFields`); missing keys are 0 (addresses ``0.0.0.0`` or
``::``).
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Iterable, Sequence
from typing import Final, TypedDict

__all__ = [
    "IPFIX_OPTIONS_TEMPLATE_ID",
    "IPFIX_TEMPLATE_V4",
    "IPFIX_TEMPLATE_V6",
    "V5_MAX_RECORDS",
    "FlowFields",
    "ipfix_packet",
    "netflow_v5_packet",
    "netflow_v5_packets",
    "send_udp",
]


class FlowFields(TypedDict, total=False):
    """One flow, with NetFlow v5 field names (IPFIX uses the same keys).

    Addresses are text (``"10.0.0.1"``; IPv6 accepted by IPFIX only); ``first``/``last``
    are router uptimes in ms (NetFlow v5 only)."""

    srcaddr: str
    dstaddr: str
    nexthop: str
    input: int
    output: int
    dPkts: int
    dOctets: int
    first: int
    last: int
    srcport: int
    dstport: int
    tcp_flags: int
    prot: int
    tos: int
    src_as: int
    dst_as: int
    src_mask: int
    dst_mask: int


# --- NetFlow v5 ------------------------------------------------------------------------

V5_HEADER: Final = struct.Struct("!HHIIIIBBH")
V5_RECORD: Final = struct.Struct("!4s4s4sHHIIIIHHxBBBHHBBxx")
V5_MAX_RECORDS: Final = 30
"""Records per NetFlow v5 packet (the format's maximum)."""

assert V5_HEADER.size == 24 and V5_RECORD.size == 48


def _v4(addr: str | None) -> bytes:
    return ipaddress.IPv4Address(addr or "0.0.0.0").packed


def _ip(addr: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(addr or "0.0.0.0")


def netflow_v5_packet(
    flows: Sequence[FlowFields],
    *,
    sys_uptime: int = 3_600_000,
    unix_secs: int | None = None,
    unix_nsecs: int = 0,
    flow_sequence: int = 0,
    engine_type: int = 0,
    engine_id: int = 0,
    sampling_interval: int = 0,
    sampling_mode: int = 0,
) -> bytes:
    """One NetFlow v5 datagram holding ``flows`` (1 to 30 of them).

    ``sampling_interval`` is the 14-bit interval (1 in N packets); ``sampling_mode`` goes in
    the top 2 bits of the same header field. ``unix_secs`` defaults to now."""
    if not 1 <= len(flows) <= V5_MAX_RECORDS:
        raise ValueError(f"a NetFlow v5 packet holds 1 to {V5_MAX_RECORDS} records")
    if not 0 <= sampling_interval < 1 << 14 or not 0 <= sampling_mode < 4:
        raise ValueError("sampling_interval is 14 bits, sampling_mode 2 bits")
    secs = int(time.time()) if unix_secs is None else unix_secs
    header = V5_HEADER.pack(
        5,
        len(flows),
        sys_uptime,
        secs,
        unix_nsecs,
        flow_sequence,
        engine_type,
        engine_id,
        sampling_mode << 14 | sampling_interval,
    )
    records = [
        V5_RECORD.pack(
            _v4(f.get("srcaddr")),
            _v4(f.get("dstaddr")),
            _v4(f.get("nexthop")),
            f.get("input", 0),
            f.get("output", 0),
            f.get("dPkts", 0),
            f.get("dOctets", 0),
            f.get("first", 0),
            f.get("last", 0),
            f.get("srcport", 0),
            f.get("dstport", 0),
            f.get("tcp_flags", 0),
            f.get("prot", 0),
            f.get("tos", 0),
            f.get("src_as", 0),
            f.get("dst_as", 0),
            f.get("src_mask", 0),
            f.get("dst_mask", 0),
        )
        for f in flows
    ]
    return header + b"".join(records)


def netflow_v5_packets(
    flows: Sequence[FlowFields],
    *,
    records_per_packet: int = V5_MAX_RECORDS,
    flow_sequence: int = 0,
    **header: int,
) -> list[bytes]:
    """``flows`` split into NetFlow v5 datagrams of ``records_per_packet`` records; each
    header's flow_sequence counts the flows sent before it (as routers do). ``header``
    takes the other keyword arguments of :func:`netflow_v5_packet`."""
    packets = []
    for start in range(0, len(flows), records_per_packet):
        chunk = flows[start : start + records_per_packet]
        packets.append(netflow_v5_packet(chunk, flow_sequence=flow_sequence + start, **header))
    return packets


# --- IPFIX -----------------------------------------------------------------------------

# (information element id, length in bytes, FlowFields key)
_Field = tuple[int, int, str]
IPFIX_TEMPLATE_V4: Final[tuple[_Field, ...]] = (
    (8, 4, "srcaddr"),  # sourceIPv4Address
    (12, 4, "dstaddr"),  # destinationIPv4Address
    (15, 4, "nexthop"),  # ipNextHopIPv4Address
    (10, 4, "input"),  # ingressInterface
    (14, 4, "output"),  # egressInterface
    (2, 8, "dPkts"),  # packetDeltaCount
    (1, 8, "dOctets"),  # octetDeltaCount
    (7, 2, "srcport"),  # sourceTransportPort
    (11, 2, "dstport"),  # destinationTransportPort
    (6, 1, "tcp_flags"),  # tcpControlBits
    (4, 1, "prot"),  # protocolIdentifier
    (5, 1, "tos"),  # ipClassOfService
    (16, 4, "src_as"),  # bgpSourceAsNumber
    (17, 4, "dst_as"),  # bgpDestinationAsNumber
    (9, 1, "src_mask"),  # sourceIPv4PrefixLength
    (13, 1, "dst_mask"),  # destinationIPv4PrefixLength
)
IPFIX_TEMPLATE_V6: Final[tuple[_Field, ...]] = (
    (27, 16, "srcaddr"),  # sourceIPv6Address
    (28, 16, "dstaddr"),  # destinationIPv6Address
    (62, 16, "nexthop"),  # ipNextHopIPv6Address
    *(f for f in IPFIX_TEMPLATE_V4 if f[0] not in (8, 12, 15, 9, 13)),
    (29, 1, "src_mask"),  # sourceIPv6PrefixLength
    (30, 1, "dst_mask"),  # destinationIPv6PrefixLength
)
IPFIX_TEMPLATE_V4_ID: Final = 256
IPFIX_TEMPLATE_V6_ID: Final = 257
IPFIX_OPTIONS_TEMPLATE_ID: Final = 258
_IPFIX_HEADER: Final = struct.Struct("!HHIII")
_SET_HEADER: Final = struct.Struct("!HH")


def _ipfix_set(set_id: int, body: bytes) -> bytes:
    pad = -len(body) % 4
    return _SET_HEADER.pack(set_id, _SET_HEADER.size + len(body) + pad) + body + b"\0" * pad


def _template_record(template_id: int, fields: Sequence[_Field]) -> bytes:
    out = struct.pack("!HH", template_id, len(fields))
    return out + b"".join(struct.pack("!HH", ie, size) for ie, size, _ in fields)


def _encode_value(flow: FlowFields, key: str, size: int) -> bytes:
    if key in ("srcaddr", "dstaddr", "nexthop"):
        text = flow.get(key) or ("::" if size == 16 else "0.0.0.0")
        assert isinstance(text, str)
        addr = ipaddress.ip_address(text)
        if len(addr.packed) != size:
            raise ValueError(f"{key}={addr} does not fit a {size}-byte field")
        return addr.packed
    value = flow.get(key, 0)
    assert isinstance(value, int)
    return value.to_bytes(size, "big")


def ipfix_packet(
    flows: Sequence[FlowFields],
    *,
    export_time: int | None = None,
    sequence: int = 0,
    observation_domain_id: int = 0,
    sampling_interval: int | None = None,
    templates: bool = True,
) -> bytes:
    """One IPFIX message: templates (unless ``templates=False``: the collector must have
    them already), the sampling-interval option when ``sampling_interval`` is given, then
    the flows (IPv4 and IPv6 ones in separate data sets). ``export_time`` defaults to now."""
    sets: list[bytes] = []
    if templates:
        sets.append(
            _ipfix_set(
                2,
                _template_record(IPFIX_TEMPLATE_V4_ID, IPFIX_TEMPLATE_V4)
                + _template_record(IPFIX_TEMPLATE_V6_ID, IPFIX_TEMPLATE_V6),
            )
        )
    if sampling_interval is not None:
        if templates:
            # options template: id, field count 2, scope field count 1;
            # scope observationDomainId (149, 4 B), option samplingInterval (34, 4 B)
            body = struct.pack("!HHHHHHH", IPFIX_OPTIONS_TEMPLATE_ID, 2, 1, 149, 4, 34, 4)
            sets.append(_ipfix_set(3, body))
        sets.append(
            _ipfix_set(
                IPFIX_OPTIONS_TEMPLATE_ID,
                struct.pack("!II", observation_domain_id, sampling_interval),
            )
        )
    by_family: dict[int, list[FlowFields]] = {4: [], 6: []}
    for f in flows:
        by_family[_ip(f.get("srcaddr")).version].append(f)
    for version, template_id, fields in (
        (4, IPFIX_TEMPLATE_V4_ID, IPFIX_TEMPLATE_V4),
        (6, IPFIX_TEMPLATE_V6_ID, IPFIX_TEMPLATE_V6),
    ):
        if by_family[version]:
            body = b"".join(
                _encode_value(f, key, size) for f in by_family[version] for _, size, key in fields
            )
            sets.append(_ipfix_set(template_id, body))
    payload = b"".join(sets)
    secs = int(time.time()) if export_time is None else export_time
    header = _IPFIX_HEADER.pack(
        10, _IPFIX_HEADER.size + len(payload), secs, sequence, observation_domain_id
    )
    return header + payload


# --- sending ---------------------------------------------------------------------------


def send_udp(
    packets: Iterable[bytes],
    port: int,
    host: str = "127.0.0.1",
    *,
    interval: float = 0.0,
) -> int:
    """Send ``packets`` as UDP datagrams to ``host:port`` from one socket (one exporter
    address and port, as a router would), ``interval`` seconds apart. Returns the count."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        for packet in packets:
            sock.sendto(packet, (host, port))
            sent += 1
            if interval:
                time.sleep(interval)
    return sent

"""Unit tests for outlet.protoscan, the compiled record validator in front of the engine.

The reference is flowgen's ``decode_record`` (upb plus ``schema_problem``), written
independently of the kernel; the engine's side is tested in test_codec.py.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from flowgen.generator import (
    DEFAULT_MAX_FLOWS,
    FlowGenerator,
    GeneratorConfig,
    decode_record,
    encode_varint,
    garbage_cases,
    mutate,
)
from outlet import protoscan
from outlet.pb.flow_pb2 import FlowMessage

EMPTY, FRAMING, PROTOBUF, SCHEMA, TOO_MANY = (
    protoscan.EMPTY,
    protoscan.FRAMING,
    protoscan.PROTOBUF,
    protoscan.SCHEMA,
    protoscan.TOO_MANY_FLOWS,
)


def frame(m: bytes) -> bytes:
    return encode_varint(len(m)) + m


def code(record: bytes, max_flows: int = 1000, *, framing_only: bool = False) -> int:
    return int(protoscan.scan([record], max_flows, framing_only=framing_only)[0][0])


M = FlowMessage(
    bytes=1500, packets=2, src_addr=bytes(4), time_received_ns=10**18
).SerializeToString()


def test_framing() -> None:
    assert code(frame(M)) == 1
    assert code(frame(M) * 3) == 3
    big = FlowMessage(bytes=1, next_hop=bytes(200)).SerializeToString()
    assert len(big) > 127 and code(frame(big)) == 1  # 2-byte varint prefix
    assert code(b"") == EMPTY
    assert code(b"\x00") == FRAMING  # zero-length message
    assert code(frame(M)[:-1]) == FRAMING  # truncated message
    assert code(frame(M) + b"\x01") == FRAMING  # trailing truncated frame
    assert code(b"\x80") == FRAMING  # truncated varint
    assert code(encode_varint(1 << 40) + M) == FRAMING  # absurd length
    assert code(encode_varint(protoscan.MAX_MESSAGE_SIZE + 1) + bytes(10)) == FRAMING
    assert code(b"\xff" * 11 + b"\x01") == FRAMING  # varint longer than 10 bytes
    assert code(frame(M) + b"\x00") == FRAMING
    assert code(bytes([0x80 | len(M), 0x00]) + M) == 1  # non-minimal size varint: valid
    assert code(bytes([0x80 | len(M), 0x80, 0x80, 0x80, 0x80, 0x00]) + M) == 1


def test_flows_per_record_cap() -> None:
    three = frame(b"\x48\x01")  # bytes = 1, 3 bytes framed
    assert code(three * 1000, 1000) == 1000
    assert code(three * 1001, 1000) == TOO_MANY
    assert code(three * 1001, 1000, framing_only=True) == TOO_MANY
    assert code(three * 5, 1) == TOO_MANY
    # one 1 MB record of 3-byte frames (333,333 flows): refused at the cap, in one pass
    assert code(three * 333_333, 1000) == TOO_MANY


def test_wire_format_rules() -> None:
    assert code(frame(bytes(2))) == PROTOBUF  # field number 0
    assert code(frame(bytes(100))) == PROTOBUF
    assert code(frame(b"\x08\x01" + bytes(4))) == PROTOBUF
    assert code(frame(M + b"\x00\x01")) == PROTOBUF
    assert code(frame(M + b"\x4f")) == PROTOBUF  # wire type 7
    assert code(frame(M + b"\xfb\x07\x08\x01\xfc\x07")) == PROTOBUF  # group, undeclared field
    assert code(frame(M + b"\xc8\x01" + b"\xff" * 9 + b"\x02")) == PROTOBUF  # > 64 bits
    assert code(frame(M + b"\xf8\xff\xff\xff\x7f\x01")) == PROTOBUF  # tag >= 2^32
    assert code(frame(M + b"\xc8\x80\x80\x80\x80\x00\x05")) == PROTOBUF  # 6-byte tag
    assert code(frame(M + b"\xfa\x07\x84\x80\x80\x80\x80\x00abcd")) == PROTOBUF  # 6-byte len
    assert code(frame(M + b"\xfa\x07\x05ab")) == PROTOBUF  # length past the message
    # valid: undeclared fields of every wire type, the largest field number, a 10-byte
    # varint that fits in 64 bits, a non-minimal 5-byte length
    ok = (
        b"\xf8\x07\x05" + b"\xfa\x07\x03abc" + b"\xf9\x07" + bytes(8) + b"\xfd\x07" + bytes(4)
        + b"\xf8\xff\xff\xff\x0f\x01"
        + b"\xb8\x01" + b"\xff" * 9 + b"\x01"
        + b"\xfa\x07\x84\x80\x80\x80\x00abcd"
    )
    assert code(frame(M + ok)) == 1
    assert code(frame(b"\xc8\x80\x80\x80\x00\x05")) == 1  # field 9 in a non-minimal tag


def test_schema_rules() -> None:
    def without(field: str) -> bytes:
        m = FlowMessage.FromString(M)
        m.ClearField(field)
        return m.SerializeToString()

    assert code(frame(without("bytes") + b"\x4a\x02ab")) == SCHEMA  # uint64 as "ab"
    assert code(frame(without("bytes") + b"\x49" + bytes(8))) == SCHEMA  # as fixed64
    assert code(frame(without("bytes") + b"\x4d" + bytes(4))) == SCHEMA  # as fixed32
    assert code(frame(without("src_addr") + b"\x30\x05")) == SCHEMA  # bytes as varint
    assert code(frame(M + b"\x48\x07")) == SCHEMA  # bytes given twice
    assert code(frame(M + b"\x32\x04\x01\x02\x03\x04")) == SCHEMA  # src_addr twice
    assert code(frame(M + b"\x70" + encode_varint((1 << 32) - 1))) == 1  # uint32 max
    assert code(frame(M + b"\x70" + encode_varint(1 << 32))) == SCHEMA  # src_as >= 2^32
    assert code(frame(M + b"\x70\x80\x80\x80\x80\x80\x00")) == 1  # non-minimal, < 2^32
    assert code(frame(M + b"\x08" + encode_varint((1 << 64) - 1))) == 1  # enum: any int64
    # undeclared fields may repeat, with any wire type
    assert code(frame(M + b"\xf8\x07\x01\xfa\x07\x01x\xf8\x07\x02")) == 1


def test_field_kinds_follow_flow_proto() -> None:
    kinds = protoscan.FIELD_KINDS
    declared = {f.number for f in FlowMessage.DESCRIPTOR.fields}
    assert {int(n) for n in np.flatnonzero(kinds)} == declared
    assert kinds[9] != kinds[6]  # bytes (uint64) vs src_addr (bytes)


def test_corpus_and_scan_agree_with_the_reference() -> None:
    cases = garbage_cases(3)
    codes, data = protoscan.scan([c.data for c in cases], DEFAULT_MAX_FLOWS)
    assert data == b"".join(c.data for c in cases)
    assert {c.name: int(k) for c, k in zip(cases, codes, strict=True) if k > 0} == {}
    good = FlowGenerator(GeneratorConfig(seed=4, ipv6_share=0.5, flows_per_record=3)).batch(900)
    codes, _ = protoscan.scan(good, DEFAULT_MAX_FLOWS)
    assert codes.tolist() == [len(decode_record(r)) for r in good]


@pytest.mark.parametrize("seed", [1, 2])
def test_mutations_agree_with_the_reference(seed: int) -> None:
    """Fuzz: the compiled scan and the independent reference classify alike."""
    rng = random.Random(seed)
    base = FlowGenerator(GeneratorConfig(seed=seed, time_mode="fixed")).batch(64)
    records = [mutate(rng.choice(base), rng) for _ in range(4000)]
    codes, _ = protoscan.scan(records, DEFAULT_MAX_FLOWS)
    mismatches = []
    for r, c in zip(records, codes.tolist(), strict=True):
        try:
            expected = len(decode_record(r, DEFAULT_MAX_FLOWS))
        except ValueError:
            expected = 0
        if (c > 0) != (expected > 0) or (c > 0 and c != expected):
            mismatches.append((r.hex(), c, expected))
    assert mismatches == []
    assert 0 < sum(c > 0 for c in codes.tolist()) < len(records)  # both kinds covered


def test_compiled_equals_python() -> None:
    """The kernel's Python source (what the reader reads) gives what the machine code does."""
    rng = random.Random(9)
    base = FlowGenerator(GeneratorConfig(seed=9)).batch(16)
    records = [mutate(rng.choice(base), rng) for _ in range(300)]
    records += [c.data for c in garbage_cases()]
    lens = np.fromiter(map(len, records), dtype=np.int64)
    buf = np.frombuffer(b"".join(records), dtype=np.uint8)
    for framing_only in (False, True):
        fast = np.empty(len(records), dtype=np.int64)
        slow = np.empty(len(records), dtype=np.int64)
        protoscan._scan(buf, lens, protoscan.FIELD_KINDS, 1000, framing_only, fast)
        protoscan._scan.py_func(buf, lens, protoscan.FIELD_KINDS, 1000, framing_only, slow)
        assert fast.tolist() == slow.tolist()


def test_empty_batch() -> None:
    codes, data = protoscan.scan([], 10)
    assert codes.tolist() == [] and data == b""
    codes, _ = protoscan.scan([b"", b""], 10)
    assert codes.tolist() == [EMPTY, EMPTY]

"""Protobuf base-128 varints and the length-delimited framing GoFlow2 writes to Kafka.

One codec for the outlet and the flow generator (``flowgen`` imports it): a record is one
or more ``varint(len(message)) + message``.
"""

from __future__ import annotations

MAX_VARINT_BYTES = 10  # a uint64


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if value < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """(value, next position); raises ValueError on a truncated or over-long varint."""
    result = 0
    shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 7 * MAX_VARINT_BYTES:
            raise ValueError(f"varint longer than {MAX_VARINT_BYTES} bytes")


def frame(message: bytes) -> bytes:
    """One length-delimited message: ``varint(len) + message``."""
    return encode_varint(len(message)) + message


def split_frames(record: bytes) -> list[bytes]:
    """The messages of a length-delimited record; ValueError when the framing does not
    cover the record exactly."""
    out: list[bytes] = []
    pos = 0
    while pos < len(record):
        size, pos = decode_varint(record, pos)
        if size > len(record) - pos:
            raise ValueError(f"message length {size} exceeds the {len(record) - pos} bytes left")
        out.append(record[pos:pos + size])
        pos += size
    return out

"""The one varint codec (outlet/varint.py), shared with the flow generator."""

from __future__ import annotations

import pytest

from outlet.varint import decode_varint, encode_varint, frame, split_frames


def test_round_trip_and_framing() -> None:
    for v in (0, 1, 127, 128, 300, 2**32, 2**64 - 1):
        enc = encode_varint(v)
        assert decode_varint(enc) == (v, len(enc))
    assert split_frames(frame(b"ab") + frame(b"") + frame(b"x" * 200)) == [b"ab", b"", b"x" * 200]


@pytest.mark.parametrize("record", [b"\x80", b"\xff" * 11 + b"\x01", frame(b"abc")[:-1]])
def test_bad_framing_is_an_error(record: bytes) -> None:
    with pytest.raises(ValueError):
        split_frames(record)

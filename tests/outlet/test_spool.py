"""The on-disk spool: append/peek/ack, restart, torn tails, corruption, full policies, fsync."""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import pytest

from outlet.config import SpoolConfig
from outlet.spool import HEADER_SIZE, Spool, encode_record


def cfg(path: Path, **kw: object) -> SpoolConfig:
    base: dict[str, object] = {"path": str(path), "max_bytes": 1 << 30}
    base.update(kw)
    return SpoolConfig(**base)  # type: ignore[arg-type]


def payload(i: int, size: int = 1000) -> bytes:
    return (f"native-{i}-".encode() * (size // 8 + 1))[:size]


def token(i: int) -> str:
    return f"flows/0:{i * 10:06d}-{i * 10 + 9:06d}"


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("seg-*.spool"))


def drain(sp: Spool) -> list[str]:
    out = []
    while (b := sp.peek_oldest()) is not None:
        out.append(b.token)
        assert sp.ack_oldest(b)
    return out


def test_append_peek_ack(tmp_path: Path) -> None:
    sp = Spool(cfg(tmp_path), "azure")
    assert sp.peek_oldest() is None and sp.batches == 0 and sp.bytes == 0
    for i in range(3):
        assert sp.append(token(i), 10 + i, payload(i)).accepted
    assert sp.batches == 3
    assert sp.flows == 33
    assert sp.bytes == 3 * (HEADER_SIZE + len(token(0)) + 1000)
    b = sp.peek_oldest()
    assert b is not None
    assert (b.token, b.rows, b.native) == (token(0), 10, payload(0))
    assert sp.peek_oldest() == b  # peek does not consume
    assert sp.ack_oldest(b)
    assert not sp.ack_oldest(b)  # already gone: no second removal
    assert [t for t in drain(sp)] == [token(1), token(2)]
    assert sp.batches == 0 and sp.bytes == 0 and sp.oldest_age_seconds == 0
    sp.close()


def test_oldest_age(tmp_path: Path) -> None:
    now = [1000.0]
    sp = Spool(cfg(tmp_path), "azure", clock=lambda: now[0])
    sp.append(token(0), 1, payload(0))
    now[0] += 42.5
    sp.append(token(1), 1, payload(1))
    assert sp.oldest_age_seconds == pytest.approx(42.5)
    sp.ack_oldest()
    assert sp.oldest_age_seconds == pytest.approx(0.0)


def test_restart_keeps_unacked_and_not_acked(tmp_path: Path) -> None:
    sp = Spool(cfg(tmp_path), "azure", segment_bytes=4096)
    for i in range(10):
        sp.append(token(i), i, payload(i))
    for _ in range(4):
        sp.ack_oldest()
    sp.close()
    sp2 = Spool(cfg(tmp_path), "azure", segment_bytes=4096)
    assert sp2.batches == 6
    assert drain(sp2) == [token(i) for i in range(4, 10)]
    sp2.close()
    sp3 = Spool(cfg(tmp_path), "azure", segment_bytes=4096)
    assert sp3.batches == 0
    assert len(segments(tmp_path)) <= 1  # fully acked segments are deleted


def test_restart_without_close_sigkill_like(tmp_path: Path) -> None:
    sp = Spool(cfg(tmp_path, fsync="never"), "azure")
    for i in range(5):
        sp.append(token(i), 1, payload(i))
    sp.ack_oldest()
    # no close(): the process dies; appends were flushed to the OS on each call
    sp2 = Spool(cfg(tmp_path), "azure")
    assert drain(sp2) == [token(i) for i in range(1, 5)]


def test_segments_roll_and_are_deleted_when_acked(tmp_path: Path) -> None:
    sp = Spool(cfg(tmp_path), "azure", segment_bytes=3000)
    for i in range(9):
        sp.append(token(i), 1, payload(i))  # ~1050 bytes each: 2 per segment
    assert len(segments(tmp_path)) == 5
    for _ in range(4):
        sp.ack_oldest()
    assert len(segments(tmp_path)) == 3
    drain(sp)
    assert len(segments(tmp_path)) == 1
    assert segments(tmp_path)[0].stat().st_size == 0


@pytest.mark.parametrize("cut", [5, HEADER_SIZE, HEADER_SIZE + 300])
def test_torn_tail_is_truncated(tmp_path: Path, cut: int) -> None:
    sp = Spool(cfg(tmp_path), "azure")
    for i in range(3):
        sp.append(token(i), 1, payload(i))
    sp.close()
    (seg,) = segments(tmp_path)
    good = seg.stat().st_size
    half = encode_record(token(3), 1, payload(3), 0)[:cut]
    with open(seg, "ab") as f:
        f.write(half)
    sp2 = Spool(cfg(tmp_path), "azure")
    assert sp2.truncated_bytes == cut
    assert sp2.corrupt_records == 0
    assert seg.stat().st_size == good
    assert sp2.batches == 3
    sp2.append(token(4), 1, payload(4))  # appends after the truncation point
    sp2.close()
    sp3 = Spool(cfg(tmp_path), "azure")
    assert drain(sp3) == [token(0), token(1), token(2), token(4)]


def _flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


@pytest.mark.parametrize("where", ["payload", "length", "magic"])
def test_corrupt_record_skipped_on_open(tmp_path: Path, where: str) -> None:
    sp = Spool(cfg(tmp_path), "azure")
    sizes: list[int] = []
    for i in range(4):
        sp.append(token(i), 1, payload(i))
        sizes.append(sp.bytes - sum(sizes))
    sp.close()
    (seg,) = segments(tmp_path)
    start = sizes[0]  # record 1
    offset = {"payload": start + HEADER_SIZE + 500, "length": start + 8, "magic": start}[where]
    _flip(seg, offset)
    sp2 = Spool(cfg(tmp_path), "azure")
    assert sp2.corrupt_records == 1
    assert sp2.truncated_bytes == 0
    assert drain(sp2) == [token(0), token(2), token(3)]


def test_corrupt_record_detected_at_read_is_never_returned(tmp_path: Path) -> None:
    sp = Spool(cfg(tmp_path), "azure")
    sp.append(token(0), 1, payload(0))
    sp.append(token(1), 1, payload(1))
    (seg,) = segments(tmp_path)
    _flip(seg, HEADER_SIZE + 100)  # bit rot after open
    b = sp.peek_oldest()
    assert b is not None and b.token == token(1) and b.native == payload(1)
    assert sp.corrupt_records == 1


def test_damaged_tail_last_record_is_truncated_and_counted(tmp_path: Path) -> None:
    sp = Spool(cfg(tmp_path), "azure")
    for i in range(3):
        sp.append(token(i), 1, payload(i))
    sp.close()
    (seg,) = segments(tmp_path)
    _flip(seg, seg.stat().st_size - 10)
    sp2 = Spool(cfg(tmp_path), "azure")
    assert sp2.corrupt_records == 1
    assert drain(sp2) == [token(0), token(1)]


def test_damaged_cursor_replays_from_start(tmp_path: Path) -> None:
    sp = Spool(cfg(tmp_path), "azure")
    for i in range(3):
        sp.append(token(i), 1, payload(i))
    sp.ack_oldest()
    sp.close()
    _flip(tmp_path / "cursor", 6)
    sp2 = Spool(cfg(tmp_path), "azure")
    # replaying an acked batch again is harmless (its token deduplicates)
    assert drain(sp2) == [token(0), token(1), token(2)]


def test_drop_oldest_accounting_is_exact(tmp_path: Path) -> None:
    rec = HEADER_SIZE + len(token(0)) + 1000
    sp = Spool(cfg(tmp_path, max_bytes=3 * rec), "azure")
    total_dropped_b = total_dropped_f = 0
    for i in range(10):
        r = sp.append(token(i), 100 + i, payload(i))
        assert r.accepted
        total_dropped_b += r.dropped_batches
        total_dropped_f += r.dropped_flows
        assert sp.bytes <= 3 * rec
    assert total_dropped_b == 7
    assert total_dropped_f == sum(100 + i for i in range(7))
    assert drain(sp) == [token(7), token(8), token(9)]


def test_drop_of_batch_in_flight_counts_only_if_its_replay_fails(tmp_path: Path) -> None:
    rec = HEADER_SIZE + len(token(0)) + 1000
    sp = Spool(cfg(tmp_path, max_bytes=2 * rec), "azure")
    sp.append(token(0), 5, payload(0))
    sp.append(token(1), 6, payload(1))
    b = sp.peek_oldest()
    assert b is not None
    r = sp.append(token(2), 7, payload(2))
    assert (r.dropped_batches, r.dropped_flows) == (0, 0)  # token 0 is in flight
    assert sp.release(b) == (1, 5)  # its replay failed: now it is lost
    b1 = sp.peek_oldest()
    assert b1 is not None and b1.token == token(1)
    sp.append(token(3), 8, payload(3))  # drops token 1 while in flight
    assert not sp.ack_oldest(b1)  # stored after all: not counted
    assert sp.release(b1) == (0, 0)
    assert drain(sp) == [token(2), token(3)]


def test_block_signals_full_and_accepts_after_ack(tmp_path: Path) -> None:
    rec = HEADER_SIZE + len(token(0)) + 1000
    sp = Spool(cfg(tmp_path, max_bytes=2 * rec, when_full="block"), "azure")
    assert sp.append(token(0), 1, payload(0)).accepted
    assert sp.append(token(1), 1, payload(1)).accepted
    r = sp.append(token(2), 1, payload(2))
    assert r.full and not r.accepted and r.dropped_batches == 0
    assert sp.batches == 2
    sp.ack_oldest()
    assert sp.append(token(2), 1, payload(2)).accepted
    assert drain(sp) == [token(1), token(2)]


def test_oversized_batch_accepted_when_empty(tmp_path: Path) -> None:
    sp = Spool(cfg(tmp_path, max_bytes=100, when_full="block"), "azure")
    assert sp.append(token(0), 1, payload(0)).accepted
    assert sp.append(token(1), 1, payload(1)).full
    sp2 = Spool(cfg(tmp_path / "b", max_bytes=100), "azure")
    sp2.append(token(0), 1, payload(0))
    r = sp2.append(token(1), 2, payload(1))
    assert (r.dropped_batches, r.dropped_flows) == (1, 1)
    assert drain(sp2) == [token(1)]


def test_fsync_policies(tmp_path: Path) -> None:
    now = [0.0]
    batch = Spool(cfg(tmp_path / "b", fsync="batch"), "x")
    never = Spool(cfg(tmp_path / "n", fsync="never"), "x")
    interval = Spool(
        cfg(tmp_path / "i", fsync="interval", fsync_interval=1.0), "x", monotonic=lambda: now[0]
    )
    for i in range(5):
        for sp in (batch, never, interval):
            sp.append(token(i), 1, payload(i))
        now[0] += 0.3
    assert batch.fsyncs == 5
    assert never.fsyncs == 0
    assert interval.fsyncs == 1  # at 1.2 s
    interval.append(token(5), 1, payload(5))  # at 1.5 s: not due, stays pending
    assert interval.fsyncs == 1
    interval.sync_if_due()
    assert interval.fsyncs == 1
    now[0] += 1.0
    interval.sync_if_due()
    assert interval.fsyncs == 2
    interval.sync_if_due()  # nothing pending
    assert interval.fsyncs == 2
    interval.close()
    never.close()
    assert never.fsyncs == 0


def test_thread_safety(tmp_path: Path) -> None:
    sp = Spool(cfg(tmp_path, fsync="never"), "azure", segment_bytes=20_000)
    n = 400
    seen: list[str] = []

    def writer() -> None:
        for i in range(n):
            sp.append(token(i), 1, payload(i, 200))

    def reader() -> None:
        while len(seen) < n:
            b = sp.peek_oldest()
            if b is None:
                continue
            seen.append(b.token)
            assert sp.ack_oldest(b)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen == [token(i) for i in range(n)]
    assert sp.batches == 0


def test_unknown_version_is_not_returned(tmp_path: Path) -> None:
    raw = bytearray(encode_record(token(0), 1, payload(0), 0))
    struct.pack_into("<B", raw, 4, 99)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "seg-0000000000000000.spool").write_bytes(bytes(raw))
    sp = Spool(cfg(tmp_path), "azure")
    assert sp.batches == 0 and sp.peek_oldest() is None
    assert sp.corrupt_records == 1
    seg = tmp_path / "seg-0000000000000000.spool"
    assert not seg.exists() or seg.stat().st_size == 0


def test_records_keep_their_seal_time_and_ambiguity_across_restarts(tmp_path: Path) -> None:
    sp = Spool(cfg(tmp_path), "azure", clock=lambda: 1_800_000_100.0)
    sp.append(token(0), 1, payload(0), sealed_at=1_800_000_000.5, ambiguous=True)
    sp.append(token(1), 1, payload(1))
    sp.close()
    again = Spool(cfg(tmp_path), "azure")
    first = again.peek_oldest()
    assert first is not None and (first.sealed_at, first.ambiguous) == (1_800_000_000.5, True)
    assert first.native == payload(0)
    assert again.ack_oldest(first)
    second = again.peek_oldest()
    assert second is not None and (second.sealed_at, second.ambiguous) == (1_800_000_100.0, False)


def test_version_1_records_are_replayed_as_ambiguous(tmp_path: Path) -> None:
    """A spool written before issue 12 (32-byte headers): replayed with its tokens, as
    records whose earlier attempts may have stored them, sealed when appended."""
    tok = token(7).encode()
    body = tok + payload(7)
    pre = struct.pack("<4sBBHIQQ", b"OSPL", 1, 0, len(tok), len(body), 3, 1_700_000_000 * 10**9)
    crc = zlib.crc32(body, zlib.crc32(pre))
    (tmp_path / "seg-0000000000000000.spool").write_bytes(pre + struct.pack("<I", crc) + body)
    sp = Spool(cfg(tmp_path), "azure")
    b = sp.peek_oldest()
    assert b is not None and (b.token, b.rows, b.native) == (token(7), 3, payload(7))
    assert (b.sealed_at, b.ambiguous) == (1_700_000_000.0, True)
    sp.append(token(8), 1, payload(8))  # new records are version 2 in the same segment
    assert sp.ack_oldest(b)
    assert drain(sp) == [token(8)]

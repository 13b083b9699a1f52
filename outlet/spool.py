"""A durable on-disk spool of encoded batches for one additional destination.

Layout of ``spool.path`` (one directory per destination):

- ``seg-<16 digits>.spool``: append-only segment files. A record is a 32-byte header
  followed by its payload::

      magic "OSPL" | version u8 | flags u8 | token length u16 | payload length u32 |
      flows u64 | appended-at (unix ns) u64 | CRC32 u32           (little endian)
      payload = deduplication token (UTF-8) + the batch's Native bytes

  The CRC32 covers the header's first 28 bytes and the payload, so a damaged length,
  flow count or token is caught as surely as damaged data.
- ``cursor``: where the oldest record not yet acknowledged starts (segment, offset),
  with its own CRC, replaced atomically (write, fsync, rename, fsync of the directory).

On open, every segment from the cursor on is scanned and every record verified. A record
cut short at the end of the last segment (the outlet was killed mid-append) is truncated;
a damaged record is skipped and counted (the scan re-synchronizes on the next record whose
checksum verifies), and is never returned. peek_oldest() verifies the checksum again when
it reads a record back, so bit rot after the scan is caught too.

Write errors (ENOSPC, EIO, a read-only or vanished directory) never escape: ``append``
returns them in its result (``AppendResult.error``, the batch not stored) after cutting
the segment back to its last good record (segments are written unbuffered, so nothing
half-written is flushed later); if even that fails, the next append starts a new segment.
A failed cursor update or segment deletion is retried at the next head movement (until
then a restart replays acknowledged batches again: their tokens make that a repeat). A
spool that could not be opened at all is opened (scanned) again at the next append.
Every such failure is reported to ``on_error(operation, error)``, set by its owner
(outlet/fallback.py: logged once, counted, shown in /readyz).

The API is synchronous and thread-safe; the outlet calls it through trio.to_thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from outlet import diskio
from outlet.config import SpoolConfig

log = logging.getLogger(__name__)

MAGIC = b"OSPL"
VERSION = 1
_PRE = struct.Struct("<4sBBHIQQ")  # everything in the header but the CRC
HEADER = struct.Struct("<4sBBHIQQI")
HEADER_SIZE = HEADER.size  # 32
_CURSOR = struct.Struct("<4sQQI")
_CURSOR_MAGIC = b"OSPC"
MAX_SEGMENT_BYTES = 64 << 20
MIN_SEGMENT_BYTES = 1 << 20
_SEG_PREFIX, _SEG_SUFFIX = "seg-", ".spool"

ErrorHook = Callable[[str, OSError], None]  # (operation, error)


def _ignore_error(operation: str, exc: OSError) -> None:
    log.debug("spool %s failed: %s", operation, exc)


def default_segment_bytes(max_bytes: int) -> int:
    """64 MiB segments, smaller for small spools (disk use may exceed max-bytes by one)."""
    return max(MIN_SEGMENT_BYTES, min(MAX_SEGMENT_BYTES, max_bytes // 8))


def encode_record(token: str, rows: int, native: bytes, appended_ns: int) -> bytes:
    """One record, header and payload, as it is written to a segment."""
    tok = token.encode()
    if len(tok) > 0xFFFF:
        raise ValueError("deduplication token longer than 65535 bytes")
    payload_len = len(tok) + len(native)
    pre = _PRE.pack(MAGIC, VERSION, 0, len(tok), payload_len, rows, appended_ns)
    crc = zlib.crc32(native, zlib.crc32(tok, zlib.crc32(pre)))
    return pre + struct.pack("<I", crc) + tok + native


@dataclass(frozen=True)
class _Rec:
    seg: int
    off: int
    size: int  # header + payload
    rows: int
    token: str
    appended: float  # unix seconds

    @property
    def id(self) -> tuple[int, int]:
        return (self.seg, self.off)


@dataclass(frozen=True)
class SpooledBatch:
    """A verified record read back from the spool."""

    id: tuple[int, int]  # (segment, offset): identifies the record for ack/release
    token: str
    rows: int
    native: bytes
    appended_at: float  # unix seconds


@dataclass(frozen=True)
class AppendResult:
    """accepted=False: 'block' mode and no room (wait for acks, then append again), or a
    write error (``error``: the batch is not stored). Drops happen in either case."""

    accepted: bool
    dropped_batches: int = 0
    dropped_flows: int = 0
    dropped_tokens: tuple[str, ...] = ()
    error: OSError | None = None

    @property
    def full(self) -> bool:
        return not self.accepted and self.error is None


@dataclass(frozen=True)
class _Parsed:
    rec: _Rec | None
    short: bool  # ran past the end of the data (a torn write if nothing valid follows)


def _parse(data: bytes | memoryview, pos: int, seg: int) -> _Parsed:
    end = len(data)
    if end - pos < HEADER_SIZE:
        return _Parsed(None, True)
    magic, version, _flags, tok_len, payload_len, rows, ns, crc = HEADER.unpack_from(data, pos)
    if magic != MAGIC or version != VERSION or tok_len > payload_len:
        return _Parsed(None, False)
    stop = pos + HEADER_SIZE + payload_len
    if stop > end:
        return _Parsed(None, True)
    body = data[pos + HEADER_SIZE : stop]
    if zlib.crc32(body, zlib.crc32(data[pos : pos + _PRE.size])) != crc:
        return _Parsed(None, False)
    try:
        token = bytes(body[:tok_len]).decode()
    except UnicodeDecodeError:
        return _Parsed(None, False)
    return _Parsed(_Rec(seg, pos, HEADER_SIZE + payload_len, rows, token, ns / 1e9), False)


@dataclass
class _Scan:
    records: list[_Rec]
    valid_end: int  # where the last valid record ends (truncation point of a torn tail)
    corrupt: int
    torn: bool


def _scan(data: bytes, start: int, seg: int) -> _Scan:
    """Every valid record from `start`; skips damaged ones by re-synchronizing."""
    out = _Scan([], start, 0, False)
    pos = start
    view = memoryview(data)
    while pos < len(data):
        parsed = _parse(view, pos, seg)
        if parsed.rec is not None:
            out.records.append(parsed.rec)
            pos += parsed.rec.size
            out.valid_end = pos
            continue
        nxt = _resync(view, data, pos + 1, seg)
        if nxt is None:
            # Nothing valid after this point: a write cut short, or a damaged tail.
            if parsed.short:
                out.torn = True
            else:
                out.corrupt += 1
            break
        out.corrupt += 1
        pos = nxt
    return out


def _resync(view: memoryview, data: bytes, pos: int, seg: int) -> int | None:
    while True:
        pos = data.find(MAGIC, pos)
        if pos < 0:
            return None
        if _parse(view, pos, seg).rec is not None:
            return pos
        pos += 1


def _seg_name(idx: int) -> str:
    return f"{_SEG_PREFIX}{idx:016d}{_SEG_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The spool of one destination; see the module docstring."""

    def __init__(
        self,
        cfg: SpoolConfig,
        name: str,
        *,
        segment_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if cfg.when_full not in ("drop-oldest", "block"):
            raise ValueError(f"spool when-full: unknown mode {cfg.when_full!r}")
        if cfg.fsync not in ("batch", "interval", "never"):
            raise ValueError(f"spool fsync: unknown mode {cfg.fsync!r}")
        self.cfg = cfg
        self.name = name
        self.dir = Path(cfg.path)
        self.segment_bytes = segment_bytes or default_segment_bytes(cfg.max_bytes)
        self._clock = clock
        self._mono = monotonic
        self._lock = threading.RLock()
        self._index: deque[_Rec] = deque()
        self._bytes = 0
        self._flows = 0
        self._inflight: tuple[int, int] | None = None
        self._inflight_dropped: _Rec | None = None
        self._active_seg = 0
        self._active_size = 0
        self._active: BinaryIO | None = None
        self._last_sync = monotonic()
        self._dirty = False
        self.corrupt_records = 0
        self.truncated_bytes = 0
        self.fsyncs = 0
        self._closed = False
        self.on_error: ErrorHook = _ignore_error
        self.open_error: OSError | None = None  # could not be opened: retried at each append
        self._head_failed = False  # the last cursor update or segment deletion failed
        self.vanished_batches = 0  # records whose segment was deleted under the spool
        self.vanished_flows = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as exc:
            log.error("spool %s: cannot open %s", self.name, diskio.describe(exc, self.dir))
            self._not_opened(exc)

    # -- open and recovery ---------------------------------------------------------
    def _segments(self) -> list[int]:
        out = []
        for p in self.dir.iterdir():
            n = p.name
            if n.startswith(_SEG_PREFIX) and n.endswith(_SEG_SUFFIX):
                digits = n[len(_SEG_PREFIX) : -len(_SEG_SUFFIX)]
                if digits.isdigit():
                    out.append(int(digits))
        return sorted(out)

    def _read_cursor(self) -> tuple[int, int] | None:
        try:
            raw = (self.dir / "cursor").read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) != _CURSOR.size:
            log.warning("spool %s: cursor file has a bad size; replaying from the start", self.name)
            return None
        magic, seg, off, crc = _CURSOR.unpack(raw)
        if magic != _CURSOR_MAGIC or zlib.crc32(raw[: _CURSOR.size - 4]) != crc:
            log.warning("spool %s: cursor file is damaged; replaying from the start", self.name)
            return None
        return int(seg), int(off)

    def _open(self) -> None:
        segs = self._segments()
        cursor = self._read_cursor()
        start_seg, start_off = cursor if cursor is not None else (segs[0] if segs else 0, 0)
        for idx in segs:
            if idx < start_seg:  # fully acknowledged; deletion was cut short
                (self.dir / _seg_name(idx)).unlink(missing_ok=True)
        live = [i for i in segs if i >= start_seg]
        for n, idx in enumerate(live):
            path = self.dir / _seg_name(idx)
            data = path.read_bytes()
            start = min(start_off, len(data)) if idx == start_seg else 0
            scan = _scan(data, start, idx)
            if scan.corrupt:
                log.error(
                    "spool %s: %d damaged record(s) skipped in %s", self.name, scan.corrupt, path
                )
            self.corrupt_records += scan.corrupt
            self._index.extend(scan.records)
            last = n == len(live) - 1
            if last and scan.valid_end < len(data) and len(data) > start:
                self.truncated_bytes += len(data) - scan.valid_end
                log.warning(
                    "spool %s: truncating %d byte(s) of %s at %d (%s)",
                    self.name, len(data) - scan.valid_end, path.name, scan.valid_end,
                    "torn write" if scan.torn else "damaged tail",
                )
                with open(path, "r+b") as f:
                    f.truncate(scan.valid_end)
                    os.fsync(f.fileno())
        self._bytes = sum(r.size for r in self._index)
        self._flows = sum(r.rows for r in self._index)
        if live:
            self._active_seg = live[-1]
        else:
            self._active_seg = start_seg
        self._open_active()
        if not self._index:
            self._reset_if_empty()
        if self._index:
            log.info(
                "spool %s: %d batch(es), %d flow(s), %d byte(s) to replay",
                self.name, len(self._index), self._flows, self._bytes,
            )

    def _not_opened(self, exc: OSError) -> None:
        """Forget what a failed open read: the next append scans the directory again."""
        self.open_error = exc
        self._index.clear()
        self._bytes = self._flows = 0
        if self._active is not None:
            with contextlib.suppress(OSError):
                self._active.close()
            self._active = None

    def _open_active(self) -> None:
        path = self.dir / _seg_name(self._active_seg)
        created = not path.exists()
        # Unbuffered: a failed write leaves nothing behind to be flushed later.
        self._active = open(path, "ab", buffering=0)  # noqa: SIM115 - kept open across calls
        self._active_size = self._active.tell()
        if created and self.cfg.fsync != "never":
            _fsync_dir(self.dir)

    # -- durability helpers --------------------------------------------------------
    def _write_cursor(self, seg: int, off: int) -> None:
        pre = _CURSOR.pack(_CURSOR_MAGIC, seg, off, 0)[: _CURSOR.size - 4]
        raw = pre + struct.pack("<I", zlib.crc32(pre))
        tmp = self.dir / "cursor.tmp"
        with open(tmp, "wb", buffering=0) as f:
            diskio.write_all(f.fileno(), raw)
            if self.cfg.fsync != "never":
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / "cursor")
        if self.cfg.fsync != "never":
            _fsync_dir(self.dir)

    def _sync_active(self) -> None:
        assert self._active is not None
        self._active.flush()
        os.fsync(self._active.fileno())
        self.fsyncs += 1
        self._last_sync = self._mono()
        self._dirty = False

    def sync(self) -> None:
        """fsync pending appends now (the 'interval' policy calls this when due)."""
        with self._lock:
            if self._dirty and self._active is not None and self.cfg.fsync != "never":
                self._sync_reporting()

    def sync_if_due(self) -> None:
        """For the 'interval' policy: fsync if data is pending for fsync_interval or more."""
        with self._lock:
            if (
                self.cfg.fsync == "interval"
                and self._dirty
                and self._active is not None
                and self._mono() - self._last_sync >= self.cfg.fsync_interval
            ):
                self._sync_reporting()

    def _sync_reporting(self) -> None:
        """fsync; a failure is reported and the data stays pending (tried again)."""
        try:
            self._sync_active()
        except OSError as exc:
            self.on_error("fsync", exc)

    # -- head movement -------------------------------------------------------------
    def _head_moved(self) -> None:
        """Persist the new read position and delete segments nobody needs any more; a
        write error is reported, and the next head movement tries again."""
        try:
            self._persist_head()
        except OSError as exc:
            self._head_failed = True
            self.on_error("cursor", exc)
        else:
            self._head_failed = False

    def _persist_head(self) -> None:
        if not self._index:
            self._reset_if_empty()
            return
        head = self._index[0]
        self._write_cursor(head.seg, head.off)
        for idx in self._segments():
            if idx < head.seg:
                (self.dir / _seg_name(idx)).unlink(missing_ok=True)

    def _reset_if_empty(self) -> None:
        """Nothing left: start a fresh segment and delete the old ones (reclaims disk)."""
        old = self._segments()
        if old == [self._active_seg] and self._active_size == 0:
            self._write_cursor(self._active_seg, 0)
            return
        if self._active is not None:
            self._active.close()
            self._active = None
        self._active_seg = max([self._active_seg, *old]) + 1
        self._write_cursor(self._active_seg, 0)  # first: a crash now replays nothing
        for idx in old:
            (self.dir / _seg_name(idx)).unlink(missing_ok=True)
        self._open_active()
        self._dirty = False

    def _pop_head(self) -> _Rec:
        rec = self._index.popleft()
        self._bytes -= rec.size
        self._flows -= rec.rows
        return rec

    # -- API -------------------------------------------------------------------------
    def append(self, token: str, rows: int, native: bytes) -> AppendResult:
        """Append one batch; see AppendResult. A spool always accepts one batch when empty."""
        now_ns = int(self._clock() * 1e9)
        record = encode_record(token, rows, native, now_ns)
        size = len(record)
        with self._lock:
            self._check_open()
            dropped: list[_Rec] = []
            if self._index and self._bytes + size > self.cfg.max_bytes:
                if self.cfg.when_full == "block":
                    return AppendResult(False)
                while self._index and self._bytes + size > self.cfg.max_bytes:
                    rec = self._pop_head()
                    if rec.id == self._inflight:
                        self._inflight_dropped = rec  # counted only if its replay fails
                    else:
                        dropped.append(rec)
                self._head_moved()
            try:
                off = self._write(record)
            except OSError as exc:
                self.on_error("append", exc)
                return _result(False, dropped, exc)
            self._active_size += size
            rec = _Rec(self._active_seg, off, size, rows, token, now_ns / 1e9)
            self._index.append(rec)
            self._bytes += size
            self._flows += rows
            if self.cfg.fsync == "interval":
                self.sync_if_due()
            return _result(True, dropped)

    def _write(self, record: bytes) -> int:
        """Write one record at the end of the active segment (fsynced if 'batch'); its
        offset. On failure nothing of it stays for the next append to follow."""
        self._ensure_active()
        if self._active_size > 0 and self._active_size + len(record) > self.segment_bytes:
            self._roll()
        assert self._active is not None
        off = self._active_size
        try:
            diskio.write_all(self._active.fileno(), record)
            self._dirty = True
            if self.cfg.fsync == "batch":
                self._sync_active()
        except OSError:
            self._cut_back(off)
            raise
        return off

    def _ensure_active(self) -> None:
        """Opened, and a segment open for appends (after a failed open, roll or cut-back)."""
        if self.open_error is not None:  # a spool that failed to open: scan it now
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._open()
            except OSError as exc:
                self._not_opened(exc)
                raise
            self.open_error = None
        self._check_vanished()
        if self._active is None:  # a failed roll, reset or cut-back: start a segment
            self.dir.mkdir(parents=True, exist_ok=True)
            self._open_active()

    def check_writable(self) -> bool:
        """Whether the spool can write now, proven by a small real write (the cursor);
        for a spool that failed and has nothing to append. A failure is reported."""
        with self._lock:
            self._check_open()
            try:
                self._ensure_active()
            except OSError as exc:
                self.on_error("probe", exc)
                return False
            self._head_moved()
            return self.healthy

    def _check_vanished(self) -> None:
        """The active segment deleted under us (the directory removed): its records, and
        those of every other deleted segment, are lost; counted, and a new segment starts."""
        if self._active is None or os.fstat(self._active.fileno()).st_nlink > 0:
            return
        with contextlib.suppress(OSError):
            self._active.close()
        self._active = None
        self._active_size = 0
        gone = {r.seg for r in self._index if not (self.dir / _seg_name(r.seg)).exists()}
        lost = [r for r in self._index if r.seg in gone]
        log.error(
            "spool %s: %s was deleted with %d batch(es) in it; they are lost",
            self.name, self.dir / _seg_name(self._active_seg), len(lost),
        )
        self._forget(lost)

    def _forget(self, lost: list[_Rec]) -> None:
        """Records whose data is gone: counted as vanished, never replayed."""
        if not lost:
            return
        ids = {r.id for r in lost}
        self._index = deque(r for r in self._index if r.id not in ids)
        self._bytes = sum(r.size for r in self._index)
        self._flows = sum(r.rows for r in self._index)
        self.vanished_batches += len(lost)
        self.vanished_flows += sum(r.rows for r in lost)
        if self._inflight in ids:
            self._inflight = None
            self._inflight_dropped = None
        self._head_moved()

    def _cut_back(self, off: int) -> None:
        """Truncate the active segment to `off`; if that fails too, leave the segment (its
        records stay readable, the scan of a restart skips the damaged tail) for a new one."""
        assert self._active is not None
        try:
            os.ftruncate(self._active.fileno(), off)
        except OSError:
            with contextlib.suppress(OSError):
                self._active.close()
            self._active = None
            self._active_seg += 1
            self._active_size = 0

    def _roll(self) -> None:
        assert self._active is not None
        if self.cfg.fsync != "never" and self._dirty:
            self._sync_active()
        self._active.close()
        self._active = None
        self._active_seg += 1
        self._active_size = 0
        self._open_active()

    def peek_oldest(self) -> SpooledBatch | None:
        """The oldest verified batch (marked in flight until ack or release), or None."""
        with self._lock:
            self._check_open()
            while self._index:
                rec = self._index[0]
                if not (self.dir / _seg_name(rec.seg)).exists():
                    self._forget([r for r in self._index if r.seg == rec.seg])
                    continue
                data = self._read(rec)
                parsed = _parse(data, 0, rec.seg) if data is not None else _Parsed(None, True)
                if data is None or parsed.rec is None or parsed.rec.size != rec.size:
                    self.corrupt_records += 1
                    log.error(
                        "spool %s: record at %s:%d failed verification; skipped",
                        self.name, _seg_name(rec.seg), rec.off,
                    )
                    self._pop_head()
                    self._head_moved()
                    continue
                self._inflight = rec.id
                self._inflight_dropped = None
                tok_len = len(rec.token.encode())
                return SpooledBatch(
                    rec.id, rec.token, rec.rows, data[HEADER_SIZE + tok_len :], rec.appended
                )
            return None

    def _read(self, rec: _Rec) -> bytes | None:
        try:
            with open(self.dir / _seg_name(rec.seg), "rb") as f:
                f.seek(rec.off)
                return f.read(rec.size)
        except OSError:
            return None

    def ack_oldest(self, batch: SpooledBatch | None = None) -> bool:
        """The oldest batch (or `batch`, if it still is the oldest) is stored: remove it.

        Returns False when `batch` is no longer in the spool (drop-oldest removed it while
        it was being replayed; it was stored after all, so it is not counted as dropped).
        """
        with self._lock:
            self._check_open()
            if batch is not None and (not self._index or self._index[0].id != batch.id):
                if self._inflight == batch.id:
                    self._inflight = None
                    self._inflight_dropped = None
                return False
            if not self._index:
                return False
            self._pop_head()
            self._inflight = None
            self._inflight_dropped = None
            self._head_moved()
            return True

    def release(self, batch: SpooledBatch) -> tuple[int, int]:
        """A replay of `batch` failed; it stays the oldest. Returns (batches, flows) to
        count as dropped now if drop-oldest removed it while it was in flight."""
        with self._lock:
            if self._inflight != batch.id:
                return (0, 0)
            self._inflight = None
            rec, self._inflight_dropped = self._inflight_dropped, None
            return (1, rec.rows) if rec is not None else (0, 0)

    def has_room(self, nbytes: int) -> bool:
        """Would a record of `nbytes` payload be accepted without dropping anything?"""
        with self._lock:
            return not self._index or self._bytes + HEADER_SIZE + nbytes <= self.cfg.max_bytes

    @property
    def healthy(self) -> bool:
        """Opened, a segment open for appends, and the last head movement persisted."""
        with self._lock:
            return self.open_error is None and self._active is not None and not self._head_failed

    @property
    def bytes(self) -> int:
        with self._lock:
            return self._bytes

    @property
    def batches(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def flows(self) -> int:
        with self._lock:
            return self._flows

    @property
    def oldest_age_seconds(self) -> float:
        with self._lock:
            if not self._index:
                return 0.0
            return max(0.0, self._clock() - self._index[0].appended)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"spool {self.name} is closed")

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._active is not None:
                if self._dirty and self.cfg.fsync != "never":
                    self._sync_reporting()
                with contextlib.suppress(OSError):
                    self._active.close()
                self._active = None


def _result(accepted: bool, dropped: list[_Rec], error: OSError | None = None) -> AppendResult:
    return AppendResult(
        accepted, len(dropped), sum(r.rows for r in dropped), tuple(r.token for r in dropped),
        error,
    )

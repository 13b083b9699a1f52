"""A ClickHouse HTTP-interface server that executes on an embedded chDB engine.

Why: no modern ClickHouse server can be installed here, yet the outlet, the chaos harness
and the load tests need a real ClickHouse (same SQL, formats, MergeTree, deduplication)
behind the ClickHouse HTTP protocol that clickhouse-connect speaks. chDB is the ClickHouse
engine as a library; this module puts the HTTP interface in front of it.

Design notes (measured, see the report in the project notes):
- Every chDB ``Connection`` on the same data path is an independent session (own settings,
  current database, temporary tables) and connections run queries in parallel with the GIL
  released. Opening one costs ~0.2 ms, so requests without ``session_id`` borrow one from a
  small pool and requests with ``session_id`` get a dedicated one. No global engine lock:
  ``/ping`` and queries keep answering while a long insert streams.
- URL settings are applied with ``SET`` on the borrowed connection and diffed against what
  that connection already carries (reset with ``SET x = DEFAULT``), so nothing leaks across
  requests and the steady state (a client sending the same settings each time) costs no
  extra statement.
- INSERT bodies are de-chunked and decompressed incrementally, the ``... FORMAT <name>``
  statement is split off and the data is streamed into ``send_insert`` in large pieces:
  no per-row Python, constant memory.
- ``X-ClickHouse-Summary`` carries what the engine reports. For a deduplicated insert that
  is ``written_rows`` = the rows sent, exactly like a ClickHouse server (the engine counts
  rows as they enter the insert pipeline, before the table drops a duplicate part), so a
  client cannot tell a deduplicated insert from its response. The engine's logs can, as
  on a server with its default configuration: ``system.query_log`` (each query, with its
  ``log_comment`` setting) and ``system.part_log`` (a ``NewPart`` row per part, error 389
  when deduplicated), flushed every second here (servers default to 7.5 s), kept a day.
  The HTTP ``query_id`` parameter only names the response (chDB cannot take a query id):
  clients find their queries in the logs by ``log_comment``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import gzip
import hmac
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import lz4.frame
import zstandard

log = logging.getLogger("chserver")

EXIT_DATA_DIR_IN_USE = 3

# URL parameters that belong to the HTTP layer, not to the query's settings.
HTTP_ONLY_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "session_id",
        "session_timeout",
        "session_check",
        "query_id",
        "user",
        "password",
        "quota_key",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "client_protocol_version",
        "enable_http_compression",
        "http_zlib_compression_level",
        "http_native_compression_disable_checksumming_on_decompress",
        "http_wait_end_of_query",
        "http_response_buffer_size",
        "role",
        "stacktrace",
        "max_query_size",
    }
)

_SETTING_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE_RE = re.compile(r"Code: (\d+)\.")
_NAME_RE = re.compile(r"\(([A-Z][A-Z0-9_]+)\)\s*$")
# Tokens that matter when looking for the FORMAT clause of an INSERT: quoted literals and
# identifiers are skipped, VALUES/SELECT mean "no streaming", FORMAT <name> splits.
_INSERT_SCAN_RE = re.compile(
    rb"'(?:[^'\\]|\\.|'')*'|`[^`]*`|\"[^\"]*\"|(?i:\b(VALUES|SELECT)\b)|(?i:\bFORMAT\s+([A-Za-z0-9_]+))",
    re.DOTALL,
)
_LEADING_RE = re.compile(r"^(?:\s+|--[^\n]*\n|/\*.*?\*/)*", re.DOTALL)
_TRAILING_FORMAT_RE = re.compile(
    r"\bFORMAT\s+([A-Za-z0-9_]+)\s*(?:\bSETTINGS\b[^;]*)?;?\s*$", re.IGNORECASE
)
_RESULT_KEYWORDS = frozenset(
    {"SELECT", "WITH", "SHOW", "DESC", "DESCRIBE", "EXISTS", "EXPLAIN", "CHECK", "("}
)
# Statements that change connection state: without a session the connection is dropped
# afterwards instead of going back to the pool.
_STATEFUL_KEYWORDS = frozenset({"SET", "USE"})
_CREATE_TEMP_RE = re.compile(r"\s*CREATE\s+TEMPORARY\b", re.IGNORECASE)
_WS = b" \t\r\n\f\v"
_APPEND_PIECE = 1 << 18
_MAX_TEXT_BODY = 256 << 20

_HTTP_STATUS_BY_CODE = {
    # 400: the request itself is bad
    6: 400, 25: 400, 26: 400, 27: 400, 36: 400, 38: 400, 41: 400, 62: 400, 72: 400,
    167: 400, 168: 400, 223: 400, 271: 400, 456: 400, 457: 400,
    # 404: something named does not exist
    46: 404, 47: 404, 50: 404, 56: 404, 60: 404, 63: 404, 73: 404, 81: 404, 115: 404,
    # auth
    516: 516,
    48: 501,
}  # fmt: skip

_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNames": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
    "TSVWithNames": "text/tab-separated-values; charset=UTF-8",
    "TSVWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "CSVWithNamesAndTypes": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "JSONCompactEachRow": "application/x-ndjson; charset=UTF-8",
}
_BINARY_FORMATS = frozenset(
    {"Native", "RowBinary", "RowBinaryWithNames", "RowBinaryWithNamesAndTypes", "Arrow",
     "ArrowStream", "Parquet", "ORC", "Avro", "Protobuf", "MsgPack", "CapnProto"}
)  # fmt: skip
# chDB's Python wrapper turns these "formats" into Python objects: refuse them.
_PYTHON_ONLY_FORMATS = frozenset({"dataframe", "datastore", "arrowtable"})


class ChError(Exception):
    """A ClickHouse-style error: numeric code, name and message, sent like the server does."""

    def __init__(self, code: int, message: str, name: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.name = name

    @classmethod
    def from_engine(cls, exc: BaseException) -> ChError:
        """Turn a chDB exception (text contains ``Code: N. DB::Exception: ...``) into ours."""
        text = str(exc)
        m = _CODE_RE.search(text)
        if m is None:
            return cls(1001, f"Code: 1001. DB::Exception: {text.strip()}. (STD_EXCEPTION)")
        body = text[m.start() :].strip()
        nm = _NAME_RE.search(body)
        return cls(int(m.group(1)), body, nm.group(1) if nm else "")

    @classmethod
    def make(cls, code: int, name: str, message: str) -> ChError:
        return cls(code, f"Code: {code}. DB::Exception: {message}. ({name})", name)

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS_BY_CODE.get(self.code, 500)


class ClientGone(Exception):
    """The client closed the connection or sent a truncated body."""


# --------------------------------------------------------------------------------------
# Engine: chDB connections (sessions), pool and per-connection state
# --------------------------------------------------------------------------------------


def _quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


class EngineConn:
    """One chDB connection plus the state we put on it (settings, current database)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.settings: dict[str, str] = {}
        self.ignored: set[str] = set()
        self.database = "default"
        self.lock = threading.Lock()
        self.dirty = False  # carries state a sessionless request must not leak
        self.last_used = time.monotonic()

    def run(self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        try:
            return self.raw.query(sql, fmt, params=params or {})
        except Exception as exc:
            raise ChError.from_engine(exc) from None

    def prepare(self, settings: dict[str, str], database: str) -> None:
        """Make this connection carry exactly ``settings`` and ``database``.

        Only the difference to the previous request is sent. Settings chDB does not know
        (code 115) are skipped so any client setting is accepted, as the brief requires.
        """
        wanted = {k: v for k, v in settings.items() if k not in self.ignored}
        parts = [f"{k} = DEFAULT" for k in self.settings if k not in wanted]
        parts += [
            f"{k} = {_quote_string(v)}" for k, v in wanted.items() if self.settings.get(k) != v
        ]
        if parts:
            try:
                self.run("SET " + ", ".join(parts))
            except ChError as err:
                if err.code != 115:
                    raise
                self._prepare_one_by_one(wanted)
            else:
                self.settings = wanted
        if database != self.database:
            self.run(f"USE {_quote_ident(database)}")
            self.database = database

    def _prepare_one_by_one(self, wanted: dict[str, str]) -> None:
        for k in list(self.settings):
            if k not in wanted:
                self.run(f"SET {k} = DEFAULT")
                del self.settings[k]
        for k, v in wanted.items():
            if self.settings.get(k) == v:
                continue
            try:
                self.run(f"SET {k} = {_quote_string(v)}")
            except ChError as err:
                if err.code != 115:
                    raise
                log.info("ignoring setting unknown to chDB: %s", k)
                self.ignored.add(k)
                self.settings.pop(k, None)
            else:
                self.settings[k] = v

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()


@dataclass
class Session:
    """A ``session_id`` bound to its own chDB connection; expires after idle timeout."""

    conn: EngineConn
    timeout: float
    busy: int = 0


# Server configuration handed to the engine: the query and part logs a ClickHouse server
# keeps by default (the outlet reads them to count deduplicated inserts), kept one day.
ENGINE_CONFIG = """<clickhouse>
  <query_log>
    <database>system</database>
    <table>query_log</table>
    <flush_interval_milliseconds>1000</flush_interval_milliseconds>
    <ttl>event_date + INTERVAL 1 DAY DELETE</ttl>
  </query_log>
  <part_log>
    <database>system</database>
    <table>part_log</table>
    <flush_interval_milliseconds>1000</flush_interval_milliseconds>
    <ttl>event_date + INTERVAL 1 DAY DELETE</ttl>
  </part_log>
</clickhouse>
"""


class Engine:
    """Owns the chDB data path: a pool of connections and the named sessions."""

    POOL_MAX_IDLE = 16

    def __init__(self, path: str) -> None:
        from chdb.state import sqlitelike

        config = os.path.join(path, "chserver-config.xml")
        with open(config, "w") as f:
            f.write(ENGINE_CONFIG)
        uri = f"{path}?config-file={config}"
        self._connect: Callable[[], Any] = lambda: sqlitelike.Connection(uri)
        self._mu = threading.Lock()
        self._idle: list[EngineConn] = []
        self._sessions: dict[str, Session] = {}
        self._closed = False
        first = EngineConn(self._connect())  # raises Code: 36 when the path is in use
        self.timezone = first.run("SELECT timezone()").bytes().decode().strip()
        self.version = first.run("SELECT version()").bytes().decode().strip()
        self._idle.append(first)

    def acquire(self) -> EngineConn:
        with self._mu:
            if self._closed:
                raise ChError.make(210, "NETWORK_ERROR", "server is shutting down")
            if self._idle:
                return self._idle.pop()
        try:
            return EngineConn(self._connect())
        except Exception as exc:
            raise ChError.from_engine(exc) from None

    def release(self, conn: EngineConn, reusable: bool = True) -> None:
        conn.last_used = time.monotonic()
        with self._mu:
            if reusable and not self._closed and len(self._idle) < self.POOL_MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    @contextlib.contextmanager
    def borrow(self, session_id: str | None, session_timeout: float) -> Iterator[EngineConn]:
        """Yield the connection for a request: the session's own, or a pooled one."""
        if not session_id:
            conn = self.acquire()
            ok = False
            try:
                yield conn
                ok = True
            finally:
                self.release(conn, reusable=ok and not conn.dirty)
            return
        with self._mu:
            sess = self._sessions.get(session_id)
            if sess is None:
                sess = Session(EngineConn(self._connect()), session_timeout)
                self._sessions[session_id] = sess
            sess.busy += 1
            sess.timeout = session_timeout
        try:
            if not sess.conn.lock.acquire(timeout=60):
                raise ChError.make(
                    373,
                    "SESSION_IS_LOCKED",
                    f"Session {session_id} is locked by a concurrent client",
                )
            try:
                yield sess.conn
            finally:
                sess.conn.last_used = time.monotonic()
                sess.conn.lock.release()
        finally:
            with self._mu:
                sess.busy -= 1

    def expire_sessions(self) -> None:
        now = time.monotonic()
        dead: list[EngineConn] = []
        with self._mu:
            for sid, sess in list(self._sessions.items()):
                if sess.busy == 0 and now - sess.conn.last_used > sess.timeout:
                    del self._sessions[sid]
                    dead.append(sess.conn)
        for conn in dead:
            conn.close()

    def close(self) -> None:
        with self._mu:
            self._closed = True
            conns = self._idle + [s.conn for s in self._sessions.values()]
            self._idle = []
            self._sessions = {}
        for conn in conns:
            conn.close()


# --------------------------------------------------------------------------------------
# Request body: de-chunking, decompression, statement/data split
# --------------------------------------------------------------------------------------


def _read_exact(rfile: Any, n: int) -> bytes:
    data = rfile.read(n)
    if data is None or len(data) != n:
        raise ClientGone("connection closed in the middle of the request body")
    return bytes(data)


def raw_body(rfile: Any, headers: Any, state: dict[str, bool]) -> Iterator[bytes]:
    """Yield the request body as sent (chunked or Content-Length), in pieces.

    ``state['done']`` becomes True once the whole body was read, so the connection may be
    kept alive; otherwise the handler closes it.
    """
    te = (headers.get("Transfer-Encoding") or "").lower()
    if "chunked" in te:
        while True:
            line = rfile.readline(65537)
            if not line:
                raise ClientGone("connection closed while reading a chunk header")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ChError.make(
                    33, "CANNOT_READ_ALL_DATA", "Invalid chunked transfer encoding"
                ) from None
            if size == 0:
                while True:  # trailers
                    t = rfile.readline(65537)
                    if not t:
                        raise ClientGone("connection closed while reading trailers")
                    if t in (b"\r\n", b"\n"):
                        break
                state["done"] = True
                return
            while size > 0:
                piece = _read_exact(rfile, min(size, 1 << 20))
                size -= len(piece)
                yield piece
            _read_exact(rfile, 2)
    length = int(headers.get("Content-Length") or 0)
    while length > 0:
        piece = _read_exact(rfile, min(length, 1 << 20))
        length -= len(piece)
        yield piece
    state["done"] = True


def _multi_frame(pieces: Iterable[bytes], factory: Callable[[], Any]) -> Iterator[bytes]:
    """Decompress a stream of concatenated frames/members (LZ4 frames, zstd, gzip)."""
    dec = factory()
    started = False
    for piece in pieces:
        buf = piece
        while buf:
            out = dec.decompress(buf)
            started = True
            if out:
                yield bytes(out)
            if dec.eof:
                buf = dec.unused_data
                dec = factory()
                started = False
            else:
                buf = b""
    if started and not dec.eof:
        raise ChError.make(271, "CANNOT_DECOMPRESS", "Compressed request body is truncated")


def _deflate(pieces: Iterable[bytes]) -> Iterator[bytes]:
    it = iter(pieces)
    first = b""
    for p in it:
        first = p
        if p:
            break
    if not first:
        return
    zlib_header = (
        len(first) >= 2 and (first[0] & 0x0F) == 8 and (first[0] * 256 + first[1]) % 31 == 0
    )
    dec = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
    yield dec.decompress(first)
    for p in it:
        yield dec.decompress(p)
    yield dec.flush()


def decoded_body(pieces: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """Undo the request's Content-Encoding incrementally."""
    enc = encoding.strip().lower()
    try:
        if enc in ("", "identity"):
            yield from pieces
        elif enc == "lz4":
            yield from _multi_frame(pieces, lz4.frame.LZ4FrameDecompressor)
        elif enc == "zstd":
            zd = zstandard.ZstdDecompressor()
            yield from _multi_frame(pieces, zd.decompressobj)
        elif enc in ("gzip", "x-gzip"):
            yield from _multi_frame(pieces, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS))
        elif enc == "deflate":
            yield from _deflate(pieces)
        elif enc == "br":
            try:
                import brotli
            except ImportError:
                raise ChError.make(
                    48, "NOT_IMPLEMENTED", "Content-Encoding br is not supported"
                ) from None
            dec = brotli.Decompressor()
            for p in pieces:
                yield dec.process(p)
        else:
            raise ChError.make(
                36, "BAD_ARGUMENTS", f"Unknown Content-Encoding of HTTP request: {encoding}"
            )
    except (ChError, ClientGone):
        raise
    except Exception as exc:  # corrupt compressed data
        raise ChError.make(
            271, "CANNOT_DECOMPRESS", f"Cannot decompress request body: {exc}"
        ) from None


@dataclass
class InsertSplit:
    """An INSERT whose data follows its ``FORMAT <name>`` clause."""

    head: str
    fmt: str
    data_start: int


def split_insert(buf: bytes, eof: bool) -> InsertSplit | bool | None:
    """Find where the data of ``INSERT ... FORMAT name`` starts in ``buf``.

    Returns the split, None when the statement is not a streamable INSERT (VALUES, SELECT,
    no FORMAT), or False when more bytes are needed to decide. Data starts after the first
    newline following the format name, or after the whitespace if no newline comes first
    (ClickHouse's rule; the data itself may be binary and start with whitespace bytes).
    """
    for m in _INSERT_SCAN_RE.finditer(buf):
        if m.group(1) is not None:
            return None
        if m.group(2) is None:
            continue
        pos = m.end()
        if pos >= len(buf) and not eof:
            return False  # the format name may continue in the next piece
        while pos < len(buf) and buf[pos] in _WS:
            pos += 1
            if buf[pos - 1] == 10:
                break
        else:
            if pos >= len(buf) and not eof:
                return False
        head = buf[: m.start()].decode("utf-8", "replace").strip()
        return InsertSplit(head, m.group(2).decode(), pos)
    return None if eof else False


# --------------------------------------------------------------------------------------
# HTTP layer
# --------------------------------------------------------------------------------------


@dataclass
class Config:
    user: str
    password: str
    keep_alive_timeout: float = 30.0
    display_name: str = field(default_factory=socket.gethostname)


@dataclass
class Outcome:
    """What a request did, for the response headers and the request log."""

    status: int = 200
    rows: int = 0
    summary: dict[str, str] = field(default_factory=dict)
    sql: str = ""
    engine_ms: float = 0.0  # time inside chDB calls (the rest is network/client/decoding)


def _summary(
    res: Any = None, written_rows: int = 0, written_bytes: int = 0, result_bytes: int = 0,
    elapsed: float = 0.0,
) -> dict[str, str]:  # fmt: skip
    read_rows = read_bytes = 0
    if res is not None:
        read_rows, read_bytes = int(res.rows_read()), int(res.bytes_read())
        written_rows = written_rows or int(res.rows_written())
        written_bytes = written_bytes or int(res.bytes_written())
        elapsed = elapsed or float(res.elapsed())
    return {
        "read_rows": str(read_rows),
        "read_bytes": str(read_bytes),
        "written_rows": str(written_rows),
        "written_bytes": str(written_bytes),
        "total_rows_to_read": str(read_rows),
        "result_rows": "0",
        "result_bytes": str(result_bytes),
        "elapsed_ns": str(int(elapsed * 1e9)),
    }


def _leading_keyword(buf: bytes | bytearray, eof: bool) -> str | None:
    """The statement's first keyword, or None if more bytes are needed to know it."""
    text = bytes(buf[:4096]).decode("latin-1")
    m = _LEADING_RE.match(text)
    start = m.end() if m else 0
    kw = re.match(r"[A-Za-z]*", text[start:])
    word = kw.group(0) if kw else ""
    if start + len(word) >= len(text) and not eof:
        return None
    if not word:
        return "(" if text[start : start + 1] == "(" else ""
    return word.upper()


def _first_keyword(sql: str) -> str:
    rest = sql[_LEADING_RE.match(sql).end() :]  # type: ignore[union-attr]
    if rest.startswith("("):
        return "("
    m = re.match(r"[A-Za-z]+", rest)
    return m.group(0).upper() if m else ""


class Handler(BaseHTTPRequestHandler):
    """Serves the ClickHouse HTTP interface; one instance per client connection."""

    protocol_version = "HTTP/1.1"
    server_version = "chserver"
    sys_version = ""
    disable_nagle_algorithm = True
    server: ChServer

    def setup(self) -> None:
        super().setup()
        # Idle keep-alive connections and stalled bodies are dropped after this long.
        self.connection.settimeout(self.server.config.keep_alive_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's stderr logging; we log one line per request ourselves."""

    # ---- entry points --------------------------------------------------------------

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        path = urlsplit(self.path).path
        self._send(200 if path in ("/", "/ping") else 404, b"", {}, head_only=True)

    def _serve(self) -> None:
        t0 = time.perf_counter()
        url = urlsplit(self.path)
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        out = Outcome()
        body_state = {"done": False}
        try:
            try:
                self._dispatch(url.path, params, out, body_state)
            except ChError as err:
                out.status = err.http_status
                if not body_state["done"]:
                    self.close_connection = True
                self._send_error(err)
        except ClientGone as gone:
            out.status = 499
            self.close_connection = True
            log.info("client gone: %s", gone)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            out.status = 499
            self.close_connection = True
            log.info("connection error: %s", exc)
        finally:
            ms = (time.perf_counter() - t0) * 1000
            sql = " ".join(out.sql.split())[:160]
            log.info(
                "%s %s %s status=%d rows=%d ms=%.1f engine_ms=%.1f enc=%s cert=%s query=%r",
                self.client_address[0], self.command, url.path, out.status, out.rows, ms,
                out.engine_ms, self.headers.get("Content-Encoding") or "-",
                peer_name(self.connection), sql,
            )  # fmt: skip

    def _dispatch(
        self, path: str, params: dict[str, str], out: Outcome, body_state: dict[str, bool]
    ) -> None:
        if path in ("/ping", "/replicas_status") or (
            path == "/" and self.command == "GET" and "query" not in params
        ):
            body_state["done"] = self._drain_small()
            self._send(200, b"Ok.\n", {"Content-Type": "text/plain; charset=UTF-8"})
            return
        if path != "/":
            body_state["done"] = self._drain_small()
            raise ChError.make(36, "BAD_ARGUMENTS", f"There is no handle {path}. Use / or /ping")
        self._authenticate(params)
        self._execute(params, out, body_state)

    def _drain_small(self) -> bool:
        n = int(self.headers.get("Content-Length") or 0)
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower() or n > 1 << 20:
            return False
        if n:
            _read_exact(self.rfile, n)
        return True

    def _authenticate(self, params: dict[str, str]) -> None:
        cfg = self.server.config
        user: str | None = params.get("user")
        password: str | None = params.get("password")
        if user is None and password is None:
            user = self.headers.get("X-ClickHouse-User")
            password = self.headers.get("X-ClickHouse-Key")
        if user is None and password is None:
            auth = self.headers.get("Authorization") or ""
            if auth[:6].lower() == "basic ":
                try:
                    user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
                except ValueError:
                    user, password = "", ""
        user = user if user else "default"
        password = password or ""
        ok = hmac.compare_digest(user.encode(), cfg.user.encode()) & hmac.compare_digest(
            password.encode(), cfg.password.encode()
        )
        if not ok:
            raise ChError.make(
                516,
                "AUTHENTICATION_FAILED",
                f"{user}: Authentication failed: password is incorrect, "
                "or there is no user with such name",
            )

    # ---- query execution -----------------------------------------------------------

    def _execute(self, params: dict[str, str], out: Outcome, body_state: dict[str, bool]) -> None:
        engine = self.server.engine
        qparam = params.get("query", "").encode()
        out.sql = params.get("query", "")
        t_start = time.perf_counter()
        pieces = decoded_body(
            raw_body(self.rfile, self.headers, body_state),
            self.headers.get("Content-Encoding") or "",
        )
        settings = {
            k: v
            for k, v in params.items()
            if k not in HTTP_ONLY_PARAMS
            and not k.startswith("param_")
            and _SETTING_NAME_RE.match(k)
        }
        binds = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        database = params.get("database") or self.headers.get("X-ClickHouse-Database") or "default"
        default_format = (
            params.get("default_format")
            or self.headers.get("X-ClickHouse-Format")
            or "TabSeparated"
        )
        query_id = params.get("query_id") or str(uuid.uuid4())
        session_id = params.get("session_id") or None
        try:
            session_timeout = float(params.get("session_timeout") or 60)
        except ValueError:
            session_timeout = 60.0

        # Gather enough of the statement to know whether it is a streamable INSERT.
        buf = bytearray(qparam)
        it = iter(pieces)
        eof = False
        first = True
        split: InsertSplit | None = None
        while True:
            kw = _leading_keyword(buf, eof)
            if kw == "INSERT":
                window = bytes(buf[: 1 << 16])
                r = split_insert(window, eof or len(buf) > len(window))
                if r is None or isinstance(r, InsertSplit):
                    split = r
                    break
            elif kw is not None:
                break
            if eof:
                break
            nxt = next(it, None)
            if nxt is None:
                eof = True
                continue
            if first and qparam and nxt:
                buf += b"\n"
            first = False
            buf += nxt

        if split is not None:
            out.sql = split.head
            data_iter = _chain_first(memoryview(buf)[split.data_start :], it)
            with engine.borrow(session_id, session_timeout) as conn:
                conn.prepare(settings, database)
                rows, nbytes, _ = self._stream_insert(conn, split, data_iter, out)
            elapsed = time.perf_counter() - t_start
            out.rows = rows
            summary = _summary(written_rows=rows, written_bytes=nbytes, elapsed=elapsed)
            self._send(200, b"", self._result_headers(query_id, summary, None, engine.timezone))
            return

        # Text statement: the whole (query param + body) is SQL.
        total = len(buf)
        for p in it:
            if first and qparam and p:
                buf += b"\n"
            first = False
            buf += p
            total += len(p)
            if total > _MAX_TEXT_BODY:
                raise ChError.make(369, "QUERY_IS_TOO_LARGE", "Query is too large for this server")
        sql = bytes(buf).decode("utf-8", "replace")
        out.sql = sql
        if not sql.strip():
            raise ChError.make(62, "SYNTAX_ERROR", "Empty query")
        keyword = _first_keyword(sql)
        fm = _TRAILING_FORMAT_RE.search(sql)
        fmt = fm.group(1) if fm else default_format
        if fmt.lower() in _PYTHON_ONLY_FORMATS:
            raise ChError.make(73, "UNKNOWN_FORMAT", f"Unknown format {fmt}")
        returns_result = fm is not None or keyword in _RESULT_KEYWORDS
        with engine.borrow(session_id, session_timeout) as conn:
            conn.prepare(settings, database)
            if session_id is None and (
                keyword in _STATEFUL_KEYWORDS or _CREATE_TEMP_RE.match(sql) is not None
            ):
                conn.dirty = True
            t_engine = time.perf_counter()
            res = conn.run(sql, fmt, binds)
            out.engine_ms = (time.perf_counter() - t_engine) * 1000
            if keyword == "USE":
                conn.database = sql.split(None, 1)[1].strip(' ;`"\n')
        payload = res.bytes() if returns_result else b""
        out.rows = int(res.rows_written()) if keyword == "INSERT" else int(res.rows_read())
        summary = _summary(res, result_bytes=len(payload))
        headers = self._result_headers(
            query_id, summary, fmt if returns_result else None, engine.timezone
        )
        payload, enc = self._maybe_compress(payload, params)
        if enc:
            headers["Content-Encoding"] = enc
        self._send(200, payload, headers)

    def _stream_insert(
        self,
        conn: EngineConn,
        split: InsertSplit,
        data: Iterator[bytes | memoryview],
        out: Outcome,
    ) -> tuple[int, int, float]:
        clock = time.perf_counter
        t = clock()
        try:
            inserter = conn.raw.send_insert(split.head, split.fmt)
        except Exception as exc:
            raise ChError.from_engine(exc) from None
        engine = clock() - t
        pending = bytearray()
        try:
            for piece in data:
                if len(pending) + len(piece) < _APPEND_PIECE:
                    pending += piece
                    continue
                t = clock()
                if pending:
                    pending += piece
                    inserter.append(bytes(pending))
                    pending.clear()
                else:
                    inserter.append(piece if isinstance(piece, bytes) else bytes(piece))
                engine += clock() - t
            t = clock()
            if pending:
                inserter.append(bytes(pending))
            res = inserter.finish()
            engine += clock() - t
            out.engine_ms = engine * 1000
        except BaseException as exc:
            with contextlib.suppress(Exception):
                inserter.cancel()
            if isinstance(exc, RuntimeError):
                raise ChError.from_engine(exc) from None
            raise
        # chDB's own elapsed() for a streamed insert is not per-statement; the caller
        # reports the request's wall time instead.
        return int(res.rows_written), int(res.bytes_written), 0.0

    def _maybe_compress(self, payload: bytes, params: dict[str, str]) -> tuple[bytes, str]:
        """Compress only when asked like ClickHouse wants it (enable_http_compression=1).

        clickhouse-connect never sends that setting, so it gets identity: on loopback that
        is the fastest choice anyway (no compress/decompress CPU on a 2-core box).
        """
        if params.get("enable_http_compression") not in ("1", "true") or len(payload) < 64:
            return payload, ""
        accept = [
            a.split(";")[0].strip().lower()
            for a in (self.headers.get("Accept-Encoding") or "").split(",")
        ]
        for enc in accept:
            if enc == "lz4":
                return lz4.frame.compress(payload), "lz4"
            if enc == "zstd":
                return zstandard.ZstdCompressor(level=1).compress(payload), "zstd"
            if enc == "gzip":
                return gzip.compress(payload, compresslevel=3), "gzip"
            if enc == "deflate":
                return zlib.compress(payload, 3), "deflate"
        return payload, ""

    # ---- responses ------------------------------------------------------------------

    def _result_headers(
        self, query_id: str, summary: dict[str, str], fmt: str | None, tz: str
    ) -> dict[str, str]:
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Summary": json.dumps(summary, separators=(",", ":")),
            "X-ClickHouse-Timezone": tz,
            "X-ClickHouse-Server-Display-Name": self.server.config.display_name,
        }
        if fmt is not None:
            headers["X-ClickHouse-Format"] = fmt
            if fmt in _CONTENT_TYPES:
                headers["Content-Type"] = _CONTENT_TYPES[fmt]
            elif fmt in _BINARY_FORMATS:
                headers["Content-Type"] = "application/octet-stream"
            else:
                headers["Content-Type"] = "text/plain; charset=UTF-8"
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        return headers

    def _send_error(self, err: ChError) -> None:
        body = (err.message.rstrip("\n") + "\n").encode()
        self._send(
            err.http_status,
            body,
            {
                "Content-Type": "text/plain; charset=UTF-8",
                "X-ClickHouse-Exception-Code": str(err.code),
                "X-ClickHouse-Server-Display-Name": self.server.config.display_name,
            },
        )

    def _send(
        self, status: int, body: bytes, headers: dict[str, str], head_only: bool = False
    ) -> None:
        reason = {516: "Unknown"}.get(status)
        self.send_response(status, reason)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        else:
            self.send_header("Keep-Alive", f"timeout={int(self.server.config.keep_alive_timeout)}")
        self.end_headers()
        if body and not head_only:
            self.wfile.write(body)


def _chain_first(first: memoryview, rest: Iterator[bytes]) -> Iterator[bytes | memoryview]:
    if len(first):
        yield first
    yield from rest


def server_context(certfile: str, keyfile: str, client_ca_file: str | None = None,
                   verification: str = "strict") -> ssl.SSLContext:
    """The TLS context of an HTTPS port; with ``client_ca_file``, client certificates are
    verified against it, as ClickHouse's ``verificationMode``: ``strict`` requires one
    (a client without a certificate, or with one the CA did not sign, fails the handshake),
    ``relaxed`` verifies one only when presented."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    if client_ca_file:
        ctx.load_verify_locations(client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED if verification == "strict" else ssl.CERT_OPTIONAL
    return ctx


def peer_name(sock: Any) -> str:
    """The verified client certificate's common name (``-`` without one), for the log."""
    getpeercert = getattr(sock, "getpeercert", None)
    cert = getpeercert() if getpeercert is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "-"


class ChServer(ThreadingHTTPServer):
    """Threaded HTTP(S) server sharing one Engine."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        addr: tuple[str, int],
        engine: Engine,
        config: Config,
        ssl_ctx: ssl.SSLContext | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.ssl_ctx = ssl_ctx
        super().__init__(addr, Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.ssl_ctx is not None:
            # Handshake in the handler thread (first read), not in the accept loop.
            sock = self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ssl.SSLError) and self.ssl_ctx is not None:
            # A refused client certificate, an unknown CA, a plain-HTTP client: worth
            # seeing in the server's log (WARNING is what the stack keeps).
            log.warning("TLS with %s failed: %s", client_address[0], exc)
            return
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError, ClientGone, OSError)):
            log.info("connection from %s ended: %s", client_address[0], exc)
            return
        log.exception("unexpected error serving %s", client_address[0])


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m teststack.chserver", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--http-port", type=int, default=0)
    p.add_argument("--https-port", type=int, default=None)
    p.add_argument("--certfile", help="server certificate (PEM) of the HTTPS ports")
    p.add_argument("--keyfile", help="its private key (PEM)")
    p.add_argument(
        "--mtls-port", type=int, default=None,
        help="also serve HTTPS on this port, verifying client certificates against "
             "--client-ca-file (ClickHouse's openSSL.server.verificationMode)",
    )  # fmt: skip
    p.add_argument("--client-ca-file", help="CA bundle (PEM) that signs accepted client certs")
    p.add_argument(
        "--mtls-verification-mode", choices=("strict", "relaxed"), default="strict",
        help="strict: a client certificate is required; relaxed: verified when presented",
    )  # fmt: skip
    p.add_argument("--data-dir", required=True)
    p.add_argument("--user", default="default")
    p.add_argument("--password", default="")
    p.add_argument("--log-file")
    p.add_argument("--keep-alive-timeout", type=float, default=30.0)
    p.add_argument(
        "--parent-pid",
        type=int,
        default=0,
        help="stop (SIGTERM) when this process dies: test runs that crash leak no server",
    )
    args = p.parse_args(argv)
    if args.https_port is not None and not (args.certfile and args.keyfile):
        p.error("--https-port needs --certfile and --keyfile")
    if args.mtls_port is not None and not (args.certfile and args.keyfile
                                           and args.client_ca_file):
        p.error("--mtls-port needs --certfile, --keyfile and --client-ca-file")
    return args


def _setup_logging(log_file: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if log_file else logging.WARNING)
    log.propagate = False


def _watch_parent(pid: int) -> None:
    """SIGTERM ourselves once the parent process is gone (we get re-parented).

    Polling getppid() rather than prctl(PR_SET_PDEATHSIG): the latter fires when the
    parent *thread* exits, which would kill servers started from a worker thread.
    """

    def poll() -> None:
        while os.getppid() == pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=poll, name="parent-watch", daemon=True).start()


def _in_use(data_dir: str) -> int:
    print(f"data directory in use: {data_dir}", file=sys.stderr, flush=True)
    return EXIT_DATA_DIR_IN_USE


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    _setup_logging(args.log_file)
    if args.parent_pid:
        _watch_parent(args.parent_pid)
    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(data_dir, exist_ok=True)
    lock_fd = os.open(os.path.join(data_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _in_use(data_dir)
    try:
        engine = Engine(data_dir)
    except Exception as exc:
        if "Code: 36" in str(exc) or "EmbeddedServer" in str(exc):
            return _in_use(data_dir)
        print(f"cannot open chDB at {data_dir}: {exc}", file=sys.stderr, flush=True)
        return 1

    config = Config(
        user=args.user, password=args.password, keep_alive_timeout=args.keep_alive_timeout
    )
    servers: dict[str, ChServer] = {"http": ChServer((args.host, args.http_port), engine, config)}
    if args.https_port is not None:
        ctx = server_context(args.certfile, args.keyfile)
        servers["https"] = ChServer((args.host, args.https_port), engine, config, ctx)
    if args.mtls_port is not None:
        ctx = server_context(args.certfile, args.keyfile, args.client_ca_file,
                             args.mtls_verification_mode)
        servers["mtls"] = ChServer((args.host, args.mtls_port), engine, config, ctx)
    threads = [
        threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        for s in servers.values()
    ]
    for t in threads:
        t.start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    ports = " ".join(f"{name}={s.server_address[1]}" for name, s in servers.items())
    if "https" not in servers:
        ports += " https=0"  # the READY line always names the https port (docs/CONTRACTS.md)
    print(f"READY {ports}", flush=True)
    # Nothing else goes to stdout: a parent that stops reading the pipe must not block us.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    log.warning("chserver listening %s data=%s", ports, data_dir)
    while not stop.wait(5.0):
        engine.expire_sessions()
    log.warning("chserver stopping")
    for s in servers.values():
        s.shutdown()
        s.server_close()
    engine.close()
    for h in log.handlers:
        h.flush()
    sys.stderr.flush()
    # chDB's embedded server tear-down at interpreter exit is not needed (parts are on
    # disk) and can be slow: leave directly.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())

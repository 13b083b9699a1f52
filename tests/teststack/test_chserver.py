"""teststack.chserver driven by the real client (clickhouse-connect) over HTTP and HTTPS."""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import lz4.frame
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from outlet.dedup_audit import AUDIT_SQL
from teststack.certs import Authority
from teststack.chserver_proc import ChServerProcess, DataDirInUseError, start_chserver

USER = "outlet"
PASSWORD = "s3cret-pw"


def _make_certs(d: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (IP SAN)."""
    ca = Authority.create("chserver test CA", days=1)
    ca_pem, _ = ca.write(d / "ca.pem", d / "ca-key.pem")
    cert_pem, key_pem = ca.issue("127.0.0.1", ips=["127.0.0.1"]).write(
        d / "server.pem", d / "server.key")
    return ca_pem, cert_pem, key_pem


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return _make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tls: tuple[Path, Path, Path]
) -> Iterator[ChServerProcess]:
    base = tmp_path_factory.mktemp("chserver")
    _, cert, key = tls
    srv = start_chserver(
        base / "data",
        USER,
        PASSWORD,
        https_port=0,
        certfile=cert,
        keyfile=key,
        log_file=base / "requests.log",
        die_with_parent=True,
    )
    try:
        yield srv
    finally:
        assert srv.stop() == 0


def _client(srv: ChServerProcess, **kw: Any) -> Client:
    return clickhouse_connect.get_client(
        host=srv.host, port=srv.http_port, username=USER, password=PASSWORD, **kw
    )


@pytest.fixture(scope="module")
def client(server: ChServerProcess) -> Client:
    return _client(server)


def test_ping_and_connect(server: ChServerProcess, client: Client) -> None:
    with urllib.request.urlopen(f"{server.url}/ping") as resp:
        assert resp.status == 200
        assert resp.read() == b"Ok.\n"
    assert (client.server_version or "").startswith("26.")
    assert client.command("SELECT 1") == 1


def test_insert_million_rows(client: Client) -> None:
    client.command(
        "CREATE TABLE big (id UInt64, v UInt32, s String) ENGINE = MergeTree ORDER BY id"
    )
    batch = 50_000
    for start in range(0, 1_000_000, batch):
        ids = list(range(start, start + batch))
        client.insert(
            "big",
            [ids, [i % 1000 for i in ids], ["x"] * batch],
            column_names=["id", "v", "s"],
            column_oriented=True,
        )
    count, total = client.query("SELECT count(), sum(id) FROM big").result_rows[0]
    assert count == 1_000_000
    assert total == 999_999 * 1_000_000 // 2


def test_formats(server: ChServerProcess, client: Client) -> None:
    sql = "SELECT number AS n, toString(number) AS s FROM numbers(3)"
    assert client.query(sql).result_rows == [(0, "0"), (1, "1"), (2, "2")]
    assert client.raw_query(sql, fmt="TabSeparated") == b"0\t0\n1\t1\n2\t2\n"
    assert json.loads(client.raw_query(sql, fmt="JSON"))["rows"] == 3
    rb = client.raw_query(sql, fmt="RowBinaryWithNamesAndTypes")
    assert rb.startswith(b"\x02\x01n\x01s")
    df = client.query_df(sql)
    assert list(df["s"]) == ["0", "1", "2"]
    # Headers on a 0-row result, and the summary of a command.
    req = urllib.request.Request(
        f"{server.url}/?default_format=JSONEachRow",
        data=b"SELECT 1 WHERE 0",
        headers={"X-ClickHouse-User": USER, "X-ClickHouse-Key": PASSWORD},
    )
    with urllib.request.urlopen(req) as resp:
        assert resp.read() == b""
        assert resp.headers["X-ClickHouse-Format"] == "JSONEachRow"
        assert json.loads(resp.headers["X-ClickHouse-Summary"])["read_rows"] == "0"
        assert resp.headers["X-ClickHouse-Query-Id"]
        assert resp.headers["X-ClickHouse-Timezone"]
    assert client.command("SELECT 'a' WHERE 0") == ""


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", False])
def test_compressed_inserts(server: ChServerProcess, compress: str | bool) -> None:
    c = _client(server, compress=compress)
    table = f"comp_{compress or 'none'}"
    c.command(f"CREATE TABLE {table} (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
    rows = [[i, f"row{i}"] for i in range(20_000)]
    summary = c.insert(table, rows, column_names=["a", "s"])
    assert summary.written_rows == 20_000
    c.raw_insert(table, ["a", "s"], insert_block=b"1\tone\n2\ttwo\n", fmt="TabSeparated")
    assert c.command(f"SELECT count() FROM {table}") == 20_002
    assert c.command(f"SELECT sum(a) FROM {table}") == sum(range(20_000)) + 3


def test_raw_insert_precompressed_and_values(client: Client) -> None:
    client.command("CREATE TABLE raw (a UInt32) ENGINE = MergeTree ORDER BY a")
    block = client.raw_query("SELECT toUInt32(number) AS a FROM numbers(1000)", fmt="Native")
    client.raw_insert("raw", ["a"], insert_block=block, fmt="Native")
    client.raw_insert(
        "raw", ["a"], insert_block=lz4.frame.compress(block), fmt="Native", compression="lz4"
    )
    client.command("INSERT INTO raw VALUES (5000), (5001)")
    assert client.command("SELECT count() FROM raw") == 2002


def test_query_params_and_settings(client: Client) -> None:
    res = client.query(
        "SELECT {s:String} AS s, {n:UInt32} + 1 AS n, {arr:Array(String)} AS arr",
        parameters={"s": "it's a 'quote'\\", "n": 41, "arr": ["a", "b'c"]},
    )
    assert res.result_rows == [("it's a 'quote'\\", 42, ["a", "b'c"])]
    assert client.command("SELECT getSetting('max_threads')", settings={"max_threads": 3}) == 3
    # ... and does not leak into the next request.
    assert client.command("SELECT getSetting('max_threads')") != 3


def test_database_param(server: ChServerProcess) -> None:
    c = _client(server)
    c.command("CREATE DATABASE IF NOT EXISTS other")
    c.command("CREATE TABLE other.t (a UInt8) ENGINE = MergeTree ORDER BY a")
    c.command("INSERT INTO other.t VALUES (7)")
    assert _client(server, database="other").command("SELECT sum(a) FROM t") == 7
    assert c.command("SELECT currentDatabase()") == "default"


def test_session_state(server: ChServerProcess) -> None:
    c = _client(server)  # the sync client sends a session_id
    c.command("CREATE TEMPORARY TABLE tmp (a UInt8)")
    c.command("INSERT INTO tmp VALUES (1), (2)")
    assert c.command("SELECT count() FROM tmp") == 2
    other = _client(server)
    with pytest.raises(DatabaseError) as err:
        other.command("SELECT count() FROM tmp")
    assert "code: 60" in str(err.value)


def test_wrong_password(server: ChServerProcess) -> None:
    with pytest.raises(DatabaseError) as err:
        clickhouse_connect.get_client(
            host=server.host, port=server.http_port, username=USER, password="wrong"
        )
    assert "516" in str(err.value)
    req = urllib.request.Request(f"{server.url}/?query=SELECT+1&user={USER}&password=nope")
    with pytest.raises(urllib.error.HTTPError) as http_err:
        urllib.request.urlopen(req)
    assert http_err.value.code == 516
    assert http_err.value.headers["X-ClickHouse-Exception-Code"] == "516"
    assert b"AUTHENTICATION_FAILED" in http_err.value.read()
    assert "nope" not in (server.log_file.read_text() if server.log_file else "")


def test_errors(client: Client) -> None:
    with pytest.raises(DatabaseError) as err:
        client.query("SELECT * FROM no_such_table")
    assert "code: 60" in str(err.value)
    with pytest.raises(DatabaseError) as err:
        client.command("SELEC 1")
    assert "code: 62" in str(err.value)
    with pytest.raises(DatabaseError) as err:
        client.insert("no_such_table", [[1]], column_names=["a"], column_type_names=["UInt8"])
    assert "code: 60" in str(err.value)
    assert client.command("SELECT 1") == 1  # still serving


def test_dedup_token(client: Client) -> None:
    client.command(
        "CREATE TABLE dedup (a UInt32) ENGINE = MergeTree ORDER BY a "
        "SETTINGS non_replicated_deduplication_window = 1000"
    )
    rows = [[i] for i in range(1000)]
    for token in ("tok-1", "tok-1", "tok-2"):
        client.insert(
            "dedup", rows, column_names=["a"], settings={"insert_deduplication_token": token}
        )
    assert client.command("SELECT count() FROM dedup") == 2000


def _engine_written_rows_of_a_repeat(tmp_path: Path) -> tuple[int, int]:
    """What the ClickHouse engine itself (chDB) reports for an insert and for its
    deduplicated repeat: the reference chserver must match. Runs in a fresh process (one
    chDB data path per process, and other tests hold one)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result: tuple[int, int] = pool.apply(_engine_written_rows_in_process, (tmp_path,))
    return result


def _engine_written_rows_in_process(tmp_path: Path) -> tuple[int, int]:
    from chdb.state import sqlitelike

    conn = sqlitelike.Connection(str(tmp_path / "engine"))
    try:
        conn.query(
            "CREATE TABLE t (a UInt32) ENGINE = MergeTree ORDER BY a "
            "SETTINGS non_replicated_deduplication_window = 10"
        )
        conn.query("SET insert_deduplication_token = 'tok'")
        written = []
        for _ in range(2):
            res = conn.query("INSERT INTO t SELECT number FROM numbers(1000)")
            written.append(int(res.rows_written()))
        assert conn.query("SELECT count() FROM t").bytes().strip() == b"1000"
        return written[0], written[1]
    finally:
        conn.close()


def test_deduplicated_insert_reports_like_the_engine_and_shows_in_part_log(
    client: Client, tmp_path: Path
) -> None:
    """X-ClickHouse-Summary says what the engine says: written_rows counts the rows sent
    even when the table dropped them as duplicates (ClickHouse counts rows entering the
    insert pipeline, before the table's sink deduplicates). Only system.part_log tells
    the difference: the repeat's part has error 389 ("The part was deduplicated")."""
    engine = _engine_written_rows_of_a_repeat(tmp_path)
    assert engine == (1000, 1000)
    client.command(
        "CREATE TABLE dedup_summary (a UInt32, d Date) ENGINE = MergeTree PARTITION BY d "
        "ORDER BY a SETTINGS non_replicated_deduplication_window = 1000"
    )
    # two partitions: each insert makes two parts, deduplicated one by one
    rows = [[i, dt.date(2026, 1, 1 + i % 2)] for i in range(1000)]
    summaries = []
    for token in ("tok-a", "tok-a"):
        comment = f"c-{len(summaries)}-{time.monotonic_ns()}"
        summaries.append((comment, client.insert(
            "dedup_summary", rows, column_names=["a", "d"],
            settings={"insert_deduplication_token": token, "log_comment": comment},
        )))
    assert client.command("SELECT count() FROM dedup_summary") == 1000
    assert [s.written_rows for _, s in summaries] == list(engine)
    ids = [q for q, _ in summaries]
    deadline = time.monotonic() + 10
    found: dict[str, tuple[int, int]] = {}
    while len(found) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
        try:  # the query the outlet's deduplication audit runs
            result = client.query(AUDIT_SQL, parameters={
                "comments": ids, "database": "default", "table": "dedup_summary"})
        except DatabaseError as err:  # the log table appears with its first flush
            assert "code: 60" in str(err)
            continue
        found = {r[0]: (int(r[1]), int(r[2])) for r in result.result_rows}
    assert found == {ids[0]: (1000, 0), ids[1]: (0, 1000)}


def test_https(server: ChServerProcess, tls: tuple[Path, Path, Path]) -> None:
    ca, _, _ = tls
    c = clickhouse_connect.get_client(
        host=server.host,
        port=server.https_port,
        username=USER,
        password=PASSWORD,
        interface="https",
        verify=True,
        ca_cert=str(ca),
    )
    assert c.command("SELECT 40 + 2") == 42
    with pytest.raises(OperationalError):
        clickhouse_connect.get_client(
            host=server.host,
            port=server.https_port,
            username=USER,
            password=PASSWORD,
            interface="https",
            verify=True,
        )


def test_second_server_same_dir(server: ChServerProcess) -> None:
    with pytest.raises(DataDirInUseError) as err:
        start_chserver(server.data_dir, USER, PASSWORD, die_with_parent=True)
    assert err.value.returncode == 3
    assert f"data directory in use: {server.data_dir}" in err.value.stderr
    assert server.alive()


def test_restart_keeps_data(tmp_path: Path) -> None:
    srv = start_chserver(tmp_path / "data", USER, PASSWORD, die_with_parent=True)
    try:
        c = _client(srv)
        c.command("CREATE TABLE keep (a UInt32) ENGINE = MergeTree ORDER BY a")
        c.insert("keep", [[1], [2], [3]], column_names=["a"])
    finally:
        assert srv.stop() == 0
    srv = start_chserver(tmp_path / "data", USER, PASSWORD, die_with_parent=True)
    try:
        assert _client(srv).command("SELECT sum(a) FROM keep") == 6
    finally:
        assert srv.stop() == 0


def test_ping_during_open_insert_and_client_disconnect(
    server: ChServerProcess, client: Client
) -> None:
    client.command("CREATE TABLE slow (a UInt32) ENGINE = MergeTree ORDER BY a")
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    with socket.create_connection((server.host, server.http_port)) as s:
        s.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " + auth + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        part = b"INSERT INTO slow FORMAT TabSeparated\n1\n2\n"
        s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        time.sleep(0.2)  # the insert is now open inside the server
        t0 = time.monotonic()
        with urllib.request.urlopen(f"{server.url}/ping", timeout=5) as resp:
            assert resp.read() == b"Ok.\n"
        assert time.monotonic() - t0 < 1.0
        assert client.command("SELECT count() FROM slow") == 0
    # The client vanished mid-body: nothing committed, server still fine.
    time.sleep(0.2)
    assert server.alive()
    assert client.command("SELECT count() FROM slow") == 0


def test_get_query_and_bad_data(server: ChServerProcess, client: Client) -> None:
    q = urllib.parse.urlencode({"query": "SELECT 6 * 7", "user": USER, "password": PASSWORD})
    with urllib.request.urlopen(f"{server.url}/?{q}") as resp:
        assert resp.read() == b"42\n"
    client.command("CREATE TABLE bad (a UInt32) ENGINE = MergeTree ORDER BY a")
    with pytest.raises(DatabaseError) as err:
        client.raw_insert("bad", ["a"], insert_block=b"\x01\x05garbage", fmt="Native")
    assert "code: 33" in str(err.value)
    assert client.command("SELECT count() FROM bad") == 0

"""Bad configurations get a clear error, never a traceback, and never echo a secret
(issue 14: YAML syntax errors, NUL bytes, deep nesting, huge files, secrets at the wrong
place, librdkafka's limits, native-protocol ports, TLS files). Pure and fast."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from outlet.config import (
    MAX_CONFIG_BYTES,
    ConfigError,
    OutletConfig,
    load_config,
    parse_config,
)
from outlet.confspec import (
    MAX_DEPTH,
    PARSERS,
    YAMLSyntaxError,
    describe,
    hiding,
    load_yaml,
    secret_paths,
    show,
)
from teststack.stack import generate_tls

SECRET = "S3cr3t-zq81"  # what each case plants; no output may hold it


def errors_of(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env or {})
    assert SECRET not in str(info.value)
    return info.value.errors


def file_errors(tmp_path: Path, text: str | bytes, env: dict[str, str] | None = None
                ) -> list[str]:
    path = tmp_path / "outlet.yaml"
    if isinstance(text, str):
        path.write_text(text)
    else:
        path.write_bytes(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env or {})
    assert SECRET not in str(info.value), str(info.value)
    return info.value.errors


# -- YAML syntax errors: line, column and the problem, never the text ---------------------

S = SECRET
SYNTAX_ERRORS = [  # (document, line, column, words of the problem)
    (f'clickhousedb:\n  password: "{S}\n', 2, 13, "a quoted value that is never closed"),
    (f"clickhousedb:\n  password: '{S}\n", 2, 13, "a quoted value that is never closed"),
    (f"clickhousedb:\n  password: {S}: x\n", 2, 24, "': ' inside an unquoted value"),
    (f'clickhousedb:\n  password: "{S}\\x"\n', 2, 0, "a bad escape sequence"),
    (f'clickhousedb:\n  password: "{S}\\q"\n', 2, 0, "a bad escape sequence"),
    (f"clickhousedb:\n  password: @{S}\n", 2, 13, "a value starts with a character YAML"),
    (f"clickhousedb:\n  password: `{S}\n", 2, 13, "a value starts with a character YAML"),
    (f"clickhousedb:\n  password: !!binary {S}\n", 2, 13, "binary values (!!binary) are not"),
    (f"clickhousedb:\n  password: !{S}\n", 2, 13, "an unknown tag"),
    (f"clickhousedb:\n  password: *{S}\n", 2, 13, "an unknown alias"),
    (f"clickhousedb:\n  password: !!int {S}\n", 2, 13, "a value YAML cannot convert"),
    (f"clickhousedb:\n  password: !!bool {S}\n", 2, 13, "a value YAML cannot convert"),
    (f"clickhousedb:\n  password: !!timestamp {S}\n", 2, 13, "a value YAML cannot convert"),
    ("clickhousedb:\n  password: 2001-02-30\n", 2, 13, "a value YAML cannot convert"),
    (f"clickhousedb:\n\tpassword: {S}\n", 2, 1, "a tab indents the line"),
    (f"clickhousedb: {{password: [{S}\n", 0, 0, "an unclosed or misplaced [ or {"),
    (f"clickhousedb:\n  password: {S}\n - x: y\n", 0, 0, ""),
    (f'clickhousedb:\n  password: "{S}\x07"\n', 2, 0, "a control character YAML does not"),
    (f"clickhousedb:\n  password: &{S} x\n  username: &{S} y\n", 3, 13, "the same anchor"),
    (f"clickhousedb:\n  password: {S}\n---\nkafka: {{}}\n", 3, 1, "more than one document"),
]


@pytest.mark.parametrize("parser", sorted(PARSERS))
@pytest.mark.parametrize(("text", "line", "column", "words"), SYNTAX_ERRORS)
def test_yaml_errors_quote_nothing(tmp_path: Path, parser: str, text: str, line: int,
                                   column: int, words: str) -> None:
    with pytest.raises(YAMLSyntaxError) as info:
        load_yaml(text, parser)
    message = str(info.value)
    assert SECRET not in message and SECRET[:4] not in message, message
    if line:
        assert info.value.line == line, message
    if column:
        assert info.value.column == column, message
    assert words in message
    if parser == "python":  # the same through the file path and the CLI's error
        (error,) = file_errors(tmp_path, text)
        assert error.startswith("invalid YAML: line ")


def test_nul_bytes_are_clear_errors(tmp_path: Path) -> None:
    """A NUL in the file, in a quoted "\\0" escape or from the environment: a named error,
    never a traceback (a path holding a NUL crashed os calls at start-up)."""
    assert file_errors(tmp_path, b"kafka: {}\nclickhousedb:\n  password: ab\x00cd\n") == [
        "invalid YAML: line 3, column 15: the file holds a NUL character (is it a binary "
        "file?)"]
    assert file_errors(tmp_path, 'state:\n  path: "/var/lib/\\0outlet"\n') == [
        "state.path: holds a NUL character (\\0)"]
    assert errors_of({"state": {"path": "${STATE}"}}, {"STATE": "/x\0y"}) == [
        "state.path: environment variable STATE holds a NUL character (\\0)"]


@pytest.mark.parametrize("parser", sorted(PARSERS))
@pytest.mark.parametrize("shape", ["flow-list", "flow-map", "block-map", "block-list"])
def test_deep_nesting_is_a_clear_error(tmp_path: Path, parser: str, shape: str) -> None:
    n, m = 5000, 1500  # block nesting of 5,000 would be 25 MB (over the size cap)
    text = {
        "flow-list": "kafka: " + "[" * n + "]" * n,
        "flow-map": "kafka: " + "{a: " * n + "1" + "}" * n,
        "block-map": "".join("  " * i + "a:\n" for i in range(m)),
        "block-list": "".join("  " * i + "- \n" for i in range(m)),
    }[shape]
    with pytest.raises(YAMLSyntaxError, match=f"nesting deeper than {MAX_DEPTH} levels"):
        load_yaml(text, parser)
    ok = "kafka: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert load_yaml(ok, parser)[0] is not None
    (error,) = file_errors(tmp_path, text)
    assert error.startswith("invalid YAML: line ") and "nesting deeper than" in error


def test_alias_bomb_and_recursive_alias(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (error,) = file_errors(tmp_path, "\n".join(lines) + "\n")
    assert "values once the aliases (*name) in it are expanded" in error
    (error,) = file_errors(tmp_path, "kafka: &k {brokers: [*k]}\n")
    assert "an alias (*name) inside the value it names" in error


def test_file_size_is_capped_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(MAX_CONFIG_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ConfigError) as info:
        load_config(big, {})
    assert info.value.errors == [
        f"the configuration is {MAX_CONFIG_BYTES + 1:,} bytes, more than the 8MiB "
        f"({MAX_CONFIG_BYTES:,} bytes) a configuration may be"]
    if os.path.exists("/dev/zero"):  # no size to see: the read itself stops at the cap
        with pytest.raises(ConfigError, match="larger than the 8MiB"):
            load_config("/dev/zero", {})


# -- secrets at the wrong place ------------------------------------------------------------


def test_brokers_and_servers_with_userinfo_are_refused_without_echo() -> None:
    errors = errors_of({"kafka": {"brokers": [f"user:{SECRET}@kafka:9092"]},
                        "clickhousedb": {"servers": [f"http://u:{SECRET}@ch:8123"]}})
    assert errors == [
        "kafka.brokers[0]: must not hold credentials (user:password@): for Kafka use "
        "kafka.sasl",
        "clickhousedb.servers[0]: must not contain credentials; use username and password",
    ]
    assert errors_of({"kafka": {"brokers": f"a:1,user:{SECRET}@b:2"}})[0].startswith(
        "kafka.brokers[1]: must not hold credentials")
    assert errors_of({"http": {"listen": f"u:{SECRET}@0.0.0.0:8080"}}) == [
        "http.listen: must not hold credentials (user:password@)"]


def _leaf_paths() -> list[str]:
    """Every key path of the outlet's configuration, from its declarations."""
    from outlet.config import ConnectionConfig, TLSConfig

    own = {TLSConfig: "tls", ConnectionConfig: "connection"}
    out: list[str] = []
    for row in describe(OutletConfig, expand=lambda c: True):
        out.append(row.path)
    for row in describe(OutletConfig, expand=lambda c: c not in own):
        out.append(row.path)
    return sorted(set(out))


def _put(path: str, value: object) -> dict[str, Any]:
    parts = path.split(".")
    doc: dict[str, Any] = {}
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return doc


@pytest.mark.parametrize("path", _leaf_paths())
def test_a_secret_at_any_wrong_place_is_not_echoed(path: str) -> None:
    """At every key the outlet has, a value from ${VAR}, a mapping holding a key named like
    a secret, PEM data and a value with user:password@: whatever the error, no echo."""
    for value, env in [
        ("${PLANTED}", {"PLANTED": SECRET}),
        (f"${{PLANTED}}:{SECRET[:3]}", {"PLANTED": SECRET}),
        ({"password": SECRET}, {}),
        ([{"token": SECRET}], {}),
        ({"api-key": SECRET, "x": 1}, {}),
        (f"-----BEGIN PRIVATE KEY-----\n{SECRET}\n-----END PRIVATE KEY-----\n", {}),
        (f"user:{SECRET}@host:1", {}),
        (f"https://user:{SECRET}@host:1", {}),
    ]:
        document = _put(path, value)
        if path.startswith(("name", "connection", "clickhouse.", "queue-size", "spool",
                            "circuit-breaker")):  # keys of an additional destination
            document = {"additional-clickhouses": [{"name": "a", "connection": {
                "servers": ["a:8123"]}, **_put(path, value)}]}
        try:
            parse_config(document, env)
        except ConfigError as e:
            assert SECRET not in str(e), (path, str(e))


def test_the_issue_example_of_a_secret_under_the_wrong_key() -> None:
    assert errors_of({"clickhousedb": {"tls": "${PW}"}}, {"PW": SECRET}) == [
        "clickhousedb.tls: must be a mapping, got <${PW}, not shown>"]
    assert errors_of({"kafka": {"brokers": {"password": SECRET}}}) == [
        "kafka.brokers: must be a list of strings, got {'password': '******'}"]
    assert errors_of({"kafka": {"topic": "${TOPIC}"}}, {"TOPIC": SECRET + " x"}) == [
        "kafka.topic: must be a Kafka topic name (1 to 249 of a-z A-Z 0-9 . _ -), got "
        "<${TOPIC}, not shown>"]


def test_show_never_prints_a_secret() -> None:
    assert show({"password": SECRET, "n": 1}) == "{'password': '******', 'n': 1}"
    assert show([{"db": {"secret-key": [SECRET]}}]) == "[{'db': {'secret-key': '******'}}]"
    assert show(f"kafka://u:{SECRET}@h:1") == "'kafka://******@h:1'"
    assert show(SECRET.encode()) == "<11 bytes of binary data>"
    assert show("-----BEGIN CERTIFICATE-----\nMII") == "<PEM data, not shown>"
    with hiding({SECRET: "${PW}"}):
        assert show(SECRET) == "<${PW}, not shown>"
        assert show(f"x{SECRET}y") == show(SECRET[2:]) == "<a value from ${PW}, not shown>"
    assert len(show(list(range(10**6)))) == 80  # lazy: a huge value is not rendered


def test_a_secret_typed_as_a_number_or_list_is_not_echoed() -> None:
    errors = errors_of({"clickhousedb": {"password": [SECRET]},
                        "kafka": {"sasl": {"mechanism": "PLAIN", "username": "u",
                                           "password": {"v": SECRET}}}})
    assert errors == ["kafka.sasl.password: must be a string (quote it in YAML)",
                      "clickhousedb.password: must be a string (quote it in YAML)"]


def test_secret_paths_come_from_the_declarations() -> None:
    paths = {(p.path, p.kind) for p in secret_paths(OutletConfig)}
    assert paths == {
        ("clickhousedb.password", "value"),
        ("kafka.sasl.password", "value"),
        ("additional-clickhouses[*].connection.password", "value"),
        *((f"{tls}.{f}", "file") for tls in ("kafka.tls", "clickhousedb.tls",
                                             "additional-clickhouses[*].connection.tls")
          for f in ("cert-file", "key-file")),
    }


# -- librdkafka-bound keys and other bounds --------------------------------------------------


@pytest.mark.parametrize(("kafka", "error"), [
    ({"fetch-max-wait": "301s"}, "kafka.fetch-max-wait: must be at most 59s, got '301s'"),
    ({"fetch-max-wait": "60s"}, "kafka.fetch-max-wait: must be at most 59s, got '60s'"),
    ({"max-poll-records": 1_000_001},
     "kafka.max-poll-records: must be an integer between 1 and 1000000, got 1000001"),
    ({"queue-size": 257}, "kafka.queue-size: must be an integer between 1 and 256, got 257"),
    ({"topic": "a" * 250}, "kafka.topic: must be a Kafka topic name (1 to 249 of a-z A-Z 0-9 "
                           ". _ -), got 'aaaaa"),
    ({"topic": "^flows.*"}, "kafka.topic: must be a Kafka topic name"),
    ({"topic": ".."}, "kafka.topic: must not be '.' or '..' (Kafka refuses them)"),
    ({"consumer-group": "g" * 256}, "kafka.consumer-group: must be at most 255 characters"),
    ({"sasl": {"mechanism": "SCRAM-SHA-512", "username": "u"}},
     "kafka.sasl.password: is required when mechanism is SCRAM-SHA-512"),
])
def test_kafka_values_librdkafka_would_refuse(kafka: dict[str, Any], error: str) -> None:
    (got,) = errors_of({"kafka": kafka})
    assert got.startswith(error), got


@pytest.mark.parametrize(("document", "error"), [
    ({"clickhousedb": {"dial-timeout": "1000000000000s"}},
     "clickhousedb.dial-timeout: must be at most 10m, got '1000000000000s'"),
    ({"clickhousedb": {"insert-timeout": "2h"}},
     "clickhousedb.insert-timeout: must be at most 1h"),
    ({"clickhouse": {"maximum-batch-size": 1_000_001}},
     "clickhouse.maximum-batch-size: must be an integer between 1 and 1000000"),
    ({"clickhouse": {"grace-period": "1h1s"}}, "clickhouse.grace-period: must be at most 1h"),
    ({"additional-clickhouses": [{"name": "a", "connection": {"servers": ["a:8123"]},
                                  "queue-size": 1000}]},
     "additional-clickhouses[0].queue-size: must be an integer between 1 and 256"),
])
def test_sane_upper_bounds(document: dict[str, Any], error: str) -> None:
    (got,) = errors_of(document)
    assert got.startswith(error), got


# -- TLS files: what librdkafka and ssl would refuse, never quoting a file ----------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    paths = generate_tls(tmp_path / "pki")
    planted = {}
    for name in ("cert", "key"):  # text before the PEM block: ignored by OpenSSL
        planted[name] = tmp_path / f"{name}-planted.pem"
        planted[name].write_bytes(f"{SECRET}\n".encode() + paths[name].read_bytes())
    both = tmp_path / "both.pem"
    both.write_bytes(planted["cert"].read_bytes() + planted["key"].read_bytes())
    junk = tmp_path / "junk.pem"
    junk.write_text(f"{SECRET} is not PEM\n")
    return {**paths, "cert+": planted["cert"], "key+": planted["key"], "both": both,
            "junk": junk}


def _tls(**files: Path) -> dict[str, Any]:
    return {"clickhousedb": {"servers": ["https://ch:8443"], "tls": {
        "enable": True, **{k.replace("_", "-"): str(v) for k, v in files.items()}}}}


def test_tls_files_that_work(pki: dict[str, Path]) -> None:
    cfg = parse_config(_tls(ca_file=pki["ca"], cert_file=pki["cert+"], key_file=pki["key+"]),
                       {})
    assert cfg.clickhousedb.tls.key_file == str(pki["key+"])
    parse_config(_tls(cert_file=pki["both"]), {})  # the key in the certificate's file


def test_tls_files_that_would_fail_at_start(tmp_path: Path, pki: dict[str, Path]) -> None:
    ca, junk = str(pki["ca"]), str(pki["junk"])
    assert errors_of(_tls(ca_file=pki["junk"])) == [
        f"clickhousedb.tls.ca-file: holds no PEM certificate: '{junk}'"]
    assert errors_of(_tls(cert_file=pki["cert"])) == [
        "clickhousedb.tls.cert-file: holds no private key: set key-file (mutual TLS needs "
        "the key of the certificate)"]
    assert errors_of(_tls(cert_file=pki["cert"], key_file=pki["ca_key"])) == [
        "clickhousedb.tls.key-file: does not hold the private key of the certificate in "
        "cert-file"]
    assert errors_of(_tls(cert_file=pki["cert"], key_file=pki["junk"])) == [
        f"clickhousedb.tls.key-file: holds no PEM private key: '{junk}'"]
    encrypted = tmp_path / "encrypted.pem"
    _encrypt(pki["key"], encrypted)
    assert errors_of(_tls(cert_file=pki["cert"], key_file=encrypted)) == [
        "clickhousedb.tls.key-file: holds an encrypted private key, which the outlet cannot "
        "decrypt: store it unencrypted (readable by the outlet only)"]
    assert errors_of(_tls(ca_file=tmp_path)) == [
        f"clickhousedb.tls.ca-file: is a directory, not a file: '{tmp_path}'"]
    pem = pki["key+"].read_text()
    assert errors_of({"kafka": {"tls": {"key-file": pem, "cert-file": ca}}})[0] == (
        "kafka.tls.key-file: holds file content (PEM data?), not a path: give the path of "
        "the file")
    if os.geteuid() != 0:  # root reads anything
        unreadable = tmp_path / "unreadable.pem"
        shutil.copy(pki["ca"], unreadable)
        unreadable.chmod(0)
        assert errors_of(_tls(ca_file=unreadable)) == [
            f"clickhousedb.tls.ca-file: file not readable (permissions): '{unreadable}'"]
        unreadable.chmod(stat.S_IRUSR)


def _encrypt(key: Path, out: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pkey = serialization.load_pem_private_key(key.read_bytes(), password=None)
    out.write_bytes(pkey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))

"""Unit tests for outlet.config (pure, fast: no network, no stack)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from outlet.config import (
    BatchConfig,
    ConfigError,
    ConnectionConfig,
    KafkaConfig,
    OutletConfig,
    Secret,
    dump_redacted,
    format_duration,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
    redacted_dict,
)
from teststack.stack import generate_tls

# The seed-style example of the dual-write issue (issue 4), verbatim.
SEED_EXAMPLE = """
clickhousedb:
  servers: ["clickhouse-local:9000"]
  database: flows
  username: default

clickhouse:
  maximum-batch-size: 50000
  maximum-wait-time: 5s

additional-clickhouses:
  - name: azure
    connection:
      servers: ["clickhouse-azure.example.net:8443"]
      database: flows
      username: akvorado_user
      password: "${AZURE_PASSWORD}"
      max-retries: 3        # give up after 3 failed attempts (the primary retries forever)
      tls:
        enable: true
        verify: true
    clickhouse:
      maximum-batch-size: 50000
      maximum-wait-time: 5s
"""

PASSWORD = "s3cr3t-Pa$$word"


def errors_of(data: object, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, env or {})
    return info.value.errors


def azure(**connection: Any) -> dict[str, Any]:
    conn: dict[str, Any] = {"servers": ["azure.example.net:8443"]}
    conn.update(connection)
    return {"name": "azure", "connection": conn}


# -- defaults and the seed example --------------------------------------------------------


def test_empty_document_gives_defaults() -> None:
    cfg = parse_config(None, {})
    assert cfg == parse_config({}, {})
    assert cfg.kafka == KafkaConfig()
    assert cfg.kafka.brokers == ("127.0.0.1:9092",)
    assert cfg.kafka.topic == "flows"
    assert cfg.kafka.consumer_group == "outlet"
    assert cfg.kafka.fetch_max_wait == pytest.approx(0.1)
    assert cfg.kafka.tls.verify is True and cfg.kafka.tls.enable is False
    assert cfg.clickhousedb.servers == ("http://127.0.0.1:8123",)
    assert cfg.clickhousedb.max_retries == 0
    assert cfg.clickhousedb.password.reveal() == ""
    assert cfg.clickhouse == BatchConfig(50000, 5.0, 60.0)
    assert cfg.additional_clickhouses == ()
    assert cfg.http_listen == "127.0.0.1:8080"
    assert (cfg.log_level, cfg.log_format) == ("info", "human")
    assert cfg.state_path == "./outlet-state"
    assert cfg.metadata.exporters == () and cfg.metadata.networks == ()


def test_null_sections_and_keys_take_defaults() -> None:
    cfg = parse_config({"kafka": None, "clickhousedb": {"max-retries": None}}, {})
    assert cfg.kafka == KafkaConfig()
    assert cfg.clickhousedb.max_retries == 0


def test_seed_example_native_port_is_refused_with_the_fix(tmp_path: Path) -> None:
    """The users' example points the primary at Akvorado's native-protocol port 9000, which
    a real ClickHouse answers with an error on every HTTP insert: refused, saying what to
    write instead (it used to become http://clickhouse-local:9000 silently)."""
    path = tmp_path / "outlet.yaml"
    path.write_text(SEED_EXAMPLE)
    with pytest.raises(ConfigError) as info:
        load_config(path, {"AZURE_PASSWORD": PASSWORD})
    assert info.value.errors == [
        "clickhousedb.servers[0]: is ClickHouse's native protocol port (9000): this outlet "
        "speaks the ClickHouse HTTP interface: use port 8123 (or 8443 with TLS); if this "
        "server really serves HTTP on 9000, write http://clickhouse-local:9000"
    ]


@pytest.mark.parametrize(
    ("server", "tls", "port"),
    [("ch:9000", False, 9000), ("ch:9440", True, 9440), ("ch:9440", False, 9440),
     ("ch:9004", False, 9004), ("[::1]:9000", False, 9000)],
)
def test_native_and_other_protocol_ports_are_refused(server: str, tls: bool, port: int) -> None:
    (error,) = errors_of({"clickhousedb": {"servers": [server], "tls": {"enable": tls}}})
    assert error.startswith("clickhousedb.servers[0]: is ClickHouse's ")
    assert f"port ({port}): this outlet speaks the ClickHouse HTTP interface: use port 8123 " \
           "(or 8443 with TLS)" in error
    # An explicit URL says the server speaks HTTP there: taken as written.
    scheme = "https" if tls else "http"
    cfg = parse_config({"clickhousedb": {"servers": [f"{scheme}://{server}"],
                                         "tls": {"enable": tls}}}, {})
    assert cfg.clickhousedb.servers == (f"{scheme}://{server}",)


def test_seed_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "outlet.yaml"
    path.write_text(SEED_EXAMPLE.replace("clickhouse-local:9000", "clickhouse-local:8123"))
    cfg = load_config(path, {"AZURE_PASSWORD": PASSWORD})
    assert cfg.clickhousedb.servers == ("http://clickhouse-local:8123",)
    (dest,) = cfg.additional_clickhouses
    assert dest.name == "azure" and dest.primary is False
    assert dest.connection.servers == ("https://clickhouse-azure.example.net:8443",)
    assert dest.connection.username == "akvorado_user"
    assert dest.connection.password.reveal() == PASSWORD
    assert dest.connection.max_retries == 3
    assert dest.connection.tls.enable and dest.connection.tls.verify
    assert dest.batch == BatchConfig(50000, 5.0, 60.0)
    assert dest.queue_size == 16
    assert dest.spool.enable and dest.spool.path == "./outlet-state/spool/azure"
    assert dest.spool.max_bytes == 1 << 30
    names = [d.name for d in cfg.destinations()]
    assert names == ["primary", "azure"]


def test_backward_compatible_single_destination() -> None:
    data = yaml.safe_load(
        """
        clickhousedb:
          servers: ["ch1:8123", "http://ch2:8123", "https://ch3"]
          database: flows
          username: default
          password: pw
        clickhouse:
          maximum-batch-size: 1000
          maximum-wait-time: 2s
          grace-period: 10s
        """
    )
    cfg = parse_config(data, {})
    (primary,) = cfg.destinations()
    assert primary.name == "primary" and primary.primary is True
    assert primary.connection is cfg.clickhousedb
    assert primary.connection.servers == ("http://ch1:8123", "http://ch2:8123", "https://ch3:8443")
    assert primary.connection.max_retries == 0
    assert primary.batch == BatchConfig(1000, 2.0, 10.0)
    assert primary.queue_size == 4
    assert primary.spool.enable is False


def test_additional_destination_batch_defaults_from_top_level() -> None:
    cfg = parse_config(
        {
            "clickhouse": {"maximum-batch-size": 1234, "maximum-wait-time": "3s"},
            "additional-clickhouses": [
                azure(),
                {"name": "b", "connection": {"servers": "b1:8123"}, "clickhouse": {}},
            ],
        },
        {},
    )
    a, b = cfg.additional_clickhouses
    assert a.batch == b.batch == BatchConfig(1234, 3.0, 60.0)
    assert a.connection.max_retries == 3
    assert a.connection.database == "flows" and a.connection.username == "default"


# -- environment expansion ----------------------------------------------------------------


def test_env_expansion_everywhere_with_defaults() -> None:
    data = {
        "kafka": {"brokers": ["${KAFKA_HOST}:9092"], "topic": "${TOPIC:-flows}"},
        "clickhousedb": {"max-retries": "${RETRIES}", "password": "${PW}"},
        "log": {"level": "${LEVEL:-debug}"},
        "state": {"path": "$${NOT_A_VAR}/x"},
    }
    env = {"KAFKA_HOST": "kafka1", "RETRIES": "7", "PW": "a'b\"c: #d", "LEVEL": ""}
    cfg = parse_config(data, env)
    assert cfg.kafka.brokers == ("kafka1:9092",)
    assert cfg.kafka.topic == "flows"
    assert cfg.clickhousedb.max_retries == 7
    # Expansion happens on parsed values: YAML-special characters survive as they are.
    assert cfg.clickhousedb.password.reveal() == "a'b\"c: #d"
    assert cfg.log_level == "debug"  # ${VAR:-default} also replaces an empty value
    assert cfg.state_path == "${NOT_A_VAR}/x"


def test_env_expansion_quoting_cannot_break(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text('clickhousedb:\n  password: "${PW}"\n')
    cfg = load_config(path, {"PW": '"\n]: x'})
    assert cfg.clickhousedb.password.reveal() == '"\n]: x'


def test_missing_env_var_names_variable_and_path() -> None:
    errors = errors_of({"additional-clickhouses": [azure(password="${AZURE_PASSWORD}")]})
    assert errors == [
        "additional-clickhouses[0].connection.password: "
        "environment variable AZURE_PASSWORD is not set"
    ]


def test_env_expansion_uses_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OUTLET_TEST_TOPIC", "t1")
    assert parse_config({"kafka": {"topic": "${OUTLET_TEST_TOPIC}"}}).kafka.topic == "t1"


# -- validation errors --------------------------------------------------------------------


def test_error_names_key_path_and_problem() -> None:
    errors = errors_of({"additional-clickhouses": [azure(**{"max-retries": "x"})]})
    assert errors == [
        "additional-clickhouses[0].connection.max-retries: must be an integer >= 0, got 'x'"
    ]


def test_unknown_key_with_suggestion() -> None:
    errors = errors_of(
        {
            "clickhousedb": {"max_retries": 3, "dial-timout": "1s"},
            "kafak": {},
            "clickhouse": {"wibble": 1},
        }
    )
    assert (
        "clickhousedb.max_retries: unknown key (did you mean 'max-retries'? keys are kebab-case)"
        in errors
    )
    assert "clickhousedb.dial-timout: unknown key (did you mean 'dial-timeout'?)" in errors
    assert "kafak: unknown key (did you mean 'kafka'?)" in errors
    assert any(e.startswith("clickhouse.wibble: unknown key (allowed: ") for e in errors)


def test_all_errors_collected_in_one_exception() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "kafka": {"brokers": ["nohost"], "queue-size": 0},
                "clickhouse": {"maximum-batch-size": 0, "maximum-wait-time": "0s"},
                "log": {"level": "loud", "format": "xml"},
                "http": {"listen": "127.0.0.1:99999"},
            },
            {},
        )
    errors = info.value.errors
    assert len(errors) == 7, errors
    text = str(info.value)
    assert text.startswith("invalid configuration (7 errors):")
    for e in errors:
        assert f"  - {e}" in text
    assert "kafka.brokers[0]: must be host:port" in text
    assert "clickhouse.maximum-batch-size: must be an integer between 1 and 1000000, got 0" in text
    assert "clickhouse.maximum-wait-time: must be a duration > 0" in text
    assert "log.level: must be one of 'debug', 'info', 'warning', 'error', got 'loud'" in text


def test_duplicate_and_reserved_and_invalid_names() -> None:
    errors = errors_of(
        {
            "additional-clickhouses": [
                azure(),
                azure(),
                {"name": "primary", "connection": {"servers": ["x:1"]}},
                {"name": "Bad Name", "connection": {"servers": ["y:1"]}},
                {"connection": {"servers": ["z:1"]}},
            ]
        }
    )
    assert any(
        e.startswith("additional-clickhouses[1].name: duplicate destination name 'azure'")
        for e in errors
    )
    assert any(
        e.startswith("additional-clickhouses[2].name: 'primary' is reserved") for e in errors
    )
    assert any(
        e.startswith("additional-clickhouses[3].name: must match [a-z0-9_-]+") for e in errors
    )
    assert "additional-clickhouses[4].name: is required" in errors


def test_additional_destination_requires_servers() -> None:
    errors = errors_of({"additional-clickhouses": [{"name": "a", "connection": {}}]})
    assert errors == ["additional-clickhouses[0].connection.servers: is required"]


def test_server_entries() -> None:
    cfg = parse_config(
        {"clickhousedb": {"servers": ["[::1]:8123", "https://[2001:db8::1]:9440/"]}}, {}
    )
    assert cfg.clickhousedb.servers == ("http://[::1]:8123", "https://[2001:db8::1]:9440")
    cfg = parse_config({"clickhousedb": {"servers": "a:1, b:2", "tls": {"enable": True}}}, {})
    assert cfg.clickhousedb.servers == ("https://a:1", "https://b:2")
    errors = errors_of(
        {
            "clickhousedb": {
                "servers": ["a:0", "ftp://a:1", "a:1:2", "http://user:hunter2@a:1", []],
            }
        }
    )
    assert len(errors) == 5, errors
    assert not any("hunter2" in e for e in errors)
    errors = errors_of({"clickhousedb": {"servers": ["http://a:1"], "tls": {"enable": True}}})
    assert errors[0].startswith("clickhousedb.servers[0]: is an http:// URL but tls.enable")
    assert errors_of({"clickhousedb": {"servers": []}}) == [
        "clickhousedb.servers: must not be empty"
    ]


def test_tls_files_and_skip_verify(tmp_path: Path) -> None:
    ca = generate_tls(tmp_path)["ca"]
    cfg = parse_config(
        {"kafka": {"tls": {"enable": True, "skip-verify": True, "ca-file": str(ca)}}}, {}
    )
    assert cfg.kafka.tls.verify is False and cfg.kafka.tls.ca_file == str(ca)
    missing = str(tmp_path / "missing.pem")
    errors = errors_of(
        {"clickhousedb": {"tls": {"cert-file": missing, "verify": True, "skip-verify": True}}}
    )
    assert f"clickhousedb.tls.cert-file: file not found: {missing!r}" in errors
    assert (
        "clickhousedb.tls.skip-verify: contradicts verify (skip-verify is the opposite)" in errors
    )


def test_sasl() -> None:
    cfg = parse_config(
        {"kafka": {"sasl": {"mechanism": "scram-sha512", "username": "u", "password": PASSWORD}}},
        {},
    )
    assert cfg.kafka.sasl.mechanism == "SCRAM-SHA-512"
    assert cfg.kafka.sasl.password.reveal() == PASSWORD
    assert errors_of({"kafka": {"sasl": {"mechanism": "PLAIN"}}}) == [
        "kafka.sasl.username: is required when mechanism is PLAIN",
        "kafka.sasl.password: is required when mechanism is PLAIN",  # librdkafka refuses it
    ]
    assert errors_of({"kafka": {"sasl": {"mechanism": "GSSAPI"}}})[0].startswith(
        "kafka.sasl.mechanism: must be one of"
    )


# -- metadata and networks ----------------------------------------------------------------

METADATA = """
metadata:
  exporters:
    192.0.2.0/24:
      name: edge1
      site: par
      default: {name: unknown, boundary: internal}
      if-indexes:
        10: {name: Gi0/0/0/10, description: transit, speed: 10000, boundary: external}
        "11": {name: Gi0/0/0/11}
    "2001:db8::1": {name: edge6}
    "::ffff:198.51.100.7": {name: mapped}
networks:
  198.51.100.0/24: {name: office, role: corp}
  2001:DB8:1::/48: lab
"""


def test_metadata_and_networks() -> None:
    cfg = parse_config(yaml.safe_load(METADATA), {})
    e1, e6, mapped = cfg.metadata.exporters
    assert e1.prefix == "192.0.2.0/24" and e1.name == "edge1" and e1.site == "par"
    assert e1.default_interface.name == "unknown"
    assert e1.default_interface.boundary == "internal"
    assert set(e1.interfaces) == {10, 11}
    assert e1.interfaces[10].speed == 10000 and e1.interfaces[10].boundary == "external"
    assert e1.interfaces[11].boundary == "undefined"
    assert e6.prefix == "2001:db8::1/128"
    assert mapped.prefix == "198.51.100.7/32"
    office, lab = cfg.metadata.networks
    assert (office.prefix, office.name, office.role) == ("198.51.100.0/24", "office", "corp")
    assert (lab.prefix, lab.name) == ("2001:db8:1::/48", "lab")
    with pytest.raises(TypeError):
        e1.interfaces[12] = e1.default_interface  # type: ignore[index]


def test_bad_cidrs_and_metadata_values() -> None:
    errors = errors_of(
        {
            "metadata": {
                "exporters": {
                    "192.0.2.1/24": {},
                    "not-an-ip": {},
                    "10.0.0.1": {"if-indexes": {-1: {}, 5: {"speed": -3, "boundary": "outside"}}},
                    "10.0.0.1/32": {},
                }
            },
            "networks": {"300.1.1.0/24": {}, "2001:db8::/129": {}},
        }
    )
    assert (
        'metadata.exporters["192.0.2.1/24"]: has host bits set (did you mean 192.0.2.0/24?)'
        in errors
    )
    assert "metadata.exporters.not-an-ip: is not a valid IP address or CIDR" in errors
    assert any(
        e.startswith('metadata.exporters["10.0.0.1"].if-indexes[-1]: ifIndex') for e in errors
    )
    assert any(
        e.startswith('metadata.exporters["10.0.0.1"].if-indexes[5].speed: must be an integer')
        for e in errors
    )
    assert any(
        e.startswith('metadata.exporters["10.0.0.1"].if-indexes[5].boundary: must be one of')
        for e in errors
    )
    assert any(e.startswith('metadata.exporters["10.0.0.1/32"]: duplicate prefix') for e in errors)
    assert 'networks["300.1.1.0/24"]: is not a valid IP address or CIDR' in errors
    assert 'networks["2001:db8::/129"]: is not a valid IP address or CIDR' in errors
    assert len(errors) == 8, errors


# -- durations and sizes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5s", 5.0),
        ("500ms", 0.5),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("2m30s", 150.0),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("0", 0.0),
        ("2.5", 2.5),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["", "5x", "s", "-1s", -1, True, None, [], "1h 3m", "inf"])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("seconds", [0.0, 0.1, 0.2, 1.0, 1.5, 5.0, 60.0, 90.0, 5400.0, 3600.0])
def test_format_duration_round_trips(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("1GiB", 1 << 30),
        ("512MiB", 512 << 20),
        ("100MB", 100_000_000),
        ("1.5KiB", 1536),
        ("4096", 4096),
        ("10 kb", 10_000),
        (123, 123),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["", "1XB", "GiB", "-1", -5, 1.5, True, None, "1.5"])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


def test_duration_and_size_keys() -> None:
    cfg = parse_config(
        {
            "kafka": {"fetch-max-wait": "250ms"},
            "additional-clickhouses": [
                {**azure(), "spool": {"max-bytes": "512MiB", "fsync-interval": 2}}
            ],
        },
        {},
    )
    assert cfg.kafka.fetch_max_wait == pytest.approx(0.25)
    assert cfg.additional_clickhouses[0].spool.max_bytes == 512 << 20
    assert cfg.additional_clickhouses[0].spool.fsync_interval == 2.0
    errors = errors_of(
        {
            "clickhousedb": {"dial-timeout": "soon", "retry-max-backoff": "100ms"},
            "additional-clickhouses": [{**azure(), "spool": {"max-bytes": "lots"}}],
        }
    )
    assert (
        "clickhousedb.dial-timeout: must be a duration > 0 (e.g. 500ms, 5s, 1m30s), got 'soon'"
        in errors
    )
    assert (
        "clickhousedb.retry-max-backoff: must be >= retry-initial-backoff (200ms), got 100ms"
        in errors
    )
    assert any(
        e.startswith("additional-clickhouses[0].spool.max-bytes: must be a size") for e in errors
    )


# -- secrets ------------------------------------------------------------------------------


def test_secret_type() -> None:
    s = Secret(PASSWORD)
    assert str(s) == "******" and repr(s) == "'******'" and f"{s}" == "******"
    assert s.reveal() == PASSWORD
    assert str(Secret("")) == "" and repr(Secret("")) == "''"
    assert s == Secret(PASSWORD) and s != Secret("other")
    assert PASSWORD not in repr([s]) and PASSWORD not in repr({"p": s})


def _full_config_with_secrets() -> OutletConfig:
    return parse_config(
        {
            "kafka": {"sasl": {"mechanism": "PLAIN", "username": "u", "password": "${KPW}"}},
            "clickhousedb": {"password": "${CPW}"},
            "additional-clickhouses": [azure(password="${APW}")],
        },
        {"KPW": "kafka-" + PASSWORD, "CPW": "ch-" + PASSWORD, "APW": "az-" + PASSWORD},
    )


def test_secrets_never_shown() -> None:
    cfg = _full_config_with_secrets()
    assert cfg.kafka.sasl.password.reveal() == "kafka-" + PASSWORD
    for text in (repr(cfg), str(cfg), dump_redacted(cfg), repr(cfg.destinations())):
        assert PASSWORD not in text
    dumped = yaml.safe_load(dump_redacted(cfg))
    assert dumped["kafka"]["sasl"]["password"] == "******"
    assert dumped["clickhousedb"]["password"] == "******"
    assert dumped["additional-clickhouses"][0]["connection"]["password"] == "******"


def test_secrets_not_in_errors() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "clickhousedb": {"password": 12345678, "servers": [f"http://u:{PASSWORD}@h:1"]},
                "additional-clickhouses": [azure(password="${APW}", **{"max-retries": -1})],
            },
            {"APW": PASSWORD},
        )
    text = str(info.value)
    assert "clickhousedb.password: must be a string (quote it in YAML)" in text
    assert "12345678" not in text and PASSWORD not in text
    assert PASSWORD not in repr(info.value)


# -- normalized dump ----------------------------------------------------------------------


def test_redacted_dump_is_normalized_and_round_trips() -> None:
    seed = SEED_EXAMPLE.replace(":9000", ":8123")
    cfg = parse_config(yaml.safe_load(METADATA + seed), {"AZURE_PASSWORD": PASSWORD})
    d = redacted_dict(cfg)
    assert list(d) == [
        "kafka",
        "clickhousedb",
        "clickhouse",
        "additional-clickhouses",
        "metadata",
        "networks",
        "http",
        "log",
        "state",
    ]
    assert d["clickhouse"] == {
        "maximum-batch-size": 50000,
        "maximum-wait-time": "5s",
        "grace-period": "1m",
        "rebalance-grace-period": "5s",
        "compression": "lz4",
        "maximum-flows-per-record": 1000,
    }
    assert d["kafka"]["fetch-max-wait"] == "100ms"
    assert d["additional-clickhouses"][0]["spool"]["max-bytes"] == "1GiB"
    again = parse_config(yaml.safe_load(dump_redacted(cfg)), {})
    # Everything but the secrets survives a dump and a re-parse.
    dest = again.additional_clickhouses[0]
    fixed = dataclasses.replace(
        dest,
        connection=dataclasses.replace(dest.connection, password=Secret(PASSWORD)),
    )
    assert dataclasses.replace(again, additional_clickhouses=(fixed,)) == cfg


# -- files --------------------------------------------------------------------------------


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path / "nope.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad, {})
    dup = tmp_path / "dup.yaml"
    dup.write_text("clickhouse:\n  maximum-batch-size: 1\nclickhouse:\n  maximum-batch-size: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(dup, {})
    assert info.value.errors == ["line 3: duplicate key 'clickhouse'"]
    assert str(dup) in str(info.value)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- a\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(notmap, {})


def test_dataclasses_are_frozen() -> None:
    cfg = parse_config({}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.clickhousedb.max_retries = 5  # type: ignore[misc]
    assert isinstance(cfg.clickhousedb, ConnectionConfig)


def test_docs_example_parses() -> None:
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    if not doc.exists():
        pytest.skip("docs/configuration.md not present")
    text = doc.read_text()
    example = text.split("\n## Example\n", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    cfg = parse_config(yaml.safe_load(example), {"AZURE_PASSWORD": PASSWORD})
    assert [d.name for d in cfg.destinations()] == ["primary", "azure"]


def _tls_examples() -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    section = text.split("\n## TLS\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```yaml\n")[1:]]


def test_docs_tls_examples_parse_and_show_every_tls_and_sasl_key(tmp_path: Path) -> None:
    """Each TLS example of docs/configuration.md is a valid configuration once its paths
    exist (real certificates from a test CA), and together they use every key."""
    pki = generate_tls(tmp_path / "pki")
    both = tmp_path / "cert-and-key.pem"
    both.write_bytes(pki["cert"].read_bytes() + pki["key"].read_bytes())
    used: set[str] = set()
    examples = _tls_examples()
    assert len(examples) >= 3
    for example in examples:
        def real(m: re.Match[str]) -> str:
            name = m.group(0)
            path = (both if "and-key" in name else pki["key"] if "key" in name
                    else pki["ca"] if "-ca" in name else pki["cert"])
            return str(path)

        doc = yaml.safe_load(re.sub(r"/etc/outlet/[\w.-]+", real, example))
        parse_config(doc, {"KAFKA_PASSWORD": "x", "CENTRAL_PASSWORD": "y"})
        for tls in (doc.get("kafka", {}).get("tls"), doc.get("clickhousedb", {}).get("tls"),
                    *(d["connection"].get("tls") for d in doc.get("additional-clickhouses", []))):
            used |= {f"tls.{k}" for k in tls or {}}
        used |= {f"sasl.{k}" for k in doc.get("kafka", {}).get("sasl", {})}
        used |= {f"tls.{m}" for m in re.findall(r"# or Akvorado's spelling: ([\w-]+):", example)}
    text = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    tables = {name: text.split(f"<!-- keys:{name} -->", 1)[1].split("<!-- /keys -->", 1)[0]
              for name in ("tls", "kafka")}
    documented = {f"tls.{k}" for k in re.findall(r"^\| `([\w-]+)`", tables["tls"], re.M)}
    documented |= set(re.findall(r"^\| `(sasl\.[\w-]+)`", tables["kafka"], re.M))
    assert len(documented) == 9 and documented <= used, sorted(documented - used)


def test_compression_is_global() -> None:
    cfg = parse_config({"clickhouse": {"compression": "lz4"}}, env={})
    assert cfg.clickhouse.compression == "lz4"
    with pytest.raises(ConfigError) as err:
        parse_config({"clickhouse": {"compression": "gzip"}}, env={})
    assert "clickhouse.compression" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "additional-clickhouses": [
                    {"name": "a", "connection": {"servers": ["x:1"]},
                     "clickhouse": {"compression": "lz4"}}
                ]
            },
            env={},
        )
    assert "compression is global" in str(err.value)


def test_maximum_flows_per_record() -> None:
    cfg = parse_config({"clickhouse": {"maximum-flows-per-record": 10}}, env={})
    assert cfg.clickhouse.maximum_flows_per_record == 10
    with pytest.raises(ConfigError) as e:
        parse_config({"clickhouse": {"maximum-flows-per-record": 0}}, env={})
    assert "clickhouse.maximum-flows-per-record: must be an integer between 1 and 1000000" in str(
        e.value
    )
    with pytest.raises(ConfigError) as e:
        parse_config(
            {
                "additional-clickhouses": [
                    {
                        "name": "azure",
                        "connection": {"servers": ["azure:8123"]},
                        "clickhouse": {"maximum-flows-per-record": 5},
                    }
                ]
            },
            env={},
        )
    assert "maximum-flows-per-record is global" in str(e.value)
def test_docs_key_tables_are_generated_from_the_schema() -> None:
    """Each key is declared once, in outlet/config.py; the docs' tables are derived from it
    (`uv run python -m outlet.config --docs` regenerates them)."""
    from outlet.config import DOCS, render_docs

    text = DOCS.read_text()
    assert render_docs(text) == text, "run: uv run python -m outlet.config --docs"

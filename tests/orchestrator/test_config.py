"""The orchestrator's configuration: inheritance of shared sections, secrets, validation."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from orchestrator.config import (
    DEFAULT_RESOLUTIONS,
    OrchestratorConfig,
    parse_orchestrator_config,
    parse_retention,
)
from orchestrator.ddl import Resolution
from outlet.config import ConfigError

SECRET = "pl4nted-S3cret"
ENV = {"CH_PASSWORD": SECRET}


def config(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "clickhousedb": {
            "servers": ["clickhouse-local:8123"],
            "database": "flows_dc_a",
            "username": "orchestrator",
            "password": "${CH_PASSWORD}",
            "cluster": "",
        },
        "kafka": {"brokers": ["kafka-a:9092"], "topic": "flows-a", "consumer-group": "outlets"},
    }
    base.update(sections)
    return base


def parse(data: dict[str, Any], env: dict[str, str] | None = None) -> OrchestratorConfig:
    return parse_orchestrator_config(data, ENV if env is None else env)


def errors_of(data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, env)
    return info.value.errors


def served(cfg: OrchestratorConfig, index: int) -> dict[str, Any]:
    """What the outlet receives: the YAML body parsed back."""
    doc = yaml.safe_load(cfg.outlets[index].body)
    assert doc == cfg.outlets[index].document
    return dict(doc)


def test_entry_without_sections_inherits_them_whole() -> None:
    cfg = parse(config(outlet=[{"clickhouse": {"maximum-batch-size": 20000}}]))
    doc = served(cfg, 0)
    assert doc["kafka"] == config()["kafka"]
    assert doc["clickhousedb"] == {
        "servers": ["clickhouse-local:8123"],
        "database": "flows_dc_a",
        "username": "orchestrator",
        "password": "${CH_PASSWORD}",
    }, "orchestrator-only keys (cluster) are not served; the password stays a placeholder"
    assert doc["clickhouse"] == {"maximum-batch-size": 20000}


def test_entry_with_its_own_servers_keeps_its_whole_section() -> None:
    """The case Akvorado gets wrong: it replaces an outlet's own clickhousedb."""
    own = {"servers": ["clickhouse-b:8123"], "database": "flows_b", "password": "${B_PW}"}
    cfg = parse(config(outlet=[{}, {"clickhousedb": own}]))
    assert served(cfg, 1)["clickhousedb"] == own, "nothing inherited into another cluster"
    assert served(cfg, 0)["clickhousedb"]["servers"] == ["clickhouse-local:8123"]
    assert served(cfg, 1)["kafka"] == config()["kafka"], "other sections still inherited"


def test_entry_tweaking_a_section_inherits_the_rest() -> None:
    tweak = {"kafka": {"consumer-group": "outlets-b", "tls": {"enable": True}}}
    cfg = parse(config(outlet=[tweak, {"clickhousedb": {"max-retries": 0, "username": "b"}}]))
    assert served(cfg, 0)["kafka"] == {
        "brokers": ["kafka-a:9092"],
        "topic": "flows-a",
        "consumer-group": "outlets-b",
        "tls": {"enable": True},
    }
    db = served(cfg, 1)["clickhousedb"]
    assert (db["username"], db["max-retries"], db["servers"]) == (
        "b",
        0,
        ["clickhouse-local:8123"],
    )


def test_shared_sections_absent_entries_served_as_written() -> None:
    entry = {"kafka": {"brokers": ["k:9092"]}, "clickhousedb": {"servers": ["c:8123"]}}
    cfg = parse({"outlet": [entry]}, env={})
    assert served(cfg, 0) == entry


def test_no_outlet_list_serves_one_default_entry_like_akvorado() -> None:
    cfg = parse(config())
    assert len(cfg.outlets) == 1
    assert served(cfg, 0)["kafka"]["topic"] == "flows-a"
    single = parse(config(outlet={"clickhouse": {"maximum-wait-time": "2s"}}))
    assert served(single, 0)["clickhouse"] == {"maximum-wait-time": "2s"}


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ({"clickhousedb": {"servers": ["c:8123"], "password": SECRET}}, "clickhousedb.password"),
        (
            {"kafka": {"sasl": {"mechanism": "PLAIN", "username": "u", "password": SECRET}}},
            "kafka.sasl.password",
        ),
        (
            {"additional-clickhouses": [
                {"name": "azure", "connection": {"servers": ["a:8443"], "password": SECRET}}
            ]},
            "additional-clickhouses[0].connection.password",
        ),
        (
            {"clickhousedb": {"servers": ["c:8123"], "password": "${X:-" + SECRET + "}"}},
            "clickhousedb.password",
        ),
        (
            {"clickhousedb": {"servers": ["c:8123"], "password": "pre-${X}"}},
            "clickhousedb.password",
        ),
    ],
)  # fmt: skip
def test_literal_passwords_are_refused(entry: dict[str, Any], key: str) -> None:
    errors = errors_of(config(outlet=[{}, entry]))
    assert any(e.startswith(f"outlet[1].{key}: a literal password") for e in errors), errors
    assert SECRET not in "\n".join(errors)


def test_literal_password_inherited_from_shared_section_is_named() -> None:
    data = config(outlet=[{}])
    data["clickhousedb"]["password"] = SECRET
    errors = errors_of(data)
    assert errors == [
        "outlet[0].clickhousedb.password: a literal password would be served to the outlet"
        " (inherited from the shared clickhousedb section); write ${VARIABLE} (expanded by"
        " the outlet from its own environment) or set allow-literal-secrets: true"
    ]


def test_literal_passwords_allowed_when_asked() -> None:
    data = config(outlet=[{"clickhousedb": {"servers": ["c:8123"], "password": SECRET}}])
    data["allow-literal-secrets"] = True
    cfg = parse(data)
    assert cfg.outlets[0].literal_secrets == ("clickhousedb.password",)


def test_placeholders_are_never_expanded_by_the_orchestrator() -> None:
    entry = {
        "kafka": {"brokers": "${BROKERS}", "max-poll-records": "${POLL}"},
        "additional-clickhouses": [
            {"name": "azure", "connection": {"servers": ["a:8443"], "password": "${AZ}"}}
        ],
    }
    cfg = parse(config(outlet=[entry]))
    body = cfg.outlets[0].body
    for placeholder in ("${BROKERS}", "${POLL}", "${AZ}", "${CH_PASSWORD}"):
        assert placeholder in body
    assert SECRET not in body
    assert "__orchestrator_placeholder" not in body


def test_entry_errors_use_the_outlets_validation_with_full_paths() -> None:
    entry = {"kafka": {"max-poll-records": "lots"}, "clickhouse": {"maximum-wait-tme": "5s"}}
    errors = errors_of(config(outlet=[{}, entry, "nope"]))
    assert any(e.startswith("outlet[1].kafka.max-poll-records: must be an integer") for e in errors)
    assert any("outlet[1].clickhouse.maximum-wait-tme: unknown key" in e for e in errors)
    assert "outlet[2]: must be a mapping (an outlet configuration)" in errors


def test_orchestrator_needs_its_own_password_variable() -> None:
    errors = errors_of(config(), env={})
    assert errors == ["clickhousedb.password: environment variable CH_PASSWORD is not set"]


def test_own_connection_is_expanded_and_validated_by_outlet_code() -> None:
    cfg = parse(config())
    assert cfg.clickhousedb.password.reveal() == SECRET
    assert cfg.clickhousedb.servers == ("http://clickhouse-local:8123",)
    errors = errors_of(config(clickhousedb={"servers": ["x:0"], "cluster": "bad name!"}))
    assert "clickhousedb.servers[0]: has port 0 out of range 1..65535, got 'x:0'" in errors
    assert any(e.startswith("clickhousedb.cluster: must be a cluster name") for e in errors)


def test_unknown_keys_with_hints() -> None:
    errors = errors_of(config(inlet=[{}], htp={}, clickhouse={"resolution": []}))
    assert "inlet: unknown key (this orchestrator serves outlet configurations only)" in errors
    assert "htp: unknown key (did you mean 'http'?)" in errors
    assert "clickhouse.resolution: unknown key (did you mean 'resolutions'?)" in errors


def test_resolutions_defaults_and_custom() -> None:
    assert parse(config()).clickhouse.resolutions == DEFAULT_RESOLUTIONS
    assert (
        Resolution(0, 15 * 86400),
        Resolution(60, 7 * 86400),
        Resolution(300, 90 * 86400),
        Resolution(3600, 360 * 86400),
    ) == DEFAULT_RESOLUTIONS
    custom = config(clickhouse={"resolutions": [
        {"interval": "1h", "ttl": "400d"}, {"interval": 0, "ttl": "720h"}, {"interval": "10s"},
    ]})  # fmt: skip
    assert parse(custom).clickhouse.resolutions == (
        Resolution(0, 30 * 86400),
        Resolution(10, 0),
        Resolution(3600, 400 * 86400),
    )


@pytest.mark.parametrize(
    ("resolutions", "problem"),
    [
        ([{"interval": "1m", "ttl": "1d"}], "clickhouse.resolutions: must include the raw table"),
        ([{"interval": 0, "ttl": "30m"}], "clickhouse.resolutions[0].ttl: must be 0"),
        ([{"interval": 0}, {"interval": "2s"}], "clickhouse.resolutions[1].interval: must be 0"),
        ([{"interval": 0}, {"interval": 0}], "clickhouse.resolutions[1].interval: duplicate"),
        ([{"interval": 0, "tll": "1d"}], "clickhouse.resolutions[0].tll: unknown key"),
    ],
)
def test_bad_resolutions_are_named(resolutions: list[dict[str, Any]], problem: str) -> None:
    errors = errors_of(config(clickhouse={"resolutions": resolutions}))
    assert any(e.startswith(problem) for e in errors), errors


def test_parse_retention() -> None:
    assert parse_retention("15d") == 15 * 86400
    assert parse_retention("360h") == 360 * 3600
    with pytest.raises(ValueError):
        parse_retention("15 days")


def test_bearer_token_and_tls_settings(tmp_path: Any) -> None:
    cfg = parse(config(http={"listen": "127.0.0.1:0", "bearer-token": "${CH_PASSWORD}"}))
    assert cfg.http.bearer_token.reveal() == SECRET
    assert str(cfg.http.bearer_token) == "******"
    errors = errors_of(config(http={"tls": {"enable": True}, "bearer-token": 12}))
    assert "http.tls.cert-file: is required when tls.enable is true" in errors
    assert "http.bearer-token: must be a string (quote it in YAML)" in errors


def test_docs_key_tables_are_generated_from_the_declarations() -> None:
    from orchestrator.config import DOCS, reference_tables
    from outlet.config import render_docs

    text = DOCS.read_text()
    assert render_docs(text, reference_tables()) == text, (
        "run: uv run python -m orchestrator.config --docs")


def test_shared_keys_are_the_outlets_declarations() -> None:
    errors = errors_of(config(log={"level": "loud"}, http={"listen": "nowhere"}))
    assert any(e.startswith("log.level: must be one of 'debug'") for e in errors), errors
    assert any(e.startswith("http.listen: must be host:port") for e in errors), errors
    assert parse(config(log={"level": "warn"})).log_level == "warning", "the outlet's aliases"

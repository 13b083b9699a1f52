"""No secret in any output channel (issue 14).

A distinct secret is planted at every place a configuration can hold one, and every
channel is searched for every planted secret:

- places: each path the outlet's configuration declares secret
  (``outlet.confspec.secret_paths``: the ClickHouse passwords of the primary and of each
  additional destination, the SASL password, and the TLS certificate and key files, whose
  *content* is the secret), each once literally and once through ``${ENV}``; the
  orchestrator's bearer token and ClickHouse password; the stack's own passwords;
- channels: stdout, stderr, the log in both formats (human, json), ``/metrics``,
  ``/readyz``, ``check-config`` (valid and invalid configurations, YAML syntax errors
  included), the orchestrator's log, API and ``check-config``, the chaos report and the
  load report.

The paths come from the declarations, so a secret key added later is planted here without
being listed. The outlet processes run against the real stack with wrong passwords, so
the errors an operator sees are logged.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.config import HTTPConfig, OrchestratorConfig
from outlet import metrics as names
from outlet.config import OutletConfig
from outlet.confspec import Secret, locate, secret_paths
from teststack.kafka import create_topic
from teststack.orchestrator_proc import OrchestratorProcess, run_orchestrator_cli, site_config
from teststack.outlet_proc import free_port, stop_process
from teststack.promtext import metric_value, parse_metrics
from teststack.stack import Endpoints, generate_tls

ROOT = Path(__file__).resolve().parent.parent
VALUE_PATHS = [p.path for p in secret_paths(OutletConfig) if p.kind == "value"]
FILE_PATHS = [p.path for p in secret_paths(OutletConfig) if p.kind == "file"]


def _slug(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_").upper()


# -- planting -----------------------------------------------------------------------------


@dataclass
class Planted:
    """The secrets planted in one configuration; ``env`` sets the ``${ENV}`` ones."""

    secrets: dict[str, str] = field(default_factory=dict)  # where -> secret
    env: dict[str, str] = field(default_factory=dict)

    def new(self, where: str) -> str:
        value = f"Pl4nted-{_slug(where)[:24]}-{secrets.token_hex(6)}"
        self.secrets[where] = value
        return value

    def add(self, where: str, value: str) -> None:
        self.secrets[where] = value

    def assert_absent(self, channel: str, text: str) -> None:
        leaked = [where for where, s in self.secrets.items() if s in text]
        assert not leaked, f"{channel} shows the secret of {leaked}:\n{_around(text, leaked, self)}"

    def assert_absent_in_run(self, channel: str, res: subprocess.CompletedProcess[str]) -> None:
        self.assert_absent(f"{channel} stdout", res.stdout)
        self.assert_absent(f"{channel} stderr", res.stderr)

    def assert_absent_in_tree(self, channel: str, root: Path) -> int:
        """Every file under ``root`` (reports); returns how many were searched."""
        files = [p for p in root.rglob("*") if p.is_file()]
        for p in files:
            self.assert_absent(f"{channel} {p.relative_to(root)}",
                               p.read_bytes().decode("latin-1"))
        return len(files)


def _around(text: str, leaked: list[str], planted: Planted) -> str:
    i = text.find(planted.secrets[leaked[0]])
    return text[max(0, i - 200): i + 100]


def plant_files(tmp: Path, planted: Planted, paths: list[str]) -> dict[str, Path]:
    """A real certificate and key per file path, each file's content a planted secret: a
    marker line before the PEM block (OpenSSL skips it) and the key's own base64 body."""
    pki = generate_tls(tmp / "pki")
    out: dict[str, Path] = {}
    for path in paths:
        source = pki["key"] if path.endswith("key-file") else pki["cert"]
        pem = source.read_bytes()
        marker = planted.new(f"content of {path}")
        target = tmp / f"{_slug(path).lower()}.pem"
        target.write_bytes(marker.encode() + b"\n" + pem)
        body = [line for line in pem.decode().splitlines() if not line.startswith("-----")]
        if path.endswith("key-file"):
            planted.add(f"key material of {path}", body[0][:40])
        out[path] = target
    return out


def _set(document: dict[str, Any], path: str, value: object) -> None:
    """Set ``path`` (``a.b``; ``a[*].b``: in every item of an existing list ``a``) in a
    document, creating the mappings on the way."""
    nodes: list[Any] = [document]
    parts = path.split(".")
    for part in parts[:-1]:
        nxt: list[Any] = []
        for node in nodes:
            if part.endswith("[*]"):
                items = node.get(part[:-3])
                nxt += items if isinstance(items, list) else []
            else:
                nxt.append(node.setdefault(part, {}))
        nodes = nxt
    for node in nodes:
        node[parts[-1]] = value


def plant_outlet(document: dict[str, Any], planted: Planted, *, via_env: set[str]) -> None:
    """A distinct secret at every value path of the outlet's declarations; those in
    ``via_env`` as ``${VAR}``."""
    for path in VALUE_PATHS:
        for concrete, node, key in _places(document, path):
            secret = planted.new(concrete)
            if path in via_env:
                var = f"PLANTED_{_slug(concrete)}"
                planted.env[var] = secret
                node[key] = f"${{{var}}}"
            else:
                node[key] = secret


def _places(document: dict[str, Any], path: str) -> Iterator[tuple[str, Any, Any]]:
    """The places of ``path``; an absent key is created (not in lists that are absent)."""
    found = list(locate(document, path))
    if not found:
        _set(document, path, "")
        found = list(locate(document, path))
    return iter(found)


def base_config(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "kafka": {"brokers": ["127.0.0.1:9"], "topic": "flows", "consumer-group": "g",
                  "sasl": {"mechanism": "PLAIN", "username": "outlet"}},
        "clickhousedb": {"servers": ["127.0.0.1:8123"], "username": "outlet"},
        "additional-clickhouses": [
            {"name": "azure", "connection": {"servers": ["127.0.0.1:8124"]}},
            {"name": "backup", "connection": {"servers": ["127.0.0.1:8125"]}},
        ],
    }
    cfg.update(over)
    return cfg


def planted_config(tmp: Path) -> tuple[dict[str, Any], Planted]:
    """Every declared secret planted (values: half literal, half ${ENV}; files: TLS on
    Kafka and on every destination)."""
    planted = Planted()
    cfg = base_config()
    plant_outlet(cfg, planted, via_env=set(VALUE_PATHS[::2]))
    files = plant_files(tmp, planted, FILE_PATHS)
    for path, file in files.items():
        for _, node, key in _places(cfg, path):
            node[key] = str(file)
    for tls_path in {p.rsplit(".", 1)[0] for p in FILE_PATHS}:
        for _, node, key in _places(cfg, tls_path + ".enable"):
            node[key] = True
    for dest in [cfg["clickhousedb"], *(d["connection"] for d in cfg["additional-clickhouses"])]:
        dest["servers"] = [s.replace("127.0.0.1:", "https://127.0.0.1:") for s in dest["servers"]]
    return cfg, planted


def outlet_cli(*args: str, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "outlet.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=timeout,
                          cwd=ROOT)


# -- check-config, valid and invalid (no stack) --------------------------------------------


def test_the_planted_paths_cover_every_declared_secret(tmp_path: Path) -> None:
    cfg, planted = planted_config(tmp_path)
    where = set(planted.secrets)
    for path in VALUE_PATHS:
        assert any(w.replace("[0]", "[*]").replace("[1]", "[*]") == path for w in where), path
    for path in FILE_PATHS:
        assert f"content of {path}" in where, path
    text = yaml.safe_dump(cfg)
    literal = [w for w in where if "." in w and planted.secrets[w] in text]
    assert planted.env and literal  # both ways a password is given


def test_check_config_of_a_valid_configuration_shows_no_secret(tmp_path: Path) -> None:
    cfg, planted = planted_config(tmp_path)
    path = tmp_path / "outlet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = outlet_cli("check-config", str(path), env=planted.env)
    assert res.returncode == 0, res.stderr
    planted.assert_absent_in_run("check-config", res)
    dumped = yaml.safe_load(res.stdout)
    for p in VALUE_PATHS:
        assert all(node[key] == "******" for _, node, key in locate(dumped, p)), p


def _invalid_variants(cfg: dict[str, Any], planted: Planted) -> Iterator[tuple[str, str]]:
    """(name, YAML text) of invalid configurations, each holding the planted secrets."""
    base = yaml.safe_dump(cfg)
    yield "another key wrong", yaml.safe_dump({**cfg, "clickhouse": {"maximum-batch-size": 0}})
    for path in VALUE_PATHS:
        for concrete, node, key in list(locate(cfg, path)):
            secret = node[key] if not str(node[key]).startswith("${") else planted.env[
                node[key][2:-1]]
            for label, value in (("a list", [secret]), ("a mapping", {"value": secret}),
                                 ("a number", int.from_bytes(secret.encode()[:6], "big"))):
                doc = copy.deepcopy(cfg)
                for _, n, k in locate(doc, concrete):
                    n[k] = value
                if label == "a number":
                    planted.add(f"{concrete} as a number", str(value))
                yield f"{concrete} as {label}", yaml.safe_dump(doc)
            # YAML syntax errors on the secret's line (the cases)
            line = f"{key}: {secret}" if not str(node[key]).startswith("${") else None
            if line is None:
                continue
            for label, broken in (("unterminated quote", f'{key}: "{secret}'),
                                  ("': ' in the value", f"{key}: {secret}: x"),
                                  ("bad escape", f'{key}: "{secret}\\x"'),
                                  ("leading @", f"{key}: @{secret}"),
                                  ("!!binary", f"{key}: !!binary {secret}"),
                                  ("a tag", f"{key}: !{secret}"),
                                  ("an alias", f"{key}: *{secret}")):
                assert line in base, (line, base)
                yield f"{concrete}: {label}", base.replace(line, broken, 1)
    for path in FILE_PATHS:  # the file holds junk (the secret) instead of PEM
        for concrete, node, key in list(locate(cfg, path)):
            junk = Path(node[key]).with_suffix(".junk")
            junk.write_text(f"{planted.secrets[f'content of {path}']}\nnot PEM\n")
            doc = copy.deepcopy(cfg)
            for _, n, k in locate(doc, concrete):
                n[k] = str(junk)
            yield f"{concrete}: not PEM", yaml.safe_dump(doc)
            doc = copy.deepcopy(cfg)
            for _, n, k in locate(doc, concrete):
                n[k] = Path(node[key]).read_text()  # the content pasted instead of the path
            yield f"{concrete}: content pasted", yaml.safe_dump(doc)
    for var in planted.env:  # a ${VAR} secret at a wrong place (where it is invalid)
        for wrong in ("clickhousedb.tls", "kafka.brokers", "kafka.topic", "http.listen",
                      "state", "additional-clickhouses", "log.level", "clickhousedb.servers",
                      "clickhouse.maximum-batch-size"):
            doc = copy.deepcopy(cfg)
            suffix = {"kafka.topic": "!", "clickhousedb.servers": ":0"}.get(wrong, "")
            _set(doc, wrong, f"${{{var}}}{suffix}")
            yield f"${{{var}}} at {wrong}", yaml.safe_dump(doc)


def test_check_config_of_invalid_configurations_shows_no_secret(tmp_path: Path) -> None:
    cfg, planted = planted_config(tmp_path)
    variants = list(_invalid_variants(cfg, planted))
    assert len(variants) > 40
    # One process checks them all (a subprocess each would cost minutes): the same code
    # path as the CLI, stderr captured as the CLI prints it.
    script = (
        "import json, sys\n"
        "from outlet import cli\n"
        "for path in json.load(sys.stdin):\n"
        "    try:\n"
        "        cli.main(['check-config', path])\n"
        "    except SystemExit as e:\n"
        "        print(f'== exit {e.code}', file=sys.stderr)\n"
        "    print('== done', flush=True)\n"
        "    print('== done', file=sys.stderr, flush=True)\n"
    )
    paths = []
    for i, (_, text) in enumerate(variants):
        p = tmp_path / f"invalid-{i}.yaml"
        p.write_text(text)
        paths.append(str(p))
    res = subprocess.run([sys.executable, "-c", script], input=json.dumps(paths),
                         capture_output=True, text=True, env={**os.environ, **planted.env},
                         timeout=300, cwd=ROOT)
    outs = res.stdout.split("== done\n")
    errs = res.stderr.split("== done\n")
    assert len(errs) == len(variants) + 1, res.stderr[-2000:]
    for (name, _), out, err in zip(variants, outs, errs, strict=False):
        assert "== exit 2" in err and "Traceback" not in err, (name, err)
        planted.assert_absent(f"check-config stdout ({name})", out)
        planted.assert_absent(f"check-config stderr ({name})", err)


def test_orchestrator_check_config_shows_no_secret(tmp_path: Path) -> None:
    planted = Planted()
    token, password = planted.new("orchestrator http.bearer-token"), planted.new(
        "orchestrator clickhousedb.password")
    planted.env.update(ORCH_TOKEN=token, ORCH_PW=password)
    entry = base_config()
    plant_outlet(entry, planted, via_env=set(VALUE_PATHS))  # served as ${VAR}: allowed
    cfg = {"http": {"bearer-token": "${ORCH_TOKEN}"},
           "clickhousedb": {"servers": ["127.0.0.1:8123"], "password": "${ORCH_PW}"},
           "outlet": [entry]}
    path = tmp_path / "orchestrator.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run_orchestrator_cli("check-config", str(path), env=planted.env)
    assert res.returncode == 0, res.stderr
    planted.assert_absent_in_run("orchestrator check-config", res)
    literal = copy.deepcopy(cfg)
    literal["http"]["bearer-token"] = token
    literal["clickhousedb"]["tls"] = "${ORCH_TOKEN}"  # a secret at a wrong place
    literal["http"]["tls"] = {"enable": "${ORCH_PW}"}
    for _, node, key in locate(literal["outlet"][0], "clickhousedb.password"):
        node[key] = planted.env[node[key][2:-1]]  # a literal password would be served
    path.write_text(yaml.safe_dump(literal))
    res = run_orchestrator_cli("check-config", str(path), env=planted.env)
    assert res.returncode == 2 and "a literal password would be served" in res.stderr
    assert "clickhousedb.tls: must be a mapping" in res.stderr
    planted.assert_absent("orchestrator check-config stderr (invalid)", res.stdout + res.stderr)
    path.write_text(f'http:\n  bearer-token: "{token}\n')
    res = run_orchestrator_cli("check-config", str(path))
    assert res.returncode == 2 and "line 2, column 17" in res.stderr
    planted.assert_absent("orchestrator check-config stderr (YAML error)", res.stderr)


def test_orchestrator_secrets_are_declared_as_secret() -> None:
    """The orchestrator's own secrets are typed Secret (never shown): the fields searched
    here are found from its types, so a new one is checked too."""
    found = []
    for cls, prefix in ((OrchestratorConfig, ""), (HTTPConfig, "http.")):
        for f in dataclasses.fields(cls):
            if f.type in ("Secret", Secret):
                found.append(prefix + f.name)
    assert found == ["http.bearer_token"]
    assert OrchestratorConfig().clickhousedb.password == Secret()


# -- the real stack ------------------------------------------------------------------------


class _Proc:
    """A process with its stdout and stderr in separate files."""

    def __init__(self, workdir: Path, name: str, argv: list[str], env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = workdir / f"{name}.out", workdir / f"{name}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err,
                                         env={**os.environ, **env}, cwd=ROOT,
                                         start_new_session=True)

    def stop(self, timeout: float = 30) -> int:
        return stop_process(self.proc, timeout)

    def output(self) -> tuple[str, str]:
        return self.stdout_path.read_text(errors="replace"), self.stderr_path.read_text(
            errors="replace")


def _get(url: str, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _wait(what: str, check: Any, timeout: float, proc: _Proc) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        assert proc.proc.poll() is None, f"{what}: exited\n{proc.output()[1][-3000:]}"
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout}s\n{proc.output()[1][-3000:]}")


def _outlet_run(tmp: Path, name: str, cfg: dict[str, Any], env: dict[str, str]) -> _Proc:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return _Proc(tmp, name, [sys.executable, "-m", "outlet.cli", "run", "--config", str(path)],
                 env)


def _stack_config(stack: Endpoints, tmp: Path, topic: str, log_format: str
                  ) -> tuple[dict[str, Any], Planted]:
    """Both destinations over HTTPS with planted client certificates and keys and wrong,
    planted passwords (the primary's through ${ENV}): every insert fails with code 516."""
    planted = Planted()
    local, azure = stack.clickhouse["local"], stack.clickhouse["azure"]
    cfg = {
        "kafka": {"brokers": [stack.kafka.bootstrap], "topic": topic,
                  "consumer-group": f"secrets-{log_format}-{topic}"},
        "clickhousedb": {"servers": [local.https_url], "username": local.username,
                         "tls": {"enable": True, "ca-file": stack.ca_file},
                         "dial-timeout": "2s", "retry-initial-backoff": "100ms",
                         "retry-max-backoff": "500ms"},
        "clickhouse": {"maximum-batch-size": 100, "maximum-wait-time": "200ms",
                       "grace-period": "2s"},
        "additional-clickhouses": [{
            "name": "azure",
            "connection": {"servers": [azure.https_url], "username": azure.username,
                           "tls": {"enable": True, "ca-file": stack.ca_file},
                           "max-retries": 1, "retry-initial-backoff": "100ms"},
            "spool": {"enable": False}}],
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "state": {"path": str(tmp / f"state-{log_format}")},
        "log": {"level": "debug", "format": log_format},
    }
    plant_outlet(cfg, planted, via_env={"clickhousedb.password"})
    files = plant_files(tmp / log_format, planted,
                        [p for p in FILE_PATHS if not p.startswith("kafka.")])
    for path, file in files.items():
        for _, node, key in locate(cfg, path.rsplit(".", 1)[0]):
            node[key][path.rsplit(".", 1)[1]] = str(file)
    for name in ("local", "azure"):  # the real passwords: never shown either
        planted.add(f"stack password of {name}", stack.clickhouse[name].password)
    return cfg, planted


def _produce(stack: Endpoints, topic: str, count: int) -> None:
    from flowgen.generator import FlowGenerator, GeneratorConfig
    from flowgen.producer import produce

    stats = produce(stack.kafka.bootstrap, topic,
                    FlowGenerator(GeneratorConfig(seed=3)).records(count), None)
    assert stats.failed == 0


def _channels(proc: _Proc, http: str) -> dict[str, str]:
    metrics = _get(http + "/metrics")[1]
    ready = _get(http + "/readyz")
    return {"/metrics": metrics, "/readyz": ready[1], "status": str(ready[0])}


@pytest.mark.stack
@pytest.mark.secure
@pytest.mark.timeout(240)
def test_a_running_outlet_shows_no_secret(stack: Endpoints, tmp_path: Path) -> None:
    """Real outlets, logs in both formats, every insert refused (wrong passwords), and one
    whose Kafka login is refused by the broker (SASL SCRAM-SHA-512 over TLS on the secure
    stack's listener, a real user with a planted wrong password, planted client files):
    stdout, stderr, the logs, /metrics and /readyz hold none of the planted secrets."""
    assert stack.secure is not None, "the session stack has no secure listeners"
    topic = f"secrets-{secrets.token_hex(4)}"
    create_topic(stack, topic, 1)
    runs: dict[str, tuple[_Proc, str, Planted]] = {}
    for fmt in ("human", "json"):
        cfg, planted = _stack_config(stack, tmp_path, topic, fmt)
        runs[fmt] = (_outlet_run(tmp_path, f"outlet-{fmt}", cfg, planted.env),
                     "http://" + cfg["http"]["listen"], planted)
    sasl = Planted()
    scram = stack.secure.user("SCRAM-SHA-512")
    kafka_cfg = {"brokers": [stack.secure.kafka_sasl_ssl], "topic": topic,
                 "consumer-group": "sasl",
                 "sasl": {"mechanism": "SCRAM-SHA-512", "username": scram.username},
                 "tls": {"enable": True, "ca-file": stack.ca_file}}
    cfg = {"kafka": kafka_cfg, "http": {"listen": f"127.0.0.1:{free_port()}"},
           "clickhousedb": {"servers": [stack.clickhouse["local"].url],
                            "username": stack.clickhouse["local"].username},
           "state": {"path": str(tmp_path / "state-sasl")}, "log": {"level": "debug"}}
    plant_outlet(cfg, sasl, via_env={"kafka.sasl.password"})
    sasl.secrets.pop("clickhousedb.password")  # planted by plant_outlet: keep the real one
    cfg["clickhousedb"]["password"] = stack.clickhouse["local"].password
    files = plant_files(tmp_path / "sasl", sasl, [p for p in FILE_PATHS
                                                  if p.startswith("kafka.")])
    for path, file in files.items():
        kafka_cfg["tls"][path.rsplit(".", 1)[1]] = str(file)
    runs["sasl"] = (_outlet_run(tmp_path, "outlet-sasl", cfg, sasl.env),
                    "http://" + cfg["http"]["listen"], sasl)
    try:
        _produce(stack, topic, 500)
        for fmt in ("human", "json"):
            proc, http, _ = runs[fmt]

            def refused(http: str = http) -> bool:
                m = parse_metrics(_get(http + "/metrics")[1])
                return all(metric_value(m, names.DESTINATION_INSERT_ERRORS_TOTAL,
                                        destination=d, error="auth") > 0
                           for d in ("primary", "azure"))

            _wait(f"auth failures ({fmt})", refused, 120, proc)
        proc, http, _ = runs["sasl"]
        _wait("the outlet with SASL serving /readyz",
              lambda: _get(http + "/readyz")[0] == 503, 60, proc)
        _wait("the broker refusing the SASL login", lambda: metric_value(
            parse_metrics(_get(http + "/metrics")[1]), names.KAFKA_CONNECTION_ERRORS_TOTAL,
            reason="auth") >= 2, 60, proc)
        seen = {name: _channels(p, h) for name, (p, h, _) in runs.items()}
    finally:
        codes = {name: p.stop() for name, (p, _, _) in runs.items()}
    for name, (proc, _, planted) in runs.items():
        out, err = proc.output()
        planted.assert_absent(f"{name}: stdout", out)
        planted.assert_absent(f"{name}: stderr (the log)", err)
        for channel in ("/metrics", "/readyz"):
            planted.assert_absent(f"{name}: {channel}", seen[name][channel])
        assert "Traceback" not in err, err[-3000:]
    for fmt in ("human", "json"):
        ready = json.loads(seen[fmt]["/readyz"])
        assert seen[fmt]["status"] == "503"
        assert ready == {"ready": False,
                         "reason": "primary destination failing: auth (code 516)"}
        err = runs[fmt][0].output()[1]
        assert "Authentication failed" in err or "516" in err  # the errors are logged
    json_lines = [json.loads(line) for line in runs["json"][0].output()[1].splitlines()
                  if line.startswith("{")]
    assert json_lines and all("message" in line for line in json_lines)
    assert json.loads(seen["sasl"]["/readyz"])["reason"] == (
        "waiting for the Kafka cluster id (auth)")
    sasl_log = runs["sasl"][0].output()[1]
    assert sasl_log.count("SASL authentication failed") == 1, sasl_log[-3000:]
    assert scram.password not in sasl_log  # the real one, never configured here
    assert codes == {"human": 0, "json": 0, "sasl": 0}, codes  # sasl: stopped while waiting


@pytest.mark.stack
@pytest.mark.timeout(180)
def test_orchestrator_and_remote_config_show_no_secret(stack: Endpoints,
                                                       tmp_path: Path) -> None:
    """The orchestrator with a planted bearer token and a wrong planted ClickHouse password
    (its migrations fail), serving an outlet entry whose secrets are ${VAR}: its log,
    /metrics, /readyz, and the outlet's check-config of the URL (right token from a file,
    wrong token) hold none of them."""
    planted = Planted()
    token = planted.new("orchestrator bearer token")
    wrong = planted.new("a wrong bearer token")
    password = planted.new("orchestrator clickhousedb.password")
    entry = base_config(kafka={"brokers": [stack.kafka.bootstrap], "topic": "flows"})
    entry["clickhousedb"]["servers"] = [stack.clickhouse["local"].url]
    entry["additional-clickhouses"] = [{"name": "azure", "connection": {
        "servers": [stack.clickhouse["azure"].url]}}]
    outlet_env = Planted()
    plant_outlet(entry, outlet_env, via_env=set(VALUE_PATHS))
    entry["kafka"].pop("sasl", None)
    for k in [k for k in outlet_env.env if "SASL" in k]:
        outlet_env.env.pop(k)
    planted.secrets.update(outlet_env.secrets)
    cfg = site_config(stack.clickhouse["local"], f"secrets_{secrets.token_hex(3)}",
                      password_var="ORCH_PW", outlets=[entry])
    cfg["http"]["bearer-token"] = "${ORCH_TOKEN}"
    orch = OrchestratorProcess(tmp_path / "orch", cfg,
                               env={"ORCH_PW": password, "ORCH_TOKEN": token})
    orch.start()
    try:
        _wait_orch_failing(orch)
        ready = orch.get("/readyz")
        metrics = orch.get("/metrics").body
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")
        good = outlet_cli("check-config", orch.url, "--orchestrator-token-file",
                          str(token_file), env=outlet_env.env)
        token_file.write_text(wrong + "\n")
        bad = outlet_cli("check-config", orch.url, "--orchestrator-token-file",
                         str(token_file), env=outlet_env.env)
        by_env = outlet_cli("check-config", orch.url + "#0",
                            env={**outlet_env.env, "OUTLET_ORCHESTRATOR_TOKEN": token})
        served = orch.get("/api/v0/orchestrator/configuration/outlet/0", token=token)
    finally:
        orch.stop()
    assert ready.status == 503 and json.loads(ready.body)["reason"] == (
        "migrations pending: last attempt failed (auth)")
    assert good.returncode == 0 and by_env.returncode == 0, good.stderr + by_env.stderr
    assert bad.returncode == 2 and "401" in bad.stderr
    assert served.status == 200 and "${PLANTED_" in served.body  # served as placeholders
    planted.assert_absent("orchestrator log", orch.log_text())
    planted.assert_absent("orchestrator /readyz", ready.body)
    planted.assert_absent("orchestrator /metrics", metrics)
    planted.assert_absent("served configuration", served.body)
    for name, res in (("right token", good), ("wrong token", bad), ("token from env", by_env)):
        planted.assert_absent_in_run(f"outlet check-config URL ({name})", res)


def _wait_orch_failing(orch: OrchestratorProcess, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "migration attempt" in orch.log_text():
            return
        time.sleep(0.3)
    raise AssertionError(f"no failed migration logged:\n{orch.log_tail()}")


@pytest.mark.stack
@pytest.mark.timeout(300)
def test_chaos_report_shows_no_secret(stack: Endpoints, tmp_path: Path) -> None:
    """A real chaos run whose azure password is a planted secret (azure-auth-failure): no
    file of the report (report.json/.md, the outlet's config, log, schema config) holds it,
    nor the stack's own passwords."""
    from chaos.runner import run_scenario
    from chaos.scenario import load_scenario

    planted = Planted()
    secret = planted.new("chaos azure password")
    for name in ("local", "azure"):
        planted.add(f"stack password of {name}", stack.clickhouse[name].password)
    sc = load_scenario("azure-auth-failure").scaled(0.3)
    sc = dataclasses.replace(sc, outlet_overrides={
        "additional-clickhouses": {"azure": {"connection": {"password": secret}}}})
    res = run_scenario(sc, stack.stack_dir, tmp_path, progress=lambda _: None)
    report = tmp_path / sc.name
    assert (report / "report.json").exists() and (report / "outlet" / "outlet.log").exists()
    assert "auth" in (report / "outlet" / "outlet.log").read_text(), res.error
    assert planted.assert_absent_in_tree("chaos report", report) >= 5


@pytest.mark.stack
@pytest.mark.timeout(300)
def test_load_report_shows_no_secret(stack: Endpoints, tmp_path: Path) -> None:
    """A short real load run (Locust, dual-write): no file of its report holds the stack's
    passwords (the outlet's config files carry them as ${VAR})."""
    from loadtest.profile import load_profile
    from loadtest.run import run_load

    planted = Planted()
    for name in ("local", "azure"):
        planted.add(f"stack password of {name}", stack.clickhouse[name].password)
    out = tmp_path / "load"
    report = run_load(load_profile("steady"), stack, out, time_scale=0.1, rate_scale=0.2,
                      profile_ref="steady")
    assert (out / "report.json").exists() and report["produced"]["flows"] > 0
    assert planted.assert_absent_in_tree("load report", out) >= 8
    config = yaml.safe_load((out / "outlet" / "outlet.yaml").read_text())
    assert config["clickhousedb"]["password"].startswith("${OUTLET_SECRET_")


def test_planted_file_secrets_are_real_keys(tmp_path: Path) -> None:
    """The key material searched for is the key's own base64 (not only the marker)."""
    planted = Planted()
    files = plant_files(tmp_path, planted, ["clickhousedb.tls.key-file"])
    material = planted.secrets["key material of clickhousedb.tls.key-file"]
    assert material in files["clickhousedb.tls.key-file"].read_text()
    base64.b64decode(material + "=" * (-len(material) % 4))

"""The orchestrator's HTTP API (ASGI, served by hypercorn's Trio worker like the outlet's).

    GET /api/v0/orchestrator/configuration/outlet[/<index>]   YAML (application/yaml)
    GET /healthz    liveness            GET /readyz   migrations done (503 until then)
    GET /metrics    Prometheus

Akvorado-compatible paths and body; without an index, entry 0 is served (as Akvorado).
Unlike Akvorado, an index past the end is a 404 naming the valid range (Akvorado
silently serves entry 0: an outlet started with a wrong index would run another
outlet's configuration). Errors are JSON ``{"message": ...}`` like Akvorado's. Every
response carries an ETag; ``If-None-Match`` gives 304 (for a polling outlet).

With ``http.bearer-token`` set, ``/api/`` requires ``Authorization: Bearer <token>``
(compared in constant time); health and metrics stay open (they hold no secret).
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from orchestrator.config import OrchestratorConfig
from orchestrator.metrics import Metrics
from orchestrator.served import ServedConfig
from outlet.httpapi import short_reason

log = logging.getLogger("orchestrator.api")

CONFIG_PREFIX = "/api/v0/orchestrator/configuration/"
SERVICES = ("outlet",)
YAML = "application/yaml"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
ReadyCheck = Callable[[], tuple[bool, str]]
Response = tuple[int, bytes, str, dict[str, str]]


def _json(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"message": message}).encode() + b"\n"
    return status, body, "application/json", headers or {}


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


class ConfigurationService:
    """Routes and answers requests; pure apart from the metrics (unit-testable)."""

    def __init__(
        self, outlets: Sequence[ServedConfig], token: str, metrics: Metrics, ready: ReadyCheck
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.replace(outlets, token)

    def replace(self, outlets: Sequence[ServedConfig], token: str) -> None:
        """Serve these configurations (and require this token) from the next request on."""
        self.outlets = list(outlets)
        self._token = token.encode()
        self.metrics.config_entries.labels("outlet").set(len(self.outlets))

    def handle(self, method: str, path: str, scope: Scope) -> Response:
        if method not in ("GET", "HEAD"):
            return _json(405, f"method {method} not allowed", {"allow": "GET, HEAD"})
        if path == "/healthz":
            return 200, b"ok\n", "text/plain", {}
        if path == "/readyz":
            ok, why = self.ready()
            body = json.dumps({"ready": ok, "reason": short_reason(why)}).encode() + b"\n"
            return (200 if ok else 503), body, "application/json", {}
        if path == "/metrics":
            return 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST, {}
        if path.startswith(CONFIG_PREFIX):
            service, _, index = path[len(CONFIG_PREFIX) :].partition("/")
            response = self._configuration(service, index, scope)
            label = service if service in SERVICES else "unknown"
            self.metrics.config_requests.labels(label, str(response[0])).inc()
            return response
        return _json(404, f"no such endpoint: {path}")

    def _authorized(self, scope: Scope) -> bool:
        if not self._token:
            return True
        scheme, _, given = _header(scope, b"authorization").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self._token
        )

    def _configuration(self, service: str, index: str, scope: Scope) -> Response:
        client = (scope.get("client") or ("?",))[0]
        if not self._authorized(scope):
            log.warning("configuration request from %s refused: missing or wrong bearer token",
                        client)  # fmt: skip
            return _json(401, "missing or wrong bearer token", {"www-authenticate": "Bearer"})
        if service not in SERVICES:
            return _json(404, f"no configuration for service {service!r}: this orchestrator"
                              " serves outlet configurations only")  # fmt: skip
        if index in ("", None):
            index = "0"
        if not index.isdigit():
            return _json(404, f"invalid configuration index {index!r}: expected 0, 1, ...")
        i = int(index)
        if i >= len(self.outlets):
            last = len(self.outlets) - 1
            return _json(404, f"no outlet configuration {i}: this orchestrator has"
                              f" {len(self.outlets)} (indexes 0 to {last})")  # fmt: skip
        served = self.outlets[i]
        headers = {"etag": served.etag, "cache-control": "no-cache"}
        if served.etag in _header(scope, b"if-none-match"):
            log.debug("outlet configuration %d unchanged for %s", i, client)
            return 304, b"", YAML, headers
        log.info("served outlet configuration %d to %s", i, client)
        return 200, served.body.encode(), YAML, headers


def make_app(service: ConfigurationService) -> App:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        method = scope.get("method", "GET")
        status, body, ctype, extra = service.handle(method, scope.get("path", "/"), scope)
        headers = [(b"content-type", ctype.encode())]
        headers += [(k.encode(), v.encode()) for k, v in extra.items()]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return app


async def serve_api(
    cfg: OrchestratorConfig,
    service: ConfigurationService,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; ``started(binds)`` once the socket listens."""
    config = HyperConfig()
    config.bind = [cfg.http.listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    if cfg.http.tls.enable:
        config.certfile = cfg.http.tls.cert_file
        config.keyfile = cfg.http.tls.key_file
    await serve(
        make_app(service),  # type: ignore[arg-type]
        config,
        shutdown_trigger=trio.sleep_forever,
        task_status=task_status,
    )

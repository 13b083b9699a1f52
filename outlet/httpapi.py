"""The outlet's HTTP endpoint: /metrics (Prometheus), /healthz, /readyz.

Served by hypercorn's Trio worker inside the outlet's nursery, so it lives and dies
with the outlet (no background thread, unlike prometheus_client.start_http_server).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ReadyCheck = Callable[[], tuple[bool, str]]


_SHORT_REASON = re.compile(r"[A-Za-z0-9 .,:()_-]{1,100}")


def short_reason(reason: str) -> str:
    """The reason /readyz gives anyone who reaches the port: a short class and a code
    (``primary destination failing: auth (code 516)``), never an error's text, which may
    quote a server's message or a configuration value. Anything else is withheld."""
    return reason if _SHORT_REASON.fullmatch(reason) else "not ready (see the log)"


def make_app(
    registry: CollectorRegistry, ready: ReadyCheck
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """A minimal ASGI app over a metrics registry and a readiness check."""

    async def respond(send: Send, status: int, body: bytes, ctype: str) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", ctype.encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope.get("path", "/")
        if path == "/metrics":
            await respond(send, 200, generate_latest(registry), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            await respond(send, 200, b"ok\n", "text/plain")
        elif path == "/readyz":
            ok, why = ready()
            body = json.dumps({"ready": ok, "reason": short_reason(why)}).encode() + b"\n"
            await respond(send, 200 if ok else 503, body, "application/json")
        else:
            await respond(send, 404, b"not found\n", "text/plain")

    return app


class HttpListenError(OSError):
    """``http.listen`` cannot be bound (the port is taken, the address is not local): the
    outlet does not start, and says which address and why in one line."""


async def serve_http(
    listen: str,
    registry: CollectorRegistry,
    ready: ReadyCheck,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; started once listening. A failure to bind raises
    HttpListenError (hypercorn reports it inside its nurseries' exception groups)."""
    config = HyperConfig()
    config.bind = [listen]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = 1.0
    status = _Listening(listen, task_status)
    try:
        await serve(make_app(registry, ready), config,  # type: ignore[arg-type]
                    shutdown_trigger=trio.sleep_forever, task_status=status)
    except BaseExceptionGroup as group:
        bind_errors, _ = group.split(OSError)
        if status.listening or bind_errors is None:
            raise
        first = _leaves(bind_errors)[0]
        raise HttpListenError(
            f"http.listen {listen}: {first.strerror or first} (another process may listen "
            "there: choose another http.listen)"
        ) from None


class _Listening:
    """The task status hypercorn reports to once it listens: logged, then passed on."""

    def __init__(self, listen: str, task_status: trio.TaskStatus[None]) -> None:
        self.listen = listen
        self.listening = False
        self._task_status = task_status

    def started(self, binds: object = None) -> None:
        self.listening = True
        log.info("http: serving /metrics, /healthz, /readyz on %s", self.listen)
        self._task_status.started()


def _leaves(group: BaseExceptionGroup[OSError]) -> list[OSError]:
    out: list[OSError] = []
    for exc in group.exceptions:
        out += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return out

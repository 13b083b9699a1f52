"""Thin typed client for the Shopify Toxiproxy HTTP API (server v2.x).

Why not the PyPI package: ``toxiproxy-python`` is version 0.1.1 from 2019, marked as work in
progress, untyped, and depends on ``future`` (a Python 2 compatibility shim). The API we need
is a handful of JSON endpoints, so this module talks to it directly with the standard
library (``urllib``): no extra dependency, fully typed, and errors carry the server's message.

API reference (Toxiproxy README): ``GET/POST /proxies``, ``GET/POST/DELETE /proxies/{name}``
(POST ``{"enabled": false}`` takes a proxy down), ``GET/POST /proxies/{name}/toxics``,
``GET/POST/DELETE /proxies/{name}/toxics/{toxic}``, ``POST /reset``, ``GET /version``,
``POST /populate``.

Toxic types and their attributes: ``latency`` (latency, jitter ms), ``bandwidth`` (rate
KB/s), ``slow_close`` (delay ms), ``timeout`` (timeout ms, 0 = hang forever), ``reset_peer``
(timeout ms), ``slicer`` (average_size, size_variation, delay us), ``limit_data`` (bytes).
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Stream = Literal["upstream", "downstream"]
STREAMS: tuple[Stream, ...] = ("upstream", "downstream")
ToxicType = Literal[
    "latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data"
]
TOXIC_ATTRIBUTES: dict[str, dict[str, bool]] = {
    # type -> {attribute (an integer): required}
    "latency": {"latency": True, "jitter": False},
    "bandwidth": {"rate": True},
    "slow_close": {"delay": True},
    "timeout": {"timeout": True},
    "reset_peer": {"timeout": False},
    "slicer": {"average_size": True, "size_variation": False, "delay": False},
    "limit_data": {"bytes": True},
}
"""The toxics the server knows and their attributes (what the chaos scenarios may use)."""


class ToxiproxyError(RuntimeError):
    """The Toxiproxy API answered with an error status (or could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"toxiproxy: HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Toxic:
    name: str
    type: str
    stream: str
    toxicity: float
    attributes: dict[str, Any]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Toxic:
        return cls(
            name=str(data["name"]),
            type=str(data["type"]),
            stream=str(data.get("stream", "downstream")),
            toxicity=float(data.get("toxicity", 1.0)),
            attributes=dict(data.get("attributes") or {}),
        )


@dataclass(frozen=True)
class Proxy:
    name: str
    listen: str
    upstream: str
    enabled: bool
    toxics: list[Toxic] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Proxy:
        return cls(
            name=str(data["name"]),
            listen=str(data["listen"]),
            upstream=str(data["upstream"]),
            enabled=bool(data.get("enabled", True)),
            toxics=[Toxic.from_json(t) for t in data.get("toxics") or []],
        )

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class Toxiproxy:
    """Client for one Toxiproxy server, e.g. ``Toxiproxy("http://127.0.0.1:8474")``."""

    def __init__(self, api: str, timeout: float = 10.0) -> None:
        self.api = api.rstrip("/")
        self.timeout = timeout

    # -- plumbing -----------------------------------------------------------------------
    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.api + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "User-Agent": "chaos-toxiproxy"},
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = str(json.loads(detail).get("error", detail))
            raise ToxiproxyError(e.code, detail) from None
        except (urllib.error.URLError, OSError) as e:
            raise ToxiproxyError(0, f"{self.api} unreachable: {e}") from None
        if not raw:
            return None
        return json.loads(raw)

    # -- server -------------------------------------------------------------------------
    def version(self) -> str:
        req = urllib.request.Request(self.api + "/version")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw: bytes = resp.read()
        except (urllib.error.URLError, OSError) as e:
            raise ToxiproxyError(0, f"{self.api} unreachable: {e}") from None
        text = raw.decode().strip()
        try:  # v2.6+ answers JSON {"version": "..."}; older versions plain text
            parsed = json.loads(text)
            if isinstance(parsed, dict) and "version" in parsed:
                return str(parsed["version"])
        except ValueError:
            pass
        return text

    def ping(self) -> bool:
        try:
            self.version()
        except ToxiproxyError:
            return False
        return True

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._request("POST", "/reset")

    def populate(self, proxies: Iterable[Mapping[str, Any]]) -> list[Proxy]:
        """Create or replace proxies in bulk (``[{"name", "listen", "upstream", "enabled"}]``)."""
        result = self._request("POST", "/populate", list(proxies))
        items = result.get("proxies", []) if isinstance(result, dict) else result or []
        return [Proxy.from_json(p) for p in items]

    # -- proxies ------------------------------------------------------------------------
    def proxies(self) -> dict[str, Proxy]:
        result = self._request("GET", "/proxies") or {}
        return {name: Proxy.from_json(p) for name, p in result.items()}

    def get_proxy(self, name: str) -> Proxy:
        return Proxy.from_json(self._request("GET", f"/proxies/{name}"))

    def create_proxy(
        self, name: str, upstream: str, listen: str = "127.0.0.1:0", enabled: bool = True
    ) -> Proxy:
        body = {"name": name, "listen": listen, "upstream": upstream, "enabled": enabled}
        return Proxy.from_json(self._request("POST", "/proxies", body))

    def update_proxy(
        self,
        name: str,
        *,
        listen: str | None = None,
        upstream: str | None = None,
        enabled: bool | None = None,
    ) -> Proxy:
        body: dict[str, Any] = {}
        if listen is not None:
            body["listen"] = listen
        if upstream is not None:
            body["upstream"] = upstream
        if enabled is not None:
            body["enabled"] = enabled
        return Proxy.from_json(self._request("POST", f"/proxies/{name}", body))

    def delete_proxy(self, name: str) -> None:
        self._request("DELETE", f"/proxies/{name}")

    def enable(self, name: str) -> Proxy:
        return self.update_proxy(name, enabled=True)

    def disable(self, name: str) -> Proxy:
        """Take the proxy down: closes its listener and every open connection."""
        return self.update_proxy(name, enabled=False)

    # -- toxics -------------------------------------------------------------------------
    def toxics(self, proxy: str) -> list[Toxic]:
        return [Toxic.from_json(t) for t in self._request("GET", f"/proxies/{proxy}/toxics")]

    def add_toxic(
        self,
        proxy: str,
        type: ToxicType | str,
        attributes: Mapping[str, Any] | None = None,
        *,
        stream: Stream = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> Toxic:
        body: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": dict(attributes or {}),
        }
        if name is not None:
            body["name"] = name
        return Toxic.from_json(self._request("POST", f"/proxies/{proxy}/toxics", body))

    def update_toxic(
        self,
        proxy: str,
        name: str,
        attributes: Mapping[str, Any],
        toxicity: float | None = None,
    ) -> Toxic:
        body: dict[str, Any] = {"attributes": dict(attributes)}
        if toxicity is not None:
            body["toxicity"] = toxicity
        return Toxic.from_json(self._request("POST", f"/proxies/{proxy}/toxics/{name}", body))

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._request("DELETE", f"/proxies/{proxy}/toxics/{name}")

"""The outlet's configuration from an orchestrator: fetch, validate, cache, start-up policy.

Source: ``http(s)://host[:port][/path][#index]`` (Akvorado's form). Without a path the
outlet GETs ``/api/v0/orchestrator/configuration/outlet``, the fragment appends
``/<index>``; with a path, ``<path>/<index>``. The body must be YAML
(``application/yaml``); ``${VAR}`` placeholders in it are expanded here, from the
outlet's own environment, exactly as for a local file (outlet/config.py).

Cache: each good configuration is written (atomically, mode 0600) to
``<state dir>/orchestrator-config/outlet-<index>.yaml``: one comment line of JSON
metadata (source, fetch time, ETag), then the body as served, placeholders unexpanded
(so the file holds no expanded secret, and ``outlet run --config`` accepts it as is).

Start-up (``load_at_startup``): failures are sorted into transient ones (orchestrator
unreachable, 5xx, TLS) that are retried with capped exponential backoff, and permanent
ones (unknown index, refused token, not YAML, invalid configuration) that stop the
start with the orchestrator's message, as a bad local file does. With a cached
configuration, after ``wait`` seconds of transient failures the outlet starts from the
cache and says so. Without one, it retries until the orchestrator answers.

Once running, outlet/reload.py polls with ``RemoteConfig.fetch(etag=...)`` every
``--config-refresh-interval`` (``NotModified`` while the ETag matches) for live
reconfiguration.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from outlet.config import (
    MAX_CONFIG_BYTES,
    ConfigError,
    OutletConfig,
    parse_config,
    parse_duration,
    read_yaml,
    too_big,
)
from outlet.confspec import show

if TYPE_CHECKING:
    from outlet.metrics import Metrics

log = logging.getLogger("outlet.config")

DEFAULT_PATH = "/api/v0/orchestrator/configuration/outlet"
TOKEN_ENV = "OUTLET_ORCHESTRATOR_TOKEN"
YAML_TYPES = ("application/yaml", "application/x-yaml")
CACHE_DIR = "orchestrator-config"
_CACHE_HEAD = "# outlet configuration cache: "
INITIAL_BACKOFF = 1.0
MAX_BACKOFF = 30.0
REMINDER_EVERY = 10  # attempts between two log lines of the same failure


def is_remote(source: str) -> bool:
    return source.startswith(("http://", "https://"))


@dataclass(frozen=True)
class RemoteSource:
    """An orchestrator URL as given on the command line, and what to GET."""

    text: str
    url: str
    index: int

    @classmethod
    def parse(cls, text: str) -> RemoteSource:
        parts = urlsplit(text)
        if "@" in parts.netloc:  # checked first: the URL is never echoed with credentials
            raise ConfigError(["the orchestrator URL must not hold credentials (use a token)"])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError([f"not an http(s) URL: {show(text)}"])
        fragment = parts.fragment or "0"
        if not fragment.isdigit():
            raise ConfigError([f"{text}: the fragment must be an outlet index (#0, #1, ...)"])
        path = parts.path.rstrip("/") or DEFAULT_PATH
        url = urlunsplit((parts.scheme, parts.netloc, f"{path}/{fragment}", parts.query, ""))
        return cls(text, url, int(fragment))


class FetchError(Exception):
    """A failed fetch: ``kind`` (log and metric class), ``permanent`` (retrying cannot help
    until someone changes a configuration)."""

    def __init__(self, kind: str, message: str, permanent: bool, etag: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.permanent = permanent
        self.etag = etag  # of an invalid configuration (the orchestrator answered)


class NotModified(Exception):
    """The orchestrator still serves the configuration with the given ETag."""


@dataclass(frozen=True)
class Fetched:
    config: OutletConfig
    body: str
    etag: str
    fetched_at: float  # unix time of the fetch (from the cache file when cached)


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip()[:200]


class RemoteConfig:
    """Fetches, validates and caches one outlet configuration."""

    def __init__(
        self,
        source: RemoteSource,
        *,
        cache_dir: str | os.PathLike[str],
        token: str = "",
        ca_file: str | None = None,
        state_path: str | None = None,
        timeout: float = 10.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.source = source
        self.cache_path = Path(cache_dir) / CACHE_DIR / f"outlet-{source.index}.yaml"
        self._token = token
        self._context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self._state_path = state_path
        self._timeout = timeout
        self._env = env

    def fetch(self, etag: str = "") -> Fetched:
        """One GET and validation (blocking). Raises FetchError or NotModified."""
        request = urllib.request.Request(self.source.url, headers={"Accept": YAML_TYPES[0]})
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        if etag:
            request.add_header("If-None-Match", etag)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout, context=self._context) as r:
                ctype = r.headers.get_content_type()
                body, new_etag = r.read(MAX_CONFIG_BYTES + 1), r.headers.get("ETag", "")
        except urllib.error.HTTPError as e:
            raise self._http_error(e.code, _message(e.read(65536))) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ssl.SSLError):
                raise FetchError("tls", f"TLS with {self.source.url}: {reason}", False) from None
            raise FetchError("unreachable", f"{self.source.url}: {reason}", False) from None
        if ctype not in YAML_TYPES:
            raise FetchError("invalid", f"{self.source.url} answered {ctype}, not YAML", True)
        if len(body) > MAX_CONFIG_BYTES:
            raise FetchError("invalid", f"{self.source.url}: {too_big(None)}", True)
        text = body.decode("utf-8", errors="replace")
        try:
            config = self._validate(text, self.source.text)
        except FetchError as e:
            e.etag = new_etag
            raise
        return Fetched(config, text, new_etag, time.time())

    def _http_error(self, status: int, message: str) -> FetchError | NotModified:
        if status == 304:
            return NotModified()
        where = f"{self.source.url} answered {status}: {message}"
        if status >= 500:
            return FetchError("server", where, False)
        kind = {401: "auth", 403: "auth", 404: "not-found"}.get(status, "http")
        return FetchError(kind, where, True)

    def _validate(self, text: str, source: str) -> OutletConfig:
        """The configuration in ``text``, read like a local file (through a temporary file
        in the cache directory); FetchError('invalid') listing every problem."""
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".fetch-", suffix=".yaml")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        try:
            return self.load_file(Path(tmp), source)
        finally:
            os.unlink(tmp)

    def load_file(self, path: Path, source: str) -> OutletConfig:
        try:
            document = read_yaml(path)
            if self._state_path is not None and isinstance(document, dict):
                state = document.get("state")
                document["state"] = {**(state if isinstance(state, dict) else {}),
                                     "path": self._state_path}  # fmt: skip
            return parse_config(document, self._env)
        except ConfigError as e:
            raise FetchError("invalid", str(ConfigError(e.errors, source)), True) from None

    def save(self, fetched: Fetched) -> None:
        """Keep ``fetched`` as the last good configuration (atomic, fsynced, 0600)."""
        head = {"source": self.source.text, "url": self.source.url,
                "fetched_at": fetched.fetched_at, "etag": fetched.etag}  # fmt: skip
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=".cache-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(_CACHE_HEAD + json.dumps(head) + "\n" + fetched.body)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.cache_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.cache_path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load_cache(self) -> Fetched | None:
        """The last good configuration of this source, or None (logged) if unusable."""
        try:
            text = self.cache_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("configuration cache %s unreadable: %s", self.cache_path, e.strerror)
            return None
        first, _, body = text.partition("\n")
        try:
            head = json.loads(first.removeprefix(_CACHE_HEAD))
            fetched_at, cached_source = float(head["fetched_at"]), str(head["source"])
        except (ValueError, KeyError, TypeError):
            log.warning("configuration cache %s has no valid header: ignored", self.cache_path)
            return None
        if cached_source != self.source.text:
            log.warning("configuration cache %s is for %s, not %s: ignored",
                        self.cache_path, cached_source, self.source.text)  # fmt: skip
            return None
        try:
            config = self.load_file(self.cache_path, f"{self.cache_path} (cached)")
        except FetchError as e:
            log.warning("configuration cache unusable: %s", e)
            return None
        return Fetched(config, body, str(head.get("etag", "")), fetched_at)


class StartupAborted(Exception):
    """A permanent failure: the outlet cannot start from this source."""


async def load_at_startup(
    remote: RemoteConfig,
    *,
    wait: float,
    on_error: Callable[[FetchError], None] = lambda e: None,
    initial_backoff: float = INITIAL_BACKOFF,
    max_backoff: float = MAX_BACKOFF,
) -> tuple[Fetched, bool]:
    """(configuration, from_cache). Raises StartupAborted on a permanent failure."""
    import trio  # local, as below: the command line parses without Trio or the ClickHouse client

    from outlet.retry import backoff_delay

    cached = remote.load_cache()
    started = trio.current_time()
    attempt, last_kind = 0, ""
    while True:
        attempt += 1
        try:
            fetched = await trio.to_thread.run_sync(remote.fetch, abandon_on_cancel=True)
        except FetchError as e:
            on_error(e)
            if e.permanent:
                raise StartupAborted(str(e)) from None
            waited = trio.current_time() - started
            if cached is not None and waited >= wait:
                age = time.time() - cached.fetched_at
                log.warning("orchestrator unreachable for %.0fs (%s): starting from the"
                            " configuration cached %s (%.0fs old); it keeps asking and"
                            " applies what the orchestrator serves once it answers", waited,
                            e.kind, remote.cache_path, age)  # fmt: skip
                return cached, True
            delay = backoff_delay(attempt, initial_backoff, max_backoff)
            if e.kind != last_kind or attempt % REMINDER_EVERY == 0:
                fallback = (f"starting from the cached configuration after {wait:g}s"
                            if cached is not None else "no cached configuration: waiting"
                            " for the orchestrator")  # fmt: skip
                log.warning("configuration fetch attempt %d failed (%s): %s; retrying with"
                            " backoff (%s)", attempt, e.kind, e, fallback)  # fmt: skip
            last_kind = e.kind
            if cached is not None:
                delay = min(delay, max(0.0, wait - waited))
            await trio.sleep(delay)
            continue
        try:
            await trio.to_thread.run_sync(remote.save, fetched)
        except OSError as e:  # the outlet can run; it just cannot start from a cache later
            log.warning("cannot cache the configuration in %s: %s", remote.cache_path, e)
        log.info("configuration fetched from %s after %d attempt(s)", remote.source.url, attempt)
        return fetched, False


# -- command line (outlet run / check-config with a URL) --------------------------------


def add_arguments(parser: argparse.ArgumentParser, *, run: bool) -> None:
    group = parser.add_argument_group("configuration from an orchestrator (http(s):// source)")
    group.add_argument(
        "--orchestrator-token-file",
        metavar="FILE",
        help=f"bearer token for the orchestrator API (default: ${TOKEN_ENV}, if set)",
    )
    group.add_argument(
        "--orchestrator-ca-file", metavar="FILE", help="CA bundle (PEM) of an https:// orchestrator"
    )
    if run:
        group.add_argument(
            "--state-dir",
            metavar="DIR",
            help="where the last good configuration is cached; also replaces the served"
            f" state.path (default: cache in {OutletConfig().state_path})",
        )
        group.add_argument(
            "--config-wait",
            default="30s",
            metavar="DURATION",
            help="how long to retry an unreachable orchestrator before starting from the"
            " cached configuration (default 30s; without a cache: until it answers)",
        )
        group.add_argument(
            "--config-refresh-interval",
            default="30s",
            metavar="DURATION",
            help="how often the running outlet asks the orchestrator for a changed"
            " configuration and applies it live (default 30s; 0 = only on SIGHUP)",
        )


def from_args(source_text: str, args: argparse.Namespace) -> RemoteConfig:
    """The RemoteConfig the command line describes. Raises ConfigError."""
    source = RemoteSource.parse(source_text)
    token = os.environ.get(TOKEN_ENV, "")
    if args.orchestrator_token_file:
        try:
            token = Path(args.orchestrator_token_file).read_text().strip()
        except OSError as e:
            raise ConfigError([f"--orchestrator-token-file: cannot read: {e.strerror}"]) from None
    ca_file = args.orchestrator_ca_file
    if ca_file and not os.path.isfile(ca_file):
        raise ConfigError([f"--orchestrator-ca-file: file not found: {ca_file!r}"])
    state_dir = getattr(args, "state_dir", None)
    return RemoteConfig(
        source,
        cache_dir=state_dir or OutletConfig().state_path,
        token=token,
        ca_file=ca_file,
        state_path=state_dir,
    )


@dataclass(frozen=True)
class Started:
    """What ``outlet run URL`` starts with: the configuration and where to poll."""

    config: OutletConfig
    remote: RemoteConfig
    etag: str  # of the configuration started with
    refresh_interval: float


def _duration_flag(name: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError:
        raise ConfigError([f"{name}: not a duration: {text!r}"]) from None


def startup(args: argparse.Namespace, metrics: Metrics) -> Started:
    """``outlet run URL``: the configuration to run (start-up policy of load_at_startup).

    Raises ConfigError (bad arguments) or StartupAborted (permanent fetch failure).
    """
    import trio

    remote = from_args(args.config, args)
    wait = _duration_flag("--config-wait", args.config_wait)
    interval = _duration_flag("--config-refresh-interval", args.config_refresh_interval)
    metrics.enable_config_refresh()
    errors, last = metrics.config_refresh_errors, metrics.config_last_refresh
    assert errors is not None and last is not None
    log.info("fetching the configuration from %s", remote.source.url)
    fetched, cached = trio.run(
        functools.partial(load_at_startup, remote, wait=wait, on_error=lambda e: errors.inc())
    )
    last.set(fetched.fetched_at)
    cfg = fetched.config
    if args.state_dir is None and cfg.state_path != OutletConfig().state_path:
        log.warning("the configuration sets state.path %s but the configuration cache is in"
                    " %s: pass --state-dir %s to keep them together", cfg.state_path,
                    OutletConfig().state_path, cfg.state_path)  # fmt: skip
    what = "cached configuration" if cached else "configuration"
    log.info("running the %s of %s (outlet index %d)", what, remote.source.text,
             remote.source.index)  # fmt: skip
    return Started(cfg, remote, fetched.etag, interval)


def check(args: argparse.Namespace) -> OutletConfig:
    """``outlet check-config URL``: one fetch, no cache. Raises ConfigError or FetchError."""
    return from_args(args.file, args).fetch().config

"""Where a running outlet's new configurations come from (live reconfiguration).

A source hands each new configuration to ``apply`` (``Outlet.reconfigure``: applied
live, refused as a whole, or unchanged; outlet/reconfig.py) and can be asked to look
now (``poke``: the outlet's SIGHUP).

- ``OrchestratorPoller``: GETs the outlet's configuration every ``interval`` with
  ``If-None-Match`` (the orchestrator answers 304 while it is unchanged). Every answer,
  304 included, refreshes ``outlet_config_last_refresh_timestamp_seconds``; a failed one
  counts in ``outlet_config_refresh_errors_total`` and is logged when the kind of
  failure changes and every 10th time, while the outlet keeps running what it runs. A
  configuration is looked at once per ETag: a refused or invalid one is not fetched and
  refused again at every poll, only when the orchestrator serves something else. Each
  valid configuration served (applied or refused) replaces the cache the outlet starts
  from when the orchestrator is down at its next start, so a restart applies what the
  orchestrator serves.
- ``FileSource``: reads the configuration file again on ``poke`` (SIGHUP) only.

Both count what they received in ``outlet_config_reloads_total{outcome}`` (applied and
refused through ``apply``, invalid here) and set ``outlet_config_outdated``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from outlet.config import ConfigError, OutletConfig, load_config
from outlet.ledger import RunSync
from outlet.metrics import Metrics
from outlet.remote_config import REMINDER_EVERY, FetchError, NotModified, RemoteConfig

log = logging.getLogger("outlet.config")

Apply = Callable[[OutletConfig], Awaitable[str]]


class _Wake:
    """Sleep for an interval, or until poked."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def poke(self) -> None:
        self._event.set()

    async def wait(self, interval: float) -> None:
        with trio.move_on_after(interval):
            await self._event.wait()
        self._event = trio.Event()


def _invalid(metrics: Metrics, what: str, problems: str) -> None:
    metrics.config_reloads.labels("invalid").inc()
    metrics.config_outdated.set(1)
    log.error("new configuration from %s is invalid, the running configuration is kept:\n%s",
              what, problems)


class OrchestratorPoller:
    """Polls the orchestrator for this outlet's configuration (see the module docstring)."""

    def __init__(self, remote: RemoteConfig, interval: float, etag: str, metrics: Metrics,
                 run_sync: RunSync = trio.to_thread.run_sync) -> None:
        self.remote = remote
        self._run_sync = run_sync  # the blocking fetch and cache write (threads; inline in tests)
        self.interval = interval  # 0: only when poked
        self.etag = etag  # of the last configuration looked at
        self.metrics = metrics
        metrics.enable_config_refresh()
        assert metrics.config_refresh_interval is not None
        metrics.config_refresh_interval.set(interval)
        self._wake = _Wake()
        self._failures = 0
        self._last_kind = ""

    def poke(self) -> None:
        self._wake.poke()

    async def run(self, apply: Apply) -> None:
        while True:
            await self._wake.wait(self.interval if self.interval > 0 else float("inf"))
            await self.check(apply)

    async def check(self, apply: Apply) -> str:
        """One poll; what happened: ``not-modified``, ``failed``, ``invalid`` or the
        outcome of ``apply``."""
        fetch = functools.partial(self.remote.fetch, etag=self.etag)
        try:
            fetched = await self._run_sync(fetch)
        except NotModified:
            self._answered()
            return "not-modified"
        except FetchError as e:
            if e.kind == "invalid" and e.etag:
                self._answered()
                self.etag = e.etag
                _invalid(self.metrics, self.remote.source.url, str(e))
                return "invalid"
            self._failed(e)
            return "failed"
        self._answered()
        self.etag = fetched.etag
        outcome = await apply(fetched.config)
        try:
            await self._run_sync(self.remote.save, fetched)
        except OSError as e:
            log.warning("cannot cache the configuration in %s: %s", self.remote.cache_path, e)
        return outcome

    def _answered(self) -> None:
        assert self.metrics.config_last_refresh is not None
        self.metrics.config_last_refresh.set_to_current_time()
        if self._failures:
            log.info("orchestrator answers again (after %d failed check(s))", self._failures)
        self._failures, self._last_kind = 0, ""

    def _failed(self, e: FetchError) -> None:
        assert self.metrics.config_refresh_errors is not None
        self.metrics.config_refresh_errors.inc()
        self._failures += 1
        if e.kind != self._last_kind or self._failures % REMINDER_EVERY == 0:
            log.warning("configuration check %d failed (%s): %s; the outlet keeps running its"
                        " configuration", self._failures, e.kind, e)
        self._last_kind = e.kind


class FileSource:
    """The configuration file, read again on SIGHUP."""

    def __init__(self, path: str | Path, metrics: Metrics,
                 run_sync: RunSync = trio.to_thread.run_sync) -> None:
        self.path = Path(path)
        self.metrics = metrics
        self._run_sync = run_sync
        self._wake = _Wake()

    def poke(self) -> None:
        self._wake.poke()

    async def run(self, apply: Apply) -> None:
        while True:
            await self._wake.wait(float("inf"))
            await self.check(apply)

    async def check(self, apply: Apply) -> str:
        try:
            cfg = await self._run_sync(load_config, self.path)
        except ConfigError as e:
            _invalid(self.metrics, str(self.path), str(e))
            return "invalid"
        return await apply(cfg)

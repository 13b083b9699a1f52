"""What a destination's log says while it fails: one short line per failed attempt, a
summary once a minute while it stays down, and one line when it recovers.

Pure bookkeeping with an injectable clock (tested with a fake one); the destination calls
:meth:`OutageLog.failed` for each failed attempt and :meth:`OutageLog.recovered` on the
next success. Causes are shortened from the client's exception text, which otherwise
carries the whole chain (urllib3 pool, URL with every query parameter, the socket error).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable

log = logging.getLogger("outlet.destination")

SUMMARY_INTERVAL = 60.0
MAX_CAUSE = 160

_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")
_CLICKHOUSE = re.compile(r"Code: (\d+)\. (?:DB::Exception: )?(.*)", re.S)
_VERSION = re.compile(r"\s*\(version [^)]*\)\.?$")
_ERROR_NAME = re.compile(r"\s*\(([A-Z][A-Z0-9_]+)\)\.?$")
_TIMEOUT = re.compile(r"(read timed out|timed out|timeout)", re.I)
_BROKEN = re.compile(r"(Connection (?:aborted|reset by peer|broken)|RemoteDisconnected|"
                     r"IncompleteRead|BadStatusLine)[^'\")]*", re.I)


def short_cause(message: str) -> str:
    """The part of an insert error an operator needs: the socket error, the ClickHouse
    code and message, or the first line, without URLs and nested exception reprs."""
    if m := _CLICKHOUSE.search(message):
        text = _VERSION.sub("", " ".join(m.group(2).split()))
        name = _ERROR_NAME.search(text)
        if name:
            text = text[: name.start()]
        return _clip(f"code {m.group(1)}{f' ({name.group(1)})' if name else ''}: {text}")
    if m := _ERRNO.search(message):
        return _clip(m.group(1).strip().lower())
    if m := _BROKEN.search(message):
        return _clip(m.group(0).strip().lower())
    if m := _TIMEOUT.search(message):
        return m.group(1).lower()
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    return _clip(re.sub(r"https?://\S+", "<url>", first))


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CAUSE else text[: MAX_CAUSE - 3] + "..."


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class OutageLog:
    """A destination's failures since its last success, logged without flooding."""

    def __init__(self, name: str, interval: float = SUMMARY_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.interval = interval
        self._clock = clock
        self._since: float | None = None  # first failure of the current outage
        self._next_summary = 0.0
        self._kinds: Counter[str] = Counter()
        self._last_cause = ""

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, what: str, kind: str, attempt: int, server: str, cause: str,
               level: int, state: Callable[[], str] = str) -> None:
        """One line for this attempt; a summary when one is due (``state()`` adds what the
        destination does meanwhile: circuit, spool)."""
        now = self._clock()
        if self._since is None:
            self._since = now
            self._next_summary = now + self.interval
        self._kinds[kind] += 1
        self._last_cause = cause
        log.log(level, "destination %s: %s failed (%s, attempt %d, server %s): %s",
                self.name, what, kind, attempt, server, cause)
        if now >= self._next_summary:
            self._next_summary = now + self.interval
            extra = state()
            log.warning("destination %s: down for %s, %s; last: %s%s", self.name,
                        _duration(now - self._since), self._counts(), cause,
                        f"; {extra}" if extra else "")

    def recovered(self) -> None:
        if self._since is None:
            return
        log.info("destination %s: inserts succeed again after %s down (%s)", self.name,
                 _duration(self._clock() - self._since), self._counts())
        self._since = None
        self._kinds.clear()

    def _counts(self) -> str:
        total = sum(self._kinds.values())
        kinds = ", ".join(f"{k} {n}" for k, n in self._kinds.most_common())
        return f"{total} failed attempt{'s' if total != 1 else ''} ({kinds})"

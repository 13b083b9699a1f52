"""Live reconfiguration: what differs between the running configuration and a new one, and
whether a running outlet can apply it.

``plan(old, new)`` is pure: it lists every changed key (``outlet.confspec.changed_keys``)
and judges each by ``RULES`` (first matching pattern wins), and sorts the destinations
into added, removed and updated ones (by name). A plan with a refused change is refused
whole: the outlet keeps running its configuration untouched, never half of each
(docs/configuration.md#live-reconfiguration has the table for users).

What applies live, and how (outlet/pipeline.py and outlet/fanout.py apply a plan):

- an **added** additional destination receives the batches sealed from the moment it is
  in the fan-out on (no backfill: older batches are committed, or in flight to the
  destinations that were there when they were sealed);
- a **removed** one leaves the fan-out at once (no new batch), inserts what it still
  holds within ``clickhouse.grace-period``, then hands the rest to its fallback (spooled:
  kept on disk and replayed if a destination of that name comes back; no spool: given
  up, counted with reason ``removed``), so every batch it held is settled and commits
  never wait for it;
- connection changes of any destination (credentials, TLS, timeouts, retry limits and
  backoff; servers and database of an additional destination) replace its writers
  between two inserts; circuit-breaker settings apply to the next failure;
- batching (``maximum-batch-size``, ``maximum-wait-time``), ``grace-period``,
  ``compression`` and the log settings apply to what comes next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from outlet.config import DestinationConfig, OutletConfig
from outlet.confspec import changed_keys

ADDITIONAL = "additional-clickhouses"

_RESTART = "restart the outlet to apply it"
_READD = "remove the destination and add it back (its spool is kept), or restart"

#: (key pattern, applies live, why); a pattern is a key or a prefix ending in ``*``.
#: Top-level keys as written; an additional
#: destination's keys as ``additional-clickhouses[*].<key>``; the primary's connection is
#: ``clickhousedb.<key>``. ``max-retries`` is judged by ``_retry_class_change`` first.
RULES: tuple[tuple[str, bool, str], ...] = (
    ("kafka.*", False, f"the Kafka consumer is set up at start-up: {_RESTART}"),
    ("clickhousedb.servers", False, f"the primary's servers are where the outlet's data and "
                                    f"commit point are: {_RESTART}"),
    ("clickhousedb.database", False, f"the primary's database is part of its identity: "
                                     f"{_RESTART}"),
    ("clickhousedb.*", True, "the primary's writer is replaced between two inserts"),
    ("clickhouse.maximum-flows-per-record", False,
     f"a decoding bound: batches rebuilt after a restart must decode as they did: {_RESTART}"),
    ("clickhouse.*", True, "applies to the next batches"),
    ("metadata.*", False, f"the enrichment dictionaries are built when the codec starts: "
                          f"{_RESTART}"),
    ("networks", False, f"the enrichment dictionaries are built when the codec starts: "
                        f"{_RESTART}"),
    ("http.listen", False, f"the HTTP listener is bound at start-up: {_RESTART}"),
    ("log.*", True, "applies at once"),
    ("state.path", False, f"the ledger and the spools live there: {_RESTART}"),
    (f"{ADDITIONAL}[*].connection.*", True, "its writers are replaced between two inserts"),
    (f"{ADDITIONAL}[*].circuit-breaker.*", True, "applies from the next failure"),
    (f"{ADDITIONAL}[*].queue-size", False, f"a queue's capacity is fixed: {_READD}"),
    (f"{ADDITIONAL}[*].spool.*", False, f"the spool is opened with its settings: {_READD}"),
)
_RETRY_CLASS = ("switches between retrying forever (0) and giving up after N attempts: "
                "the destination's fallback and backpressure differ")


@dataclass(frozen=True)
class Change:
    """One changed key: ``path`` (as a user writes it), whether it applies live, why."""

    path: str
    live: bool
    why: str

    def __str__(self) -> str:
        return f"{self.path} ({self.why})"


@dataclass(frozen=True)
class Plan:
    """What a new configuration changes in a running outlet."""

    changes: tuple[Change, ...] = ()
    added: tuple[DestinationConfig, ...] = ()
    removed: tuple[str, ...] = ()
    updated: tuple[DestinationConfig, ...] = field(default=())  # same name, new settings

    @property
    def refused(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if not c.live)

    @property
    def unchanged(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        """One line: what changes (key paths and destination names, never values)."""
        return ", ".join(c.path if c.why not in _MEMBERSHIP else f"{c.path} {c.why}"
                         for c in self.changes)


_MEMBERSHIP = ("added", "removed")


def _matches(key: str, pattern: str) -> bool:
    """A pattern is a key, or a prefix ending in ``*``."""
    return key == pattern or (pattern.endswith("*") and key.startswith(pattern[:-1]))


def _judge(path: str, pattern_path: str) -> Change:
    for pattern, live, why in RULES:
        if _matches(pattern_path, pattern):
            return Change(path, live, why)
    return Change(path, False, f"not known to apply live: {_RESTART}")  # a new key


def _retry_class_change(old: int, new: int) -> bool:
    return (old == 0) != (new == 0)


def _destination_changes(old: DestinationConfig, new: DestinationConfig, prefix: str,
                         pattern_prefix: str) -> list[Change]:
    out = []
    for key in changed_keys(old, new):
        if key.startswith("clickhouse."):
            # No effect anywhere: batches are cut once for every destination, by the
            # top-level section (a destination's own copy follows it by default).
            continue
        path = f"{prefix}.{key}" if prefix else key
        if key == "connection.max-retries" and _retry_class_change(
                old.connection.max_retries, new.connection.max_retries):
            out.append(Change(path, False, f"{_RETRY_CLASS}: {_READD}"))
        else:
            out.append(_judge(path, f"{pattern_prefix}.{key}"))
    return out


def plan(old: OutletConfig, new: OutletConfig) -> Plan:
    """Every change from ``old`` to ``new``, judged; destinations sorted by name."""
    changes: list[Change] = []
    for key in changed_keys(old, new):
        if key == ADDITIONAL:
            continue
        if key == "clickhousedb.max-retries" and _retry_class_change(
                old.clickhousedb.max_retries, new.clickhousedb.max_retries):
            changes.append(Change(key, False, f"{_RETRY_CLASS}: {_RESTART}"))
        else:
            changes.append(_judge(key, key))
    before = {d.name: d for d in old.additional_clickhouses}
    after = {d.name: d for d in new.additional_clickhouses}
    added = tuple(d for name, d in after.items() if name not in before)
    removed = tuple(name for name in before if name not in after)
    updated = []
    for name in before.keys() & after.keys():
        own = _destination_changes(before[name], after[name], f"{ADDITIONAL}[{name}]",
                                   f"{ADDITIONAL}[*]")
        if own:
            changes += own
            updated.append(after[name])
    changes += [Change(f"{ADDITIONAL}[{d.name}]", True, "added") for d in added]
    changes += [Change(f"{ADDITIONAL}[{name}]", True, "removed") for name in removed]
    updated.sort(key=lambda d: d.name)
    return Plan(tuple(changes), added, removed, tuple(updated))


def connection_changed(old: DestinationConfig, new: DestinationConfig) -> bool:
    """Whether the destination's writers must be replaced."""
    return old.connection != new.connection


def primary_changes(old: OutletConfig, new: OutletConfig) -> DestinationConfig | None:
    """The primary as a destination, when its connection changed (else None)."""
    before, after = old.primary_destination(), new.primary_destination()
    return after if connection_changed(before, after) else None

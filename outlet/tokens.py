"""Deduplication tokens: the only place their format lives.

Every insert carries ``insert_deduplication_token = <token>``; ClickHouse drops an insert
whose token it has already stored in that table (within its deduplication window). A
token must therefore be

- the same for every attempt, restart and rebuild of one batch (retries are dropped);
- different for every other batch that can reach the same table, from any writer.

A batch is identified by the Kafka records it holds: its topic and, per partition, the
first and last offsets. Offsets only identify records *within one Kafka cluster*, so the
token also names the cluster (the cluster id from the broker metadata, read once at
start-up), plus an optional alias for clusters that share an id (``kafka.cluster-identity``:
clusters restored from one backup or disk snapshot). Two datacenters whose Kafka topics
have the same name and whose batches cover the same offsets get different tokens.

Grammar (RFC 5234 ABNF)::

    token-v2  = "v2:" identity "/" topic "/" ranges
    identity  = cluster-id [ "+" alias ]           ; each part %-escaped (see below)
    token-v1  = topic "/" ranges                    ; written before version 2
    ranges    = range *( "," range )                ; ascending partitions
    range     = partition ":" first "-" last        ; decimal, inclusive offsets

In ``identity`` every character outside ``[A-Za-z0-9._-]`` is percent-encoded (Kafka's
own ids are URL-safe base64 and never need it), so ``/``, ``+`` and ``:`` stay delimiters.
A Kafka topic name cannot contain ``:``, so a version-1 token never starts with ``v2:``:
the version of any token is known from its first characters (:func:`token_version`).

Version 1 tokens are still produced for batches that an older outlet sealed in the ledger
(entries without a recorded token): they must be rebuilt under the token they were first
sent with, or a destination that stored them would store them twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

Ranges = dict[int, tuple[int, int]]  # partition -> (first offset, last offset), inclusive

CURRENT_VERSION = 2
_V2_PREFIX = "v2:"


def writer_identity(cluster_id: str, alias: str = "") -> str:
    """The identity part of a token: the Kafka cluster id, plus the alias when set."""
    if not cluster_id:
        raise ValueError("a Kafka cluster id is required")
    ident = quote(cluster_id, safe="")
    return f"{ident}+{quote(alias, safe='')}" if alias else ident


@dataclass
class WriterIdentity:
    """Who seals batches: the Kafka cluster (known once connected) and the optional alias.

    The pipeline creates it from ``kafka.cluster-identity`` and sets ``cluster_id`` from
    the broker metadata before the first record is consumed; no token is made before.
    """

    alias: str = ""
    cluster_id: str | None = None

    @property
    def token_identity(self) -> str:
        if self.cluster_id is None:
            raise RuntimeError("the Kafka cluster id is not known yet")
        return writer_identity(self.cluster_id, self.alias)


def _ranges(ranges: Ranges) -> str:
    if not ranges:
        raise ValueError("a batch covers at least one offset range")
    return ",".join(f"{p}:{first}-{last}" for p, (first, last) in sorted(ranges.items()))


def make_token(identity: str, topic: str, ranges: Ranges) -> str:
    """The current (version 2) token of a batch."""
    if not identity:
        raise ValueError("a token needs the writer identity (see writer_identity)")
    return f"{_V2_PREFIX}{identity}/{topic}/{_ranges(ranges)}"


def make_token_v1(topic: str, ranges: Ranges) -> str:
    """The version-1 token: only for rebuilding batches an older outlet sealed."""
    return f"{topic}/{_ranges(ranges)}"


def token_version(token: str) -> int:
    """1 or 2, from the token's first characters."""
    return 2 if token.startswith(_V2_PREFIX) else 1


def token_cluster_id(token: str) -> str | None:
    """The Kafka cluster id a version-2 token names (None for version 1: unknown)."""
    if token_version(token) == 1:
        return None
    identity = token[len(_V2_PREFIX):].split("/", 1)[0]
    return unquote(identity.split("+", 1)[0])

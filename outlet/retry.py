"""Retry policy for inserts: which failures a retry can fix, and how long to wait.

Kept apart from the transport (outlet/writer.py) and from the destination's loop
(outlet/destination.py), as Vector keeps its sinks' retry logic apart.

Classification of an insert failure, first by the ``Code: N`` ClickHouse puts in every
error, then by exception type:

=========================  ===========  ==========  ==========================================
failure                    kind         retriable   why
=========================  ===========  ==========  ==========================================
a classified TLS failure   its reason   no          certificate-untrusted, certificate-expired,
                                                    hostname-mismatch, client-certificate-
                                                    rejected, tls-handshake
                                                    (outlet/linkfailure.py): a certificate or
                                                    a setting must change
timeout (any code)         timeout      yes         the server may be slow or the link cut
code 516                   auth         no          wrong credentials stay wrong
code in PERMANENT_CODES    permanent    no          unknown table/column, types, syntax...
code in TRANSIENT_CODES    server       yes         listed retriable by ClickHouse's own sink
any other code             server       yes         see below; logged as unclassified
connection error, no code  connect      yes
other server error         server       yes
anything else              other        yes
=========================  ===========  ==========  ==========================================

A code in neither set is retried: the primary retries everything anyway (it must not lose
a batch), and for an additional destination a wrong "retriable" costs at most
``max-retries`` attempts before the batch is spooled, while a wrong "permanent" would open
its circuit and spool (or give up) at the first transient error. Such failures carry
``classified=False`` so the destination can say so in its log: add the code to one of
the sets when it shows up.

``ambiguous``: whether the failed attempt may have stored the batch all the same (a
timeout, a connection cut after the request went out, any server error: a ClickHouse
insert is not atomic across the table partitions it writes). Only a connection that was
never made (refused, unknown host, connect timeout) and an authentication failure (the
server refuses before reading the body) are known to have stored nothing. A later
attempt of an ambiguous batch may duplicate it once the table's deduplication window has
passed: outlet/dedup_check.py checks those first.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import trio
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from outlet import linkfailure as lf
from outlet.config import ConnectionConfig

# Server codes worth retrying (from the ClickHouse Kafka Connect sink, see NOTES.md):
# timeouts, network errors, too many parts/queries, unknown status of insert...
TRANSIENT_CODES = frozenset({159, 164, 202, 203, 209, 210, 241, 242, 252, 285, 319, 425, 999})
# Errors a retry cannot fix: authentication, unknown table/database/column, types.
PERMANENT_CODES = frozenset({516, 60, 81, 16, 47, 53, 70, 27, 33, 62, 192, 194, 497})
AUTH_CODE = 516

ERROR_KINDS = ("connect", "timeout", "auth", "permanent", "server", "other", *lf.TLS_REASONS)
# Kinds after which the next insert goes to the next server (failover), on a new client.
FAILOVER_KINDS = frozenset({"connect", "timeout", *lf.TLS_REASONS})

_CODE_RE = re.compile(r"Code: (\d+)")
# Connection failures before anything was sent (urllib3 and OS wordings).
_NOT_SENT_RE = re.compile(
    r"NewConnectionError|ConnectTimeoutError|Connection refused|Failed to establish a new "
    r"connection|Name or service not known|nodename nor servname|Temporary failure in name "
    r"resolution|No route to host|Network is unreachable",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class InsertFailure:
    """A classified insert failure: kind (metric label), whether retrying can help."""

    kind: str
    retriable: bool
    code: int | None
    message: str
    classified: bool = True  # False: a server code in neither set (retried by default)
    ambiguous: bool = True  # the attempt may have stored the batch (see the docstring)


def classify(exc: BaseException) -> InsertFailure:
    """Sort an insert exception into the kinds of the table in the module docstring."""
    if isinstance(exc, lf.LinkError):  # the writer named a TLS failure
        return InsertFailure(exc.failure.reason, False, None, exc.failure.message)
    text = str(exc) or type(exc).__name__  # TooSlowError and others have no message
    match = _CODE_RE.search(text)
    code = int(match.group(1)) if match else None
    if isinstance(exc, ConnectionRefusedError) or (code is None and _NOT_SENT_RE.search(text)):
        timeout = "timeout" in text.lower() or "timed out" in text.lower()
        return InsertFailure("timeout" if timeout else "connect", True, None, text,
                             ambiguous=False)
    if isinstance(exc, (TimeoutError, trio.TooSlowError)) or "timed out" in text.lower():
        return InsertFailure("timeout", True, code, text)
    if code == AUTH_CODE:
        return InsertFailure("auth", False, code, text, ambiguous=False)
    if code in PERMANENT_CODES:
        return InsertFailure("permanent", False, code, text)
    if code in TRANSIENT_CODES:
        return InsertFailure("server", True, code, text)
    if code is not None:
        return InsertFailure("server", True, code, text, classified=False)
    if isinstance(exc, (OperationalError, ConnectionError, OSError)):
        return InsertFailure("connect", True, None, text)
    if isinstance(exc, DatabaseError):
        return InsertFailure("server", True, None, text)
    return InsertFailure("other", True, None, text)


def backoff_delay(
    attempt: int,
    initial: float,
    cap: float,
    uniform: Callable[[float, float], float] = random.uniform,
) -> float:
    """Capped exponential backoff with full jitter (AWS style) for attempt >= 1."""
    return uniform(0, min(cap, initial * (2 ** min(attempt - 1, 30))))


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts (0 = forever) and how long to wait between them."""

    max_attempts: int
    initial_backoff: float
    max_backoff: float

    @classmethod
    def of(cls, conn: ConnectionConfig) -> RetryPolicy:
        return cls(conn.max_retries, conn.retry_initial_backoff, conn.retry_max_backoff)

    @property
    def forever(self) -> bool:
        return self.max_attempts == 0

    def exhausted(self, attempt: int) -> bool:
        """Whether `attempt` attempts are all this policy allows."""
        return not self.forever and attempt >= self.max_attempts

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (>= 1)."""
        return backoff_delay(attempt, self.initial_backoff, self.max_backoff)

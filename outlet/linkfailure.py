"""Why a secure link failed, in one line an operator can act on.

Both links (Kafka through librdkafka, ClickHouse through Python's ssl) report the same
classes of failure, the ``reason`` label of ``outlet_kafka_connection_errors_total`` and
the ``error`` label of ``outlet_destination_insert_errors_total``:

==============================  ==================================================
reason                          what happened
==============================  ==================================================
``auth``                        credentials refused (SASL; ClickHouse code 516)
``sasl-mechanism``              the broker does not enable the configured mechanism
``certificate-untrusted``       the server's certificate does not verify (ca-file)
``certificate-expired``         the server's certificate expired (or is not valid yet)
``hostname-mismatch``           the server's certificate is for another host name
``client-certificate-rejected`` the server refused our client certificate (none sent,
                                another CA, expired)
``tls-handshake``               any other TLS failure (e.g. TLS to a plaintext port)
``transport``                   (Kafka) connection refused, reset, name resolution
==============================  ==================================================

librdkafka says only "certificate verify failed" for the three server-certificate
cases, and a client whose certificate a TLS 1.3 server refuses often sees only an
early EOF: :func:`probe` then makes one handshake of its own with the same files and
reads the server's alert or the verification result, which names the case.

Messages never carry a secret: they are built from the library's error text, which holds
host names, user names and mechanisms but no password (tests plant one and grep every
output for it).
"""

from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

AUTH = "auth"
SASL_MECHANISM = "sasl-mechanism"
CERT_UNTRUSTED = "certificate-untrusted"
CERT_EXPIRED = "certificate-expired"
HOSTNAME_MISMATCH = "hostname-mismatch"
CLIENT_CERT_REJECTED = "client-certificate-rejected"
TLS_HANDSHAKE = "tls-handshake"
TRANSPORT = "transport"
OTHER = "other"

TLS_REASONS = (CERT_UNTRUSTED, CERT_EXPIRED, HOSTNAME_MISMATCH, CLIENT_CERT_REJECTED,
               TLS_HANDSHAKE)
KAFKA_REASONS = (AUTH, SASL_MECHANISM, *TLS_REASONS, TRANSPORT, OTHER)
# Failures a retry alone cannot fix (an operator, a rotation or a broker change must).
NEEDS_ACTION = frozenset({AUTH, SASL_MECHANISM, *TLS_REASONS})

# X509_V_ERR_* codes of OpenSSL's verification result.
_EXPIRED_CODES = frozenset({9, 10})  # CERT_NOT_YET_VALID, CERT_HAS_EXPIRED
_HOSTNAME_CODES = frozenset({62, 63, 64})  # HOSTNAME, EMAIL, IP_ADDRESS mismatch
# TLS alerts a server sends when it refuses a client certificate.
_CLIENT_CERT_ALERTS = re.compile(
    r"alert (certificate required|unknown ca|bad certificate|certificate expired|"
    r"certificate revoked|certificate unknown|unsupported certificate|access denied|"
    r"handshake failure)", re.I)
_HINTS = {
    CERT_UNTRUSTED: "check tls.ca-file (the CA that signed the server's certificate)",
    CERT_EXPIRED: "the server's certificate must be renewed",
    HOSTNAME_MISMATCH: "connect with a name the certificate holds, or fix the certificate",
    CLIENT_CERT_REJECTED: "check tls.cert-file and tls.key-file (a certificate the server's "
                          "CA signed, valid now)",
}


@dataclass(frozen=True)
class LinkFailure:
    """A classified failure: ``reason`` (metric label) and one line for the log."""

    reason: str
    message: str

    @property
    def needs_action(self) -> bool:
        return self.reason in NEEDS_ACTION


class LinkError(ConnectionError):
    """A classified link failure raised by a writer (the original is its ``__cause__``)."""

    def __init__(self, failure: LinkFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _clean(text: str) -> str:
    """OpenSSL text without the source position and library prefixes."""
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)
    text = re.sub(r"error:[0-9A-Fa-f]+:SSL routines::", "", text)
    text = re.sub(r"\[SSL: [A-Z0-9_]+\]\s*", "", text)
    return " ".join(text.split())


def verify_failure(code: int, message: str) -> LinkFailure:
    """The reason of an OpenSSL certificate verification result."""
    text = _clean(message).rstrip(".")
    if code in _EXPIRED_CODES:
        reason, what = CERT_EXPIRED, "is not valid now"
    elif code in _HOSTNAME_CODES:
        reason, what = HOSTNAME_MISMATCH, "is not valid for this host name"
    else:
        reason, what = CERT_UNTRUSTED, "is not trusted"
    return LinkFailure(reason, f"the server's certificate {what} ({text}): {_HINTS[reason]}")


def alert_failure(text: str) -> LinkFailure | None:
    """A TLS alert by which the server refused our client certificate, if it is one."""
    m = _CLIENT_CERT_ALERTS.search(text)
    if m is None:
        return None
    return LinkFailure(CLIENT_CERT_REJECTED, f"the server refused the client certificate "
                                             f"(TLS alert: {m.group(1).lower()}): "
                                             f"{_HINTS[CLIENT_CERT_REJECTED]}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def ssl_failure(exc: BaseException) -> LinkFailure | None:
    """The TLS failure in an exception chain (urllib3/clickhouse-connect wrap ssl errors;
    their text keeps the original), None when it is not a TLS failure."""
    errors = [e for e in _chain(exc) if isinstance(e, ssl.SSLError)]
    for e in errors:
        if isinstance(e, ssl.SSLCertVerificationError):
            return verify_failure(e.verify_code, e.verify_message or str(e))
    text = " ".join(str(e) for e in errors) or str(exc)
    if not errors and "SSLError(" not in text and "SSLEOFError" not in text:
        return None
    m = re.search(r"certificate verify failed: ([^'\")(]+)", text)
    if m:
        return verify_failure(_code_of(m.group(1)), m.group(1))
    alert = alert_failure(text)
    if alert is not None:
        return alert
    return LinkFailure(TLS_HANDSHAKE, f"TLS handshake failed: {_tls_detail(text)}")


def _code_of(message: str) -> int:
    low = message.lower()
    if "expired" in low or "not yet valid" in low:
        return 10
    if "mismatch" in low:
        return 62
    return 20


def _tls_detail(text: str) -> str:
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return "the server does not speak TLS on this port (wrong version number)"
    if "EOF occurred" in text or "SSLEOFError" in text or "UNEXPECTED_EOF" in text:
        return ("the server closed the connection during the handshake (it may require a "
                "client certificate it did not get, or refuse ours)")
    m = re.search(r"\[SSL: [A-Z0-9_]+\] ([^'\")(]+)", text)
    return _clean(m.group(1)) if m else _clean(text)[:200]


# --------------------------------------------------------------------------------------
# librdkafka
# --------------------------------------------------------------------------------------

_RD_ADDR = re.compile(r"^(?:[a-z_]+://)?(\[[^\]]+\]|[^:/\s]+):(\d+)/")
_RD_STATE = re.compile(r"\s*\(after \d+ms in state [A-Z_]+\)\s*$")
_RD_PREFIX = re.compile(r"^[a-z_]+://\S+?/\S+?: ")


def broker_address(text: str) -> tuple[str, int] | None:
    """(host, port) of the broker a librdkafka error names (``sasl_ssl://h:p/id: ...``)."""
    m = _RD_ADDR.match(text)
    return (m.group(1).strip("[]"), int(m.group(2))) if m else None


def kafka_failure(name: str, text: str) -> LinkFailure:
    """Classify a librdkafka error (``KafkaError.name()`` and ``str()``)."""
    detail = _RD_STATE.sub("", text)
    where = broker_address(text)
    broker = f"broker {where[0]}:{where[1]}: " if where else ""
    body = _RD_PREFIX.sub("", detail)
    if "Unsupported SASL mechanism" in body:
        offered = re.search(r"supported mechanisms: ([^()]+)", body)
        wanted = re.search(r"SASL (\S+) mechanism handshake failed", body)
        return LinkFailure(SASL_MECHANISM, f"{broker}the broker does not enable SASL mechanism "
                           f"{wanted.group(1) if wanted else '?'} (it offers "
                           f"{offered.group(1).strip() if offered else 'none'}): "
                           "check kafka.sasl.mechanism")
    if name == "_AUTHENTICATION" or "SASL authentication error" in body:
        cause = body.split("SASL authentication error: ", 1)[-1]
        return LinkFailure(AUTH, f"{broker}SASL authentication failed: {cause}: check "
                                 "kafka.sasl.username and kafka.sasl.password")
    if "certificate verify failed" in body:
        return LinkFailure(CERT_UNTRUSTED, f"{broker}broker certificate verification failed: "
                                           f"{_HINTS[CERT_UNTRUSTED]}")
    alert = alert_failure(body)
    if alert is not None:
        return LinkFailure(alert.reason, broker + alert.message)
    if name == "_SSL" or "SSL handshake failed" in body or "in state SSL_HANDSHAKE" in text:
        hint = (": is the listener plaintext? (kafka.tls.enable)"
                if "closed by peer" in body or "Disconnected" in body else "")
        return LinkFailure(TLS_HANDSHAKE, f"{broker}TLS handshake failed: {_clean(body)}{hint}")
    if name in ("_TRANSPORT", "_RESOLVE", "_ALL_BROKERS_DOWN", "_TIMED_OUT"):
        hint = ""
        if "in state APIVERSION_QUERY" in text and "closed by peer" in body:
            hint = (" (the broker closed the connection before answering: does the listener "
                    "expect TLS or SASL? check kafka.tls and kafka.sasl)")
        return LinkFailure(TRANSPORT, f"{broker}{_clean(body)}{hint}")
    return LinkFailure(OTHER, f"{broker}{_clean(body)}")


# --------------------------------------------------------------------------------------
# The diagnostic handshake
# --------------------------------------------------------------------------------------


def probe(host: str, port: int, context: ssl.SSLContext, timeout: float = 3.0
          ) -> LinkFailure | None:
    """One TLS handshake with ``context`` (the link's own files), then a short read: a
    server that refuses the client certificate says why in an alert right after the
    handshake (TLS 1.3). None when the server accepted it or the probe cannot tell."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.settimeout(0.5)
            try:
                tls.recv(1)
            except TimeoutError:
                return None  # waiting for our request: accepted
            return None
    except ssl.SSLCertVerificationError as e:
        return verify_failure(e.verify_code, e.verify_message or str(e))
    except ssl.SSLError as e:
        return alert_failure(str(e)) or LinkFailure(
            TLS_HANDSHAKE, f"TLS handshake failed: {_tls_detail(str(e))}")
    except OSError:
        return None

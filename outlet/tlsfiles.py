"""TLS files of a link (``ca-file``, ``cert-file``, ``key-file``): their expiry, the client
SSL context built from them, and their rotation.

The static checks (a file that holds no certificate, an encrypted key, a key that does not
match the certificate) are the configuration's (``outlet.config._check_tls_files``, so
``check-config`` and ``run`` both refuse); this module reads the same files again when
they are rotated.

Expiry (:func:`file_warnings`): a client certificate that has expired, is not valid yet,
or expires within :data:`EXPIRY_WARNING` is a *warning*, not an error: refusing to start
would also stop the links that work (the primary, when only an additional destination's
certificate expired), while a running outlet reports the failing link (log line, metric)
and picks up a renewed certificate without a restart.

Rotation (:class:`TLSFiles`): a link checks its files' identity (inode, size, mtime)
before it needs a new connection; when they changed and the new set loads (the key
matches the certificate), the link switches to them. A half-written rotation (a new
certificate with the old key) is not used: the link keeps what it has and checks again.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from prometheus_client import Gauge

log = logging.getLogger(__name__)

EXPIRY_WARNING = dt.timedelta(days=14)
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY = b"PRIVATE KEY-----"


class TLSFileError(ValueError):
    """A TLS file that cannot be used; ``key`` names the setting (``cert-file``...)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSFileError(key, f"cannot read {path!r}: {e.strerror or e}") from None


def _certificates(key: str, path: str, data: bytes) -> list[x509.Certificate]:
    if _PEM_CERT not in data:
        raise TLSFileError(key, f"{path!r} holds no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSFileError(key, f"{path!r}: invalid PEM certificate ({e})") from None


def _private_key(key: str, path: str, data: bytes) -> Any:
    if _PEM_KEY not in data:
        raise TLSFileError(key, f"{path!r} holds no PEM private key")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSFileError(key, f"{path!r}: the private key is encrypted (not supported: "
                                "store it unencrypted, readable by the outlet only)") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TLSFileError(key, f"{path!r}: invalid PEM private key ({e})") from None


def _public_der(obj: Any) -> bytes:
    return bytes(obj.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass(frozen=True)
class ClientCertificate:
    """The client certificate of a link (the first certificate of ``cert-file``)."""

    subject: str
    not_before: dt.datetime
    not_after: dt.datetime


def load_client_certificate(cert_file: str, key_file: str | None) -> ClientCertificate:
    """Check a client certificate and its key (``key_file`` None: the key is in
    ``cert_file``); raises :class:`TLSFileError` naming the setting at fault."""
    data = _read("cert-file", cert_file)
    cert = _certificates("cert-file", cert_file, data)[0]
    if key_file:
        key = _private_key("key-file", key_file, _read("key-file", key_file))
        where, path = "key-file", key_file
    else:
        key = _private_key("cert-file", cert_file, data)
        where, path = "cert-file", cert_file
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise TLSFileError(where, f"the private key in {path!r} does not match the "
                                  f"certificate in {cert_file!r}")
    return ClientCertificate(cert.subject.rfc4514_string(), cert.not_valid_before_utc,
                             cert.not_valid_after_utc)


def check_ca_file(ca_file: str) -> None:
    _certificates("ca-file", ca_file, _read("ca-file", ca_file))


def expiry_warning(cert: ClientCertificate, path: str, now: dt.datetime | None = None
                   ) -> str | None:
    """Why this client certificate will be refused (or soon), None when it is fine."""
    now = now or dt.datetime.now(dt.UTC)
    when = f"{cert.not_after:%Y-%m-%d %H:%M:%S} UTC"
    if now >= cert.not_after:
        return f"the certificate in {path!r} ({cert.subject}) expired on {when}"
    if now < cert.not_before:
        return (f"the certificate in {path!r} ({cert.subject}) is not valid before "
                f"{cert.not_before:%Y-%m-%d %H:%M:%S} UTC")
    if cert.not_after - now < EXPIRY_WARNING:
        days = (cert.not_after - now).total_seconds() / 86400
        return f"the certificate in {path!r} ({cert.subject}) expires in {days:.1f} days ({when})"
    return None


def file_warnings(cert_file: str | None, key_file: str | None,
                  now: dt.datetime | None = None) -> list[tuple[str, str]]:
    """Expiry warnings of a link's client certificate, as (setting, message)."""
    if not cert_file:
        return []
    try:
        cert = load_client_certificate(cert_file, key_file)
    except TLSFileError:
        return []  # an error, reported by the configuration's checks
    warning = expiry_warning(cert, cert_file, now)
    return [("cert-file", warning)] if warning else []


# --------------------------------------------------------------------------------------
# The client context and rotation
# --------------------------------------------------------------------------------------


def client_context(verify: bool, ca_file: str | None, cert_file: str | None,
                   key_file: str | None) -> ssl.SSLContext:
    """A client context from a link's TLS settings: server certificate and host name
    verified against ``ca_file`` (system CAs without one) unless ``verify`` is false;
    the client certificate presented when given. Raises ssl.SSLError/OSError."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


Signature = tuple[tuple[int, int, int, int] | None, ...]


def _signature(paths: tuple[str, ...]) -> Signature:
    out: list[tuple[int, int, int, int] | None] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class TLSFiles:
    """One link's TLS files as a unit: the context built from them, the client
    certificate's validity, and :meth:`refresh` to follow a rotation on disk.

    ``where`` names the settings in log lines (``additional-clickhouses[0].connection.tls``).
    """

    def __init__(self, verify: bool, ca_file: str | None, cert_file: str | None,
                 key_file: str | None, where: str) -> None:
        self.verify = verify
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        self.where = where
        self._paths = tuple(p for p in (ca_file, cert_file, key_file) if p)
        self._signature = _signature(self._paths)
        self._refused: Signature | None = None  # a changed set that did not load
        self.context = self._build()
        self.certificate = self._certificate()
        self.reloads = 0

    @property
    def signature(self) -> Signature:
        """Identity of the files in use (inode, size, mtime of each)."""
        return self._signature

    def _build(self) -> ssl.SSLContext:
        return client_context(self.verify, self.ca_file, self.cert_file, self.key_file)

    def _certificate(self) -> ClientCertificate | None:
        if not self.cert_file:
            return None
        return load_client_certificate(self.cert_file, self.key_file)

    def changed(self) -> bool:
        """Whether the files on disk differ from the ones in use (a few stat() calls)."""
        return bool(self._paths) and _signature(self._paths) != self._signature

    def refresh(self) -> bool:
        """Switch to the files on disk if they changed and load; True when it switched.

        A set that does not load (missing, unreadable, key not matching) is logged once
        and the current context stays in use; it is tried again while the files change.
        """
        if not self._paths:
            return False
        signature = _signature(self._paths)
        if signature == self._signature or signature == self._refused:
            return False
        try:
            certificate = self._certificate()
            if self.ca_file:
                check_ca_file(self.ca_file)
            context = self._build()
        except (TLSFileError, ssl.SSLError, OSError) as e:
            self._refused = signature
            log.warning("%s: the TLS files changed but cannot be used yet (%s); keeping the "
                        "previous ones, checking again as they change", self.where, e)
            return False
        self._signature, self._refused = signature, None
        self.context, self.certificate = context, certificate
        self.reloads += 1
        subject = f" (client certificate {certificate.subject}, valid until " \
                  f"{certificate.not_after:%Y-%m-%d %H:%M:%S} UTC)" if certificate else ""
        log.info("%s: TLS files changed on disk: new connections use them%s", self.where,
                 subject)
        return True


def track_expiry(gauge: Gauge, files: TLSFiles) -> None:
    """Publish the client certificate's notAfter on ``gauge`` (one sample per cert-file;
    none without a client certificate), for alerts on certificates about to expire."""
    if files.cert_file and files.certificate is not None:
        gauge.labels(files.cert_file).set(files.certificate.not_after.timestamp())

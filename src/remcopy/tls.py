# TLS contexts for the native links, and who a peer's certificate says it is.
#
# Why: host <-> controller and controller <-> controller links are TLS 1.3 with certificates
# on both ends (DESIGN.md section 6, docs/security.md). Both sides build their `ssl` contexts
# here from the same three files a config names: the site CA, the own certificate, its key.
#
# Rules this module keeps:
# - TLS 1.3 only; the peer's certificate is required and must chain to the site CA (expired,
#   other-CA and missing certificates fail the TLS handshake itself).
# - A client checks the controller's certificate against the controller's *name* (the name
#   its config gives that controller), not against the address it dialled: a certificate is an
#   identity, and addresses change.
# - A server maps the client certificate to a config entry by its name (CN) and kind (OU,
#   "host" or "controller", written by `remcopy pki`): a host certificate never passes as a
#   peer controller.
# - A file that cannot be loaded is a ConfigError naming the file and the reason.
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from remcopy.errors import ConfigError

KIND_HOST: Final = "host"
KIND_CONTROLLER: Final = "controller"


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsFiles:
    """The three files of one end of a TLS link."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class CertIdentity:
    """What a verified peer certificate names."""

    name: str
    kind: str


def _load(context: ssl.SSLContext, files: TlsFiles, source: str) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cafile=str(files.ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{source}: tls.ca: cannot load CA {files.ca}: {_reason(exc)}") from None
    try:
        context.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{source}: tls.cert/tls.key: cannot load {files.cert} with {files.key}: {_reason(exc)}"
        ) from None
    return context


def server_context(files: TlsFiles, *, source: str = "tls") -> ssl.SSLContext:
    """A listener's context: it presents `cert` and requires a client certificate."""
    return _load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), files, source)


def client_context(files: TlsFiles, *, source: str = "tls") -> ssl.SSLContext:
    """A dialler's context: it presents `cert` and checks the server's name and chain."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = True
    return _load(context, files, source)


def identity(peercert: Any) -> CertIdentity | None:
    """The name (CN) and kind (OU) of a verified peer certificate (`getpeercert()`)."""
    if not isinstance(peercert, dict):
        return None
    fields = {key: value for rdn in peercert.get("subject", ()) for key, value in rdn}
    name = fields.get("commonName")
    if not isinstance(name, str):
        return None
    kind = fields.get("organizationalUnitName")
    return CertIdentity(name=name, kind=kind if isinstance(kind, str) else "")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def failure_reason(exc: BaseException) -> str:
    """A short, human reason for a failed TLS handshake (for logs and errors)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate refused: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or str(exc)
        if reason in {"WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNKNOWN_PROTOCOL"}:
            return f"not a TLS client hello ({reason}): a plain-TCP client?"
        if reason in {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "TLSV13_ALERT_CERTIFICATE_REQUIRED"}:
            return f"no client certificate ({reason})"
        return reason
    if isinstance(exc, TimeoutError) or (
        # asyncio's ssl_handshake_timeout aborts with this (no type of its own)
        isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc)
    ):
        return "no TLS handshake in time"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__

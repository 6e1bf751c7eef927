# A site's certificates: one CA, and a certificate for each host and controller it trusts.
#
# Why: every native link is TLS 1.3 with certificates on both ends (DESIGN.md section 6,
# docs/security.md). The name in a certificate is the identity: a controller maps a client
# certificate's name to its config's [[hosts]] or [[peers]] entry. `remcopy pki` makes the
# files with the `cryptography` package, so a site needs no openssl recipes.
#
# Layout of a pki folder (0700; keys 0600, certificates 0644):
#   ca.pem, ca.key            the site CA (keep ca.key offline once the site is set up)
#   NAME.pem, NAME.key        a host's or controller's certificate and key
#
# What a certificate says:
# - subject CN = NAME, SAN DNS = NAME, OU = the kind ("host" or "controller");
# - a host certificate may only be a TLS client (extended key usage clientAuth);
# - a controller certificate may be both (serverAuth and clientAuth: it serves hosts and dials
#   its peers) and also names SAN DNS localhost and IP 127.0.0.1;
# - every certificate is signed by the site CA, with a validity period that is checked.
#
# Rules this module keeps:
# - Nothing existing is overwritten unless the caller says force.
# - Keys are written 0600 from the start (atrest.open_private), the folder is made 0700.
# - Bad input is an InputError naming what is wrong and what was expected.
from __future__ import annotations

import datetime
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from remcopy import tls
from remcopy.controller import atrest
from remcopy.errors import InputError
from remcopy.tls import TlsFiles

Kind = Literal["host", "controller"]
KINDS: Final = ("host", "controller")
CA_DAYS_DEFAULT: Final = 3650
CERT_DAYS_DEFAULT: Final = 397
# A name is a DNS label-like word, so it can be a SAN DNS name and a config key alike.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_CERT_MODE: Final = 0o644


@dataclass(frozen=True, slots=True)
class Issued:
    """The files of one issued certificate."""

    cert: Path
    key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise InputError(
            f"--name: {name!r} is not a usable certificate name "
            "(expected 1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit)"
        )


def _check_days(days: int, what: str) -> None:
    if days < 1 or days > 36500:
        raise InputError(f"{what}: must be 1 to 36500 days (got {days})")


def _refuse_existing(paths: list[Path], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise InputError(f"{', '.join(existing)}: exists already (use --force to replace)")


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), mode)
        out.write(data)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(path, pem, atrest.FILE_MODE)


def ca_files(folder: Path) -> Issued:
    return Issued(cert=folder / "ca.pem", key=folder / "ca.key")


def init(
    folder: Path, *, days: int = CA_DAYS_DEFAULT, name: str = "remcopy site CA", force: bool = False
) -> Issued:
    """Make a site CA in `folder` (created 0700)."""
    _check_days(days, "--days")
    files = ca_files(folder)
    _refuse_existing([files.cert, files.key], force)
    atrest.make_folder(folder)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(files.key, key)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE)
    return files


def _load_ca(folder: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    files = ca_files(folder)
    if not files.cert.exists() or not files.key.exists():
        raise InputError(
            f"{folder}: no site CA here (expected ca.pem and ca.key; make one with "
            f"`remcopy pki init --dir {folder}`)"
        )
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{folder}: ca.pem or ca.key is not a PEM CA: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InputError(f"{files.key}: expected an EC key made by `remcopy pki init`")
    return cert, key


def issue(
    folder: Path,
    name: str,
    *,
    kind: Kind = "host",
    days: int = CERT_DAYS_DEFAULT,
    not_before: datetime.datetime | None = None,
    out: Path | None = None,
    force: bool = False,
) -> Issued:
    """Issue NAME's certificate and key, signed by the CA in `folder`; files go to `out`
    (default: `folder`) as NAME.pem and NAME.key."""
    _check_name(name)
    _check_days(days, "--days")
    if kind not in KINDS:
        raise InputError(f"--kind: expected one of {', '.join(KINDS)} (got {kind!r})")
    ca_cert, ca_key = _load_ca(folder)
    target = out if out is not None else folder
    files = Issued(cert=target / f"{name}.pem", key=target / f"{name}.key")
    _refuse_existing([files.cert, files.key], force)
    atrest.make_folder(target)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before if not_before is not None else _now() - datetime.timedelta(minutes=5)
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if kind == "controller":
        names += [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(files.key, key)
    _write(files.cert, cert.public_bytes(serialization.Encoding.PEM), _CERT_MODE)
    return files


def describe(path: Path) -> dict[str, str]:
    """Name, kind and validity of a certificate file (for `remcopy pki show`)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a PEM certificate: {exc}") from None
    subject = cert.subject

    def attr(oid: x509.ObjectIdentifier) -> str:
        found = subject.get_attributes_for_oid(oid)
        return str(found[0].value) if found else ""

    return {
        "name": attr(NameOID.COMMON_NAME),
        "kind": attr(NameOID.ORGANIZATIONAL_UNIT_NAME) or "ca",
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


class Site:
    """A pki folder used as a whole: the CA (made when missing) and one certificate per name,
    issued the first time it is asked for. The demo, the fault campaigns and the tests make
    their certificates through it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._clients: dict[str, ssl.SSLContext] = {}
        if not ca_files(folder).cert.exists():
            init(folder)

    def __repr__(self) -> str:
        return f"<Site {self.folder}>"

    @property
    def ca(self) -> Path:
        return ca_files(self.folder).cert

    def files(self, name: str, kind: Kind) -> TlsFiles:
        """NAME's certificate files (issued now if missing)."""
        cert, key = self.folder / f"{name}.pem", self.folder / f"{name}.key"
        if not cert.exists() or not key.exists():
            issue(self.folder, name, kind=kind, force=True)
        return TlsFiles(ca=self.ca, cert=cert, key=key)

    def client(self, name: str, kind: Kind = "host") -> ssl.SSLContext:
        """A client context presenting NAME's certificate (one per name, reused)."""
        context = self._clients.get(name)
        if context is None:
            context = self._clients[name] = tls.client_context(self.files(name, kind))
        return context

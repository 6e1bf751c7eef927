# The controller's TLS server context, and who a verified client certificate names.
#
# Why: NBD clients (and, with the same [tls] section, native ones) prove who they are with a
# certificate signed by the site CA; its name is a [[hosts]] name of the config, and that
# host's grant is what the client may reach (DESIGN.md section 6, docs/security.md).
#
# Rules this module keeps:
# - TLS 1.3 only, a client certificate required and verified against [tls] ca (expiry
#   included), by Python's ssl; nothing here parses certificates by hand.
# - The name is the subject's common name (CN), as `remcopy pki` writes it (CN = SAN DNS =
#   the name); a certificate without exactly one CN names nobody.
from __future__ import annotations

import ssl
from typing import Any

from remcopy.controller.config import TlsSection
from remcopy.errors import ConfigError


def server_context(tls: TlsSection, *, source: str = "[tls]") -> ssl.SSLContext:
    """A server-side context that requires a client certificate signed by tls.ca."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(tls.cert, tls.key)
        context.load_verify_locations(cafile=tls.ca)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"{source}: cannot load the certificates (ca {tls.ca}, cert {tls.cert}, "
            f"key {tls.key}): {exc}"
        ) from None
    return context


def certificate_name(certificate: dict[str, Any] | None) -> str | None:
    """The CN of a verified peer certificate (`SSLObject.getpeercert()`), or None."""
    if not certificate:
        return None
    names = [
        value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    return names[0] if len(names) == 1 else None

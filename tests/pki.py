# Test certificates (trustme): a site CA, controller certificates and host client
# certificates, laid out as remcopy's [tls] section and libnbd's tls-certificates folder want
# them. Keys are written 0600 (a controller refuses a readable key).
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import trustme

from remcopy.controller import atrest


def _private(path: Path, data: bytes) -> Path:
    with os.fdopen(atrest.open_private(path, os.O_WRONLY | os.O_TRUNC), "wb") as out:
        out.write(data)
    return path


@dataclass
class Site:
    """One CA and the files issued by it, under `root`."""

    root: Path
    ca: trustme.CA

    @classmethod
    def make(cls, root: Path) -> Site:
        atrest.make_folder(root)
        site = cls(root=root, ca=trustme.CA(organization_name="remcopy test site"))
        site.ca.cert_pem.write_to_path(str(root / "ca.pem"))
        return site

    def controller(self, name: str) -> dict[str, Path]:
        """A controller's [tls] section: its certificate for 127.0.0.1, ::1 and localhost."""
        cert = self.ca.issue_cert(name, "localhost", "127.0.0.1", "::1", common_name=name)
        folder = self.root / name
        atrest.make_folder(folder)
        cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
        key = _private(folder / "key.pem", cert.private_key_pem.bytes())
        return {"ca": self.root / "ca.pem", "cert": folder / "cert.pem", "key": key}

    def client(
        self,
        name: str,
        *,
        folder: str | None = None,
        expired: bool = False,
        trust: Site | None = None,
    ) -> Path:
        """A host's client certificate as libnbd's tls-certificates folder (ca-cert.pem,
        client-cert.pem, client-key.pem); `trust` names the CA the client trusts for the
        server (default: this one)."""
        now = datetime.datetime.now(datetime.UTC)
        window = (
            {
                "not_before": now - datetime.timedelta(days=30),
                "not_after": now - datetime.timedelta(days=1),
            }
            if expired
            else {}
        )
        cert = self.ca.issue_cert(name, common_name=name, **window)
        out = self.root / "clients" / (folder or name)
        atrest.make_folder(out)
        (trust or self).ca.cert_pem.write_to_path(str(out / "ca-cert.pem"))
        cert.cert_chain_pems[0].write_to_path(str(out / "client-cert.pem"))
        _private(out / "client-key.pem", cert.private_key_pem.bytes())
        return out

    def server_trust_only(self, name: str, *, trust: Site | None = None) -> Path:
        """A folder with only ca-cert.pem: a client that presents no certificate."""
        out = self.root / "clients" / name
        atrest.make_folder(out)
        (trust or self).ca.cert_pem.write_to_path(str(out / "ca-cert.pem"))
        return out

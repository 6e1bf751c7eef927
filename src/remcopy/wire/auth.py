# Challenge-response authentication with a shared secret, as pure functions.
#
# Why: hosts and peer controllers must prove they know a shared secret without it ever
# crossing the wire (DESIGN.md section 6). Python 3.11 has no TLS-PSK, so the proof is an
# HMAC over fresh nonces from both ends.
#
# The exchange (client = the side that connects):
#   client -> HELLO     version, role, client name, client nonce Nc
#   server -> CHALLENGE version, server name, server nonce Ns, server proof Ps
#   client -> PROOF     client proof Pc
#   server -> WELCOME   (or an error frame, then close)
# with
#   Ps = HMAC-SHA256(secret, "remcopy-server" | role | client name | server name | Nc | Ns)
#   Pc = HMAC-SHA256(secret, "remcopy-client" | role | client name | server name | Ns | Nc)
# where `|` joins fields each prefixed by its length (u32, network order), role is the
# decimal text of the role code and names are UTF-8.
#
# Rules this module keeps:
# - Both identities and the role are bound into every MAC, so a proof for one name or role
#   cannot be used for another.
# - The direction label differs, so a server proof reflected back as a client proof fails.
# - The server's nonce is fresh per connection, so a recorded client proof cannot be replayed.
# - Comparison is constant time (hmac.compare_digest).
# The server additionally refuses a client nonce it has seen recently or that equals one of
# its own recent nonces (a reflected challenge); that bookkeeping is `NonceLedger` below.
from __future__ import annotations

import hashlib
import hmac
from collections import OrderedDict
from dataclasses import dataclass

NONCE_SIZE_BYTES = 32
PROOF_SIZE_BYTES = 32  # SHA-256
# Long enough to remember every nonce of a busy minute, small enough to stay a few MiB.
NONCE_LEDGER_MAX = 65536

_SERVER_LABEL = b"remcopy-server"
_CLIENT_LABEL = b"remcopy-client"


def _mac(secret: bytes, label: bytes, role: int, client: str, server: str, *nonces: bytes) -> bytes:
    # Each field is prefixed by its length (u32, network order), so two different transcripts
    # never give the same bytes. A bare separator would not do: names may contain it, and
    # client "a|b" at server "c" would share its proofs with client "a" at server "b|c".
    fields = [label, str(role).encode(), client.encode("utf-8"), server.encode("utf-8"), *nonces]
    msg = b"".join(len(f).to_bytes(4, "big") + f for f in fields)
    return hmac.new(secret, msg, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Transcript:
    """What both ends saw of one handshake; every proof is bound to all of it."""

    role: int
    client: str
    server: str
    client_nonce: bytes
    server_nonce: bytes


def server_proof(secret: bytes, t: Transcript) -> bytes:
    """The proof a server sends with its challenge: it knows the secret too."""
    return _mac(secret, _SERVER_LABEL, t.role, t.client, t.server, t.client_nonce, t.server_nonce)


def client_proof(secret: bytes, t: Transcript) -> bytes:
    """The proof a client answers a challenge with."""
    return _mac(secret, _CLIENT_LABEL, t.role, t.client, t.server, t.server_nonce, t.client_nonce)


def proofs_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


class NonceLedger:
    """Remembers recent nonces, bounded, so replays and reflections can be refused."""

    def __init__(self, size_max: int = NONCE_LEDGER_MAX) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._size_max = size_max

    def __contains__(self, nonce: bytes) -> bool:
        return nonce in self._seen

    def add(self, nonce: bytes) -> None:
        self._seen[nonce] = None
        self._seen.move_to_end(nonce)
        while len(self._seen) > self._size_max:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)

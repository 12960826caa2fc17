"""The cluster secrets a node holds, and the keys a connection derives from one of them.

A node holds its current secret and, during a rotation, a next one (installed on both nodes
before either uses it) or a previous one (kept until the peer has moved on too). Connections
and heartbeats accept any of them, so a rotation done one node at a time never cuts the pair
(the procedure and its checks: `tandem.engine.config.secrets`).

A secret is named on the wire only by its *key id*, a keyed hash that says nothing of it. A
connection uses the first secret in the initiator's order of preference that the responder
holds too; both ends compute the same choice from the two HELLOs. Its keys are fresh per
connection: HKDF-SHA256 over the chosen secret and an ephemeral X25519 exchange (each HELLO
carries a public key), salted with a hash of both HELLOs (each carries a random nonce), one key
per direction, so that no two connections, and no two directions, ever share a key, and a
recording cannot be decrypted later even by someone who then obtains the secret.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_ID_SIZE = 8
KEY_SIZE = 32  # AES-256
EXCHANGE_KEY_SIZE = 32  # an X25519 public key
MAX_KEY_IDS = 3


def key_id(secret: bytes) -> bytes:
    return hmac.new(secret, b"tandem key id", hashlib.sha256).digest()[:KEY_ID_SIZE]


@dataclass(frozen=True)
class Keyring:
    current: bytes
    next: bytes | None = None
    previous: bytes | None = None

    def __post_init__(self) -> None:
        if not self.current:
            raise ValueError("a cluster secret is required")

    @property
    def preferred(self) -> tuple[bytes, ...]:
        """Every secret held, the one to use first first: a next secret installed on both nodes
        takes over at once; a previous one serves only a peer that has not moved on."""
        return tuple(s for s in (self.next, self.current, self.previous) if s)

    @property
    def signing(self) -> bytes:
        """What a heartbeat is signed with: the current secret (the peer holds it as its
        current, its next or its previous one at every step of a rotation)."""
        return self.current

    def ids(self) -> tuple[bytes, ...]:
        return tuple(key_id(secret) for secret in self.preferred)

    def by_id(self, wanted: bytes) -> bytes | None:
        for secret in self.preferred:
            if hmac.compare_digest(key_id(secret), wanted):
                return secret
        return None


# what a long-running side is given: fixed secrets, or a callable asked for each connection (a
# running node follows its secret files through a rotation: `tandem.engine.config.secrets`)
KeySource = bytes | Keyring | Callable[[], Keyring]


def keyring_of(source: KeySource) -> Keyring:
    if isinstance(source, Keyring):
        return source
    if isinstance(source, bytes):
        return Keyring(source)
    return source()


def choose(initiator_ids: tuple[bytes, ...], responder_ids: tuple[bytes, ...]) -> bytes | None:
    """The key id both ends use: the initiator's first choice the responder holds too."""
    for wanted in initiator_ids:
        if wanted in responder_ids:
            return wanted
    return None


def derive(secret: bytes, shared: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    """(initiator-to-responder key, responder-to-initiator key) for one connection, from the
    cluster secret and the connection's ephemeral X25519 result: without the secret no one
    can take part (the HELLOs carrying the exchange are proved by AUTH); without the ephemeral
    keys, gone once the connection is set up, a recording cannot be decrypted later."""
    salt = hashlib.sha256(transcript).digest()
    material = HKDF(
        algorithm=hashes.SHA256(), length=2 * KEY_SIZE, salt=salt, info=b"tandem stream keys v5"
    ).derive(secret + shared)
    return material[:KEY_SIZE], material[KEY_SIZE:]

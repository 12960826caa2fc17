"""Node-to-node API requests: a command given to either node reaches the node that must act,
and the console of one node shows both.

The nodes share the cluster secret, not certificates: a forwarded request carries
``X-Tandem-Forward: <unix time>.<nonce>.<HMAC>`` over the method, target and body, under a key
derived from the secret; the peer accepts it within 60 s of its clock, once per nonce. Its
answer comes back sealed (AES-256-GCM under the same key, the request's header as associated
data), so the answer's secrecy and integrity do not depend on TLS either: the TLS certificate of
a peer is self-generated and not checked.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import secrets
import ssl
import time
from collections import OrderedDict
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HEADER = "X-Tandem-Forward"
SKEW = 60.0  # seconds of clock difference accepted between the nodes
SEEN_KEPT = 10_000
TIMEOUT = 30.0


class ForwardError(Exception):
    """The peer could not be asked (worded for the operator)."""


def _key(secret: bytes) -> bytes:
    derive = HKDF(hashes.SHA256(), 32, salt=None, info=b"tandem api forward v1")
    return derive.derive(secret)


def _mac(key: bytes, stamp: str, method: str, target: str, body: bytes) -> str:
    message = b"\n".join(
        [stamp.encode(), method.encode(), target.encode(), hashlib.sha256(body).digest()]
    )
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign(secret: bytes, method: str, target: str, body: bytes, now: float) -> str:
    stamp = f"{int(now)}.{secrets.token_hex(16)}"
    return f"{stamp}.{_mac(_key(secret), stamp, method, target, body)}"


class ForwardCheck:
    """The receiving side: which held secret signed a request, refusing replays."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()

    def verify(
        self,
        held: tuple[bytes, ...],
        header: str,
        method: str,
        target: str,
        body: bytes,
        now: float,
    ) -> bytes | None:
        """The key the request was signed with (to seal the answer), or None: refused."""
        try:
            sent, nonce, mac = header.split(".")
            sent_at = int(sent)
        except ValueError:
            return None
        if abs(now - sent_at) > SKEW or nonce in self._seen:
            return None
        stamp = f"{sent}.{nonce}"
        for secret in held:
            key = _key(secret)
            if hmac.compare_digest(_mac(key, stamp, method, target, body), mac):
                while self._seen and next(iter(self._seen.values())) < now - 2 * SKEW:
                    self._seen.popitem(last=False)
                if len(self._seen) >= SEEN_KEPT:
                    self._seen.popitem(last=False)
                self._seen[nonce] = now
                return key
        return None


def _answer_nonce(header: str) -> bytes:
    return hashlib.sha256(header.encode()).digest()[:12]


def seal_answer(key: bytes, header: str, body: bytes) -> bytes:
    return AESGCM(key).encrypt(_answer_nonce(header), body, header.encode())


def open_answer(secret: bytes, header: str, sealed: bytes) -> bytes:
    try:
        return AESGCM(_key(secret)).decrypt(_answer_nonce(header), sealed, header.encode())
    except InvalidTag:
        raise ForwardError("the peer's answer failed its check (another secret?)") from None


def ask_peer(
    secret: bytes,
    address: str,
    port: int,
    method: str,
    target: str,
    body: dict[str, Any] | None = None,
    *,
    tls: bool = True,
    timeout: float = TIMEOUT,
) -> tuple[int, dict[str, Any]]:
    """One forwarded request (blocking): the status and the JSON answer."""
    raw = json.dumps(body).encode() if body is not None else b""
    header = sign(secret, method, target, raw, time.time())
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the answer is sealed: see the module's text
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            address, port, timeout=timeout, context=context
        )
    else:
        connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.request(
            method, target, body=raw, headers={HEADER: header, "Content-Type": "application/json"}
        )
        response = connection.getresponse()
        sealed = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ForwardError(
            f"cannot reach the node at {address}:{port}: {exc or 'timed out'}"
        ) from None
    finally:
        connection.close()
    if response.getheader(HEADER) != "sealed":
        raise ForwardError(
            f"the node at {address}:{port} refused the forwarded request ({response.status})"
        )
    try:
        return response.status, json.loads(open_answer(secret, header, sealed))
    except ValueError:
        raise ForwardError(f"the node at {address}:{port} answered no JSON") from None

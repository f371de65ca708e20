"""A one-shot sealed box: encrypt a secret to an ephemeral X25519 public key.

Used wherever a secret crosses between processes inside an mTLS channel and must also be
bound to one exchange: the cluster key given to a joining node (``hsm.clone_key``) and a
custodian's recovery share given to a sealed node (``node.unseal_submit``). The recipient
makes a fresh X25519 key for each exchange; the sender makes its own::

    k = HKDF-SHA256(X25519(sender, recipient), salt = pub(sender) || pub(recipient), info)
    box = pub(sender), nonce, AES-256-GCM(k, nonce, secret, aad = info)

``info`` names the purpose and binds the exchange (cluster id, node id, attempt id), so a box
made for one exchange does not open in another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PUBLIC_BYTES = 32
NONCE_BYTES = 12

__all__ = ["NONCE_BYTES", "PUBLIC_BYTES", "BoxError", "EphemeralKey", "SealedBox", "open_box", "seal_box"]


class BoxError(Exception):
    """A box that does not open: malformed, altered, or made for another exchange."""


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key(private: X25519PrivateKey, peer_public: bytes, sender_public: bytes, recipient_public: bytes,
         info: bytes) -> bytes:
    if len(peer_public) != PUBLIC_BYTES:
        raise BoxError(f"an X25519 public key is {PUBLIC_BYTES} bytes, not {len(peer_public)}")
    try:
        # OpenSSL refuses (ValueError) a peer key that gives the all-zero shared secret.
        shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as exc:
        raise BoxError(f"unusable X25519 public key: {exc}") from None
    return HKDF(hashes.SHA256(), 32, salt=sender_public + recipient_public, info=info).derive(shared)


@dataclass
class EphemeralKey:
    """The recipient's key for one exchange (never reuse it)."""

    private: X25519PrivateKey

    @classmethod
    def generate(cls) -> EphemeralKey:
        return cls(X25519PrivateKey.generate())

    @property
    def public(self) -> bytes:
        return _raw(self.private.public_key())


@dataclass(frozen=True)
class SealedBox:
    sender_public: bytes
    nonce: bytes
    ciphertext: bytes


def seal_box(recipient_public: bytes, secret: bytes | bytearray, info: bytes) -> SealedBox:
    """Encrypt ``secret`` to ``recipient_public``. Raises BoxError for an unusable public key."""
    ephemeral = X25519PrivateKey.generate()
    sender_public = _raw(ephemeral.public_key())
    key = _key(ephemeral, recipient_public, sender_public, recipient_public, info)
    nonce = os.urandom(NONCE_BYTES)
    return SealedBox(sender_public, nonce, AESGCM(key).encrypt(nonce, bytes(secret), info))


def open_box(recipient: EphemeralKey, box: SealedBox, info: bytes) -> bytearray:
    """The secret in ``box``. Raises BoxError."""
    if len(box.nonce) != NONCE_BYTES:
        raise BoxError(f"a nonce is {NONCE_BYTES} bytes")
    key = _key(recipient.private, box.sender_public, box.sender_public, recipient.public, info)
    try:
        return bytearray(AESGCM(key).decrypt(box.nonce, box.ciphertext, info))
    except InvalidTag:
        raise BoxError("the box failed authentication (altered, or not made for this exchange)") from None

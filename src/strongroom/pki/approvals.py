"""Approval keys and token signatures: what quorum approvers and MFA users sign, and how it is checked.

A *token* is the SHA-256 digest of some ``approval_data`` (CloudHSM's ``unsigned``/``token`` field).
An approver signs those 32 bytes with a private key whose public half is registered in the cluster,
the way CloudHSM's documentation does it with OpenSSL::

    base64 -d token.b64 > token.bin
    openssl pkeyutl -sign -inkey approver.key -pkeyopt digest:sha256 -keyform PEM -in token.bin -out token.sig

``-pkeyopt digest:sha256`` makes OpenSSL treat its 32-byte input as a SHA-256 digest: for RSA that is
RSASSA-PKCS1-v1_5 with SHA-256's DigestInfo, for ECDSA a signature of that digest. Accepted here:

=============================  =====================================================================
key                            signature over the 32-byte token
=============================  =====================================================================
RSA 2048 to 8192 bits          PKCS#1 v1.5 / SHA-256 (CloudHSM's) or PSS / SHA-256 / MGF1-SHA-256
                               (any salt length: ``-pkeyopt rsa_padding_mode:pss`` in OpenSSL)
ECDSA P-256, P-384             ECDSA of the digest (DER), as ``pkeyutl -pkeyopt digest:sha256`` makes
Ed25519                        Ed25519 of the 32 bytes (``pkeyutl -sign -rawin``)
=============================  =====================================================================

CloudHSM accepts RSA-2048 only; the rest is Strongroom's. Everything is pyca/cryptography.

The token files follow CloudHSM's format (``version`` 2.0): a quorum token file holds ``approval_data``,
``token`` and ``signatures`` ``[{username, signature}]``; a registration or MFA file holds
``tokens`` ``[{approval_data?, unsigned, signed}]``. Base64 throughout, as CloudHSM writes it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

__all__ = [
    "MAX_APPROVAL_DATA",
    "MAX_PUBLIC_KEY_PEM",
    "MAX_SIGNATURE",
    "FILE_VERSION",
    "ApprovalKeyError",
    "PrivateKey",
    "PublicKey",
    "TokenFile",
    "TokenFileError",
    "describe_key",
    "fingerprint",
    "load_private_key",
    "load_public_key",
    "public_pem",
    "quorum_file",
    "registration_file",
    "sign_token",
    "token_of",
    "verify_token",
]

FILE_VERSION = "2.0"
TOKEN_BYTES = 32
#: Limits on what a caller may send (the node refuses anything larger before parsing it).
MAX_PUBLIC_KEY_PEM = 16 * 1024
MAX_SIGNATURE = 1024  # RSA-8192 is 1,024 bytes; ECDSA P-384 DER about 104; Ed25519 64
MAX_APPROVAL_DATA = 4096
MAX_SIGNATURES_PER_FILE = 64
MAX_TOKENS_PER_FILE = 64
MAX_FILE_BYTES = 256 * 1024
RSA_MIN_BITS = 2048
RSA_MAX_BITS = 8192
CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class ApprovalKeyError(ValueError):
    """A key that may not serve for approvals (type, size, curve) or does not parse."""


class TokenFileError(ValueError):
    """A token file that does not follow the format."""


def token_of(approval_data: bytes) -> bytes:
    """The token of some approval data: its SHA-256 digest (what is signed)."""
    return hashlib.sha256(approval_data).digest()


def _check_key(key: object) -> PublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        if not RSA_MIN_BITS <= key.key_size <= RSA_MAX_BITS:
            raise ApprovalKeyError(f"an RSA approval key has {RSA_MIN_BITS} to {RSA_MAX_BITS} bits, "
                                   f"not {key.key_size}")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in CURVES:
            raise ApprovalKeyError(f"an EC approval key is on P-256 or P-384, not {key.curve.name}")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise ApprovalKeyError("an approval key is RSA (2048+ bits), ECDSA P-256/P-384 or Ed25519")


def load_public_key(pem: str | bytes) -> PublicKey:
    """A registered approval key from its PEM (SubjectPublicKeyInfo, or PKCS#1 ``RSA PUBLIC KEY``)."""
    data = pem.encode() if isinstance(pem, str) else pem
    if len(data) > MAX_PUBLIC_KEY_PEM:
        raise ApprovalKeyError(f"a public key PEM is at most {MAX_PUBLIC_KEY_PEM} bytes")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise ApprovalKeyError("the public key is not a PEM public key") from None
    return _check_key(key)


def load_private_key(pem: bytes, password: bytes | None = None) -> PrivateKey:
    """An approver's private key (PEM, PKCS#8 or traditional; encrypted if ``password``)."""
    try:
        key = serialization.load_pem_private_key(pem, password)
    except TypeError as exc:  # encrypted without a password, or a password for a clear key
        raise ApprovalKeyError(f"the private key: {exc}") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ApprovalKeyError("the private key is not a PEM private key (or the pass phrase is wrong)") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ApprovalKeyError("an approval key is RSA (2048+ bits), ECDSA P-256/P-384 or Ed25519")
    _check_key(key.public_key())
    return key


def public_pem(key: PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def fingerprint(key: PublicKey) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo DER, hex (how listings name a key)."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def describe_key(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC-{CURVES[key.curve.name]}"
    return "Ed25519"


def sign_token(key: PrivateKey, token: bytes, *, pss: bool = False) -> bytes:
    """Sign a 32-byte token as ``openssl pkeyutl -sign -pkeyopt digest:sha256`` does (Ed25519: the bytes)."""
    if len(token) != TOKEN_BYTES:
        raise ValueError(f"a token is {TOKEN_BYTES} bytes (a SHA-256 digest), not {len(token)}")
    prehashed = Prehashed(hashes.SHA256())
    if isinstance(key, rsa.RSAPrivateKey):
        scheme: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
            if pss else padding.PKCS1v15())
        return key.sign(token, scheme, prehashed)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(token, ec.ECDSA(prehashed))
    return key.sign(token)


def verify_token(key: PublicKey, token: bytes, signature: bytes) -> str:
    """The scheme ``signature`` verifies under (``rsa-pkcs1``, ``rsa-pss``, ``ecdsa``, ``ed25519``); raises
    InvalidSignature otherwise."""
    if len(token) != TOKEN_BYTES or not 0 < len(signature) <= MAX_SIGNATURE:
        raise InvalidSignature
    prehashed = Prehashed(hashes.SHA256())
    if isinstance(key, rsa.RSAPublicKey):
        try:
            key.verify(signature, token, padding.PKCS1v15(), prehashed)
            return "rsa-pkcs1"
        except InvalidSignature:
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
            key.verify(signature, token, pss, prehashed)
            return "rsa-pss"
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, token, ec.ECDSA(prehashed))
        return "ecdsa"
    key.verify(signature, token)
    return "ed25519"


# --- token files -----------------------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: object, what: str, limit: int) -> bytes:
    if not isinstance(text, str) or len(text) > 4 * limit // 3 + 8:
        raise TokenFileError(f"{what} is a base64 string of at most {limit} bytes")
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise TokenFileError(f"{what} is not valid base64") from None


@dataclass
class Signature:
    username: str
    signature: bytes


@dataclass
class Challenge:
    """One entry of a registration/MFA file: the token to sign, and the signature once made."""

    unsigned: bytes
    signed: bytes | None = None
    approval_data: bytes | None = None
    #: Strongroom's: which node issued it (MFA), shown to the user, not needed to sign.
    node: str | None = None


@dataclass
class TokenFile:
    """A CloudHSM-format token file of either shape."""

    version: str = FILE_VERSION
    #: A quorum token: its data, digest, and the approvers' signatures.
    approval_data: bytes | None = None
    token: bytes | None = None
    signatures: list[Signature] = field(default_factory=list)
    #: A registration or MFA file: one entry per token to sign.
    tokens: list[Challenge] = field(default_factory=list)
    #: Strongroom's additions, kept when a file is read and written again (shown to approvers).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_quorum(self) -> bool:
        return self.token is not None

    def to_json(self) -> dict[str, Any]:
        if self.is_quorum:
            assert self.approval_data is not None and self.token is not None
            return {"version": self.version, "approval_data": b64(self.approval_data), "token": b64(self.token),
                    "signatures": [{"username": s.username, "signature": b64(s.signature)} for s in self.signatures],
                    **self.extra}
        entries = []
        for entry in self.tokens:
            item: dict[str, Any] = {}
            if entry.approval_data is not None:
                item["approval_data"] = b64(entry.approval_data)
            item["unsigned"] = b64(entry.unsigned)
            item["signed"] = "" if entry.signed is None else b64(entry.signed)
            if entry.node is not None:
                item["node"] = entry.node
            entries.append(item)
        return {"version": self.version, "tokens": entries, **self.extra}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2) + "\n"

    def add_signature(self, username: str, signature: bytes) -> None:
        """Add (or replace) one approver's signature."""
        self.signatures = [s for s in self.signatures if s.username != username]
        self.signatures.append(Signature(username, signature))

    @classmethod
    def loads(cls, text: str | bytes) -> TokenFile:
        if len(text) > MAX_FILE_BYTES:
            raise TokenFileError(f"a token file is at most {MAX_FILE_BYTES} bytes")
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            raise TokenFileError("the token file is not JSON") from None
        if not isinstance(data, dict):
            raise TokenFileError("the token file is not a JSON object")
        version = data.get("version", FILE_VERSION)
        if version != FILE_VERSION:
            raise TokenFileError(f"token file version {version!r} is not supported (only {FILE_VERSION})")
        known = {"version", "approval_data", "token", "signatures", "tokens"}
        extra = {k: v for k, v in data.items() if k not in known}
        if "tokens" in data:
            return cls(tokens=_challenges(data["tokens"]), extra=extra)
        approval_data = unb64(data.get("approval_data"), "approval_data", MAX_APPROVAL_DATA)
        token = unb64(data.get("token"), "token", TOKEN_BYTES)
        if token != token_of(approval_data):
            raise TokenFileError("token is not the SHA-256 digest of approval_data (the file was edited)")
        signatures = data.get("signatures") or []
        if not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES_PER_FILE:
            raise TokenFileError(f"signatures is a list of at most {MAX_SIGNATURES_PER_FILE} entries")
        parsed = []
        for item in signatures:
            if not isinstance(item, dict) or not isinstance(item.get("username"), str):
                raise TokenFileError('each signature is {"username": ..., "signature": ...}')
            parsed.append(Signature(item["username"], unb64(item.get("signature"), "signature", MAX_SIGNATURE)))
        return cls(approval_data=approval_data, token=token, signatures=parsed, extra=extra)


def _challenges(items: object) -> list[Challenge]:
    if not isinstance(items, list) or not 0 < len(items) <= MAX_TOKENS_PER_FILE:
        raise TokenFileError(f"tokens is a list of 1 to {MAX_TOKENS_PER_FILE} entries")
    result = []
    for item in items:
        if not isinstance(item, dict):
            raise TokenFileError('each token is {"unsigned": ..., "signed": ...}')
        unsigned = unb64(item.get("unsigned"), "unsigned", TOKEN_BYTES)
        approval_data = None
        if item.get("approval_data"):
            approval_data = unb64(item["approval_data"], "approval_data", MAX_APPROVAL_DATA)
            if token_of(approval_data) != unsigned:
                raise TokenFileError("unsigned is not the SHA-256 digest of approval_data (the file was edited)")
        signed = item.get("signed") or None
        node = item.get("node")
        result.append(Challenge(unsigned, None if signed is None else unb64(signed, "signed", MAX_SIGNATURE),
                                approval_data, node if isinstance(node, str) else None))
    return result


def quorum_file(approval_data: bytes, signatures: Iterable[Signature] = (), **extra: Any) -> TokenFile:
    return TokenFile(approval_data=approval_data, token=token_of(approval_data), signatures=list(signatures),
                     extra=extra)


def registration_file(entries: Iterable[Challenge], **extra: Any) -> TokenFile:
    return TokenFile(tokens=list(entries), extra=extra)

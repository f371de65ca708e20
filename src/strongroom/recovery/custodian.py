"""Custodian keys, and encrypting a share to one of them.

Two kinds of custodian key are accepted, both common in offline key ceremonies:

* EC P-384 -> HPKE (RFC 9180) base mode, DHKEM(P-384, HKDF-SHA384), HKDF-SHA384,
  AES-256-GCM: ``hpke-p384-sha384-aes256gcm``;
* RSA of 3072 bits or more -> RSA-OAEP with SHA-256 and MGF1-SHA-256:
  ``rsa-oaep-sha256``.

Everything comes from ``cryptography``. The HPKE ``info`` (or the OAEP label) is
the share's context (format version, cluster id, index, threshold, total), so a
share file whose metadata was edited, or whose ciphertext was moved into another
share file, no longer decrypts.
"""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, hpke, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from strongroom.recovery.errors import RecoveryError

ALG_HPKE = "hpke-p384-sha384-aes256gcm"
ALG_RSA = "rsa-oaep-sha256"
ALGORITHMS = (ALG_HPKE, ALG_RSA)
MIN_RSA_BITS = 3072
# An upper bound only so that a share file cannot announce an absurd ciphertext.
MAX_RSA_BITS = 16384

CustodianPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
CustodianPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

_SUITE = hpke.Suite(hpke.KEM.P384, hpke.KDF.HKDF_SHA384, hpke.AEAD.AES_256_GCM)
# HPKE ciphertext = enc (uncompressed P-384 point) || AEAD output (plaintext + tag).
HPKE_OVERHEAD = 97 + 16

_ACCEPTED = "use an EC P-384 key or an RSA key of at least 3072 bits"

__all__ = [
    "ALGORITHMS",
    "CustodianPrivateKey",
    "CustodianPublicKey",
    "algorithm_for",
    "custodian_fingerprint",
    "load_custodian_key",
    "load_custodian_private_key",
]


def check_public_key(key: object) -> CustodianPublicKey:
    """Return ``key`` if it is an acceptable custodian key, else raise RecoveryError."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP384R1):
            raise RecoveryError(f"custodian EC key is on {key.curve.name}, which is not accepted: {_ACCEPTED}")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise RecoveryError(f"custodian RSA key has {key.key_size} bits, fewer than {MIN_RSA_BITS}: {_ACCEPTED}")
        if key.key_size > MAX_RSA_BITS:
            raise RecoveryError(f"custodian RSA key has {key.key_size} bits, more than {MAX_RSA_BITS} are not accepted")
        return key
    raise RecoveryError(f"a custodian key of type {type(key).__name__} is not accepted: {_ACCEPTED}")


def load_custodian_key(pem: bytes) -> CustodianPublicKey:
    """Load and validate a custodian public key (PEM SubjectPublicKeyInfo)."""
    if b"PRIVATE KEY" in pem:
        raise RecoveryError("this is a private key: give the custodian's public key only "
                            "(made with `openssl pkey -in KEY -pubout`); the private key stays with the custodian")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RecoveryError(f"not a PEM public key ({exc}); expected a '-----BEGIN PUBLIC KEY-----' block "
                            "as written by `openssl pkey -pubout`") from None
    return check_public_key(key)


def load_custodian_private_key(pem: bytes, password: bytes | None = None) -> CustodianPrivateKey:
    """Load a custodian's private key (PEM, PKCS#8 or traditional), as used by ``decrypt_share``."""
    try:
        key = serialization.load_pem_private_key(pem, password=password)
    except TypeError as exc:  # password given for a clear key, or missing for an encrypted one
        raise RecoveryError(f"cannot open the private key: {exc}") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise RecoveryError(f"not a usable PEM private key ({exc}); if it is encrypted, check the passphrase") \
            from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise RecoveryError(f"a custodian key of type {type(key).__name__} is not accepted: {_ACCEPTED}")
    check_public_key(key.public_key())
    return key


def custodian_fingerprint(key: CustodianPublicKey) -> str:
    """SHA-256 (hex) of the key's DER SubjectPublicKeyInfo: ``openssl pkey -pubin -outform DER | sha256sum``."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def algorithm_for(key: CustodianPublicKey) -> str:
    return ALG_HPKE if isinstance(key, ec.EllipticCurvePublicKey) else ALG_RSA


def _oaep(label: bytes) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)


def encrypt_to(key: CustodianPublicKey, plaintext: bytes | bytearray, context: bytes) -> bytes:
    """Encrypt ``plaintext`` to the custodian, bound to ``context``."""
    check_public_key(key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _SUITE.encrypt(plaintext, key, info=context)
    # RSA encrypt() insists on bytes: an unwipeable copy of one share, short-lived.
    return key.encrypt(bytes(plaintext), _oaep(context))


def decrypt_with(key: CustodianPrivateKey, algorithm: str, ciphertext: bytes, context: bytes) -> bytearray:
    """Decrypt a share ciphertext; RecoveryError when it does not open (altered or misplaced)."""
    expected = algorithm_for(check_public_key(key.public_key()))
    if algorithm != expected:
        raise RecoveryError(f"the share was encrypted with {algorithm}, which does not fit this {expected} key")
    try:
        if isinstance(key, ec.EllipticCurvePrivateKey):
            plain = _SUITE.decrypt(ciphertext, key, info=context)
        else:
            plain = key.decrypt(ciphertext, _oaep(context))
    except (InvalidTag, ValueError):
        raise RecoveryError("the share does not decrypt: its ciphertext or its cluster id, index, threshold or "
                            "total was altered. Use an intact copy of the share file as issued") from None
    # The library hands back immutable bytes; this copy at least can be wiped by the caller.
    return bytearray(plain)

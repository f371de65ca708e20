"""Shared secrets: Encapsulate and Decapsulate (ML-KEM keys, KeyUsage ENCAPSULATE_DECAPSULATE) and
DeriveSharedSecret (ECC NIST keys, KeyUsage KEY_AGREEMENT).

All three run in a node under the key's non-extractable private (or public) key and answer the
32-byte secret in clear, as AWS does (node operations ``crypto.encapsulate`` /
``crypto.decapsulate`` / ``crypto.derive_secret``, :mod:`strongroom.dispatch.ops.kem`):

* Encapsulate: a fresh secret and its ciphertext under the key's public key (768: 1088 bytes,
  1024: 1568 bytes; AWS's ML_KEM_512 would be 768 bytes, but the library has no ML-KEM-512);
* Decapsulate: a ciphertext of the wrong length for the key spec is InvalidCiphertextException;
  any other ciphertext, even one made for another key or altered, gives a pseudo-random secret
  (FIPS 203 implicit rejection), never an error;
* DeriveSharedSecret: ECDH (cofactor, CKD_NULL) of the key's private key with the peer's public key
  (a DER SubjectPublicKeyInfo on the same curve); the answer is the raw shared secret Z.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from strongroom.constants import CKD, CKM
from strongroom.encoding.ec import curve_named
from strongroom.kms.backend import ClusterError
from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import InvalidCiphertext, UnsupportedOperation, Validation
from strongroom.kms.keyspecs import ENCAPSULATION_ALGORITHMS, KEY_AGREEMENT_ALGORITHMS
from strongroom.kms.model import KmsKey
from strongroom.kms.ops.asymmetric import _unavailable, incompatible, key_spec
from strongroom.kms.ops.common import (
    CIPHERTEXT_MAX,
    KEY_ID_MAX,
    b64,
    dry_run,
    grant_tokens,
    refuse_dry_run,
    require_usable,
    require_usage,
    resolve_key,
)

PUBLIC_KEY_MAX = 8192
#: ML-KEM ciphertext lengths by key spec (FIPS 203 Table 3).
CIPHERTEXT_LENGTHS = {"ML_KEM_512": 768, "ML_KEM_768": 1088, "ML_KEM_1024": 1568}


def _check_kem(ctx: Context, key: KmsKey, operation: str, algorithm: str) -> None:
    require_usable(ctx, key)
    require_usage(ctx, key, "ENCAPSULATE_DECAPSULATE", operation)
    spec = key_spec(key)
    if algorithm not in spec.algorithms.get("ENCAPSULATE_DECAPSULATE", ()):
        raise incompatible(algorithm, spec)


@kms_operation("Encapsulate")
async def encapsulate(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    algorithm = p.string("EncapsulationAlgorithm", required=True, enum=ENCAPSULATION_ALGORITHMS) or ""
    grant_tokens(p)
    is_dry_run = dry_run(p)
    p.check()
    key = await resolve_key(ctx, key_id)
    _check_kem(ctx, key, "Encapsulate", algorithm)
    if is_dry_run:
        refuse_dry_run()
    material = key.current
    assert material.public_handle is not None
    try:
        result = await ctx.backend.cluster.call("crypto.encapsulate", key=material.public_handle,
                                                mechanism=int(CKM.ML_KEM))
    except ClusterError as exc:
        raise _unavailable(ctx, key, exc) from None
    return {"KeyId": ctx.where.key_arn(key.key_id), "SharedSecret": b64(result["secret"]),
            "SharedSecretCiphertextBlob": b64(result["ciphertext"]), "EncapsulationAlgorithm": algorithm}


@kms_operation("Decapsulate")
async def decapsulate(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    blob = p.blob("SharedSecretCiphertextBlob", required=True, max_len=CIPHERTEXT_MAX) or b""
    algorithm = p.string("EncapsulationAlgorithm", required=True, enum=ENCAPSULATION_ALGORITHMS) or ""
    grant_tokens(p)
    is_dry_run = dry_run(p)
    p.check()
    key = await resolve_key(ctx, key_id)
    _check_kem(ctx, key, "Decapsulate", algorithm)
    if len(blob) != CIPHERTEXT_LENGTHS[key.key_spec]:
        raise InvalidCiphertext("")
    if is_dry_run:
        refuse_dry_run()
    try:
        result = await ctx.backend.cluster.call("crypto.decapsulate", key=key.current.handle,
                                                mechanism=int(CKM.ML_KEM), ciphertext=blob)
    except ClusterError as exc:
        raise _unavailable(ctx, key, exc) from None
    return {"KeyId": ctx.where.key_arn(key.key_id), "SharedSecret": b64(result["secret"]),
            "EncapsulationAlgorithm": algorithm}


def _peer_point(spec_curve: str, der: bytes) -> bytes:
    """The uncompressed point of a peer's SubjectPublicKeyInfo on the key's curve (else ValidationException)."""
    try:
        peer = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise Validation("PublicKey is not a DER-encoded X.509 public key (SubjectPublicKeyInfo).") from None
    if not isinstance(peer, ec.EllipticCurvePublicKey):
        raise Validation("PublicKey is not an elliptic curve public key.")
    if peer.curve.name != curve_named(spec_curve).name:
        raise Validation(f"PublicKey is on curve {peer.curve.name}; the KMS key's curve is {spec_curve}.")
    return peer.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@kms_operation("DeriveSharedSecret")
async def derive_shared_secret(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    algorithm = p.string("KeyAgreementAlgorithm", required=True, enum=KEY_AGREEMENT_ALGORITHMS) or ""
    public_key = p.blob("PublicKey", required=True, max_len=PUBLIC_KEY_MAX) or b""
    grant_tokens(p)
    is_dry_run = dry_run(p)
    p.check()
    if p.body.get("Recipient") is not None:
        raise UnsupportedOperation("Recipient (Nitro Enclaves attestation) is not supported by this endpoint.")
    key = await resolve_key(ctx, key_id)
    require_usable(ctx, key)
    require_usage(ctx, key, "KEY_AGREEMENT", "DeriveSharedSecret")
    spec = key_spec(key)
    if algorithm not in spec.algorithms.get("KEY_AGREEMENT", ()):
        raise incompatible(algorithm, spec)
    point = _peer_point(spec.curve, public_key)
    if is_dry_run:
        refuse_dry_run()
    try:
        result = await ctx.backend.cluster.call("crypto.derive_secret", key=key.current.handle,
                                                mechanism=int(CKM.ECDH1_DERIVE),
                                                params={"kdf": int(CKD.NULL), "public_data": point})
    except ClusterError as exc:
        raise _unavailable(ctx, key, exc) from None
    return {"KeyId": ctx.where.key_arn(key.key_id), "SharedSecret": b64(result["secret"]),
            "KeyAgreementAlgorithm": algorithm, "KeyOrigin": key.origin}

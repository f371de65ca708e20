"""Asymmetric keys: Sign, Verify, GetPublicKey, GenerateDataKeyPair(WithoutPlaintext), RSA
Encrypt/Decrypt/ReEncrypt (reached through :mod:`.symmetric`'s handlers), and the cluster key material
CreateKey makes for RSA, ECC, Ed25519, ML-DSA, ML-KEM and HMAC key specs.

The private half of an asymmetric key and every HMAC key are token objects in the cluster,
owned by the service user, sensitive and never extractable; each half carries only the usage
flag and CKA_ALLOWED_MECHANISMS its KMS algorithms need. Signing, verification, OAEP and HMAC
run in a node. The mapping from KMS algorithms to cluster mechanisms:

* RSASSA_PKCS1_V1_5_SHA_n: RAW ``CKM_SHAn_RSA_PKCS``; DIGEST ``CKM_RSA_PKCS`` over the
  DigestInfo prefix and the digest;
* RSASSA_PSS_SHA_n: RAW ``CKM_SHAn_RSA_PKCS_PSS``, DIGEST ``CKM_RSA_PKCS_PSS``, MGF1 with the same
  hash and a salt as long as the hash (as AWS);
* ECDSA_SHA_n: RAW ``CKM_ECDSA_SHAn``, DIGEST ``CKM_ECDSA``; the node returns r || s and KMS
  answers DER (``ECDSA-Sig-Value``);
* RSAES_OAEP_SHA_1 / _256: ``CKM_RSA_PKCS_OAEP`` with MGF1 of the same hash, no label;
* ED25519_SHA_512 (RAW): ``CKM_EDDSA`` (pure Ed25519); ED25519_PH_SHA_512 (DIGEST, 64 bytes):
  ``CKM_EDDSA`` with ``ph_flag`` — Ed25519ph of the bytes given, so the node hashes them once more
  with SHA-512, as AWS documents;
* ML_DSA_SHAKE_256: RAW ``CKM_ML_DSA`` (pure ML-DSA, empty context); EXTERNAL_MU ``CKM_ML_DSA``
  with ``external_mu`` (the 64-byte μ of FIPS 204 §6.2): the same signature the message gets;
* KEY_AGREEMENT keys: ``CKM_ECDH1_DERIVE`` (DeriveSharedSecret, :mod:`.agreement`);
  ENCAPSULATE_DECAPSULATE keys: ``CKM_ML_KEM`` (Encapsulate / Decapsulate, :mod:`.agreement`).

GenerateDataKeyPair makes the pair in the gateway (AWS hands its private key to the caller in
clear, so it is data, not a cluster key) and seals the PKCS#8 DER under the symmetric KMS key
exactly as Encrypt would: Decrypt of PrivateKeyCiphertextBlob returns the PKCS#8 bytes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mldsa, mlkem, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from strongroom.constants import CKA, CKG, CKK, CKM
from strongroom.encoding import ec as ec_encoding
from strongroom.encoding import eddsa as eddsa_encoding
from strongroom.encoding import rsa as rsa_encoding
from strongroom.encoding.ec import curve_named, params_for_curve, signature_from_der, signature_to_der
from strongroom.errors import CKR
from strongroom.kms.backend import ClusterError
from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import (
    INCORRECT_KEY_MESSAGE,
    IncorrectKey,
    InvalidCiphertext,
    InvalidKeyUsage,
    KeyUnavailable,
    KmsError,
    KmsInvalidSignature,
    UnsupportedOperation,
    Validation,
)
from strongroom.kms.keyspecs import (
    ALGORITHM_MEMBERS,
    DATA_KEY_PAIR_SPECS,
    ECC,
    ED25519,
    HMAC,
    KEY_SPECS,
    MAC_ALGORITHMS,
    MESSAGE_TYPES,
    ML_DSA,
    ML_KEM,
    RSA,
    RSA_ENCRYPTION_HASHES,
    SIGNING_ALGORITHM_NAMES,
    SIGNING_ALGORITHMS,
    SUPPORTED_DATA_KEY_PAIR_SPECS,
    KeySpec,
    SigningAlgorithm,
    rsa_max_plaintext,
)
from strongroom.kms.model import KmsKey, Material, new_material, new_pair_material
from strongroom.kms.ops.common import (
    KEY_ID_MAX,
    PLAINTEXT_MAX,
    b64,
    dry_run,
    encryption_context,
    grant_tokens,
    refuse_dry_run,
    refuse_recipient,
    require_symmetric_encryption,
    require_usable,
    require_usage,
    resolve_key,
    seal,
)

F4 = b"\x01\x00\x01"
SIGNATURE_MAX = 6144

HASH_MECHANISMS = {"sha1": CKM.SHA_1, "sha224": CKM.SHA224, "sha256": CKM.SHA256, "sha384": CKM.SHA384,
                   "sha512": CKM.SHA512}
MGF1 = {"sha1": CKG.MGF1_SHA1, "sha224": CKG.MGF1_SHA224, "sha256": CKG.MGF1_SHA256, "sha384": CKG.MGF1_SHA384,
        "sha512": CKG.MGF1_SHA512}
PKCS1_MECHANISMS = {"sha256": CKM.SHA256_RSA_PKCS, "sha384": CKM.SHA384_RSA_PKCS, "sha512": CKM.SHA512_RSA_PKCS}
PSS_MECHANISMS = {"sha256": CKM.SHA256_RSA_PKCS_PSS, "sha384": CKM.SHA384_RSA_PKCS_PSS,
                  "sha512": CKM.SHA512_RSA_PKCS_PSS}
ECDSA_MECHANISMS = {"sha256": CKM.ECDSA_SHA256, "sha384": CKM.ECDSA_SHA384, "sha512": CKM.ECDSA_SHA512}
HMAC_MECHANISMS = {"sha224": CKM.SHA224_HMAC, "sha256": CKM.SHA256_HMAC, "sha384": CKM.SHA384_HMAC,
                   "sha512": CKM.SHA512_HMAC}
#: RFC 8017 9.2 note 1: the DER DigestInfo prefixes that PKCS#1 v1.5 signatures put before the digest.
DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


# --- key material (CreateKey) ----------------------------------------------------------------------


def _sign_mechanisms(spec: KeySpec) -> list[int]:
    """CKA_ALLOWED_MECHANISMS of a signing key: what its algorithms use, for every MessageType."""
    mechanisms: list[int] = []
    for name in spec.algorithms["SIGN_VERIFY"]:
        algorithm = SIGNING_ALGORITHMS[name]
        for message_type in algorithm.message_types:
            ckm = _mechanism(algorithm, message_type, b"")[0]
            if ckm not in mechanisms:
                mechanisms.append(ckm)
    return mechanisms


#: What each usage lets the halves of a pair do (everything else is off), and the mechanisms allowed.
def pair_flags(spec: KeySpec, usage: str) -> tuple[dict[int, object], dict[int, object]]:
    allowed: list[int]
    if usage == "SIGN_VERIFY":
        allowed = _sign_mechanisms(spec)
    elif usage == "ENCRYPT_DECRYPT":
        allowed = [int(CKM.RSA_PKCS_OAEP)]
    elif usage == "KEY_AGREEMENT":
        allowed = [int(CKM.ECDH1_DERIVE)]
    else:  # ENCAPSULATE_DECAPSULATE
        allowed = [int(CKM.ML_KEM)]
    public: dict[int, object] = {CKA.VERIFY: usage == "SIGN_VERIFY", CKA.ENCRYPT: usage == "ENCRYPT_DECRYPT",
                                 CKA.WRAP: False, CKA.DERIVE: False, CKA.ALLOWED_MECHANISMS: allowed}
    private: dict[int, object] = {CKA.SIGN: usage == "SIGN_VERIFY", CKA.DECRYPT: usage == "ENCRYPT_DECRYPT",
                                  CKA.UNWRAP: False, CKA.DERIVE: usage == "KEY_AGREEMENT",
                                  CKA.ALLOWED_MECHANISMS: allowed}
    if spec.kind == ML_KEM:
        public[CKA.ENCAPSULATE], private[CKA.DECAPSULATE] = True, True
    return public, private


def pair_generation(spec: KeySpec) -> tuple[int, dict[int, object]]:
    """The key pair generation mechanism of a spec and what its templates say of the key type."""
    if spec.kind == RSA:
        return int(CKM.RSA_PKCS_KEY_PAIR_GEN), {CKA.KEY_TYPE: int(CKK.RSA), CKA.MODULUS_BITS: spec.rsa_bits,
                                                CKA.PUBLIC_EXPONENT: F4}
    if spec.kind == ECC:
        return int(CKM.EC_KEY_PAIR_GEN), {CKA.KEY_TYPE: int(CKK.EC),
                                          CKA.EC_PARAMS: params_for_curve(curve_named(spec.curve))}
    if spec.kind == ED25519:
        return int(CKM.EC_EDWARDS_KEY_PAIR_GEN), {CKA.KEY_TYPE: int(CKK.EC_EDWARDS),
                                                  CKA.EC_PARAMS: eddsa_encoding.ED25519.params}
    if spec.kind == ML_DSA:
        return int(CKM.ML_DSA_KEY_PAIR_GEN), {CKA.KEY_TYPE: int(CKK.ML_DSA), CKA.PARAMETER_SET: spec.parameter_set}
    if spec.kind == ML_KEM:
        return int(CKM.ML_KEM_KEY_PAIR_GEN), {CKA.KEY_TYPE: int(CKK.ML_KEM), CKA.PARAMETER_SET: spec.parameter_set}
    raise UnsupportedOperation(f"KeySpec {spec.name} is not supported by this endpoint.")


def key_type_of(spec: KeySpec) -> int:
    """The cluster key type (CKK_*) of a spec's private key (its secret key for HMAC and symmetric specs)."""
    if spec.kind == HMAC:
        return int(CKK.GENERIC_SECRET)
    if spec.symmetric:
        return int(CKK.AES)
    key_type = pair_generation(spec)[1][CKA.KEY_TYPE]
    assert isinstance(key_type, int)
    return key_type


async def generate_material(ctx: Context, key_id: str, spec: KeySpec, usage: str) -> Material:
    """The cluster objects of a new KMS key of ``spec`` and ``usage`` (version 1)."""
    backend = ctx.backend
    label = f"kms/{key_id}/1"
    if spec.symmetric:
        return new_material(1, await backend.generate_aes_key(label, spec.aes_bytes))
    if spec.kind == HMAC:
        (algorithm,) = spec.algorithms["GENERATE_VERIFY_MAC"]
        mechanism = int(HMAC_MECHANISMS[MAC_ALGORITHMS[algorithm]])
        return new_material(1, await backend.generate_hmac_key(label, spec.hmac_bytes, mechanism))
    mechanism, key_type = pair_generation(spec)
    flags_public, flags_private = pair_flags(spec, usage)
    # The private template names the key type (and the parameter set); the rest is the public key's.
    private_type: dict[int, object] = {k: v for k, v in key_type.items() if k in (CKA.KEY_TYPE, CKA.PARAMETER_SET)}
    public, private = await backend.generate_key_pair(label, mechanism, {**key_type, **flags_public},
                                                      {**private_type, **flags_private})
    return new_pair_material(1, private, public)


# --- shared checks ------------------------------------------------------------------------------------


def key_spec(key: KmsKey) -> KeySpec:
    return KEY_SPECS[key.key_spec]


def incompatible(algorithm: str, spec: KeySpec) -> KmsError:
    return InvalidKeyUsage(f"Algorithm {algorithm} is incompatible with key spec {spec.name}.")


def _unavailable(ctx: Context, key: KmsKey, exc: ClusterError) -> Exception:
    if exc.code in (CKR.KEY_HANDLE_INVALID, CKR.OBJECT_HANDLE_INVALID):
        return KeyUnavailable(f"The key material of {ctx.where.key_arn(key.key_id)} is missing from the cluster.")
    return exc


def is_rsa_encryption_key(key: KmsKey) -> bool:
    return key_spec(key).kind == RSA and key.key_usage == "ENCRYPT_DECRYPT"


# --- Sign / Verify -------------------------------------------------------------------------------------


def _mechanism(algorithm: SigningAlgorithm, message_type: str, message: bytes) -> tuple[int, Any, bytes]:
    """(cluster mechanism, its parameters, the data to hand it) for one KMS signing algorithm."""
    digest = message_type == "DIGEST"
    if algorithm.scheme == "PKCS1":
        if digest:
            return int(CKM.RSA_PKCS), None, DIGEST_INFO[algorithm.hash] + message
        return int(PKCS1_MECHANISMS[algorithm.hash]), None, message
    if algorithm.scheme == "PSS":
        params = {"hash": int(HASH_MECHANISMS[algorithm.hash]), "mgf": int(MGF1[algorithm.hash]),
                  "salt_len": algorithm.digest_size}
        return int(CKM.RSA_PKCS_PSS if digest else PSS_MECHANISMS[algorithm.hash]), params, message
    if algorithm.scheme == "EDDSA":
        return int(CKM.EDDSA), None, message
    if algorithm.scheme == "EDDSA_PH":  # the node hashes what it is given once more (SHA-512), as AWS
        return int(CKM.EDDSA), {"ph_flag": True, "context_data": b""}, message
    if algorithm.scheme == "MLDSA":
        return int(CKM.ML_DSA), {"external_mu": True} if message_type == "EXTERNAL_MU" else None, message
    return int(CKM.ECDSA if digest else ECDSA_MECHANISMS[algorithm.hash]), None, message


def _signing_request(ctx: Context) -> tuple[str, bytes, str, str]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    message = p.blob("Message", required=True, max_len=PLAINTEXT_MAX)
    message_type = p.string("MessageType", enum=MESSAGE_TYPES) or "RAW"
    algorithm = p.string("SigningAlgorithm", required=True, enum=SIGNING_ALGORITHM_NAMES)
    return key_id, message or b"", message_type, algorithm or ""


def _check_signing(ctx: Context, key: KmsKey, operation: str, algorithm: str, message_type: str,
                   message: bytes) -> SigningAlgorithm:
    require_usable(ctx, key)
    require_usage(ctx, key, "SIGN_VERIFY", operation)
    spec = key_spec(key)
    if algorithm not in spec.algorithms.get("SIGN_VERIFY", ()) or algorithm not in SIGNING_ALGORITHMS:
        raise incompatible(algorithm, spec)
    chosen = SIGNING_ALGORITHMS[algorithm]
    if message_type == "EXTERNAL_MU" and chosen.scheme != "MLDSA":
        raise Validation(f"MessageType EXTERNAL_MU is valid only with ML_DSA key specs, not {spec.name}.")
    if message_type not in chosen.message_types:
        raise Validation(f"{algorithm} signing algorithm requires MessageType "
                         f"{' or '.join(chosen.message_types)}, not {message_type}.")
    if message_type == "EXTERNAL_MU" and len(message) != chosen.digest_size:
        raise Validation(f"EXTERNAL_MU message is invalid length for algorithm {algorithm}: it must be "
                         f"{chosen.digest_size} bytes.")
    if message_type == "DIGEST" and len(message) != chosen.digest_size:
        raise Validation(f"Digest is invalid length for algorithm {algorithm}.")
    return chosen


@kms_operation("Sign")
async def sign(ctx: Context) -> dict[str, Any]:
    key_id, message, message_type, algorithm = _signing_request(ctx)
    grant_tokens(ctx.params)
    is_dry_run = dry_run(ctx.params)
    ctx.params.check()
    key = await resolve_key(ctx, key_id)
    chosen = _check_signing(ctx, key, "Sign", algorithm, message_type, message)
    if is_dry_run:
        refuse_dry_run()
    mechanism, params, data = _mechanism(chosen, message_type, message)
    try:
        signature = await ctx.backend.cluster.sign(key.current.handle, mechanism, data, params)
    except ClusterError as exc:
        raise _unavailable(ctx, key, exc) from None
    if chosen.scheme == "ECDSA":  # the node signs r || s, AWS answers DER
        signature = signature_to_der(signature)
    return {"KeyId": ctx.where.key_arn(key.key_id), "Signature": b64(signature), "SigningAlgorithm": algorithm}


@kms_operation("Verify")
async def verify(ctx: Context) -> dict[str, Any]:
    key_id, message, message_type, algorithm = _signing_request(ctx)
    signature = ctx.params.blob("Signature", required=True, max_len=SIGNATURE_MAX)
    grant_tokens(ctx.params)
    is_dry_run = dry_run(ctx.params)
    ctx.params.check()
    assert signature is not None
    key = await resolve_key(ctx, key_id)
    chosen = _check_signing(ctx, key, "Verify", algorithm, message_type, message)
    if is_dry_run:
        refuse_dry_run()
    mechanism, params, data = _mechanism(chosen, message_type, message)
    if chosen.scheme == "ECDSA":
        raw = signature_from_der(signature, curve_named(key_spec(key).curve))
        if raw is None:
            raise KmsInvalidSignature("")
        signature = raw
    material = key.current
    assert material.public_handle is not None
    try:
        valid = await ctx.backend.verify(material.public_handle, mechanism, data, signature, params)
    except ClusterError as exc:
        if exc.code in (CKR.DATA_LEN_RANGE, CKR.DATA_INVALID):
            valid = False
        else:
            raise _unavailable(ctx, key, exc) from None
    if not valid:
        raise KmsInvalidSignature("")
    return {"KeyId": ctx.where.key_arn(key.key_id), "SignatureValid": True, "SigningAlgorithm": algorithm}


# --- GetPublicKey ------------------------------------------------------------------------------------------

PQ_PUBLIC_CLASSES: dict[str, Any] = {
    "ML_DSA_44": mldsa.MLDSA44PublicKey, "ML_DSA_65": mldsa.MLDSA65PublicKey, "ML_DSA_87": mldsa.MLDSA87PublicKey,
    "ML_KEM_768": mlkem.MLKEM768PublicKey, "ML_KEM_1024": mlkem.MLKEM1024PublicKey,
}


def pq_public_key(spec: KeySpec, raw: bytes) -> PublicKeyTypes:
    """An ML-DSA or ML-KEM public key of ``spec`` from its raw bytes (CKA_VALUE)."""
    try:
        public: PublicKeyTypes = PQ_PUBLIC_CLASSES[spec.name].from_public_bytes(raw)
    except (KeyError, ValueError):
        raise InvalidKeyUsage(f"The cluster's public key object is not an {spec.name} public key.") from None
    return public



async def public_key_der(ctx: Context, key: KmsKey) -> bytes:
    """DER SubjectPublicKeyInfo of the key, built from the public key object's attributes."""
    material = key.current
    assert material.public_handle is not None
    spec = key_spec(key)
    try:
        public: PublicKeyTypes
        if spec.kind in (ML_DSA, ML_KEM):  # PKCS#11 3.2: the public key object's CKA_VALUE is the raw key
            public = pq_public_key(spec, bytes(await ctx.backend.cluster.get_attribute(material.public_handle,
                                                                                     CKA.VALUE)))
        elif spec.kind == RSA:
            attributes = await ctx.backend.cluster.get_attributes(material.public_handle,
                                                                [CKA.MODULUS, CKA.PUBLIC_EXPONENT])
            public = rsa_encoding.public_key_from_attributes(attributes)
        elif spec.kind == ED25519:
            attributes = await ctx.backend.cluster.get_attributes(material.public_handle, [CKA.EC_PARAMS, CKA.EC_POINT])
            edwards = eddsa_encoding.public_key_from_attributes(attributes)
            if not isinstance(edwards, ed25519.Ed25519PublicKey):
                raise Validation(f"{ctx.where.key_arn(key.key_id)} does not hold an Ed25519 key.")
            public = edwards
        else:
            attributes = await ctx.backend.cluster.get_attributes(material.public_handle, [CKA.EC_PARAMS, CKA.EC_POINT])
            public = ec_encoding.public_key_from_attributes(attributes)
    except ClusterError as exc:
        raise _unavailable(ctx, key, exc) from None
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@kms_operation("GetPublicKey")
async def get_public_key(ctx: Context) -> dict[str, Any]:
    key_id = ctx.params.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    grant_tokens(ctx.params)
    ctx.params.check()
    key = await resolve_key(ctx, key_id)
    require_usable(ctx, key)
    spec = key_spec(key)
    if not spec.asymmetric:
        raise UnsupportedOperation(f"{ctx.where.key_arn(key.key_id)} key spec is {spec.name} which is not valid "
                                   "for GetPublicKey.")
    der = await public_key_der(ctx, key)
    result: dict[str, Any] = {"KeyId": ctx.where.key_arn(key.key_id), "PublicKey": b64(der)}
    if spec.legacy:  # the deprecated member's enum has only the older specs
        result["CustomerMasterKeySpec"] = spec.name
    result.update({"KeySpec": spec.name, "KeyUsage": key.key_usage})
    algorithms = spec.algorithms.get(key.key_usage)
    if algorithms:
        result[ALGORITHM_MEMBERS[key.key_usage]] = list(algorithms)
    return result


# --- RSA Encrypt / Decrypt / ReEncrypt (called from the symmetric handlers) ----------------------------------


def _oaep(algorithm: str) -> dict[str, int]:
    digest = RSA_ENCRYPTION_HASHES[algorithm]
    return {"hash": int(HASH_MECHANISMS[digest]), "mgf": int(MGF1[digest])}


def _refuse_context(context: dict[str, str], member: str = "EncryptionContext") -> None:
    if context:
        raise Validation(f"{member} is not supported with asymmetric KMS keys.")


def rsa_encryption_algorithm(key: KmsKey, algorithm: str | None) -> str:
    """The OAEP algorithm an RSA ENCRYPT_DECRYPT key encrypts with (none given: SYMMETRIC_DEFAULT, refused)."""
    spec = key_spec(key)
    chosen = algorithm or "SYMMETRIC_DEFAULT"
    if chosen not in spec.algorithms["ENCRYPT_DECRYPT"]:
        raise incompatible(chosen, spec)
    return chosen


def _check_rsa_plaintext(key: KmsKey, chosen: str, plaintext: bytes) -> None:
    spec = key_spec(key)
    limit = rsa_max_plaintext(spec.rsa_bits, chosen)
    if len(plaintext) > limit:
        raise Validation(f"Algorithm {chosen} and key spec {spec.name} cannot encrypt data larger than {limit} bytes.")


async def _oaep_encrypt(ctx: Context, key: KmsKey, plaintext: bytes, chosen: str) -> bytes:
    material = key.current
    assert material.public_handle is not None
    try:
        result = await ctx.backend.cluster.encrypt(material.public_handle, CKM.RSA_PKCS_OAEP, plaintext, _oaep(chosen))
        return result["data"]
    except ClusterError as exc:
        raise _unavailable(ctx, key, exc) from None


async def rsa_encrypt(ctx: Context, key: KmsKey, plaintext: bytes, algorithm: str | None,
                      context: dict[str, str], is_dry_run: bool) -> dict[str, Any]:
    """Encrypt under an RSA ENCRYPT_DECRYPT key: raw OAEP output, as long as the modulus."""
    chosen = rsa_encryption_algorithm(key, algorithm)
    _check_rsa_plaintext(key, chosen, plaintext)
    _refuse_context(context)
    if is_dry_run:
        refuse_dry_run()
    data = await _oaep_encrypt(ctx, key, plaintext, chosen)
    return {"CiphertextBlob": b64(data), "KeyId": ctx.where.key_arn(key.key_id), "EncryptionAlgorithm": chosen}


def rsa_re_encrypt_destination(key: KmsKey, algorithm: str | None, context: dict[str, str]) -> str:
    """ReEncrypt to an RSA key, the checks that need no plaintext: the algorithm, no context."""
    chosen = rsa_encryption_algorithm(key, algorithm)
    _refuse_context(context, "DestinationEncryptionContext")
    return chosen


async def rsa_re_encrypt_seal(ctx: Context, key: KmsKey, plaintext: bytes, chosen: str) -> bytes:
    """ReEncrypt to an RSA key: the key's OAEP plaintext limit applies to the decrypted source."""
    _check_rsa_plaintext(key, chosen, plaintext)
    return await _oaep_encrypt(ctx, key, plaintext, chosen)


def looks_symmetric(blob: bytes) -> bool:
    from strongroom.kms import ciphertext

    try:
        ciphertext.parse(blob)
    except Exception:  # noqa: BLE001 - anything that does not parse is not one of our blobs
        return False
    return True


async def rsa_source(ctx: Context, blob: bytes, context: dict[str, str], key_id: str | None,
                     algorithm: str | None, action: str | None = None, operation: str = "Decrypt",
                     context_member: str = "EncryptionContext") -> tuple[KmsKey, str] | None:
    """The checks of decrypting with an RSA key, when the request is for one: (the key, the OAEP algorithm);
    None: the symmetric path handles it.

    Symmetric blobs with the default algorithm never come here (no extra cluster round trip on
    the Encryption SDK's path). AWS needs KeyId and EncryptionAlgorithm for asymmetric ciphertext
    (ReEncrypt: SourceKeyId and SourceEncryptionAlgorithm, with ``action`` kms:ReEncryptFrom)."""
    if (algorithm in (None, "SYMMETRIC_DEFAULT") and looks_symmetric(blob)) or key_id is None:
        return None
    key = await resolve_key(ctx, key_id, action=action)
    spec = key_spec(key)
    chosen = algorithm or "SYMMETRIC_DEFAULT"
    if spec.symmetric:
        if chosen != "SYMMETRIC_DEFAULT":
            require_usable(ctx, key)
            raise incompatible(chosen, spec)
        return None  # not one of our blobs: the symmetric path says InvalidCiphertextException
    require_usable(ctx, key)
    if chosen == "SYMMETRIC_DEFAULT":
        raise IncorrectKey(INCORRECT_KEY_MESSAGE)
    require_usage(ctx, key, "ENCRYPT_DECRYPT", operation)
    if chosen not in spec.algorithms.get("ENCRYPT_DECRYPT", ()):
        raise incompatible(chosen, spec)
    _refuse_context(context, context_member)
    return key, chosen


async def rsa_open(ctx: Context, key: KmsKey, blob: bytes, chosen: str) -> bytes:
    """Decrypt raw OAEP ciphertext with a checked RSA key."""
    try:
        return await ctx.backend.cluster.decrypt(key.current.handle, CKM.RSA_PKCS_OAEP, blob, _oaep(chosen))
    except ClusterError as exc:
        if exc.code in (CKR.ENCRYPTED_DATA_INVALID, CKR.ENCRYPTED_DATA_LEN_RANGE, CKR.DATA_LEN_RANGE):
            raise InvalidCiphertext("") from None
        raise _unavailable(ctx, key, exc) from None


async def rsa_decrypt(ctx: Context, blob: bytes, context: dict[str, str], key_id: str | None,
                      algorithm: str | None, is_dry_run: bool, action: str | None = None,
                      operation: str = "Decrypt", context_member: str = "EncryptionContext"
                      ) -> tuple[KmsKey, bytes, str] | None:
    """Decrypt with an RSA key when the request is for one (:func:`rsa_source`); None: the symmetric path."""
    source = await rsa_source(ctx, blob, context, key_id, algorithm, action, operation, context_member)
    if source is None:
        return None
    key, chosen = source
    if is_dry_run:
        refuse_dry_run()
    return key, await rsa_open(ctx, key, blob, chosen), chosen


# --- GenerateDataKeyPair ------------------------------------------------------------------------------------


def new_key_pair(spec: str) -> Any:
    """A private key of a KeyPairSpec, generated in the gateway (cryptography, OS CSPRNG)."""
    if spec.startswith("RSA_"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(spec[4:]))
    if spec == "ECC_NIST_EDWARDS25519":
        return ed25519.Ed25519PrivateKey.generate()
    if spec == "ML_KEM_768":
        return mlkem.MLKEM768PrivateKey.generate()
    if spec == "ML_KEM_1024":
        return mlkem.MLKEM1024PrivateKey.generate()
    return ec.generate_private_key(curve_named(KEY_SPECS[spec].curve))


def pair_encodings(private: Any) -> tuple[bytes, bytes]:
    """(PKCS#8 DER private key, SubjectPublicKeyInfo DER public key)."""
    pkcs8 = private.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    return pkcs8, spki


async def _data_key_pair(ctx: Context, operation: str, with_plaintext: bool) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    pair_spec = p.string("KeyPairSpec", required=True, enum=DATA_KEY_PAIR_SPECS) or ""
    context = encryption_context(p)
    grant_tokens(p)
    is_dry_run = dry_run(p)
    p.check()
    if with_plaintext:
        refuse_recipient(p)
    key = await resolve_key(ctx, key_id)
    require_usable(ctx, key)
    require_symmetric_encryption(ctx, key, operation, None)
    if key.custom_key_store_id:  # AWS: data key pairs are not generated under keys of custom key stores
        raise UnsupportedOperation(f"{ctx.where.key_arn(key.key_id)} origin is {key.origin} which is not valid "
                                   "for this operation.")
    if pair_spec not in SUPPORTED_DATA_KEY_PAIR_SPECS:
        raise UnsupportedOperation(f"KeyPairSpec {pair_spec} is not supported by this endpoint.")
    if is_dry_run:
        refuse_dry_run()
    private = await asyncio.to_thread(new_key_pair, pair_spec)
    pkcs8, spki = pair_encodings(private)
    blob, material = await seal(ctx, key, pkcs8, context)
    result: dict[str, Any] = {"PrivateKeyCiphertextBlob": b64(blob)}
    if with_plaintext:
        result["PrivateKeyPlaintext"] = b64(pkcs8)
    result.update({"PublicKey": b64(spki), "KeyId": ctx.where.key_arn(key.key_id), "KeyPairSpec": pair_spec,
                   "KeyMaterialId": material.material_id})
    return result


@kms_operation("GenerateDataKeyPair")
async def generate_data_key_pair(ctx: Context) -> dict[str, Any]:
    return await _data_key_pair(ctx, "GenerateDataKeyPair", True)


@kms_operation("GenerateDataKeyPairWithoutPlaintext")
async def generate_data_key_pair_without_plaintext(ctx: Context) -> dict[str, Any]:
    return await _data_key_pair(ctx, "GenerateDataKeyPairWithoutPlaintext", False)


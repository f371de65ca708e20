"""Imported key material: GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial, and the
sweep's part (expired key material and import parameters).

A key made with ``Origin=EXTERNAL`` has no key material and is ``PendingImport``.

* **GetParametersForImport** makes a wrapping key pair in the cluster — RSA_2048/3072/4096,
  owned by the service user, the private key non-extractable and able only to unwrap with
  CKM_RSA_PKCS_OAEP — and answers its public key and an import token (a random 32-byte id behind a
  record ``imports/<id>`` naming the KMS key, the wrapping key and the algorithm), valid for a
  day. Expired parameters are destroyed by the sweep.
* **ImportKeyMaterial** unwraps the material *in the cluster*, so it is never in clear outside a
  node: RSAES_OAEP_SHA_1/256 unwrap it directly; RSA_AES_KEY_WRAP_SHA_1/256 (``OAEP(AES key) ||
  AES-KWP(material)``, RFC 5649) unwrap the ephemeral AES key with OAEP and then the material
  with CKM_AES_KEY_WRAP_PAD. Symmetric material is 32 bytes; HMAC material the key's length up to
  the hash's block; asymmetric material a PKCS#8 private key of the key spec, whose public half
  (the private object's CKA_PUBLIC_KEY_INFO) becomes the public key object. The new objects are
  sensitive, non-extractable and restricted to the key's algorithms, like generated ones.
  Reimported material must be the same: its fingerprint (the SHA-256 of the public key for
  asymmetric keys, the HMAC of a fixed message for HMAC keys, PKCS#11's 24-bit check value for
  AES keys) must match, else IncorrectKeyMaterialException. The KeyMaterialId is the SHA-256 of
  the key id and that fingerprint. ``ExpirationModel`` KEY_MATERIAL_EXPIRES (the default) needs
  ``ValidTo`` (in the future, at most 365 days ahead); the sweep deletes expired material.
* **DeleteImportedKeyMaterial** destroys the material's cluster objects; the key becomes
  ``PendingImport`` (a key pending deletion stays so) until the same material is imported again.

Not implemented: several key materials in one symmetric key (ImportType NEW_KEY_MATERIAL on a key
that already has material, and on-demand rotation of imported keys: UnsupportedOperationException).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.encoding import ec as ec_encoding
from strongroom.encoding import eddsa as eddsa_encoding
from strongroom.encoding import rsa as rsa_encoding
from strongroom.encoding.ec import curve_named
from strongroom.errors import CKR
from strongroom.kms.backend import Backend, ClusterError
from strongroom.kms.context import Context, Services, kms_operation
from strongroom.kms.errors import (
    ExpiredImportToken,
    IncorrectKeyMaterial,
    InvalidCiphertext,
    InvalidImportToken,
    InvalidState,
    KmsError,
    NotFound,
    UnsupportedOperation,
    Validation,
)
from strongroom.kms.keyspecs import ECC, ED25519, HMAC, MAC_ALGORITHMS, ML_DSA, ML_KEM, RSA, KeySpec
from strongroom.kms.model import (
    ENABLED,
    NO_HANDLE,
    PENDING_DELETION,
    PENDING_IMPORT,
    Conflict,
    KmsKey,
    Material,
    delete,
    put,
)
from strongroom.kms.ops.asymmetric import (
    F4,
    HASH_MECHANISMS,
    HMAC_MECHANISMS,
    MGF1,
    PQ_PUBLIC_CLASSES,
    key_spec,
    key_type_of,
    pair_flags,
)
from strongroom.kms.ops.common import CIPHERTEXT_MAX, KEY_ID_MAX, b64, resolve_key

log = logging.getLogger("strongroom.kms")

IMPORTS = "imports/"
TOKEN_PREFIX = b"SRKMSIT1"
TOKEN_ID_BYTES = 32
WRAPPING_ALGORITHMS = ("RSAES_PKCS1_V1_5", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1",
                       "RSA_AES_KEY_WRAP_SHA_256", "SM2PKE")
WRAPPING_KEY_SPECS = ("RSA_2048", "RSA_3072", "RSA_4096", "SM2")
EXPIRATION_MODELS = ("KEY_MATERIAL_EXPIRES", "KEY_MATERIAL_DOES_NOT_EXPIRE")
IMPORT_TYPES = ("NEW_KEY_MATERIAL", "EXISTING_KEY_MATERIAL")
MATERIAL_ID_PATTERN = r"^[a-f0-9]+$"
DESCRIPTION_PATTERN = r"^[a-zA-Z0-9:/_\s.-]+$"
#: How long import parameters last, in the gateway's "days" (deletion.day_seconds, which tests shorten).
PARAMETERS_DAYS = 1
#: How far ahead ValidTo may be, in days.
VALID_TO_MAX_DAYS = 365
#: An HMAC key's material: at least the key spec's length, at most the hash's block size (AWS's range).
HMAC_MAX_BYTES = {"sha224": 64, "sha256": 64, "sha384": 128, "sha512": 128}
CHECK_MESSAGE = b"strongroom KMS imported key material check"
SYMMETRIC_BYTES = 32


def _origin_refused(ctx: Context, key: KmsKey) -> KmsError:
    return UnsupportedOperation(f"{ctx.where.key_arn(key.key_id)} origin is {key.origin} which is not valid for "
                                "this operation.")


async def _external_key(ctx: Context, key_id: str) -> KmsKey:
    """The EXTERNAL key an import operation names (key id or ARN only, as AWS), not pending deletion."""
    key = await resolve_key(ctx, key_id, allow_alias=False)
    if key.origin != "EXTERNAL":
        raise _origin_refused(ctx, key)
    return key


def _refuse_pending_deletion(ctx: Context, key: KmsKey) -> None:
    if key.state == PENDING_DELETION:
        raise InvalidState(f"{ctx.where.key_arn(key.key_id)} is pending deletion.")


def _oaep_params(algorithm: str) -> dict[str, int]:
    digest = "sha1" if algorithm.endswith("SHA_1") else "sha256"
    return {"hash": int(HASH_MECHANISMS[digest]), "mgf": int(MGF1[digest])}


# --- GetParametersForImport ----------------------------------------------------------------------------------


def _check_wrapping(spec: KeySpec, algorithm: str, wrapping_spec: str) -> None:
    if wrapping_spec == "SM2" or algorithm == "SM2PKE":
        raise Validation("SM2 wrapping keys are available in China Regions only.")
    if algorithm == "RSAES_PKCS1_V1_5":
        raise Validation("The RSAES_PKCS1_V1_5 wrapping algorithm is no longer supported; use RSAES_OAEP_SHA_256 "
                         "or RSA_AES_KEY_WRAP_SHA_256.")
    if algorithm.startswith("RSAES_OAEP") and spec.kind == RSA:
        raise Validation(f"To import RSA key material, use an RSA_AES wrapping algorithm, not {algorithm}.")
    if algorithm.startswith("RSAES_OAEP") and spec.kind in (ECC, ED25519, ML_DSA, ML_KEM):
        bits = int(wrapping_spec[4:])
        limit = bits // 8 - 2 * (20 if algorithm.endswith("SHA_1") else 32) - 2
        if limit < _pkcs8_size(spec):
            raise Validation(f"You cannot use the {algorithm} wrapping algorithm with the {wrapping_spec} wrapping "
                             f"key spec to wrap {spec.name} key material; use an RSA_AES wrapping algorithm or a "
                             "longer wrapping key.")


def _pkcs8_size(spec: KeySpec) -> int:
    """The (largest usual) size of a PKCS#8 private key of an asymmetric spec, in bytes."""
    if spec.kind == ECC:
        return {"secp256r1": 138, "secp256k1": 135, "secp384r1": 185, "secp521r1": 241}.get(spec.curve, 241)
    if spec.kind == ED25519:
        return 48
    if spec.kind == ML_DSA:
        return 54
    return 86  # ML-KEM, seed form


@kms_operation("GetParametersForImport")
async def get_parameters_for_import(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    algorithm = p.string("WrappingAlgorithm", required=True, enum=WRAPPING_ALGORITHMS) or ""
    wrapping_spec = p.string("WrappingKeySpec", required=True, enum=WRAPPING_KEY_SPECS) or ""
    p.check()
    key = await _external_key(ctx, key_id)
    _refuse_pending_deletion(ctx, key)
    spec = key_spec(key)
    _check_wrapping(spec, algorithm, wrapping_spec)
    token_id = secrets.token_bytes(TOKEN_ID_BYTES)
    bits = int(wrapping_spec[4:])
    mechanisms = [int(CKM.RSA_PKCS_OAEP)]
    public, private = await ctx.backend.generate_key_pair(
        f"kms-import/{key.key_id}/{token_id.hex()[:16]}", int(CKM.RSA_PKCS_KEY_PAIR_GEN),
        {CKA.KEY_TYPE: int(CKK.RSA), CKA.MODULUS_BITS: bits, CKA.PUBLIC_EXPONENT: F4, CKA.ENCRYPT: False,
         CKA.VERIFY: False, CKA.WRAP: True, CKA.DERIVE: False, CKA.ALLOWED_MECHANISMS: mechanisms},
        {CKA.KEY_TYPE: int(CKK.RSA), CKA.UNWRAP: True, CKA.DECRYPT: False, CKA.SIGN: False, CKA.DERIVE: False,
         CKA.ALLOWED_MECHANISMS: mechanisms})
    try:
        attributes = await ctx.backend.cluster.get_attributes(public, [CKA.MODULUS, CKA.PUBLIC_EXPONENT])
        der = rsa_encoding.public_key_from_attributes(attributes).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        valid_to = time.time() + PARAMETERS_DAYS * ctx.config.deletion.day_seconds
        record = {"key_id": key.key_id, "private_handle": private, "public_handle": public, "algorithm": algorithm,
                  "wrapping_key_spec": wrapping_spec, "valid_to": valid_to, "created": time.time()}
        await ctx.metadata.commit([put(IMPORTS + token_id.hex(), record, 0)])
    except BaseException:
        for handle in (private, public):
            try:
                await ctx.backend.destroy_object(handle)
            except Exception as exc:  # noqa: BLE001 - the original failure is what the client must see
                log.warning("could not destroy the wrapping key object %s: %s", handle, exc)
        raise
    return {"KeyId": ctx.where.key_arn(key.key_id), "ImportToken": b64(TOKEN_PREFIX + token_id),
            "PublicKey": b64(der), "ParametersValidTo": valid_to}


# --- ImportKeyMaterial -----------------------------------------------------------------------------------------


async def _import_record(ctx: Context, key: KmsKey, token: bytes) -> dict[str, Any]:
    if len(token) != len(TOKEN_PREFIX) + TOKEN_ID_BYTES or not token.startswith(TOKEN_PREFIX):
        raise InvalidImportToken("The import token is not valid for this KMS key.")
    record, _ = await ctx.backend.record_get(IMPORTS + token[len(TOKEN_PREFIX):].hex())
    if record is None or record.get("key_id") != key.key_id:
        raise InvalidImportToken("The import token is not valid for this KMS key.")
    if float(record["valid_to"]) <= time.time():
        raise ExpiredImportToken("The import token has expired. Use GetParametersForImport to get a new one.")
    return record


def _expiration(model: str | None, valid_to: float | None) -> tuple[str, float | None]:
    model = model or "KEY_MATERIAL_EXPIRES"
    if model == "KEY_MATERIAL_EXPIRES":
        if valid_to is None:
            raise Validation("A ValidTo date is required when the ExpirationModel is KEY_MATERIAL_EXPIRES.")
        now = time.time()
        if valid_to <= now:
            raise Validation("ValidTo must be a date in the future.")
        if valid_to > now + VALID_TO_MAX_DAYS * 86400:  # a date the caller chose: real days
            raise Validation(f"ValidTo must be at most {VALID_TO_MAX_DAYS} days from now.")
        return model, valid_to
    if valid_to is not None:
        raise Validation("ValidTo is not valid when the ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE.")
    return model, None


def _secret_template(spec: KeySpec, label: bytes) -> dict[int, object]:
    common: dict[int, object] = {CKA.CLASS: int(CKO.SECRET_KEY), CKA.TOKEN: True, CKA.LABEL: label,
                                 CKA.SENSITIVE: True, CKA.EXTRACTABLE: False, CKA.WRAP: False, CKA.UNWRAP: False,
                                 CKA.DERIVE: False}
    if spec.kind == HMAC:
        (algorithm,) = spec.algorithms["GENERATE_VERIFY_MAC"]
        return {**common, CKA.KEY_TYPE: int(CKK.GENERIC_SECRET), CKA.SIGN: True, CKA.VERIFY: True,
                CKA.ENCRYPT: False, CKA.DECRYPT: False,
                CKA.ALLOWED_MECHANISMS: [int(HMAC_MECHANISMS[MAC_ALGORITHMS[algorithm]])]}
    return {**common, CKA.KEY_TYPE: int(CKK.AES), CKA.VALUE_LEN: SYMMETRIC_BYTES, CKA.ENCRYPT: True,
            CKA.DECRYPT: True, CKA.SIGN: False, CKA.VERIFY: False, CKA.ALLOWED_MECHANISMS: [int(CKM.AES_GCM)]}


async def _unwrap(ctx: Context, record: dict[str, Any], wrapped: bytes, template: dict[int, object]) -> int:
    """Unwrap the material in the cluster under the import's wrapping key: the new object's handle."""
    cluster = ctx.backend.cluster
    algorithm, unwrapping = str(record["algorithm"]), int(record["private_handle"])
    oaep = _oaep_params(algorithm)
    try:
        if algorithm.startswith("RSAES_OAEP"):
            return await cluster.unwrap_key(CKM.RSA_PKCS_OAEP, unwrapping, wrapped, template, oaep)
        modulus_bytes = int(str(record["wrapping_key_spec"])[4:]) // 8
        if len(wrapped) <= modulus_bytes:
            raise InvalidCiphertext("")
        ephemeral = await cluster.unwrap_key(CKM.RSA_PKCS_OAEP, unwrapping, wrapped[:modulus_bytes], {
            CKA.CLASS: int(CKO.SECRET_KEY), CKA.KEY_TYPE: int(CKK.AES), CKA.TOKEN: True,
            CKA.LABEL: b"kms-import/ephemeral", CKA.SENSITIVE: True, CKA.EXTRACTABLE: False, CKA.UNWRAP: True,
            CKA.WRAP: False, CKA.ENCRYPT: False, CKA.DECRYPT: False, CKA.SIGN: False, CKA.VERIFY: False,
            CKA.DERIVE: False, CKA.ALLOWED_MECHANISMS: [int(CKM.AES_KEY_WRAP_PAD)]}, oaep)
        try:
            return await cluster.unwrap_key(CKM.AES_KEY_WRAP_PAD, ephemeral, wrapped[modulus_bytes:], template)
        finally:
            await ctx.backend.destroy_object(ephemeral)
    except ClusterError as exc:
        if exc.unreachable:
            raise
        if exc.code in (CKR.TEMPLATE_INCONSISTENT, CKR.KEY_SIZE_RANGE, CKR.ATTRIBUTE_VALUE_INVALID,
                        CKR.KEY_TYPE_INCONSISTENT):
            raise IncorrectKeyMaterial("The key material is not valid for the KMS key's key spec.") from None
        if exc.code in (CKR.OBJECT_HANDLE_INVALID, CKR.KEY_HANDLE_INVALID):
            raise ExpiredImportToken("The import token's wrapping key no longer exists. Use "
                                     "GetParametersForImport to get a new one.") from None
        raise InvalidCiphertext("") from None  # the encrypted key material does not unwrap


def _public_attributes(spec: KeySpec, public: PublicKeyTypes) -> dict[int, object]:
    """The attributes of the public key object made for imported asymmetric material (C_CreateObject)."""
    if isinstance(public, rsa.RSAPublicKey):
        attributes = rsa_encoding.key_attributes(public)
        return {CKA.MODULUS: attributes[CKA.MODULUS], CKA.PUBLIC_EXPONENT: attributes[CKA.PUBLIC_EXPONENT]}
    if isinstance(public, ec.EllipticCurvePublicKey):
        return dict(ec_encoding.key_attributes(public))
    if isinstance(public, ed25519.Ed25519PublicKey):
        return dict(eddsa_encoding.key_attributes(public))
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {CKA.PARAMETER_SET: spec.parameter_set, CKA.VALUE: raw}


def _matches_spec(spec: KeySpec, public: PublicKeyTypes) -> bool:
    if spec.kind == RSA:
        return isinstance(public, rsa.RSAPublicKey) and public.key_size == spec.rsa_bits
    if spec.kind == ECC:
        return isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == curve_named(spec.curve).name
    if spec.kind == ED25519:
        return isinstance(public, ed25519.Ed25519PublicKey)
    if spec.kind in (ML_DSA, ML_KEM):
        return isinstance(public, PQ_PUBLIC_CLASSES.get(spec.name, ()))
    return False


async def _asymmetric(ctx: Context, key: KmsKey, spec: KeySpec, private: int, label: bytes) -> tuple[int, str]:
    """The public key object of imported private key material, and the material's fingerprint."""
    info = bytes(await ctx.backend.cluster.get_attribute(private, CKA.PUBLIC_KEY_INFO))
    try:
        public = serialization.load_der_public_key(info)
    except (ValueError, TypeError):
        raise IncorrectKeyMaterial("The key material is not a private key of the KMS key's key spec.") from None
    if not _matches_spec(spec, public):
        raise IncorrectKeyMaterial(f"The key material is not an {spec.name} private key.")
    flags_public, _ = pair_flags(spec, key.key_usage)
    handle = await ctx.backend.cluster.create_object({
        CKA.CLASS: int(CKO.PUBLIC_KEY), CKA.KEY_TYPE: key_type_of(spec), CKA.TOKEN: True, CKA.LABEL: label,
        **_public_attributes(spec, public), **flags_public})
    return handle, "spki:" + hashlib.sha256(info).hexdigest()


async def _secret_fingerprint(ctx: Context, spec: KeySpec, handle: int) -> str:
    cluster = ctx.backend.cluster
    if spec.kind == HMAC:
        (algorithm,) = spec.algorithms["GENERATE_VERIFY_MAC"]
        digest = MAC_ALGORITHMS[algorithm]
        length = int(await cluster.get_attribute(handle, CKA.VALUE_LEN))
        if not spec.hmac_bytes <= length <= HMAC_MAX_BYTES[digest]:
            raise IncorrectKeyMaterial(f"{spec.name} key material is {spec.hmac_bytes} to {HMAC_MAX_BYTES[digest]} "
                                       f"bytes, not {length}.")
        mac = await cluster.sign(handle, HMAC_MECHANISMS[digest], CHECK_MESSAGE)
        return "mac:" + hashlib.sha256(mac).hexdigest()
    return "kcv:" + bytes(await cluster.get_attribute(handle, CKA.CHECK_VALUE)).hex()


def material_id_of(key_id: str, fingerprint: str) -> str:
    return hashlib.sha256(f"{key_id}\0{fingerprint}".encode()).hexdigest()


@kms_operation("ImportKeyMaterial")
async def import_key_material(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    token = p.blob("ImportToken", required=True, max_len=CIPHERTEXT_MAX) or b""
    wrapped = p.blob("EncryptedKeyMaterial", required=True, max_len=CIPHERTEXT_MAX) or b""
    valid_to = p.timestamp("ValidTo")
    model = p.string("ExpirationModel", enum=EXPIRATION_MODELS)
    import_type = p.string("ImportType", enum=IMPORT_TYPES)
    p.string("KeyMaterialDescription", min_len=0, max_len=256, pattern=DESCRIPTION_PATTERN)
    material_id = p.string("KeyMaterialId", min_len=64, max_len=64, pattern=MATERIAL_ID_PATTERN)
    p.check()
    key = await _external_key(ctx, key_id)
    _refuse_pending_deletion(ctx, key)
    record = await _import_record(ctx, key, token)
    model, valid_to = _expiration(model, valid_to)
    spec = key_spec(key)
    existing = key.material(key.current_material)
    if import_type == "NEW_KEY_MATERIAL" and existing is not None:
        raise UnsupportedOperation("This KMS key already has key material; importing new key material into it "
                                   "(on-demand rotation of imported key material) is not supported by this endpoint.")
    if import_type == "NEW_KEY_MATERIAL" and material_id is not None:
        raise Validation("You cannot specify a KeyMaterialId with ImportType NEW_KEY_MATERIAL.")
    if material_id is not None and (existing is None or existing.material_id != material_id):
        raise IncorrectKeyMaterial(f"Key material {material_id} is not associated with "
                                   f"{ctx.where.key_arn(key.key_id)}.")
    version = existing.version if existing is not None else 1
    label = f"kms/{key.key_id}/{version}".encode()
    created: list[int] = []
    replaced: list[int] = []  # the objects of material imported before (a reimport): destroyed once committed
    try:
        if spec.asymmetric:
            _, flags_private = pair_flags(spec, key.key_usage)
            private = await _unwrap(ctx, record, wrapped, {
                CKA.CLASS: int(CKO.PRIVATE_KEY), CKA.KEY_TYPE: key_type_of(spec), CKA.TOKEN: True, CKA.LABEL: label,
                CKA.SENSITIVE: True, CKA.EXTRACTABLE: False, **flags_private})
            created.append(private)
            public, fingerprint = await _asymmetric(ctx, key, spec, private, label)
            created.append(public)
            material = Material(version, private, "", time.time(), public, fingerprint)
        else:
            secret = await _unwrap(ctx, record, wrapped, _secret_template(spec, label))
            created.append(secret)
            material = Material(version, secret, "", time.time(), None, await _secret_fingerprint(ctx, spec, secret))
        assert material.fingerprint is not None
        if existing is not None and existing.fingerprint != material.fingerprint:
            raise IncorrectKeyMaterial("The key material is not the key material previously imported into "
                                       f"{ctx.where.key_arn(key.key_id)}.")
        material.material_id = material_id_of(key.key_id, material.fingerprint)

        def change(current: KmsKey) -> None:
            _refuse_pending_deletion(ctx, current)
            old = current.material(version)
            if old is not None and old.fingerprint != material.fingerprint:
                raise IncorrectKeyMaterial("The key material is not the key material previously imported into "
                                           f"{ctx.where.key_arn(current.key_id)}.")
            replaced[:] = [] if old is None else old.handles
            current.materials = [m for m in current.materials if m.version != version] + [material]
            current.current_material = version
            current.expiration_model, current.valid_to = model, valid_to
            if current.state == PENDING_IMPORT:
                current.state = ENABLED

        if await ctx.metadata.update_key(key.key_id, change) is None:
            raise NotFound(f"Key '{ctx.where.key_arn(key.key_id)}' does not exist")
    except BaseException:
        await _destroy(ctx.backend, created, key.key_id)
        raise
    await _destroy(ctx.backend, replaced, key.key_id)
    return {"KeyId": ctx.where.key_arn(key.key_id), "KeyMaterialId": material.material_id}


async def _destroy(backend: Backend, handles: list[int], key_id: str) -> None:
    for handle in handles:
        try:
            await backend.destroy_object(handle)
        except Exception as exc:  # noqa: BLE001 - best effort: the outcome the client sees is decided
            log.warning("could not destroy cluster object %s of imported key material of %s: %s", handle, key_id,
                        exc)


# --- DeleteImportedKeyMaterial and expiry -----------------------------------------------------------------------


def _drop_material(key: KmsKey) -> list[int]:
    """Forget the material's cluster objects (kept: its id and fingerprint, for a reimport); their handles."""
    handles: list[int] = []
    for material in key.materials:
        handles += material.handles
        material.handle, material.public_handle = NO_HANDLE, None
    key.valid_to = None
    if key.state != PENDING_DELETION:
        key.state = PENDING_IMPORT
    return handles


@kms_operation("DeleteImportedKeyMaterial")
async def delete_imported_key_material(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    material_id = p.string("KeyMaterialId", min_len=64, max_len=64, pattern=MATERIAL_ID_PATTERN)
    p.check()
    key = await _external_key(ctx, key_id)
    current = key.material(key.current_material)
    if material_id is not None and (current is None or current.material_id != material_id):
        raise NotFound(f"Key material {material_id} of {ctx.where.key_arn(key.key_id)} does not exist.")
    destroyed: list[int] = []

    def change(updated: KmsKey) -> None:
        destroyed[:] = _drop_material(updated)

    if await ctx.metadata.update_key(key.key_id, change) is None:
        raise NotFound(f"Key '{ctx.where.key_arn(key.key_id)}' does not exist")
    await _destroy(ctx.backend, destroyed, key.key_id)
    return {"KeyId": ctx.where.key_arn(key.key_id), "KeyMaterialId": "" if current is None else current.material_id}


def material_expired(key: KmsKey, now: float) -> bool:
    return (key.origin == "EXTERNAL" and key.valid_to is not None and key.valid_to <= now
            and any(m.present for m in key.materials))


async def expire_material(services: Services, key_id: str, now: float) -> None:
    """The sweep: delete imported key material whose ValidTo passed."""
    destroyed: list[int] = []

    def change(key: KmsKey) -> None:
        destroyed[:] = _drop_material(key) if material_expired(key, now) else []

    await services.metadata.update_key(key_id, change)
    await _destroy(services.backend, destroyed, key_id)
    if destroyed:
        log.info("the imported key material of KMS key %s expired and was deleted", key_id)


async def sweep_import_parameters(services: Services, now: float) -> int:
    """The sweep: destroy the wrapping keys of expired import parameters (how many). The record stays one
    more "day", marked, so that its token is answered ExpiredImportTokenException and not as unknown."""
    removed = 0
    cursor = ""
    day = services.config.deletion.day_seconds
    while True:
        records, more = await services.backend.record_list(IMPORTS, IMPORTS + cursor if cursor else "", 1000)
        for name, value, revision in records:
            cursor = name[len(IMPORTS):]
            valid_to = float(value.get("valid_to", 0))
            if valid_to > now:
                continue
            try:
                if valid_to + PARAMETERS_DAYS * day <= now:
                    await services.metadata.commit([delete(name, revision)])
                elif not value.get("destroyed"):
                    await services.metadata.commit([put(name, {**value, "destroyed": True}, revision)])
                else:
                    continue
            except Conflict:
                continue
            if not value.get("destroyed"):
                await _destroy(services.backend, [int(value["private_handle"]), int(value["public_handle"])],
                               str(value.get("key_id")))
                removed += 1
        if not more or not records:
            return removed

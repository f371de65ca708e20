"""Symmetric cryptography: Encrypt, Decrypt, ReEncrypt, GenerateDataKey,
GenerateDataKeyWithoutPlaintext. AES-GCM runs in the cluster under the key's non-extractable
material; the blob format is :mod:`strongroom.kms.ciphertext`. Encrypt, Decrypt and ReEncrypt hand
RSA ENCRYPT_DECRYPT keys (on either side of a ReEncrypt) to :mod:`.asymmetric`."""

from __future__ import annotations

from typing import Any

from strongroom.kms.context import Context, kms_operation
from strongroom.kms.errors import InvalidCiphertext, Validation
from strongroom.kms.keyspecs import DATA_KEY_SPECS, ENCRYPTION_ALGORITHMS
from strongroom.kms.ops import asymmetric
from strongroom.kms.ops.common import (
    CIPHERTEXT_MAX,
    KEY_ID_MAX,
    PLAINTEXT_MAX,
    CheckedBlob,
    b64,
    check_blob,
    decrypt_blob,
    dry_run,
    encryption_context,
    grant_tokens,
    open_blob,
    refuse_dry_run,
    refuse_recipient,
    require_symmetric_encryption,
    require_usable,
    resolve_key,
    seal,
    seal_new_data_key,
)

ALGORITHM = "SYMMETRIC_DEFAULT"
DATA_KEY_MAX = 1024


@kms_operation("Encrypt")
async def encrypt(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    plaintext = p.blob("Plaintext", required=True, max_len=PLAINTEXT_MAX)
    context = encryption_context(p)
    grant_tokens(p)
    algorithm = p.string("EncryptionAlgorithm", enum=ENCRYPTION_ALGORITHMS)
    is_dry_run = dry_run(p)
    p.check()
    key = await resolve_key(ctx, key_id)
    require_usable(ctx, key)
    assert plaintext is not None
    if asymmetric.is_rsa_encryption_key(key):
        return await asymmetric.rsa_encrypt(ctx, key, plaintext, algorithm, context, is_dry_run)
    require_symmetric_encryption(ctx, key, "Encrypt", algorithm)
    if is_dry_run:
        refuse_dry_run()
    blob, _material = await seal(ctx, key, plaintext, context)
    return {"CiphertextBlob": b64(blob), "KeyId": ctx.where.key_arn(key.key_id), "EncryptionAlgorithm": ALGORITHM}


@kms_operation("Decrypt")
async def decrypt(ctx: Context) -> dict[str, Any]:
    p = ctx.params
    blob = p.blob("CiphertextBlob", required=True, max_len=CIPHERTEXT_MAX)
    context = encryption_context(p)
    grant_tokens(p)
    key_id = p.string("KeyId", max_len=KEY_ID_MAX)
    algorithm = p.string("EncryptionAlgorithm", enum=ENCRYPTION_ALGORITHMS)
    is_dry_run = dry_run(p)
    p.check()
    refuse_recipient(p)
    assert blob is not None
    rsa = await asymmetric.rsa_decrypt(ctx, blob, context, key_id, algorithm, is_dry_run)
    if rsa is not None:  # an RSA key's ciphertext (raw OAEP)
        rsa_key, rsa_plaintext, rsa_algorithm = rsa
        return {"KeyId": ctx.where.key_arn(rsa_key.key_id), "Plaintext": b64(rsa_plaintext),
                "EncryptionAlgorithm": rsa_algorithm}
    if algorithm is not None and algorithm != ALGORITHM:
        # An RSA algorithm without a KeyId cannot match a symmetric ciphertext.
        raise InvalidCiphertext("")
    key, plaintext, material = await open_blob(ctx, blob, context, key_id, dry_run=is_dry_run)
    return {"KeyId": ctx.where.key_arn(key.key_id), "Plaintext": b64(plaintext), "EncryptionAlgorithm": ALGORITHM,
            "KeyMaterialId": material.material_id}


@kms_operation("ReEncrypt")
async def re_encrypt(ctx: Context) -> dict[str, Any]:
    """Decrypt under the source key (kms:ReEncryptFrom), encrypt under the destination (kms:ReEncryptTo).

    Either side may be a symmetric key or an RSA ENCRYPT_DECRYPT key (SourceEncryptionAlgorithm /
    DestinationEncryptionAlgorithm RSAES_OAEP_*): RSA ciphertext needs SourceKeyId as Decrypt needs
    KeyId, RSA keys take no encryption context, and the destination's OAEP plaintext limit applies.
    Key material ids are returned for symmetric sides only, as AWS."""
    p = ctx.params
    blob = p.blob("CiphertextBlob", required=True, max_len=CIPHERTEXT_MAX)
    source_context = encryption_context(p, "SourceEncryptionContext")
    source_key_id = p.string("SourceKeyId", max_len=KEY_ID_MAX)
    destination_key_id = p.string("DestinationKeyId", required=True, max_len=KEY_ID_MAX) or ""
    destination_context = encryption_context(p, "DestinationEncryptionContext")
    source_algorithm = p.string("SourceEncryptionAlgorithm", enum=ENCRYPTION_ALGORITHMS)
    destination_algorithm = p.string("DestinationEncryptionAlgorithm", enum=ENCRYPTION_ALGORITHMS)
    grant_tokens(p)
    is_dry_run = dry_run(p)
    p.check()
    assert blob is not None
    # As AWS: the source side is checked first (a request wrong on both sides hears about the source).
    rsa_source = await asymmetric.rsa_source(ctx, blob, source_context, source_key_id, source_algorithm,
                                             action="kms:ReEncryptFrom", operation="ReEncrypt",
                                             context_member="SourceEncryptionContext")
    checked: CheckedBlob | None = None
    if rsa_source is None:
        if source_algorithm is not None and source_algorithm != ALGORITHM:
            # An RSA algorithm without a SourceKeyId cannot match a symmetric ciphertext.
            raise InvalidCiphertext("")
        checked = await check_blob(ctx, blob, source_key_id, action="kms:ReEncryptFrom")
    destination = await resolve_key(ctx, destination_key_id, action="kms:ReEncryptTo")
    require_usable(ctx, destination)
    rsa_destination: str | None = None  # the OAEP algorithm when the destination is an RSA key
    if asymmetric.is_rsa_encryption_key(destination):
        rsa_destination = asymmetric.rsa_re_encrypt_destination(destination, destination_algorithm,
                                                                 destination_context)
    else:
        require_symmetric_encryption(ctx, destination, "ReEncrypt", destination_algorithm)
    if is_dry_run:
        refuse_dry_run()
    result: dict[str, Any] = {}
    if rsa_source is not None:  # an RSA key's ciphertext (raw OAEP)
        source, used_algorithm = rsa_source
        plaintext = await asymmetric.rsa_open(ctx, source, blob, used_algorithm)
    else:
        assert checked is not None
        source, used_algorithm = checked.key, ALGORITHM
        plaintext = await decrypt_blob(ctx, checked, source_context)
        result["SourceKeyMaterialId"] = checked.material.material_id
    if rsa_destination is not None:
        new_blob = await asymmetric.rsa_re_encrypt_seal(ctx, destination, plaintext, rsa_destination)
    else:
        new_blob, material = await seal(ctx, destination, plaintext, destination_context)
        result["DestinationKeyMaterialId"] = material.material_id
    return {
        "CiphertextBlob": b64(new_blob),
        "SourceKeyId": ctx.where.key_arn(source.key_id),
        "KeyId": ctx.where.key_arn(destination.key_id),
        "SourceEncryptionAlgorithm": used_algorithm,
        "DestinationEncryptionAlgorithm": rsa_destination or ALGORITHM,
        **result,
    }


async def _data_key(ctx: Context, operation: str) -> tuple[dict[str, Any], bytes]:
    p = ctx.params
    key_id = p.string("KeyId", required=True, max_len=KEY_ID_MAX) or ""
    context = encryption_context(p)
    number_of_bytes = p.integer("NumberOfBytes", minimum=1, maximum=DATA_KEY_MAX)
    key_spec = p.string("KeySpec", enum=list(DATA_KEY_SPECS))
    grant_tokens(p)
    is_dry_run = dry_run(p)
    p.check()
    if operation == "GenerateDataKey":
        refuse_recipient(p)
    if (number_of_bytes is None) == (key_spec is None):
        raise Validation("Please specify either number of bytes or key spec.")
    length = number_of_bytes if number_of_bytes is not None else DATA_KEY_SPECS[key_spec or "AES_256"]
    key = await resolve_key(ctx, key_id)
    require_usable(ctx, key)
    require_symmetric_encryption(ctx, key, operation, None)
    if is_dry_run:
        refuse_dry_run()
    blob, material, data = await seal_new_data_key(ctx, key, length, context)
    return {"CiphertextBlob": b64(blob), "KeyId": ctx.where.key_arn(key.key_id),
            "KeyMaterialId": material.material_id}, data


@kms_operation("GenerateDataKey")
async def generate_data_key(ctx: Context) -> dict[str, Any]:
    result, data = await _data_key(ctx, "GenerateDataKey")
    result["Plaintext"] = b64(data)
    return result


@kms_operation("GenerateDataKeyWithoutPlaintext")
async def generate_data_key_without_plaintext(ctx: Context) -> dict[str, Any]:
    result, _data = await _data_key(ctx, "GenerateDataKeyWithoutPlaintext")
    return result

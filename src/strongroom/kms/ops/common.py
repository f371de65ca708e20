"""What operation groups share: resolving key identifiers, key-state rules, pagination markers,
the symmetric ciphertext path (encrypt/decrypt in the cluster), common members."""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from strongroom.errors import CKR
from strongroom.kms import ciphertext
from strongroom.kms.arn import parse_identifier
from strongroom.kms.backend import ClusterError
from strongroom.kms.context import Context
from strongroom.kms.errors import (
    INCORRECT_KEY_MESSAGE,
    Disabled,
    DryRunOperation,
    IncorrectKey,
    InvalidCiphertext,
    InvalidKeyUsage,
    InvalidMarker,
    InvalidState,
    KeyUnavailable,
    NotFound,
    UnsupportedOperation,
)
from strongroom.kms.model import DISABLED, PENDING_DELETION, PENDING_IMPORT, KmsKey, Material
from strongroom.kms.validation import Params

KEY_ID_MAX = 2048
PLAINTEXT_MAX = 4096
CIPHERTEXT_MAX = 6144
GRANT_TOKENS_MAX = 10
GRANT_TOKEN_MAX = 8192
#: Canonical encryption context bytes (AAD); AWS limits the context to a few KiB as well.
CONTEXT_MAX_BYTES = 8192
DRY_RUN_MESSAGE = "The request would have succeeded, but the DryRun option is set."
MARKER_PATTERN = r"[\u0020-\u00FF]*"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- keys -----------------------------------------------------------------------------------------


async def resolve_key(ctx: Context, text: str, *, allow_alias: bool = True, action: str | None = None) -> KmsKey:
    """The key a KeyId names (id, ARN, alias name, alias ARN); authorizes the action on it."""
    where = ctx.where
    ref = parse_identifier(text, where, allow_alias=allow_alias)
    if ref.is_alias:
        alias = await ctx.metadata.get_alias(ref.value)
        if alias is None:
            raise NotFound(f"Alias {where.alias_arn(ref.value)} is not found.")
        key_id = alias.target
    else:
        key_id = ref.value
    key = await ctx.metadata.get_key(key_id)
    if key is None:
        raise NotFound(f"Key '{where.key_arn(key_id)}' does not exist")
    await ctx.authorize_key(key, action)
    return key


def require_usable(ctx: Context, key: KmsKey) -> None:
    """Cryptographic operations: Enabled only."""
    arn = ctx.where.key_arn(key.key_id)
    if key.store_unavailable and key.state != PENDING_DELETION:
        raise InvalidState(f"{arn} is unavailable.")  # AWS's message; the reason is in DescribeCustomKeyStores
    if key.state == DISABLED:
        raise Disabled(f"{arn} is disabled.")
    if key.state == PENDING_DELETION:
        raise InvalidState(f"{arn} is pending deletion.")
    if key.state == PENDING_IMPORT:
        raise InvalidState(f"{arn} is pending import.")
    if key.state != "Enabled" or not key.has_material:
        raise InvalidState(f"{arn} is {key.state}.")


def require_not_pending_deletion(ctx: Context, key: KmsKey) -> None:
    if key.state == PENDING_DELETION:
        raise InvalidState(f"{ctx.where.key_arn(key.key_id)} is pending deletion.")


def require_not_pending(ctx: Context, key: KmsKey) -> None:
    """EnableKey / DisableKey: not while the key is pending deletion or pending import (AWS's key state table)."""
    require_not_pending_deletion(ctx, key)
    if key.state == PENDING_IMPORT:
        raise InvalidState(f"{ctx.where.key_arn(key.key_id)} is pending import.")


def require_usage(ctx: Context, key: KmsKey, usage: str, operation: str) -> None:
    if key.key_usage != usage:
        raise InvalidKeyUsage(f"{ctx.where.key_arn(key.key_id)} key usage is {key.key_usage} "
                              f"which is not valid for {operation}.")


def require_symmetric_encryption(ctx: Context, key: KmsKey, operation: str, algorithm: str | None) -> None:
    require_usage(ctx, key, "ENCRYPT_DECRYPT", operation)
    if key.key_spec != "SYMMETRIC_DEFAULT":
        raise InvalidKeyUsage(f"{ctx.where.key_arn(key.key_id)} key spec is {key.key_spec} "
                              f"which is not valid for {operation}.")
    if algorithm is not None and algorithm != "SYMMETRIC_DEFAULT":
        raise InvalidKeyUsage(f"Algorithm {algorithm} is incompatible with key spec {key.key_spec}.")


def dry_run(params: Params) -> bool:
    return bool(params.boolean("DryRun"))


def refuse_dry_run() -> None:
    raise DryRunOperation(DRY_RUN_MESSAGE)


def refuse_recipient(params: Params) -> None:
    if params.body.get("Recipient") is not None:
        raise UnsupportedOperation("Recipient (Nitro Enclaves attestation) is not supported by this endpoint.")


def grant_tokens(params: Params) -> list[str]:
    """Checked for size here; the gateway checks that each is one of ours when it authorizes the key."""
    return params.string_list("GrantTokens", max_items=GRANT_TOKENS_MAX, item_max=GRANT_TOKEN_MAX) or []


def encryption_context(params: Params, member: str = "EncryptionContext") -> dict[str, str]:
    context = params.string_map(member)
    if len(ciphertext.canonical_context(context)) > CONTEXT_MAX_BYTES:
        params.violations.append(f"Value at '{member[:1].lower() + member[1:]}' failed to satisfy constraint: "
                                 f"Member must have total size less than or equal to {CONTEXT_MAX_BYTES} bytes")
    return context


# --- symmetric ciphertexts -------------------------------------------------------------------------------


async def key_backend(ctx: Context, key: KmsKey) -> Any:
    """The cluster session a key's material is used through: the service user's, or for keys of a
    custom key store the store's own (KMSInvalidStateException while it is not connected)."""
    return await ctx.keystores.backend_for(key)


@contextlib.contextmanager
def _sealing(ctx: Context, key: KmsKey) -> Iterator[None]:
    """The cluster's refusals of a seal under ``key`` as AWS answers them."""
    try:
        yield
    except InvalidState:  # the key's custom key store is not connected or lost its cluster
        raise InvalidState(f"{ctx.where.key_arn(key.key_id)} is unavailable.") from None
    except ClusterError as exc:
        if exc.code in (CKR.KEY_HANDLE_INVALID, CKR.OBJECT_HANDLE_INVALID):
            raise KeyUnavailable(f"The key material of {ctx.where.key_arn(key.key_id)} is missing from the "
                                 "cluster.") from None
        raise


async def seal(ctx: Context, key: KmsKey, plaintext: bytes, context: dict[str, str]) -> tuple[bytes, Material]:
    """A ciphertext blob of ``plaintext`` under the key's current material (GCM runs in the cluster)."""
    material = key.current
    iv = ciphertext.new_iv()
    header = ciphertext.header(key.key_id, material.version, iv)
    with _sealing(ctx, key):
        body = await (await key_backend(ctx, key)).gcm_encrypt(material.handle, iv, ciphertext.aad(header, context),
                                                               plaintext)
    return header + body, material


async def seal_new_data_key(ctx: Context, key: KmsKey, length: int, context: dict[str, str]
                            ) -> tuple[bytes, Material, bytes]:
    """(blob, material, data key): ``length`` bytes from the cluster's CSPRNG sealed under the key's current
    material, in one round trip where the key's cluster offers ``kms.data_key.generate``, else two."""
    material = key.current
    iv = ciphertext.new_iv()
    header = ciphertext.header(key.key_id, material.version, iv)
    with _sealing(ctx, key):
        made = await (await key_backend(ctx, key)).gcm_data_key(material.handle, length, iv,
                                                                ciphertext.aad(header, context))
    if made is None:
        data = await ctx.backend.cluster.generate_random(length)
        blob, material = await seal(ctx, key, data, context)
        return blob, material, data
    data, body = made
    return header + body, material, data


@dataclass
class CheckedBlob:
    """A symmetric ciphertext blob whose key, key state, usage, policy and material were checked."""

    key: KmsKey
    material: Material
    parsed: ciphertext.Blob


async def check_blob(ctx: Context, blob: bytes, requested: str | None, action: str | None = None) -> CheckedBlob:
    """Every check Decrypt makes of a blob before decrypting it: the blob's key, ``requested`` naming it,
    key policy, grants and grant tokens, key state and usage, the material version. An unauthorized
    caller gets the same AccessDeniedException with or without DryRun, and never the key's state."""
    parsed = ciphertext.parse(blob)
    key = await ctx.metadata.get_key(parsed.key_id)
    if key is None:
        raise InvalidCiphertext("")  # an altered key id, a foreign blob, or a deleted key
    if requested is not None:
        wanted = await resolve_key(ctx, requested, action=action)
        if wanted.key_id != key.key_id:
            raise IncorrectKey(INCORRECT_KEY_MESSAGE)
    else:
        await ctx.authorize_key(key, action)
    require_usable(ctx, key)
    if key.key_usage != "ENCRYPT_DECRYPT" or key.key_spec != "SYMMETRIC_DEFAULT":
        raise InvalidCiphertext("")
    material = key.material(parsed.material_version)
    if material is None:
        # The record may be a cached one from before a rotation through another gateway.
        fresh = await ctx.metadata.get_key(parsed.key_id, fresh=True)
        material = None if fresh is None else fresh.material(parsed.material_version)
        if material is None:
            raise InvalidCiphertext("")
    if not material.present:  # imported key material deleted or expired
        raise InvalidState(f"{ctx.where.key_arn(key.key_id)} is pending import.")
    return CheckedBlob(key, material, parsed)


async def decrypt_blob(ctx: Context, checked: CheckedBlob, context: dict[str, str]) -> bytes:
    """Decrypt a checked blob in the cluster (the encryption context is part of the AAD)."""
    key, parsed = checked.key, checked.parsed
    try:
        plaintext: bytes = await (await key_backend(ctx, key)).gcm_decrypt(
            checked.material.handle, parsed.iv, ciphertext.aad(parsed.header, context), parsed.body)
    except InvalidState:  # the key's custom key store is not connected or lost its cluster
        raise InvalidState(f"{ctx.where.key_arn(key.key_id)} is unavailable.") from None
    except ClusterError as exc:
        if exc.code in (CKR.ENCRYPTED_DATA_INVALID, CKR.ENCRYPTED_DATA_LEN_RANGE):
            raise InvalidCiphertext("") from None
        raise
    return plaintext


async def open_blob(ctx: Context, blob: bytes, context: dict[str, str], requested: str | None,
                    action: str | None = None, *, dry_run: bool = False) -> tuple[KmsKey, bytes, Material]:
    """Decrypt a blob: (its key, the plaintext, the material version used). ``dry_run``: every check
    (:func:`check_blob`), then DryRunOperationException instead of the decryption."""
    checked = await check_blob(ctx, blob, requested, action)
    if dry_run:
        refuse_dry_run()
    return checked.key, await decrypt_blob(ctx, checked, context), checked.material


# --- pagination ---------------------------------------------------------------------------------------------


def read_limit(params: Params, default: int, service_max: int) -> int:
    """``Limit`` (the model allows 1-1000); the service returns at most ``service_max`` per page."""
    limit = params.integer("Limit", minimum=1, maximum=1000)
    return default if limit is None else min(limit, service_max)


def read_marker(params: Params) -> str | None:
    return params.string("Marker", min_len=1, max_len=1024, pattern=MARKER_PATTERN)


def make_marker(kind: str, position: str) -> str:
    return base64.urlsafe_b64encode(f"{kind}\0{position}".encode()).decode()


def parse_marker(marker: str | None, kind: str) -> str:
    """The position a marker we issued names; anything else is InvalidMarkerException."""
    if marker is None:
        return ""
    try:
        decoded = base64.urlsafe_b64decode(marker.encode()).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidMarker("Invalid marker") from None
    found, sep, position = decoded.partition("\0")
    if not sep or found != kind or not position or len(position) > 512:
        raise InvalidMarker("Invalid marker")
    return position


def page(items: list[dict[str, Any]], member: str, more: bool, kind: str, position: str) -> dict[str, Any]:
    result: dict[str, Any] = {member: items, "Truncated": more}
    if more:
        result["NextMarker"] = make_marker(kind, position)
    return result

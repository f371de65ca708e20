"""Shared secrets: key encapsulation (PKCS#11 3.2) and key agreement (crypto users only).

Two faces, one set of checks (the key's owner or a user it is shared with, its usage flag —
CKA_ENCAPSULATE, CKA_DECAPSULATE, CKA_DERIVE — CKA_ALLOWED_MECHANISMS, CKA_ALWAYS_AUTHENTICATE):

* ``key.encapsulate`` / ``key.decapsulate``: C_EncapsulateKey / C_DecapsulateKey. The shared
  secret becomes a secret key object made from the caller's template (``CKA_KEY_TYPE`` CKK_AES,
  CKK_GENERIC_SECRET, a typed HMAC key or CKK_HKDF; ``CKA_VALUE_LEN`` at most the secret's length,
  default all of it: the key is the secret's leading bytes), owned by the caller and audited like C_DeriveKey; its
  CKA_ALWAYS_SENSITIVE / CKA_NEVER_EXTRACTABLE follow the KEM key as a derived key's follow its
  base. ``key.encapsulate`` answers ``{"ciphertext", "handle"}``, ``key.decapsulate``
  ``{"handle"}``.
* ``crypto.encapsulate`` / ``crypto.decapsulate`` / ``crypto.derive_secret``: the shared secret
  itself, as data (what AWS KMS's Encapsulate, Decapsulate and DeriveSharedSecret return to
  their caller). This is what a PKCS#11 caller gets by making the key with CKA_SENSITIVE false
  and CKA_EXTRACTABLE true and reading its CKA_VALUE, in one round trip and without a stored
  object; counted like the other crypto.* calls, not audited one by one.
  ``crypto.derive_secret`` runs CKM_ECDH1_DERIVE with CKD_NULL (``params`` = ``{"kdf": 0,
  "public_data": <the peer's EC point>}``) and answers the raw shared secret Z (the x-coordinate,
  as long as the field).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strongroom.auth.users import Role
from strongroom.constants import CKA, CKD, CKK, CKO
from strongroom.dispatch import quorum as q
from strongroom.dispatch.auditing import audited, witness
from strongroom.dispatch.call import Call
from strongroom.dispatch.ops.key import usable_key
from strongroom.dispatch.ops.object import p11_session_of
from strongroom.dispatch.table import operation
from strongroom.errors import ArgumentsBad, KeySizeRange, MechanismParamInvalid, TemplateIncomplete
from strongroom.mechanisms.base import Key, Mechanism, lookup
from strongroom.objects import builder
from strongroom.objects.attributes import coerce_template
from strongroom.objects.builder import SECRET_LENGTHS
from strongroom.objects.model import StoredObject
from strongroom.objects.usage import refuse_without_context

CRYPTO_USER = (Role.CRYPTO_USER.value,)


def _mechanism(mechanism_id: int, raw_params: Any) -> tuple[Mechanism, Any]:
    mechanism = lookup(mechanism_id)
    return mechanism, mechanism.parse_params(raw_params)


async def _key(call: Call, handle: int, purpose: str, mechanism: int) -> tuple[StoredObject, Key]:
    obj, key = await usable_key(call, handle, purpose, mechanism)
    refuse_without_context(obj, purpose)
    call.services.health.key_use[obj.handle] += 1
    return obj, key


def _secret_template(raw: list[Any]) -> dict[int, Any]:
    template = coerce_template(raw)
    builder.class_must_be(template, CKO.SECRET_KEY)
    if template.get(CKA.KEY_TYPE) not in SECRET_LENGTHS:
        raise TemplateIncomplete("the shared secret's key needs CKA_KEY_TYPE: CKK_AES, CKK_GENERIC_SECRET, an HMAC key "
                                 "type or CKK_HKDF")
    return template


def _key_value(template: dict[int, Any], secret: bytes) -> bytes:
    """The new key's value: the secret's leading CKA_VALUE_LEN bytes (all of them when not given)."""
    key_type = template[CKA.KEY_TYPE]
    length = template.get(CKA.VALUE_LEN, len(secret))
    if not 1 <= length <= len(secret) or length not in SECRET_LENGTHS[key_type]:
        raise KeySizeRange(f"a key from a {len(secret)}-byte shared secret cannot be {length} bytes long "
                           f"for this key type")
    return secret[:length]


def _maker(call: Call) -> builder.Maker:
    return builder.Maker(call.login.username, call.login.user_id)


async def _store_secret(call: Call, event: str, details: dict[str, Any], template: dict[int, Any],
                        secret: bytes, base: StoredObject, session: int | None) -> StoredObject:
    obj = builder.derived_secret(_maker(call), template, CKK(template[CKA.KEY_TYPE]), _key_value(template, secret),
                                 base)
    obj.p11_session = p11_session_of(call, session, template)
    details.update(label=obj.label(), token=obj.token)
    (stored,) = await call.services.keyring.require_objects().add([obj], witness(call, event, details))
    return stored


# --- PKCS#11 3.2: the secret becomes a key object ------------------------------------------------------


@dataclass
class EncapsulateKeyArgs:
    mechanism: int
    public_key: int
    template: list[Any]
    params: Any = None
    session: int | None = None


@operation("key.encapsulate", args=EncapsulateKeyArgs, roles=CRYPTO_USER, quorum=q.makes_keys("template"))
async def encapsulate_key(call: Call, args: EncapsulateKeyArgs) -> dict[str, Any]:
    """C_EncapsulateKey: a fresh secret under the public key; its ciphertext, and a key object holding it."""
    mechanism, params = _mechanism(args.mechanism, args.params)
    template = _secret_template(args.template)
    details: dict[str, Any] = {"mechanism": mechanism.ckm.name, "public_key": args.public_key}
    async with audited(call, "key.encapsulate", details):
        base, key = await _key(call, args.public_key, "encapsulate", args.mechanism)
        ciphertext, secret = mechanism.encapsulate(key, params)
        obj = await _store_secret(call, "key.encapsulate", details, template, secret, base, args.session)
    return {"ciphertext": ciphertext, "handle": obj.handle}


@dataclass
class DecapsulateKeyArgs:
    mechanism: int
    private_key: int
    ciphertext: bytes
    template: list[Any]
    params: Any = None
    session: int | None = None


@operation("key.decapsulate", args=DecapsulateKeyArgs, roles=CRYPTO_USER,
           quorum=q.uses("decapsulate", "private_key", templates=("template",)))
async def decapsulate_key(call: Call, args: DecapsulateKeyArgs) -> dict[str, Any]:
    """C_DecapsulateKey: the secret a ciphertext encapsulates, as a key object."""
    mechanism, params = _mechanism(args.mechanism, args.params)
    template = _secret_template(args.template)
    details: dict[str, Any] = {"mechanism": mechanism.ckm.name, "private_key": args.private_key}
    async with audited(call, "key.decapsulate", details):
        base, key = await _key(call, args.private_key, "decapsulate", args.mechanism)
        secret = mechanism.decapsulate(key, params, args.ciphertext)
        obj = await _store_secret(call, "key.decapsulate", details, template, secret, base, args.session)
    return {"handle": obj.handle}


# --- the secret as data (the KMS gateway's Encapsulate, Decapsulate, DeriveSharedSecret) ---------------


@dataclass
class EncapsulateArgs:
    key: int
    mechanism: int
    params: Any = None


@operation("crypto.encapsulate", args=EncapsulateArgs, roles=CRYPTO_USER)
async def encapsulate(call: Call, args: EncapsulateArgs) -> dict[str, Any]:
    mechanism, params = _mechanism(args.mechanism, args.params)
    _, key = await _key(call, args.key, "encapsulate", args.mechanism)
    ciphertext, secret = mechanism.encapsulate(key, params)
    return {"ciphertext": ciphertext, "secret": secret}


@dataclass
class DecapsulateArgs:
    key: int
    mechanism: int
    ciphertext: bytes
    params: Any = None


@operation("crypto.decapsulate", args=DecapsulateArgs, roles=CRYPTO_USER, quorum=q.uses("decapsulate"))
async def decapsulate(call: Call, args: DecapsulateArgs) -> dict[str, Any]:
    mechanism, params = _mechanism(args.mechanism, args.params)
    _, key = await _key(call, args.key, "decapsulate", args.mechanism)
    return {"secret": mechanism.decapsulate(key, params, args.ciphertext)}


@dataclass
class DeriveSecretArgs:
    key: int
    mechanism: int
    params: Any = None


#: The raw secret is the whole x-coordinate; a derive asks for a length, so ask for the longest.
_MAX_RAW_SECRET = 66  # P-521


@operation("crypto.derive_secret", args=DeriveSecretArgs, roles=CRYPTO_USER, quorum=q.uses("derive"))
async def derive_secret(call: Call, args: DeriveSecretArgs) -> dict[str, Any]:
    mechanism, params = _mechanism(args.mechanism, args.params)
    kdf = getattr(params, "kdf", None)
    if kdf is not CKD.NULL:
        raise MechanismParamInvalid("crypto.derive_secret answers the raw shared secret: kdf must be CKD_NULL")
    _, key = await _key(call, args.key, "derive", args.mechanism)
    length = (key.size_bits + 7) // 8
    if not 1 <= length <= _MAX_RAW_SECRET:
        raise ArgumentsBad("crypto.derive_secret needs an elliptic-curve key")
    return {"secret": mechanism.derive(key, params, length)}

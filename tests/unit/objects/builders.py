"""Objects made the way the node makes them (templates.build with what the node computes), in memory."""

from __future__ import annotations

from typing import Any

from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.objects import templates
from strongroom.objects.access import Actor
from strongroom.objects.attributes import Op
from strongroom.objects.model import StoredObject

OWNER = Actor("alice", "alice-1", False)
SHARED = Actor("bob", "bob-1", False)
STRANGER = Actor("carol", "carol-1", False)
ADMIN = Actor("admin", "admin-1", True)

P256 = bytes.fromhex("06082a8648ce3d030107")
ED25519 = bytes.fromhex("06032b6570")
#: What the node computes for each (class, key type) it makes, beside the key type.
COMPUTED: dict[tuple[CKO, CKK], dict[int, Any]] = {
    (CKO.SECRET_KEY, CKK.AES): {CKA.VALUE_LEN: 32, CKA.CHECK_VALUE: b"\x01\x02\x03"},
    (CKO.SECRET_KEY, CKK.GENERIC_SECRET): {CKA.VALUE_LEN: 32},
    (CKO.PUBLIC_KEY, CKK.RSA): {CKA.MODULUS: b"\xc5" * 256, CKA.PUBLIC_EXPONENT: b"\x01\x00\x01",
                                CKA.MODULUS_BITS: 2048},
    (CKO.PRIVATE_KEY, CKK.RSA): {CKA.MODULUS: b"\xc5" * 256, CKA.PUBLIC_EXPONENT: b"\x01\x00\x01"},
    (CKO.PUBLIC_KEY, CKK.EC): {CKA.EC_PARAMS: P256, CKA.EC_POINT: b"\x04\x41\x04" + b"\x07" * 64},
    (CKO.PRIVATE_KEY, CKK.EC): {CKA.EC_PARAMS: P256},
    (CKO.PUBLIC_KEY, CKK.EC_EDWARDS): {CKA.EC_PARAMS: ED25519, CKA.EC_POINT: b"\x04\x20" + b"\x09" * 32},
    (CKO.PRIVATE_KEY, CKK.EC_EDWARDS): {CKA.EC_PARAMS: ED25519},
}
GEN_MECHANISM = {CKK.AES: CKM.AES_KEY_GEN, CKK.GENERIC_SECRET: CKM.GENERIC_SECRET_KEY_GEN,
                 CKK.RSA: CKM.RSA_PKCS_KEY_PAIR_GEN, CKK.EC: CKM.EC_KEY_PAIR_GEN,
                 CKK.EC_EDWARDS: CKM.EC_EDWARDS_KEY_PAIR_GEN}
#: A key type per key class for tests that need any key of that class.
TYPICAL = {CKO.SECRET_KEY: CKK.AES, CKO.PUBLIC_KEY: CKK.RSA, CKO.PRIVATE_KEY: CKK.RSA}


def computed_for(object_class: CKO, key_type: CKK | None = None) -> dict[int, Any]:
    if object_class not in TYPICAL:
        return {}
    key_type = key_type if key_type is not None else TYPICAL[object_class]
    return {CKA.KEY_TYPE: key_type, **COMPUTED[(object_class, key_type)]}


def key_attributes(object_class: CKO, supplied: dict[int, Any] | None = None, *, key_type: CKK | None = None,
                   op: Op = Op.GENERATE) -> dict[int, Any]:
    """The attributes of a key the node generated (or unwrapped, derived: ``op``) from ``supplied``."""
    key_type = key_type if key_type is not None else TYPICAL[object_class]
    mechanism = GEN_MECHANISM[key_type] if op is Op.GENERATE else None
    return templates.build(op, object_class, dict(supplied or {}), computed_for(object_class, key_type),
                           key_gen_mechanism=mechanism)


#: What C_CreateObject of a certificate must be given (the dispatcher also checks CKA_VALUE is DER).
CERTIFICATE_MUST = {CKA.CERTIFICATE_TYPE: 0, CKA.VALUE: b"0\x00"}


def make_object(object_class: CKO, supplied: dict[int, Any] | None = None, *, handle: int = 7,
                key_type: CKK | None = None, owner: Actor = OWNER, token: bool | None = True,
                **fields: Any) -> StoredObject:
    """An object of any class owned by ``owner`` and shared with SHARED (a token object unless ``token`` says
    otherwise; None: not given); keys generated, data and certificates created."""
    fields.setdefault("shared", frozenset({SHARED.name}))
    fields.setdefault("share_ids", {SHARED.name: SHARED.user_id})
    supplied = {**({} if token is None else {CKA.TOKEN: token}), **(supplied or {})}
    if object_class in TYPICAL:
        attributes = key_attributes(object_class, supplied, key_type=key_type)
    else:
        extra = CERTIFICATE_MUST if object_class is CKO.CERTIFICATE else {}
        attributes = templates.build(Op.CREATE, object_class, {**extra, **supplied}, {})
    material = b"k" * 32 if object_class is CKO.SECRET_KEY else None
    return StoredObject(handle, owner.name, attributes, material=material, owner_id=owner.user_id, **fields)

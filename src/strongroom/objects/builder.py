"""The key objects a crypto user makes: C_GenerateKey, C_GenerateKeyPair, C_DeriveKey and C_UnwrapKey.

Each new key is the caller's template, checked and completed by the rules of
:mod:`strongroom.objects.templates`, plus the values the key itself fixes (its type, length,
check value, public parts), owned by its maker. What differs by how the key came to be is here
too: a derived key keeps CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE only if its base key
had them (PKCS#11 v2.40 §4.9), and an unwrapped key must be a valid key of the class and type
its template names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from strongroom.constants import CKA, CKK, CKO
from strongroom.errors import (
    AttributeValueInvalid,
    KeySizeRange,
    TemplateIncomplete,
    TemplateInconsistent,
    WrappedKeyInvalid,
)
from strongroom.mechanisms.base import GeneratedPair, GeneratedSecret
from strongroom.objects import templates
from strongroom.objects.attributes import Op
from strongroom.objects.keys import (
    MATERIAL_ATTRIBUTES,
    asymmetric_attributes,
    check_value,
    load_private,
    private_from_template,
    private_to_der,
)
from strongroom.objects.model import StoredObject

#: Secret key lengths in bytes, by key type: AES, and the keys of HMAC and HKDF (generic secrets, the typed
#: HMAC keys of PKCS#11 v2.40 and 3.0, CKK_HKDF), 1 to 512 bytes.
_ANY_LENGTH = tuple(range(1, 513))
SECRET_LENGTHS = {CKK.AES: (16, 24, 32)} | {key_type: _ANY_LENGTH for key_type in (
    CKK.GENERIC_SECRET, CKK.SHA_1_HMAC, CKK.SHA224_HMAC, CKK.SHA256_HMAC, CKK.SHA384_HMAC, CKK.SHA512_HMAC,
    CKK.SHA3_224_HMAC, CKK.SHA3_256_HMAC, CKK.SHA3_384_HMAC, CKK.SHA3_512_HMAC, CKK.HKDF)}
#: ... and those of the legacy-algorithms policy (two- and three-key Triple-DES; parity bits included).
LEGACY_SECRET_LENGTHS = {CKK.DES2: (16,), CKK.DES3: (24,)}


def secret_lengths(legacy: bool) -> dict[CKK, tuple[int, ...]]:
    return SECRET_LENGTHS | LEGACY_SECRET_LENGTHS if legacy else SECRET_LENGTHS


@dataclass(frozen=True, slots=True)
class Maker:
    """Who makes a key: it owns it, by its account (``User.uid``) and not only its name."""

    username: str
    user_id: str | None

    def new(self, attributes: dict[int, Any], material: bytes | None = None,
            p11_session: int | None = None) -> StoredObject:
        return StoredObject(0, self.username, attributes, material=material, owner_id=self.user_id,
                            p11_session=p11_session)


def class_must_be(template: dict[int, Any], expected: CKO) -> None:
    """A template that names a class must name the one this call makes."""
    if CKA.CLASS in template and template[CKA.CLASS] != expected:
        raise TemplateInconsistent(f"this call makes a {expected.name} object")


def secret_attributes(key_type: CKK, value: bytes) -> dict[int, Any]:
    """What a secret key's value fixes: its type, length and (where the type has one) check value."""
    computed: dict[int, Any] = {CKA.KEY_TYPE: key_type, CKA.VALUE_LEN: len(value)}
    check = check_value(key_type, value)
    if check is not None:
        computed[CKA.CHECK_VALUE] = check
    return computed


def generated_secret(maker: Maker, template: dict[int, Any], generated: GeneratedSecret, mechanism: int,
                     p11_session: int | None) -> StoredObject:
    computed = secret_attributes(generated.key_type, generated.value) | generated.attributes
    attributes = templates.build(Op.GENERATE, CKO.SECRET_KEY, template, computed, key_gen_mechanism=mechanism)
    return maker.new(attributes, generated.value, p11_session)


def generated_pair(maker: Maker, public_template: dict[int, Any], private_template: dict[int, Any],
                   pair: GeneratedPair, mechanism: int, public_session: int | None,
                   private_session: int | None) -> tuple[StoredObject, StoredObject]:
    key_type = {CKA.KEY_TYPE: pair.key_type}
    public_attributes = templates.build(Op.GENERATE, CKO.PUBLIC_KEY, public_template,
                                        key_type | pair.public_attributes, key_gen_mechanism=mechanism)
    private_attributes = templates.build(Op.GENERATE, CKO.PRIVATE_KEY, private_template,
                                         key_type | pair.private_attributes, key_gen_mechanism=mechanism)
    public = maker.new(public_attributes, None, public_session)
    private = maker.new(private_attributes, private_to_der(pair.private), private_session)
    return public, private


def derived_type(template: dict[int, Any], legacy: bool = False) -> CKK:
    """The secret key type a derive template asks for."""
    key_type = template.get(CKA.KEY_TYPE)
    lengths = secret_lengths(legacy)
    if key_type not in lengths:
        raise TemplateIncomplete("derive needs CKA_KEY_TYPE: CKK_AES, CKK_GENERIC_SECRET, an HMAC key type or "
                                "CKK_HKDF")
    return CKK(key_type)


def derived_length(template: dict[int, Any], natural: int | None = None, legacy: bool = False) -> tuple[CKK, int]:
    """The type and length (bytes) a derive template asks for, checked before anything is derived.

    Without CKA_VALUE_LEN the key is as long as what the mechanism derives by nature (``natural``: the
    shared secret of ECDH without a KDF), as Java's SunPKCS11 key agreement expects; a fixed-length key
    type (Triple-DES) takes its one length."""
    key_type = derived_type(template, legacy)
    lengths = secret_lengths(legacy)[key_type]
    length = template.get(CKA.VALUE_LEN)
    if length is None:
        length = lengths[0] if len(lengths) == 1 else natural
    if length is None:
        raise TemplateIncomplete("derive needs CKA_VALUE_LEN")
    if length not in lengths:
        raise KeySizeRange(f"a {key_type.name} key cannot be {length} bytes long")
    return key_type, length


def derived_secret(maker: Maker, template: dict[int, Any], key_type: CKK, value: bytes,
                   base: StoredObject) -> StoredObject:
    attributes = templates.build(Op.DERIVE, CKO.SECRET_KEY, template, secret_attributes(key_type, value))
    # PKCS#11: a derived key keeps these only if the base key had them.
    attributes[CKA.ALWAYS_SENSITIVE] = base.flag(CKA.ALWAYS_SENSITIVE) and attributes[CKA.SENSITIVE]
    attributes[CKA.NEVER_EXTRACTABLE] = base.flag(CKA.NEVER_EXTRACTABLE) and not attributes[CKA.EXTRACTABLE]
    return maker.new(attributes, value)


#: The largest data object C_DeriveKey makes (CKM_HKDF_DATA: RFC 5869 allows 255 × HashLen, 16,320 bytes).
MAX_DERIVED_DATA = 255 * 64


def derived_data_length(template: dict[int, Any], natural: int | None) -> tuple[int, dict[int, Any]]:
    """CKM_HKDF_DATA: the length the template asks for (CKA_VALUE_LEN, else the mechanism's natural one) and
    the template without it (a data object has no CKA_VALUE_LEN)."""
    rest = {k: v for k, v in template.items() if k != CKA.VALUE_LEN}
    length = template.get(CKA.VALUE_LEN, natural)
    if length is None:
        raise TemplateIncomplete("derive needs CKA_VALUE_LEN")
    if not isinstance(length, int) or not 1 <= length <= MAX_DERIVED_DATA:
        raise KeySizeRange(f"a derived data object is 1 to {MAX_DERIVED_DATA} bytes, not {length}")
    return length, rest


def derived_data(maker: Maker, template: dict[int, Any], value: bytes) -> StoredObject:
    """A data object whose CKA_VALUE a derivation made (readable, as any data object's)."""
    attributes = templates.build(Op.DERIVE, CKO.DATA, template, {CKA.VALUE: value})
    return maker.new(attributes)


def check_unwrap_template(template: dict[int, Any]) -> None:
    """An unwrap template names what the wrapped bytes are, checked before they are unwrapped."""
    if template.get(CKA.CLASS) not in (CKO.SECRET_KEY, CKO.PRIVATE_KEY) or CKA.KEY_TYPE not in template:
        raise TemplateIncomplete("unwrap needs CKA_CLASS (secret or private key) and CKA_KEY_TYPE")


def imported_key(maker: Maker, template: dict[int, Any], p11_session: int | None,
                 legacy: bool = False) -> StoredObject:
    """C_CreateObject of a secret or private key: its value (or an RSA key's components) in clear in the
    template. The values become the key's material and are never stored among its attributes; the key is
    not CKA_LOCAL, was never CKA_ALWAYS_SENSITIVE nor CKA_NEVER_EXTRACTABLE (builder rules of Op.CREATE)."""
    object_class = CKO(template[CKA.CLASS])
    raw_type = template.get(CKA.KEY_TYPE)
    if raw_type is None:
        raise TemplateIncomplete("a key needs CKA_KEY_TYPE")
    try:
        key_type = CKK(raw_type)
    except ValueError:
        raise TemplateInconsistent(f"key type {raw_type:#x} is not supported") from None
    supplied = {k: v for k, v in template.items() if k not in MATERIAL_ATTRIBUTES}
    if object_class is CKO.SECRET_KEY:
        lengths = secret_lengths(legacy)
        if key_type not in lengths:
            raise TemplateInconsistent(f"secret keys of type {key_type.name} are not supported")
        value = template.get(CKA.VALUE)
        if not isinstance(value, bytes) or not value:
            raise TemplateIncomplete("a secret key needs CKA_VALUE")
        if len(value) not in lengths[key_type]:
            raise AttributeValueInvalid(f"CKA_VALUE is not a valid {key_type.name} key ({len(value)} bytes)")
        attributes = templates.build(Op.CREATE, object_class, supplied, secret_attributes(key_type, value))
        return maker.new(attributes, bytes(value), p11_session)
    templates.check_key_type_attributes(key_type, template)  # before the values are read as a key
    private = private_from_template(key_type, template)
    actual_type, _public, private_attributes = asymmetric_attributes(private)
    if actual_type is not key_type:
        raise TemplateInconsistent(f"the values make a {actual_type.name} key, the template says {key_type.name}")
    computed = {CKA.KEY_TYPE: key_type} | private_attributes
    # The caller's CKA_EC_PARAMS encoding (an OID or a curve name) is the one kept, as for generated keys.
    if CKA.EC_PARAMS in supplied and CKA.EC_PARAMS in computed:
        computed[CKA.EC_PARAMS] = supplied[CKA.EC_PARAMS]
    attributes = templates.build(Op.CREATE, object_class, supplied, computed)
    return maker.new(attributes, private_to_der(private), p11_session)


def unwrapped_key(maker: Maker, template: dict[int, Any], key_bytes: bytes, legacy: bool = False) -> StoredObject:
    """The key ``key_bytes`` hold, if they are a valid key of the class and type ``template`` names."""
    object_class = CKO(template[CKA.CLASS])
    key_type = CKK(template[CKA.KEY_TYPE])
    if object_class is CKO.SECRET_KEY:
        lengths = secret_lengths(legacy)
        if key_type not in lengths:
            raise TemplateInconsistent(f"secret keys of type {key_type.name} are not supported")
        if len(key_bytes) not in lengths[key_type]:
            raise WrappedKeyInvalid(f"the unwrapped value is not a valid {key_type.name} key ({len(key_bytes)} bytes)")
        computed = secret_attributes(key_type, key_bytes)
        material = key_bytes
    else:
        private = load_private(key_bytes)
        actual_type, _public, private_attributes = asymmetric_attributes(private)
        if actual_type is not key_type:
            raise WrappedKeyInvalid(f"the wrapped key is {actual_type.name}, the template says {key_type.name}")
        computed = {CKA.KEY_TYPE: key_type} | private_attributes
        material = private_to_der(private)
    attributes = templates.build(Op.UNWRAP, object_class, template, computed)
    return maker.new(attributes, material)

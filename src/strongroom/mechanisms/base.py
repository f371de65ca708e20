"""The mechanism layer: pure cryptography behind one registry, all primitives from pyca/cryptography.

A mechanism module (``rsa.py``, ``ec.py``, ``aes.py`` …) defines :class:`Mechanism`
subclasses and registers one instance per ``CKM_*`` with :func:`register`. The object
layer above resolves keys, checks usage flags and ownership, and hands a mechanism a
:class:`Key` plus the caller's parameters; the mechanism only checks what belongs to
the mechanism (key type and size, parameter layout, data lengths) and computes.

Parameters travel as msgpack values and arrive here as ``params`` (None, bytes or a
map with the field names listed on each mechanism, mirroring the PKCS#11 structs):

===================  =====================================================================
mechanism            params
===================  =====================================================================
AES_CBC(_PAD)        ``bytes`` IV (16 bytes)
AES_CTR              ``{"counter_bits": int, "cb": bytes(16)}``
AES_GCM              ``{"iv": bytes|None, "aad": bytes, "tag_bits": int}``; iv None/empty: the
                     node generates 12 bytes and reports them in :attr:`CipherOperation.iv`
RSA_PKCS_PSS (+hash) ``{"hash": CKM, "mgf": CKG, "salt_len": int}``
RSA_PKCS_OAEP        ``{"hash": CKM, "mgf": CKG, "source": CKZ|0, "source_data": bytes}``
ECDH1_DERIVE         ``{"kdf": CKD, "shared_data": bytes, "public_data": bytes}``
EDDSA                ``None`` (pure) or ``{"ph_flag": bool, "context_data": bytes}`` (CK_EDDSA_PARAMS)
ML_DSA               ``None`` or ``{"hedge": CKH, "context": bytes, "external_mu": bool}``
                     (CK_SIGN_ADDITIONAL_CONTEXT; external_mu is Strongroom's)
ML_KEM               ``None``
HKDF_DERIVE/_DATA    ``{"extract": bool, "expand": bool, "prf": CKM, "salt_type": CKF_HKDF_SALT_*,
                     "salt": bytes|None, "salt_key": handle|None, "info": bytes}`` (CK_HKDF_PARAMS)
*_HMAC_GENERAL       ``{"mac_len": int}`` (bytes), CMAC_GENERAL likewise
others               ``None``
===================  =====================================================================

Every problem raises an :class:`~strongroom.errors.HsmError` subclass whose code the
PKCS#11 spec names for it (``CKR_MECHANISM_PARAM_INVALID`` at init for a bad IV length,
``CKR_DATA_LEN_RANGE``, ``CKR_ENCRYPTED_DATA_INVALID``, ``CKR_SIGNATURE_INVALID`` …);
never a bare exception from the library.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from strongroom.constants import CKK, CKM, CKO
from strongroom.errors import (
    ArgumentsBad,
    DataLenRange,
    FunctionNotSupported,
    HsmError,
    KeyTypeInconsistent,
    MechanismInvalid,
    OperationNotInitialized,
)

#: Largest input of one call (single part, or one update). Bigger inputs go in parts.
MAX_DATA = 1 << 20

#: The cluster policy ``legacy_algorithms`` for the request being served (strongroom.services.policy):
#: the node sets it around the calls into a mechanism (:func:`legacy_algorithms`); a mechanism asks
#: :func:`legacy_allowed` before it makes or uses an RSA key below 2048 bits, a Triple-DES key or a P-192 key.
_LEGACY: ContextVar[bool] = ContextVar("strongroom_legacy_algorithms", default=False)


@contextmanager
def legacy_algorithms(allowed: bool) -> Iterator[None]:
    token = _LEGACY.set(allowed)
    try:
        yield
    finally:
        _LEGACY.reset(token)


def legacy_allowed() -> bool:
    return _LEGACY.get()


def check_part(data: object, *, multipart: bool = True) -> bytes:
    """One call's input (data, or a key to wrap or unwrap): bytes-like (else CKR_ARGUMENTS_BAD)
    and at most MAX_DATA (else CKR_DATA_LEN_RANGE), so one request cannot pin the node. Every
    mechanism family checks its input here; ``multipart=False`` for those that have no parts."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ArgumentsBad(f"data must be bytes, not {type(data).__name__}")
    if len(data) > MAX_DATA:
        advice = "send larger inputs in parts" if multipart else "this mechanism takes its input in one part"
        raise DataLenRange(f"at most {MAX_DATA} bytes per call; {advice}")
    return bytes(data)


class Stream:
    """A running library context (hash, HMAC) that ends itself after finish or a failed update.

    The library raises AlreadyFinalized once a context is used up; tracking our own state
    turns that, and any use after a failed call, into CKR_OPERATION_NOT_INITIALIZED.
    """

    def __init__(self, context: Any, what: str) -> None:
        self._ctx: Any = context
        self._what = what

    def _live(self) -> Any:
        if self._ctx is None:
            raise OperationNotInitialized(f"the {self._what} operation has ended")
        return self._ctx

    def update(self, data: bytes) -> None:
        ctx = self._live()
        try:
            chunk = check_part(data)
        except HsmError:
            self._ctx = None
            raise
        ctx.update(chunk)

    def finish(self) -> bytes:
        ctx = self._live()
        self._ctx = None
        return bytes(ctx.finalize())


class Capability(enum.Flag):
    ENCRYPT = enum.auto()
    DECRYPT = enum.auto()
    SIGN = enum.auto()
    VERIFY = enum.auto()
    DIGEST = enum.auto()
    GENERATE = enum.auto()
    GENERATE_KEY_PAIR = enum.auto()
    WRAP = enum.auto()
    UNWRAP = enum.auto()
    DERIVE = enum.auto()
    #: PKCS#11 3.2 key encapsulation (C_EncapsulateKey / C_DecapsulateKey; CKF_ENCAPSULATE / CKF_DECAPSULATE).
    ENCAPSULATE = enum.auto()
    DECAPSULATE = enum.auto()


@dataclass
class Key:
    """Key material as a mechanism sees it. Built by the object layer from a stored object."""

    key_type: CKK
    object_class: CKO
    value: bytes | None = None  # secret keys (CKA_VALUE)
    private: PrivateKeyTypes | None = None
    public: PublicKeyTypes | None = None
    size_bits: int = 0

    def require_type(self, *allowed: CKK) -> None:
        if self.key_type not in allowed:
            raise KeyTypeInconsistent(
                f"this mechanism needs a {' or '.join(k.name for k in allowed)} key, not {self.key_type.name}"
            )


@dataclass
class GeneratedSecret:
    value: bytes
    key_type: CKK
    #: Attributes the mechanism sets (e.g. CKA_VALUE_LEN); the object layer adds the rest.
    attributes: dict[int, Any] = field(default_factory=dict)


@dataclass
class GeneratedPair:
    private: PrivateKeyTypes
    key_type: CKK
    #: Public attributes for both objects (CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_EC_PARAMS, CKA_EC_POINT …).
    public_attributes: dict[int, Any] = field(default_factory=dict)
    private_attributes: dict[int, Any] = field(default_factory=dict)


class CipherOperation:
    """Encryption or decryption in one or several parts. A failure ends the operation."""

    #: Set by AES-GCM when the node generated the IV: the caller needs it to decrypt.
    iv: bytes | None = None

    def update(self, data: bytes) -> bytes:
        raise FunctionNotSupported("this mechanism cannot run in parts")

    def final(self) -> bytes:
        raise FunctionNotSupported("this mechanism cannot run in parts")

    def one_shot(self, data: bytes) -> bytes:
        return self.update(data) + self.final()


class SignOperation:
    def update(self, data: bytes) -> None:
        raise FunctionNotSupported("this mechanism cannot sign in parts")

    def final(self) -> bytes:
        raise FunctionNotSupported("this mechanism cannot sign in parts")

    def one_shot(self, data: bytes) -> bytes:
        self.update(data)
        return self.final()


class VerifyOperation:
    def update(self, data: bytes) -> None:
        raise FunctionNotSupported("this mechanism cannot verify in parts")

    def final(self, signature: bytes) -> None:
        """Raise SignatureInvalid / SignatureLenRange; return None when the signature is good."""
        raise FunctionNotSupported("this mechanism cannot verify in parts")

    def one_shot(self, data: bytes, signature: bytes) -> None:
        self.update(data)
        self.final(signature)


class DigestOperation:
    def update(self, data: bytes) -> None:
        raise NotImplementedError

    def final(self) -> bytes:
        raise NotImplementedError

    def one_shot(self, data: bytes) -> bytes:
        self.update(data)
        return self.final()


class Mechanism:
    """One ``CKM_*``. Subclasses override what their capabilities promise."""

    ckm: CKM
    capabilities: Capability = Capability(0)
    #: Key types it accepts (for generation: the type it makes).
    key_types: frozenset[CKK] = frozenset()
    #: C_GetMechanismInfo: key sizes in the unit the spec uses for this key type (bits for
    #: RSA/EC, bytes for AES and generic secrets).
    min_key_size: int = 0
    max_key_size: int = 0
    #: Whether encrypt/decrypt/sign/verify work in parts (init/update/final).
    multipart: bool = False
    #: Offered only under the cluster policy legacy_algorithms = on (Triple-DES): otherwise not listed and
    #: CKR_MECHANISM_INVALID (:func:`lookup`).
    legacy_only: bool = False
    #: The smallest key size under that policy, when it is below ``min_key_size`` (RSA 1024, P-192).
    legacy_min_key_size: int | None = None

    #: C_DeriveKey makes a data object (CKO_DATA with the output as CKA_VALUE) instead of a secret key
    #: (CKM_HKDF_DATA).
    derives_data: bool = False

    def key_handles(self, params: Any) -> tuple[int, ...]:
        """Other key objects the parsed ``params`` name (HKDF's salt key): the object layer checks each
        like the base key and hands them to :meth:`with_keys` before the operation."""
        return ()

    def with_keys(self, params: Any, keys: list[Key]) -> Any:
        """``params`` with the keys :meth:`key_handles` named, in that order."""
        return params

    def default_derive_length(self, base_key: Key, params: Any) -> int | None:
        """The length (bytes) :meth:`derive` makes when the template names none (ECDH without a KDF: the
        shared secret's), or None when a length must be given."""
        return None

    # -- parameters --------------------------------------------------------------------
    def parse_params(self, params: Any) -> Any:
        """Validate the caller's params for this mechanism (raise MechanismParamInvalid)."""
        if params not in (None, b"", {}):
            from strongroom.errors import MechanismParamInvalid

            raise MechanismParamInvalid(f"{self.ckm.name} takes no parameters")
        return None

    # -- operations (override as the capabilities say) -----------------------------------
    def encrypt(self, key: Key, params: Any) -> CipherOperation:
        raise MechanismInvalid(f"{self.ckm.name} cannot encrypt")

    def decrypt(self, key: Key, params: Any) -> CipherOperation:
        raise MechanismInvalid(f"{self.ckm.name} cannot decrypt")

    def sign(self, key: Key, params: Any) -> SignOperation:
        raise MechanismInvalid(f"{self.ckm.name} cannot sign")

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        raise MechanismInvalid(f"{self.ckm.name} cannot verify")

    def digest(self, params: Any) -> DigestOperation:
        raise MechanismInvalid(f"{self.ckm.name} cannot digest")

    def generate_key(self, params: Any, template: dict[int, Any]) -> GeneratedSecret:
        """``template`` holds the caller's attributes (CKA_VALUE_LEN, …), already type-checked."""
        raise MechanismInvalid(f"{self.ckm.name} cannot generate a key")

    def generate_key_pair(
        self, params: Any, public_template: dict[int, Any], private_template: dict[int, Any]
    ) -> GeneratedPair:
        raise MechanismInvalid(f"{self.ckm.name} cannot generate a key pair")

    def wrap(self, wrapping_key: Key, params: Any, key_bytes: bytes) -> bytes:
        """Encrypt serialized key material (CKA_VALUE or PKCS#8 DER) under ``wrapping_key``."""
        raise MechanismInvalid(f"{self.ckm.name} cannot wrap")

    def unwrap(self, unwrapping_key: Key, params: Any, wrapped: bytes) -> bytes:
        raise MechanismInvalid(f"{self.ckm.name} cannot unwrap")

    def derive(self, base_key: Key, params: Any, key_length: int) -> bytes:
        """Derive ``key_length`` bytes of secret key material from ``base_key``."""
        raise MechanismInvalid(f"{self.ckm.name} cannot derive")

    def encapsulate(self, public_key: Key, params: Any) -> tuple[bytes, bytes]:
        """A fresh shared secret and its encapsulation under ``public_key``: (ciphertext, secret)."""
        raise MechanismInvalid(f"{self.ckm.name} cannot encapsulate")

    def decapsulate(self, private_key: Key, params: Any, ciphertext: bytes) -> bytes:
        """The shared secret ``ciphertext`` encapsulates for ``private_key``."""
        raise MechanismInvalid(f"{self.ckm.name} cannot decapsulate")


_REGISTRY: dict[int, Mechanism] = {}


def register(mechanism: Mechanism) -> Mechanism:
    if int(mechanism.ckm) in _REGISTRY:
        raise RuntimeError(f"{mechanism.ckm.name} registered twice")
    _REGISTRY[int(mechanism.ckm)] = mechanism
    return mechanism


def lookup(ckm: int) -> Mechanism:
    mechanism = _REGISTRY.get(int(ckm))
    if mechanism is not None and mechanism.legacy_only and not legacy_allowed():
        raise MechanismInvalid(f"{mechanism.ckm.name} needs the cluster policy legacy_algorithms = on")
    if mechanism is None:
        try:
            name = CKM(ckm).name
        except ValueError:
            name = hex(ckm)
        raise MechanismInvalid(f"mechanism {name} is not supported")
    return mechanism


def all_mechanisms() -> Iterator[Mechanism]:
    return iter(sorted(_REGISTRY.values(), key=lambda m: int(m.ckm)))

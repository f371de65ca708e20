"""HKDF (RFC 5869) as PKCS#11 3.0 offers it: CKM_HKDF_DERIVE (a secret key out) and CKM_HKDF_DATA (a
data object out), both from pyca/cryptography's ``HKDF`` / ``HKDFExpand``.

Parameters (CK_HKDF_PARAMS) travel as a map (the agreed wire form of the C module, agent and node)::

    {"extract": bool, "expand": bool, "prf": CKM_SHA256 …, "salt_type": CKF_HKDF_SALT_NULL (1) | _DATA (2) |
     _KEY (4), "salt": bytes | None, "salt_key": handle | None, "info": bytes}

* extract and expand: OKM = HKDF-Expand(HKDF-Extract(salt, base key), info, L);
* extract only: the PRK (HashLen bytes; a template may ask for HashLen or nothing);
* expand only: the base key is the PRK, OKM = HKDF-Expand(base key, info, L).

The salt of the extract step is none (CKF_HKDF_SALT_NULL: HashLen zero bytes, RFC 5869 §2.2), the given
bytes (CKF_HKDF_SALT_DATA, at least one byte) or the value of another secret key (CKF_HKDF_SALT_KEY):
the object layer checks that key like the base key (owner, CKA_DERIVE, a CKK_GENERIC_SECRET or CKK_HKDF
key) and hands its value in through :meth:`HkdfMechanism.with_keys`. The PRF hash is SHA-1, SHA-2 or
SHA-3. The base key is a CKK_GENERIC_SECRET or CKK_HKDF secret key (PKCS#11 3.0 also lets CKM_HKDF_DATA
take a data object as input key material; this node does not). L is at most 255 × HashLen (RFC 5869).
Anything else is CKR_MECHANISM_PARAM_INVALID.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from strongroom.constants import CKK, CKM
from strongroom.encoding.der import as_bytes
from strongroom.errors import HsmError, KeySizeRange, KeyTypeInconsistent, MechanismParamInvalid
from strongroom.mechanisms.base import Capability, Key, Mechanism, register
from strongroom.mechanisms.generic import MAX_SECRET_LEN, MIN_SECRET_LEN
from strongroom.mechanisms.hashes import prf_hash_for

CKF_HKDF_SALT_NULL, CKF_HKDF_SALT_DATA, CKF_HKDF_SALT_KEY = 1, 2, 4
#: Bounds on what the network may send (a salt or info longer than this has no use).
MAX_SALT = 4096
MAX_INFO = 4096

_FIELDS = ("extract", "expand", "prf", "salt_type", "salt", "salt_key", "info")
_EXPECTED = ('{"extract": bool, "expand": bool, "prf": CKM_SHA*, "salt_type": 1|2|4, "salt": bytes|nil, '
             '"salt_key": handle|nil, "info": bytes}')


@dataclass(frozen=True)
class HkdfParams:
    """Parsed CK_HKDF_PARAMS. ``salt`` is None for CKF_HKDF_SALT_NULL, and for CKF_HKDF_SALT_KEY until the
    salt key's value is bound (:meth:`HkdfMechanism.with_keys`)."""

    extract: bool
    expand: bool
    prf: int
    salt_type: int
    salt: bytes | None
    salt_key: int | None
    info: bytes

    def algorithm(self) -> hashes.HashAlgorithm:
        return prf_hash_for(self.prf)


def _invalid(ckm: CKM, why: str) -> HsmError:
    return MechanismParamInvalid(f"{ckm.name} takes {_EXPECTED}: {why}")


def _flag(ckm: CKM, params: dict[Any, Any], name: str) -> bool:
    value = params.get(name)
    if not isinstance(value, bool):
        raise _invalid(ckm, f"{name} is true or false")
    return value


def _bytes(ckm: CKM, params: dict[Any, Any], name: str, limit: int) -> bytes | None:
    raw = params.get(name)
    if raw is None:
        return None
    value = as_bytes(raw)
    if value is None or len(value) > limit:
        raise _invalid(ckm, f"{name} is a byte string of at most {limit} bytes")
    return value


def parse_params(ckm: CKM, params: Any) -> HkdfParams:
    if isinstance(params, HkdfParams):
        return params
    if not isinstance(params, dict):
        raise _invalid(ckm, f"not {type(params).__name__}")
    unknown = [name for name in params if name not in _FIELDS]
    if unknown:
        raise _invalid(ckm, f"unknown fields {unknown!r}")
    extract, expand = _flag(ckm, params, "extract"), _flag(ckm, params, "expand")
    if not extract and not expand:
        raise _invalid(ckm, "extract, expand or both")
    prf = params.get("prf")
    prf_hash_for(prf)  # CKR_MECHANISM_PARAM_INVALID for a hash it does not name
    assert isinstance(prf, int)
    salt_type = params.get("salt_type", CKF_HKDF_SALT_NULL)
    salt = _bytes(ckm, params, "salt", MAX_SALT)
    salt_key = params.get("salt_key")
    if salt_key is not None and (not isinstance(salt_key, int) or isinstance(salt_key, bool) or salt_key < 0):
        raise _invalid(ckm, "salt_key is an object handle")
    info = _bytes(ckm, params, "info", MAX_INFO) or b""
    if not isinstance(salt_type, int) or isinstance(salt_type, bool):
        raise _invalid(ckm, "salt_type is CKF_HKDF_SALT_NULL, _DATA or _KEY")
    if not extract:
        # Expand only: there is no extract step to salt (the spec leaves the salt fields unused).
        return HkdfParams(False, True, prf, salt_type, None, None, info)
    if salt_type == CKF_HKDF_SALT_NULL:
        if salt or salt_key is not None:
            raise _invalid(ckm, "CKF_HKDF_SALT_NULL takes neither salt nor salt_key")
        return HkdfParams(True, expand, prf, salt_type, None, None, info)
    if salt_type == CKF_HKDF_SALT_DATA:
        if not salt or salt_key is not None:
            raise _invalid(ckm, "CKF_HKDF_SALT_DATA takes a salt of at least one byte and no salt_key")
        return HkdfParams(True, expand, prf, salt_type, salt, None, info)
    if salt_type == CKF_HKDF_SALT_KEY:
        if salt_key is None or salt:
            raise _invalid(ckm, "CKF_HKDF_SALT_KEY takes a salt_key and no salt")
        return HkdfParams(True, expand, prf, salt_type, None, salt_key, info)
    raise _invalid(ckm, f"salt_type {salt_type!r} is not CKF_HKDF_SALT_NULL, _DATA or _KEY")


def _secret(key: Key, what: str) -> bytes:
    key.require_type(CKK.GENERIC_SECRET, CKK.HKDF)
    if key.value is None or not MIN_SECRET_LEN <= len(key.value) <= MAX_SECRET_LEN:
        raise KeyTypeInconsistent(f"{what} needs a secret key value of {MIN_SECRET_LEN}..{MAX_SECRET_LEN} bytes")
    return bytes(key.value)


def hkdf(params: HkdfParams, key_material: bytes, length: int) -> bytes:
    """The HKDF output ``params`` describe, ``length`` bytes (checked by the caller against the PRF)."""
    algorithm = params.algorithm()
    if params.extract and params.expand:
        return HKDF(algorithm, length, params.salt, params.info).derive(key_material)
    if params.extract:
        return bytes(HKDF.extract(algorithm, params.salt, key_material))
    return HKDFExpand(algorithm, length, params.info).derive(key_material)


class HkdfMechanism(Mechanism):
    capabilities = Capability.DERIVE
    key_types = frozenset({CKK.GENERIC_SECRET, CKK.HKDF})
    min_key_size = MIN_SECRET_LEN
    max_key_size = MAX_SECRET_LEN

    def __init__(self, ckm: CKM, *, derives_data: bool) -> None:
        self.ckm = ckm
        #: CKM_HKDF_DATA makes a data object (CKO_DATA, its CKA_VALUE readable) instead of a secret key.
        self.derives_data = derives_data

    def parse_params(self, params: Any) -> HkdfParams:
        return parse_params(self.ckm, params)

    def key_handles(self, params: Any) -> tuple[int, ...]:
        parsed = self.parse_params(params)
        return () if parsed.salt_key is None or parsed.salt is not None else (parsed.salt_key,)

    def with_keys(self, params: Any, keys: list[Key]) -> HkdfParams:
        parsed = self.parse_params(params)
        if parsed.salt_key is None:
            return parsed
        (salt_key,) = keys
        return replace(parsed, salt=_secret(salt_key, f"{self.ckm.name}'s salt key"))

    def default_derive_length(self, base_key: Key, params: Any) -> int | None:
        return int(self.parse_params(params).algorithm().digest_size)

    def derive(self, base_key: Key, params: Any, key_length: int) -> bytes:
        parsed = self.parse_params(params)
        if parsed.salt_type == CKF_HKDF_SALT_KEY and parsed.extract and parsed.salt is None:
            raise MechanismParamInvalid(f"{self.ckm.name}: the salt key was not resolved")
        material = _secret(base_key, self.ckm.name)
        hash_len = parsed.algorithm().digest_size
        if parsed.extract and not parsed.expand and key_length != hash_len:
            raise KeySizeRange(f"{self.ckm.name} extract only makes the {hash_len}-byte PRK, not {key_length} bytes")
        if not 1 <= key_length <= 255 * hash_len:
            raise KeySizeRange(f"{self.ckm.name} makes 1 to {255 * hash_len} bytes with this PRF, not {key_length}")
        return hkdf(parsed, material, key_length)


HKDF_DERIVE = register(HkdfMechanism(CKM.HKDF_DERIVE, derives_data=False))
HKDF_DATA = register(HkdfMechanism(CKM.HKDF_DATA, derives_data=True))

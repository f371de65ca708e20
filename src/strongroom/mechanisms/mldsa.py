"""ML-DSA (FIPS 204) keys and signatures: CKM_ML_DSA_KEY_PAIR_GEN and CKM_ML_DSA (PKCS#11 3.2).

Parameter sets (``CKA_PARAMETER_SET``): CKP_ML_DSA_44 = 1, CKP_ML_DSA_65 = 2, CKP_ML_DSA_87 = 3.

Key objects (PKCS#11 3.2 §6.67):

* public key: ``CKA_PARAMETER_SET``, ``CKA_VALUE`` (the raw public key: 1312 / 1952 / 2592 bytes),
  ``CKA_PUBLIC_KEY_INFO`` (its SubjectPublicKeyInfo);
* private key: ``CKA_PARAMETER_SET``, ``CKA_PUBLIC_KEY_INFO``; the key itself is the object's
  material (PKCS#8, the 32-byte seed form), so ``CKA_SEED`` and ``CKA_VALUE`` are never readable.

Generation takes ``CKA_PARAMETER_SET`` from the public template (or the private one; both must
agree when both name it).

CKM_ML_DSA parameters travel as ``None`` or a map (CK_SIGN_ADDITIONAL_CONTEXT plus one extension):

* ``context``: bytes, 0 to 255 (FIPS 204's context string ctx);
* ``hedge``: CK_HEDGE_TYPE, CKH_HEDGE_PREFERRED (0, the default) or CKH_HEDGE_REQUIRED (1). pyca/cryptography
  51 signs hedged only (``sign``/``sign_mu`` draw fresh randomness; no call takes rnd or a deterministic
  flag), so CKH_DETERMINISTIC_REQUIRED (2) is CKR_MECHANISM_PARAM_INVALID;
* ``external_mu`` (Strongroom's, not in PKCS#11 3.2): the data is the 64-byte message
  representative μ of FIPS 204 §6.2 instead of the message (what AWS KMS calls EXTERNAL_MU). The
  signature is the one the message itself would get; μ already binds the context, so none may be given.

Signing and verification run in one part or several: the parts go through the library's μ
hasher (``MLDSAMuHasher``, keyed by the public key and the context) and μ is signed, which
gives the same signature as signing the whole message. HashML-DSA (CKM_HASH_ML_DSA and
CKM_HASH_ML_DSA_<hash>, FIPS 204 §5.4) is not offered by the library (no pre-hash sign or verify, and its
μ hasher only builds the pure variant's 0x00 domain byte), so it is not registered (CKR_MECHANISM_INVALID):
building its message representative by hand would be home-made cryptography. Signatures are 2420 / 3309 / 4627 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa

from strongroom.constants import CKA, CKK, CKM
from strongroom.encoding.der import as_bytes
from strongroom.errors import (
    ArgumentsBad,
    AttributeValueInvalid,
    DataLenRange,
    DeviceError,
    KeyTypeInconsistent,
    MechanismParamInvalid,
    OperationNotInitialized,
    PublicKeyInvalid,
    SignatureInvalid,
    SignatureLenRange,
    TemplateIncomplete,
    TemplateInconsistent,
)
from strongroom.mechanisms.base import (
    Capability,
    GeneratedPair,
    Key,
    Mechanism,
    SignOperation,
    VerifyOperation,
    check_part,
    register,
)

MLDSAPrivateKey = mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey
MLDSAPublicKey = mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey

CKP_ML_DSA_44, CKP_ML_DSA_65, CKP_ML_DSA_87 = 1, 2, 3
#: CK_HEDGE_TYPE.
CKH_HEDGE_PREFERRED, CKH_HEDGE_REQUIRED, CKH_DETERMINISTIC_REQUIRED = 0, 1, 2
CONTEXT_MAX = 255
MU_LEN = 64


@dataclass(frozen=True)
class ParameterSet:
    ckp: int
    name: str
    private_class: type[MLDSAPrivateKey]
    public_class: type[MLDSAPublicKey]
    public_len: int
    signature_len: int

    def generate(self) -> MLDSAPrivateKey:
        return self.private_class.generate()

    def private_from_seed(self, seed: bytes) -> MLDSAPrivateKey:
        return self.private_class.from_seed_bytes(seed)

    def public_from_bytes(self, raw: bytes) -> MLDSAPublicKey:
        return self.public_class.from_public_bytes(raw)


PARAMETER_SETS: dict[int, ParameterSet] = {p.ckp: p for p in (
    ParameterSet(CKP_ML_DSA_44, "ML-DSA-44", mldsa.MLDSA44PrivateKey, mldsa.MLDSA44PublicKey, 1312, 2420),
    ParameterSet(CKP_ML_DSA_65, "ML-DSA-65", mldsa.MLDSA65PrivateKey, mldsa.MLDSA65PublicKey, 1952, 3309),
    ParameterSet(CKP_ML_DSA_87, "ML-DSA-87", mldsa.MLDSA87PrivateKey, mldsa.MLDSA87PublicKey, 2592, 4627),
)}


def parameter_set(value: object) -> ParameterSet:
    """The parameter set a CKA_PARAMETER_SET value names (else CKR_ATTRIBUTE_VALUE_INVALID)."""
    found = PARAMETER_SETS.get(value) if isinstance(value, int) and not isinstance(value, bool) else None
    if found is None:
        raise AttributeValueInvalid(f"CKA_PARAMETER_SET {value!r} is not an ML-DSA parameter set "
                                    "(CKP_ML_DSA_44 = 1, CKP_ML_DSA_65 = 2, CKP_ML_DSA_87 = 3)")
    return found


def parameter_set_of(key: MLDSAPrivateKey | MLDSAPublicKey) -> ParameterSet:
    for candidate in PARAMETER_SETS.values():
        if isinstance(key, candidate.private_class | candidate.public_class):
            return candidate
    raise KeyTypeInconsistent(f"{type(key).__name__} is not an ML-DSA key")


# -- key objects ------------------------------------------------------------------------------------


def spki(public: MLDSAPublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_attributes(public: MLDSAPublicKey) -> dict[int, Any]:
    """The attributes of an ML-DSA public key object."""
    return {CKA.PARAMETER_SET: parameter_set_of(public).ckp, CKA.VALUE: public.public_bytes_raw(),
            CKA.PUBLIC_KEY_INFO: spki(public)}


def private_attributes(public: MLDSAPublicKey) -> dict[int, Any]:
    """The public attributes an ML-DSA private key object carries (its key is the object's material)."""
    return {CKA.PARAMETER_SET: parameter_set_of(public).ckp, CKA.PUBLIC_KEY_INFO: spki(public)}


def public_key_from_attributes(attributes: dict[int, Any]) -> MLDSAPublicKey:
    """An ML-DSA public key object's key (C_CreateObject gives CKA_PARAMETER_SET and CKA_VALUE)."""
    chosen = parameter_set(attributes.get(CKA.PARAMETER_SET))
    raw = as_bytes(attributes.get(CKA.VALUE))
    if raw is None or len(raw) != chosen.public_len:
        raise PublicKeyInvalid(f"an {chosen.name} public key (CKA_VALUE) is {chosen.public_len} bytes")
    try:
        return chosen.public_from_bytes(raw)
    except (ValueError, UnsupportedAlgorithm):
        raise PublicKeyInvalid(f"CKA_VALUE is not a valid {chosen.name} public key") from None


_PROBE = b"strongroom ML-DSA pairwise consistency test"


def pairwise_test(private: MLDSAPrivateKey) -> None:
    """FIPS 140 pairwise consistency test: a fresh pair must sign and verify."""
    try:
        private.public_key().verify(private.sign(_PROBE), _PROBE)
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        raise DeviceError("ML-DSA key pair failed its pairwise consistency test") from None


class MlDsaKeyPairGen(Mechanism):
    ckm = CKM.ML_DSA_KEY_PAIR_GEN
    capabilities = Capability.GENERATE_KEY_PAIR
    key_types = frozenset({CKK.ML_DSA})
    #: PKCS#11 3.2 reports ML-DSA "key sizes" as the parameter sets supported.
    min_key_size = CKP_ML_DSA_44
    max_key_size = CKP_ML_DSA_87

    def generate_key_pair(
        self, params: Any, public_template: dict[int, Any], private_template: dict[int, Any]
    ) -> GeneratedPair:
        self.parse_params(params)
        chosen = template_parameter_set(public_template, private_template, "ML-DSA")
        private = parameter_set(chosen).generate()
        pairwise_test(private)
        public = private.public_key()
        return GeneratedPair(private, CKK.ML_DSA, public_attributes=key_attributes(public),
                             private_attributes=private_attributes(public))


def template_parameter_set(public_template: dict[int, Any], private_template: dict[int, Any], family: str) -> int:
    """CKA_PARAMETER_SET of a key pair generation (public template first; both must agree)."""
    public_value = public_template.get(CKA.PARAMETER_SET)
    private_value = private_template.get(CKA.PARAMETER_SET)
    if public_value is None and private_value is None:
        raise TemplateIncomplete(f"{family} key generation needs CKA_PARAMETER_SET in the public key template")
    if public_value is not None and private_value is not None and public_value != private_value:
        raise TemplateInconsistent("the public and private templates name different CKA_PARAMETER_SET values")
    value = public_value if public_value is not None else private_value
    assert isinstance(value, int)  # the object layer type-checked it (CK_ULONG)
    return value


# -- CKM_ML_DSA ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MlDsaParams:
    """Parsed CK_SIGN_ADDITIONAL_CONTEXT (and the external μ extension)."""

    context: bytes = b""
    hedge: int = CKH_HEDGE_PREFERRED
    external_mu: bool = False


_FIELDS = ("context", "hedge", "external_mu")
_EXPECTED = ('{"context": bytes (0..255), "hedge": CKH_HEDGE_PREFERRED|CKH_HEDGE_REQUIRED, '
             '"external_mu": bool}')


def parse_params(params: Any) -> MlDsaParams:
    if isinstance(params, MlDsaParams):
        return params
    if params in (None, b"", {}):
        return MlDsaParams()
    if not isinstance(params, dict):
        raise MechanismParamInvalid(f"CKM_ML_DSA takes {_EXPECTED}, not {type(params).__name__}")
    unknown = [name for name in params if name not in _FIELDS]
    if unknown:
        raise MechanismParamInvalid(f"CKM_ML_DSA takes {_EXPECTED}; unknown fields {unknown!r}")
    raw_context = params.get("context")
    context = b"" if raw_context is None else as_bytes(raw_context)
    if context is None or len(context) > CONTEXT_MAX:
        raise MechanismParamInvalid(f"CKM_ML_DSA: the context is a byte string of at most {CONTEXT_MAX} bytes")
    hedge = params.get("hedge", CKH_HEDGE_PREFERRED)
    if not isinstance(hedge, int) or isinstance(hedge, bool) or hedge not in (
            CKH_HEDGE_PREFERRED, CKH_HEDGE_REQUIRED, CKH_DETERMINISTIC_REQUIRED):
        raise MechanismParamInvalid(f"CKM_ML_DSA: hedge {hedge!r} is not a CK_HEDGE_TYPE")
    if hedge == CKH_DETERMINISTIC_REQUIRED:
        raise MechanismParamInvalid("CKM_ML_DSA: deterministic signing (CKH_DETERMINISTIC_REQUIRED) is not "
                                    "available; this node signs hedged (randomized) only")
    external_mu = params.get("external_mu", False)
    if not isinstance(external_mu, bool):
        raise MechanismParamInvalid("CKM_ML_DSA: external_mu is true or false")
    if external_mu and context:
        raise MechanismParamInvalid("CKM_ML_DSA: an external μ already binds the context; give none")
    return MlDsaParams(context, hedge, external_mu)


def _mu(data: bytes) -> bytes:
    mu = check_part(data, multipart=False)
    if len(mu) != MU_LEN:
        raise DataLenRange(f"an external μ is {MU_LEN} bytes, not {len(mu)}")
    return mu


class _Hasher:
    """The message parts of one operation, hashed into μ as they come (nothing is kept but the hash)."""

    def __init__(self, public: MLDSAPublicKey, params: MlDsaParams) -> None:
        self._public = public
        self._params = params
        self._hasher: mldsa.MLDSAMuHasher | None = None  # made at the first part (one-shot calls need none)
        self._mu: bytes | None = None
        self._ended = False
        self._parts = 0

    def update(self, data: bytes) -> None:
        if self._ended:
            raise OperationNotInitialized("the ML-DSA operation has ended")
        try:
            chunk = check_part(data)
            if self._params.external_mu:  # one part: the 64 bytes
                if self._parts:
                    raise DataLenRange(f"an external μ is one part of {MU_LEN} bytes")
                self._mu = _mu(chunk)
            else:
                if self._hasher is None:
                    self._hasher = mldsa.MLDSAMuHasher(self._public, self._params.context or None)
                self._hasher.update(chunk)
        except Exception:
            self._ended = True
            raise
        self._parts += 1

    def close(self) -> None:
        """The operation ran in one part (the library hashed the message itself): end it."""
        if self._ended:
            raise OperationNotInitialized("the ML-DSA operation has ended")
        self._ended = True

    def finish(self) -> bytes:
        if self._ended:
            raise OperationNotInitialized("the ML-DSA operation has ended")
        self._ended = True
        if not self._params.external_mu:
            if self._hasher is None:  # no part at all: the empty message
                self._hasher = mldsa.MLDSAMuHasher(self._public, self._params.context or None)
            return bytes(self._hasher.finalize())
        if self._mu is None:
            raise DataLenRange(f"an external μ is {MU_LEN} bytes, not 0")
        return self._mu


class _Sign(SignOperation):
    def __init__(self, private: MLDSAPrivateKey, params: MlDsaParams) -> None:
        self._private = private
        self._params = params
        self._hasher = _Hasher(private.public_key(), params)

    def update(self, data: bytes) -> None:
        self._hasher.update(data)

    def final(self) -> bytes:
        return bytes(self._private.sign_mu(self._hasher.finish()))

    def one_shot(self, data: bytes) -> bytes:
        if self._params.external_mu:
            self._hasher.update(data)
            return self.final()
        message = check_part(data, multipart=False)
        self._hasher.close()
        return bytes(self._private.sign(message, self._params.context or None))


class _Verify(VerifyOperation):
    def __init__(self, public: MLDSAPublicKey, params: MlDsaParams) -> None:
        self._public = public
        self._params = params
        self._hasher = _Hasher(public, params)
        self._signature_len = parameter_set_of(public).signature_len

    def update(self, data: bytes) -> None:
        self._hasher.update(data)

    def _signature(self, signature: bytes) -> bytes:
        raw = as_bytes(signature)
        if raw is None:
            raise ArgumentsBad(f"signature must be bytes, not {type(signature).__name__}")
        if len(raw) != self._signature_len:
            raise SignatureLenRange(f"an {parameter_set_of(self._public).name} signature is "
                                    f"{self._signature_len} bytes, not {len(raw)}")
        return raw

    def final(self, signature: bytes) -> None:
        mu = self._hasher.finish()
        raw = self._signature(signature)
        try:
            self._public.verify_mu(raw, mu)
        except (InvalidSignature, ValueError):
            raise SignatureInvalid("the ML-DSA signature does not verify") from None

    def one_shot(self, data: bytes, signature: bytes) -> None:
        if self._params.external_mu:
            self._hasher.update(data)
            self.final(signature)
            return
        message = check_part(data, multipart=False)
        self._hasher.close()
        raw = self._signature(signature)
        try:
            self._public.verify(raw, message, self._params.context or None)
        except (InvalidSignature, ValueError):
            raise SignatureInvalid("the ML-DSA signature does not verify") from None


def private_of(key: Key, what: str) -> MLDSAPrivateKey:
    key.require_type(CKK.ML_DSA)
    if not isinstance(key.private, mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey):
        raise KeyTypeInconsistent(f"{what} needs an ML-DSA private key")
    return key.private


def public_of(key: Key, what: str) -> MLDSAPublicKey:
    key.require_type(CKK.ML_DSA)
    if isinstance(key.public, mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey):
        return key.public
    return private_of(key, what).public_key()


class MlDsaMechanism(Mechanism):
    ckm = CKM.ML_DSA
    capabilities = Capability.SIGN | Capability.VERIFY
    key_types = frozenset({CKK.ML_DSA})
    min_key_size = CKP_ML_DSA_44
    max_key_size = CKP_ML_DSA_87
    multipart = True

    def parse_params(self, params: Any) -> MlDsaParams:
        return parse_params(params)

    def sign(self, key: Key, params: Any) -> SignOperation:
        return _Sign(private_of(key, "CKM_ML_DSA signing"), parse_params(params))

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        return _Verify(public_of(key, "CKM_ML_DSA verification"), parse_params(params))


ML_DSA_KEY_PAIR_GEN = register(MlDsaKeyPairGen())
ML_DSA = register(MlDsaMechanism())

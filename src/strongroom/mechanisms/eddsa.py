"""Edwards-curve keys and EdDSA: CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA (PKCS#11 3.0).

Ed25519 and Ed448, pure (RFC 8032 §5.1 / §5.2 with an empty context) — what CKM_EDDSA means
without a CK_EDDSA_PARAMS — through pyca/cryptography. With a CK_EDDSA_PARAMS (node protocol:
``{"ph_flag": bool, "context_data": bytes}``, the context at most 255 bytes) the prehash and
context variants: Ed25519ph and Ed448ph (``ph_flag`` true: the node hashes the message with
SHA-512 / SHAKE256 and signs HashEdDSA, as AWS KMS's ED25519_PH_SHA_512), Ed25519ctx and Ed448
with a context. pyca/cryptography does not offer those, so they come from pycryptodome
(``Crypto.Signature.eddsa``, RFC 8032 mode), a maintained library the project already depends on;
``ph_flag`` false with an empty context is the pure scheme, through pyca as before.

The curves and the attribute encodings (``CKA_EC_PARAMS``, ``CKA_EC_POINT``) are
:mod:`strongroom.encoding.eddsa`'s. EdDSA needs the whole message, so it is single-part only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from Crypto.Hash import SHA512, SHAKE256
from Crypto.Signature import eddsa as pycryptodome_eddsa
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed448, ed25519

from strongroom.constants import CKA, CKK, CKM

# The encodings (curves, points, attributes) live in strongroom.encoding.eddsa; the object layer
# and the tests still name key_attributes and public_key_from_attributes through here.
from strongroom.encoding.der import as_bytes
from strongroom.encoding.eddsa import (
    ED448,
    ED25519,
    EdPrivateKey,
    EdPublicKey,
    curve_from_params,
    curve_of,
    encode_point,
)
from strongroom.encoding.eddsa import key_attributes as key_attributes
from strongroom.encoding.eddsa import public_key_from_attributes as public_key_from_attributes
from strongroom.errors import (
    ArgumentsBad,
    DeviceError,
    KeyTypeInconsistent,
    MechanismParamInvalid,
    OperationNotInitialized,
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

# -- key pair generation -------------------------------------------------------------------

_PROBE = b"strongroom pairwise consistency test"


def pairwise_test(private: EdPrivateKey, public: EdPublicKey) -> None:
    """FIPS 140 pairwise consistency test: a fresh pair must sign and verify."""
    try:
        public.verify(private.sign(_PROBE), _PROBE)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise DeviceError("EdDSA key pair failed its pairwise consistency test") from None


class EdwardsKeyPairGen(Mechanism):
    ckm = CKM.EC_EDWARDS_KEY_PAIR_GEN
    capabilities = Capability.GENERATE_KEY_PAIR
    key_types = frozenset({CKK.EC_EDWARDS})
    min_key_size = ED25519.size_bits
    max_key_size = ED448.size_bits

    def generate_key_pair(
        self, params: Any, public_template: dict[int, Any], private_template: dict[int, Any]
    ) -> GeneratedPair:
        self.parse_params(params)
        if CKA.EC_PARAMS not in public_template:
            raise TemplateIncomplete("the public key template needs CKA_EC_PARAMS to choose the curve")
        ec_params = public_template[CKA.EC_PARAMS]
        curve = curve_from_params(ec_params)
        if CKA.EC_PARAMS in private_template and curve_from_params(private_template[CKA.EC_PARAMS]) != curve:
            raise TemplateInconsistent("the public and private templates name different curves")
        private = curve.generate()
        public = private.public_key()
        pairwise_test(private, public)
        stored = bytes(ec_params)  # the caller's encoding, as they set it
        return GeneratedPair(
            private,
            CKK.EC_EDWARDS,
            public_attributes={CKA.EC_PARAMS: stored, CKA.EC_POINT: encode_point(public)},
            private_attributes={CKA.EC_PARAMS: stored},
        )


# -- EdDSA ----------------------------------------------------------------------------------


class _OneShot:
    def __init__(self) -> None:
        self._used = False

    def _consume(self) -> None:
        if self._used:
            raise OperationNotInitialized("the EdDSA operation has ended")
        self._used = True


CONTEXT_MAX = 255


@dataclass(frozen=True)
class EddsaParams:
    """Parsed CK_EDDSA_PARAMS; the default is pure EdDSA."""

    ph_flag: bool = False
    context: bytes = b""

    @property
    def pure(self) -> bool:
        return not self.ph_flag and not self.context


PURE = EddsaParams()
_EDDSA_EXPECTED = '{"ph_flag": bool, "context_data": bytes (0..255)}'


def parse_eddsa_params(params: Any) -> EddsaParams:
    if isinstance(params, EddsaParams):
        return params
    if params in (None, b"", {}):
        return PURE
    if not isinstance(params, dict) or set(params) - {"ph_flag", "context_data"}:
        raise MechanismParamInvalid(f"CKM_EDDSA takes no parameters (pure EdDSA) or {_EDDSA_EXPECTED}")
    ph_flag = params.get("ph_flag", False)
    raw_context = params.get("context_data")
    context = b"" if raw_context is None else as_bytes(raw_context)
    if not isinstance(ph_flag, bool) or context is None or len(context) > CONTEXT_MAX:
        raise MechanismParamInvalid(f"CKM_EDDSA takes {_EDDSA_EXPECTED}")
    return EddsaParams(ph_flag, context)


def _scheme(key: EdPrivateKey | EdPublicKey, params: EddsaParams) -> Any:
    """pycryptodome's RFC 8032 signer/verifier for the prehash or context variant."""
    try:
        if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            imported = pycryptodome_eddsa.import_private_key(key.private_bytes_raw())
        else:
            imported = pycryptodome_eddsa.import_public_key(key.public_bytes_raw())
        return pycryptodome_eddsa.new(imported, "rfc8032", context=params.context or None)
    except ValueError:
        raise KeyTypeInconsistent("the key cannot be used for this EdDSA variant") from None


def _prehashed(key: EdPrivateKey | EdPublicKey, message: bytes) -> Any:
    """HashEdDSA's PH: SHA-512 for Ed25519ph, SHAKE256 (64 bytes) for Ed448ph (RFC 8032 §5.1, §5.2)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return SHA512.new(message)
    return SHAKE256.new(message)


def _variant_input(key: EdPrivateKey | EdPublicKey, params: EddsaParams, message: bytes) -> Any:
    return _prehashed(key, message) if params.ph_flag else message


class _EdSign(SignOperation, _OneShot):
    def __init__(self, private: EdPrivateKey, params: EddsaParams = PURE) -> None:
        _OneShot.__init__(self)
        self._private = private
        self._params = params

    def one_shot(self, data: bytes) -> bytes:
        self._consume()
        message = check_part(data, multipart=False)
        if self._params.pure:
            return self._private.sign(message)
        return bytes(_scheme(self._private, self._params).sign(_variant_input(self._private, self._params, message)))


class _EdVerify(VerifyOperation, _OneShot):
    def __init__(self, public: EdPublicKey, params: EddsaParams = PURE) -> None:
        _OneShot.__init__(self)
        self._public = public
        self._params = params

    def one_shot(self, data: bytes, signature: bytes) -> None:
        self._consume()
        message = check_part(data, multipart=False)
        raw = as_bytes(signature)
        if raw is None:
            raise ArgumentsBad(f"signature must be bytes, not {type(signature).__name__}")
        curve = curve_of(self._public)
        if len(raw) != curve.signature_len:
            raise SignatureLenRange(f"an {curve.name} signature is {curve.signature_len} bytes, not {len(raw)}")
        try:
            if self._params.pure:
                self._public.verify(raw, message)
            else:
                _scheme(self._public, self._params).verify(_variant_input(self._public, self._params, message), raw)
        except (InvalidSignature, ValueError):
            raise SignatureInvalid("the EdDSA signature does not verify") from None


class EddsaMechanism(Mechanism):
    ckm = CKM.EDDSA
    capabilities = Capability.SIGN | Capability.VERIFY
    key_types = frozenset({CKK.EC_EDWARDS})
    min_key_size = ED25519.size_bits
    max_key_size = ED448.size_bits
    multipart = False

    def parse_params(self, params: Any) -> EddsaParams:
        return parse_eddsa_params(params)

    def sign(self, key: Key, params: Any) -> SignOperation:
        parsed = self.parse_params(params)
        key.require_type(CKK.EC_EDWARDS)
        if not isinstance(key.private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            raise KeyTypeInconsistent("CKM_EDDSA signing needs an Ed25519 or Ed448 private key")
        return _EdSign(key.private, parsed)

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        parsed = self.parse_params(params)
        key.require_type(CKK.EC_EDWARDS)
        if isinstance(key.public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public = key.public
        elif isinstance(key.private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            public = key.private.public_key()
        else:
            raise KeyTypeInconsistent("CKM_EDDSA verification needs an Ed25519 or Ed448 public key")
        return _EdVerify(public, parsed)


EC_EDWARDS_KEY_PAIR_GEN = register(EdwardsKeyPairGen())
EDDSA = register(EddsaMechanism())

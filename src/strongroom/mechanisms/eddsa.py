"""Edwards-curve keys and EdDSA: CKM_EC_EDWARDS_KEY_PAIR_GEN and CKM_EDDSA (PKCS#11 3.0).

Ed25519 and Ed448, both pure (RFC 8032 §5.1 / §5.2 with an empty context), which is what
CKM_EDDSA means without a CK_EDDSA_PARAMS. Ed448 costs nothing extra because
pyca/cryptography signs it natively. The prehash and context variants (Ed25519ph,
Ed25519ctx, Ed448ph, Ed448 with a context) are not offered by the library, so any
CK_EDDSA_PARAMS is CKR_MECHANISM_PARAM_INVALID.

The curves and the attribute encodings (``CKA_EC_PARAMS``, ``CKA_EC_POINT``) are
:mod:`strongroom.encoding.eddsa`'s. EdDSA needs the whole message, so it is single-part only.
"""

from __future__ import annotations

from typing import Any

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


class _EdSign(SignOperation, _OneShot):
    def __init__(self, private: EdPrivateKey) -> None:
        _OneShot.__init__(self)
        self._private = private

    def one_shot(self, data: bytes) -> bytes:
        self._consume()
        return self._private.sign(check_part(data, multipart=False))


class _EdVerify(VerifyOperation, _OneShot):
    def __init__(self, public: EdPublicKey) -> None:
        _OneShot.__init__(self)
        self._public = public

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
            self._public.verify(raw, message)
        except (InvalidSignature, ValueError):
            raise SignatureInvalid("the EdDSA signature does not verify") from None


class EddsaMechanism(Mechanism):
    ckm = CKM.EDDSA
    capabilities = Capability.SIGN | Capability.VERIFY
    key_types = frozenset({CKK.EC_EDWARDS})
    min_key_size = ED25519.size_bits
    max_key_size = ED448.size_bits
    multipart = False

    def parse_params(self, params: Any) -> None:
        if params not in (None, b"", {}):
            raise MechanismParamInvalid(
                "CKM_EDDSA supports pure Ed25519/Ed448 only: pass no parameters "
                "(CK_EDDSA_PARAMS prehash/context variants are not supported)"
            )
        return None

    def sign(self, key: Key, params: Any) -> SignOperation:
        self.parse_params(params)
        key.require_type(CKK.EC_EDWARDS)
        if not isinstance(key.private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            raise KeyTypeInconsistent("CKM_EDDSA signing needs an Ed25519 or Ed448 private key")
        return _EdSign(key.private)

    def verify(self, key: Key, params: Any) -> VerifyOperation:
        self.parse_params(params)
        key.require_type(CKK.EC_EDWARDS)
        if isinstance(key.public, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
            public = key.public
        elif isinstance(key.private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
            public = key.private.public_key()
        else:
            raise KeyTypeInconsistent("CKM_EDDSA verification needs an Ed25519 or Ed448 public key")
        return _EdVerify(public)


EC_EDWARDS_KEY_PAIR_GEN = register(EdwardsKeyPairGen())
EDDSA = register(EddsaMechanism())

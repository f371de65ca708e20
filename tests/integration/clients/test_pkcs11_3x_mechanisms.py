"""The node's PKCS#11 3.x mechanisms through libstrongroom-pkcs11.so with python-pkcs11 0.10 (issue 17):
SHA-3 digests, a CKK_SHA3_256_HMAC key made by CKM_SHA3_256_KEY_GEN and its HMAC, and an ML-DSA private key
wrapped with CKM_AES_KEY_WRAP_PAD and unwrapped back by the application; every result checked here with
hashlib, hmac and pyca/cryptography. (ML-DSA/ML-KEM key pairs, signatures and KEM through the module are in
test_pkcs11_v3.py.)"""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from ..conftest import Pkcs11Target
from .test_pkcs11_v3 import run

DATA = b"SHA-3 through PKCS#11 " + bytes(range(256)) * 40


@pytest.mark.timeout(300)
def test_sha3_hmac_and_ml_dsa_wrapping_through_the_module(pkcs11: Pkcs11Target) -> None:
    pin = pkcs11.crypto_user("p3x_client", "password1")
    out = run(pkcs11, pin, """
    from pkcs11 import MechanismFlag
    data = given("DATA")
    with token.open(user_pin=os.environ["USER_PIN"], rw=True) as s:
        for name in ("SHA3_224", "SHA3_256", "SHA3_384", "SHA3_512"):
            emit(**{name: s.digest(data, mechanism=getattr(Mechanism, name))})
        mac_key = s.generate_key(KeyType.SHA3_256_HMAC, 256, mechanism=Mechanism.SHA3_256_KEY_GEN,
                                 capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY, label="sha3-hmac",
                                 template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
        tag = mac_key.sign(data, mechanism=Mechanism.SHA3_256_HMAC)
        emit(mac_key=mac_key[Attribute.VALUE], mac_type=int(mac_key[Attribute.KEY_TYPE]), tag=tag,
             tag_ok=mac_key.verify(data, tag, mechanism=Mechanism.SHA3_256_HMAC))

        kek = s.generate_key(KeyType.AES, 256, label="p3x-kek",
                             capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
                             template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
        pub, priv = s.generate_keypair(KeyType.ML_DSA, label="p3x-mldsa",
                                       public_template={Attribute.PARAMETER_SET: MLDSAParameterSet.ML_DSA_65},
                                       private_template={Attribute.EXTRACTABLE: True})
        wrapped = kek.wrap_key(priv, mechanism=Mechanism.AES_KEY_WRAP_PAD)
        # python-pkcs11's unwrap template sets every usage flag, public-key ones (ENCRYPT, VERIFY, WRAP) too,
        # which a private key does not have (CKR_TEMPLATE_INCONSISTENT, PKCS#11 v2.40 4.1.1): DEFAULT drops them.
        from pkcs11.constants import DEFAULT
        back = kek.unwrap_key(ObjectClass.PRIVATE_KEY, KeyType.ML_DSA, wrapped, label="p3x-unwrapped",
                              mechanism=Mechanism.AES_KEY_WRAP_PAD, capabilities=MechanismFlag.SIGN,
                              template={Attribute.ENCRYPT: DEFAULT, Attribute.VERIFY: DEFAULT,
                                        Attribute.WRAP: DEFAULT})
        emit(kek=kek[Attribute.VALUE], wrapped=wrapped, pub=pub[Attribute.VALUE],
             back_ps=int(back[Attribute.PARAMETER_SET]),
             signature=back.sign(given("DATA")[:100], mechanism=Mechanism.ML_DSA),
             seed=error_name(lambda: back[Attribute.SEED]))
    """, DATA=DATA)
    for name in ("SHA3_224", "SHA3_256", "SHA3_384", "SHA3_512"):
        assert bytes.fromhex(out[name]) == hashlib.new(name.lower(), DATA).digest(), name
    assert out["mac_type"] == 0x37  # CKK_SHA3_256_HMAC
    assert bytes.fromhex(out["tag"]) == hmac.new(bytes.fromhex(out["mac_key"]), DATA, "sha3_256").digest()
    assert out["tag_ok"] is True
    # The wrapped key is PKCS#8 inside AES-KWP (RFC 5649), as pyca reads it.
    inside = serialization.load_der_private_key(
        aes_key_unwrap_with_padding(bytes.fromhex(out["kek"]), bytes.fromhex(out["wrapped"])), None)
    assert isinstance(inside, mldsa.MLDSA65PrivateKey)
    assert inside.public_key().public_bytes_raw() == bytes.fromhex(out["pub"])
    assert out["back_ps"] == 2
    inside.public_key().verify(bytes.fromhex(out["signature"]), DATA[:100])
    assert out["seed"] in ("AttributeSensitive", "AttributeTypeInvalid"), out["seed"]

"""PKCS#11 3.x through libstrongroom-pkcs11.so with a real client: python-pkcs11 0.10 (issue 17).

python-pkcs11 asks the module for C_GetInterface("PKCS 11", 3.0) and ("PKCS 11", 3.2) and calls
C_EncapsulateKey / C_DecapsulateKey through the 3.2 function list (without it, it raises
FunctionNotSupported), so these tests also show the negotiation works. Each test runs a script in its own
process (the module is loaded once per process); the results are checked here with pyca/cryptography:

* ML-DSA-44/65/87 pairs made through the module (CKA_PARAMETER_SET in the template), messages signed with and
  without a CK_SIGN_ADDITIONAL_CONTEXT (context string, hedging), verified outside; CKA_SEED never readable;
  CKH_DETERMINISTIC_REQUIRED refused (the library signs hedged only).
* ML-KEM-768/1024: a secret encapsulated outside to the token's public key is decapsulated in the token into
  the same secret; a secret encapsulated in the token decapsulates in the token into an equal key.
* HKDF (PyKCS11 with a CK_HKDF_PARAMS the module reads field by field): extract+expand and extract-only keys
  equal to pyca's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

from ..conftest import Pkcs11Target

PREAMBLE = """
import ctypes, json, os, struct
import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass, exceptions
from pkcs11.mechanisms import MLDSAParameterSet, MLKEMParameterSet

lib = pkcs11.lib(os.environ["STRONGROOM_PKCS11_MODULE"])
token = lib.get_token(token_label=os.environ["TOKEN_LABEL"])
OUT = {}

def emit(**values):
    for name, value in values.items():
        OUT[name] = value.hex() if isinstance(value, (bytes, bytearray)) else value

def given(name):
    return bytes.fromhex(os.environ["IN_" + name])

def error_name(call):
    try:
        call()
    except exceptions.PKCS11Error as exc:
        return type(exc).__name__
    return None

KEEP = []

def sign_context(hedge, context):
    '''CK_SIGN_ADDITIONAL_CONTEXT {hedgeVariant, pContext, ulContextLen} (python-pkcs11 passes bytes as they are).'''
    buffer = ctypes.create_string_buffer(context, len(context))
    KEEP.append(buffer)
    return struct.pack("=QQQ", hedge, ctypes.addressof(buffer) if context else 0, len(context))
"""

POSTAMBLE = """
print(json.dumps(OUT))
"""


def run(target: Pkcs11Target, pin: str, body: str, **inputs: bytes) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(STRONGROOM_AGENT_SOCKET=target.socket, STRONGROOM_PKCS11_MODULE=str(target.module),
               TOKEN_LABEL=target.token_label, USER_PIN=pin)
    env.update({f"IN_{name}": value.hex() for name, value in inputs.items()})
    script = PREAMBLE + textwrap.dedent(body) + POSTAMBLE
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=170)
    assert result.returncode == 0, f"script failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def target(pkcs11: Pkcs11Target) -> Pkcs11Target:
    return pkcs11


MESSAGE = b"ML-DSA through PKCS#11 3.2 " + bytes(range(256))
ML_DSA = {44: mldsa.MLDSA44PublicKey, 65: mldsa.MLDSA65PublicKey, 87: mldsa.MLDSA87PublicKey}


@pytest.mark.timeout(300)
def test_ml_dsa_pairs_sign_and_signatures_verify_outside(target: Pkcs11Target) -> None:
    pin = target.crypto_user("pq_dsa", "password1")
    out = run(target, pin, """
    with token.open(user_pin=os.environ["USER_PIN"], rw=True) as s:
        emit(versions=[list(lib.cryptoki_version)])
        for n, ps in ((44, MLDSAParameterSet.ML_DSA_44), (65, MLDSAParameterSet.ML_DSA_65),
                      (87, MLDSAParameterSet.ML_DSA_87)):
            pub, priv = s.generate_keypair(KeyType.ML_DSA, public_template={Attribute.PARAMETER_SET: ps},
                                           label=f"mldsa-{n}", store=True)
            message = given("MESSAGE")
            emit(**{
                f"pub{n}": pub[Attribute.VALUE],
                f"ps{n}": int(priv[Attribute.PARAMETER_SET]),
                f"plain{n}": priv.sign(message, mechanism=Mechanism.ML_DSA),
                f"context{n}": priv.sign(message, mechanism=Mechanism.ML_DSA,
                                         mechanism_param=sign_context(1, b"strongroom ctx")),
                f"empty{n}": priv.sign(message, mechanism=Mechanism.ML_DSA, mechanism_param=sign_context(0, b"")),
                f"verify{n}": pub.verify(message, priv.sign(message, mechanism=Mechanism.ML_DSA),
                                         mechanism=Mechanism.ML_DSA),
                f"seed{n}": error_name(lambda: priv[Attribute.SEED]),
            })
            if n == 65:
                emit(deterministic=error_name(lambda: priv.sign(message, mechanism=Mechanism.ML_DSA,
                                                                mechanism_param=sign_context(2, b""))),
                     long_context=error_name(lambda: priv.sign(message, mechanism=Mechanism.ML_DSA,
                                                               mechanism_param=sign_context(0, b"x" * 256))))
    """, MESSAGE=MESSAGE)
    for n, public_class in ML_DSA.items():
        public = public_class.from_public_bytes(bytes.fromhex(out[f"pub{n}"]))
        assert out[f"ps{n}"] == {44: 1, 65: 2, 87: 3}[n]
        public.verify(bytes.fromhex(out[f"plain{n}"]), MESSAGE)
        public.verify(bytes.fromhex(out[f"empty{n}"]), MESSAGE)
        public.verify(bytes.fromhex(out[f"context{n}"]), MESSAGE, context=b"strongroom ctx")
        with pytest.raises(InvalidSignature):  # the context is part of what was signed
            public.verify(bytes.fromhex(out[f"context{n}"]), MESSAGE)
        assert out[f"verify{n}"] is True
        assert out[f"seed{n}"] in ("AttributeSensitive", "AttributeTypeInvalid"), out[f"seed{n}"]
    assert out["deterministic"] == "MechanismParamInvalid"
    assert out["long_context"] == "MechanismParamInvalid"


ML_KEM = {768: (mlkem.MLKEM768PublicKey, "ML_KEM_768"), 1024: (mlkem.MLKEM1024PublicKey, "ML_KEM_1024")}


@pytest.mark.timeout(300)
def test_ml_kem_secrets_are_equal_on_both_sides(target: Pkcs11Target) -> None:
    pin = target.crypto_user("pq_kem", "password1")
    first = run(target, pin, """
    with token.open(user_pin=os.environ["USER_PIN"], rw=True) as s:
        for n in (768, 1024):
            pub, priv = s.generate_keypair(KeyType.ML_KEM,
                                           public_template={Attribute.PARAMETER_SET: getattr(MLKEMParameterSet,
                                                                                             f"ML_KEM_{n}")},
                                           label=f"mlkem-{n}", store=True)
            emit(**{f"pub{n}": pub[Attribute.VALUE]})
    """)
    outside: dict[str, bytes] = {}
    for n, (public_class, _name) in ML_KEM.items():
        secret, ciphertext = public_class.from_public_bytes(bytes.fromhex(first[f"pub{n}"])).encapsulate()
        outside[f"CT{n}"], outside[f"SECRET{n}"] = ciphertext, secret
    out = run(target, pin, """
    readable = {Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True}
    with token.open(user_pin=os.environ["USER_PIN"], rw=True) as s:
        for n in (768, 1024):
            priv = s.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.ML_KEM, label=f"mlkem-{n}")
            pub = s.get_key(object_class=ObjectClass.PUBLIC_KEY, key_type=KeyType.ML_KEM, label=f"mlkem-{n}")
            from_outside = priv.decapsulate_key(given(f"CT{n}"), KeyType.GENERIC_SECRET, template=readable)
            ciphertext, mine = pub.encapsulate_key(KeyType.GENERIC_SECRET, template=readable)
            theirs = priv.decapsulate_key(ciphertext, KeyType.GENERIC_SECRET, template=readable)
            aes_ct, aes_key = pub.encapsulate_key(KeyType.AES, key_length=256)
            aes_back = priv.decapsulate_key(aes_ct, KeyType.AES, key_length=256)
            iv = bytes(16)  # AES_CBC_PAD, python-pkcs11's default
            emit(**{
                f"outside{n}": from_outside[Attribute.VALUE],
                f"ct{n}": ciphertext,
                f"mine{n}": mine[Attribute.VALUE],
                f"theirs{n}": theirs[Attribute.VALUE],
                f"aes{n}": aes_back.decrypt(aes_key.encrypt(b"secret message", mechanism_param=iv),
                                            mechanism_param=iv),
                f"aes_sensitive{n}": error_name(lambda: aes_key[Attribute.VALUE]),
                f"wrong_length{n}": error_name(lambda: priv.decapsulate_key(b"x" * 10, KeyType.GENERIC_SECRET)),
            })
    """, **outside)
    for n, _ in ML_KEM.items():
        assert bytes.fromhex(out[f"outside{n}"]) == outside[f"SECRET{n}"]
        assert len(bytes.fromhex(out[f"ct{n}"])) == {768: 1088, 1024: 1568}[n]
        assert out[f"mine{n}"] == out[f"theirs{n}"] and len(bytes.fromhex(out[f"mine{n}"])) == 32
        assert bytes.fromhex(out[f"aes{n}"]) == b"secret message"
        assert out[f"aes_sensitive{n}"] == "AttributeSensitive"
        assert out[f"wrong_length{n}"] in ("EncryptedDataLenRange", "EncryptedDataInvalid"), out[f"wrong_length{n}"]


PYKCS11_PREAMBLE = """
import ctypes, json, os, struct
import PyKCS11
from PyKCS11 import *

lib = PyKCS11Lib()
lib.load(os.environ["STRONGROOM_PKCS11_MODULE"])
OUT = {}
KEEP = []

def emit(**values):
    for name, value in values.items():
        OUT[name] = bytes(value).hex() if isinstance(value, (bytes, bytearray, tuple, list)) else value

def buffer(data):
    b = ctypes.create_string_buffer(data, len(data))
    KEEP.append(b)
    return ctypes.addressof(b) if data else 0

def hkdf_params(extract, expand, prf, salt_type, salt=b"", salt_key=0, info=b""):
    '''CK_HKDF_PARAMS {bExtract, bExpand, prfHashMechanism, ulSaltType, pSalt, ulSaltLen, hSaltKey, pInfo,
    ulInfoLen} on LP64 (PyKCS11 passes bytes as they are).'''
    return struct.pack("=BB6xQQQQQQQ", extract, expand, prf, salt_type, buffer(salt), len(salt), salt_key,
                       buffer(info), len(info))
"""


@pytest.mark.timeout(300)
def test_hkdf_derive_through_the_module_matches_pyca(target: Pkcs11Target) -> None:
    """CK_HKDF_PARAMS read by the module (put_mechanism) and derived in the cluster, checked against pyca's HKDF."""
    from cryptography.hazmat.primitives import hashes, hmac
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    pin = target.crypto_user("pq_hkdf", "password1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(STRONGROOM_AGENT_SOCKET=target.socket, STRONGROOM_PKCS11_MODULE=str(target.module), USER_PIN=pin)
    script = PYKCS11_PREAMBLE + textwrap.dedent("""
    slot = lib.getSlotList(tokenPresent=True)[0]
    s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
    s.login(os.environ["USER_PIN"])
    secret = [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_TOKEN, False),
              (CKA_SENSITIVE, False), (CKA_EXTRACTABLE, True), (CKA_DERIVE, True)]
    base = s.generateKey(secret + [(CKA_VALUE_LEN, 32)], Mechanism(CKM_GENERIC_SECRET_KEY_GEN))
    emit(base=s.getAttributeValue(base, [CKA_VALUE])[0])
    both = s.deriveKey(base, secret + [(CKA_VALUE_LEN, 42)],
                       Mechanism(CKM_HKDF_DERIVE, hkdf_params(1, 1, CKM_SHA256, CKF_HKDF_SALT_DATA, b"salty",
                                                              info=b"strongroom hkdf")))
    prk = s.deriveKey(base, secret + [(CKA_VALUE_LEN, 32)],
                      Mechanism(CKM_HKDF_DERIVE, hkdf_params(1, 0, CKM_SHA256, CKF_HKDF_SALT_NULL)))
    emit(both=s.getAttributeValue(both, [CKA_VALUE])[0], prk=s.getAttributeValue(prk, [CKA_VALUE])[0])
    try:
        s.deriveKey(base, secret, Mechanism(CKM_HKDF_DERIVE, b"short"))
        emit(short=None)
    except PyKCS11Error as exc:
        emit(short=exc.value)
    """) + "\nprint(json.dumps(OUT))\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    base = bytes.fromhex(out["base"])
    expected = HKDF(hashes.SHA256(), 42, b"salty", b"strongroom hkdf").derive(base)
    assert bytes.fromhex(out["both"]) == expected
    prk = hmac.HMAC(bytes(32), hashes.SHA256())
    prk.update(base)
    assert bytes.fromhex(out["prk"]) == prk.finalize()  # extract only, no salt: HashLen zero bytes (RFC 5869)
    assert out["short"] == 0x71  # CKR_MECHANISM_PARAM_INVALID, from the module: not a CK_HKDF_PARAMS


def test_pkcs11_tool_takes_the_default_3_2_interface(target: Pkcs11Target) -> None:
    """OpenSC's pkcs11-tool asks C_GetInterface for the default interface: it gets 3.2 (C_GetInfo through that
    list says so) and works through it (its own suite, test_pkcs11_tool.py, then runs on the 3.2 list)."""
    pin = target.crypto_user("pq_tool", "password1")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    env.update(STRONGROOM_AGENT_SOCKET=target.socket)
    base = ["pkcs11-tool", "--module", str(target.module)]
    info = subprocess.run([*base, "-I"], capture_output=True, text=True, env=env, timeout=60)
    assert info.returncode == 0 and "Cryptoki version 3.2" in info.stdout, info.stdout + info.stderr
    keys = subprocess.run([*base, "-l", "-p", pin, "--keygen", "--key-type", "AES:32", "--label", "tool-aes"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert keys.returncode == 0 and "tool-aes" in keys.stdout, keys.stdout + keys.stderr

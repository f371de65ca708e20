"""Issue 13, item by item, through real clients (python-pkcs11, PyKCS11) over libstrongroom-pkcs11.so.

Each test runs a script in its own process against this module's own `strongroom up` cluster (its policies
are changed here, and restored), and checks what the script printed outside the HSM with pyca/cryptography
(and pycryptodome for the EdDSA prehash variants pyca lacks):

1. public objects and public-key operations, digests, random and public session objects without a login;
   the policy ``public_objects = hidden`` gives back the strict behaviour;
3. PyKCS11's multi-part AES-GCM decryption (size query -> NULL buffer -> next part);
4. Ed448 with CK_EDDSA_PARAMS {phFlag false}, Ed25519 without a parameter, and the prehash variants;
5. ECDH to a generic secret without CKA_VALUE_LEN (the shared secret's length), read back;
6. return codes: C_SeedRandom, C_Login with a NULL PIN, the token's PIN flags after wrong PINs;
7. C_CreateObject of secret and private keys, audited; the policy ``plaintext_import = forbidden``;
8. the policy ``legacy_algorithms``: RSA-1024, Triple-DES (two and three keys), P-192; RSA-1024 public keys
   verify whatever it says;
9. C_DigestKey, C_InitPIN by the SO.

Items 2 and 10 (operations that end, data of any size; the module's configuration and forks) are the C
driver's (test_pkcs11_module_c.py) and nginx's (test_openssl_nginx.py).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..conftest import LocalCluster, Pkcs11Module, Pkcs11Target, pkcs11_target
from .test_python_pkcs11 import Runner, needs_pykcs11, needs_python_pkcs11

MESSAGE = b"issue 13, through a real client " + bytes(range(64))
OAEP_SHA256 = rsa_padding.OAEP(mgf=rsa_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@pytest.fixture(scope="module")
def target(pkcs11_module: Pkcs11Module, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pkcs11Target]:
    """A cluster of this module's own: its policies change here."""
    local = LocalCluster(tmp_path_factory.mktemp("conformance") / "cluster")
    local.up()
    try:
        yield pkcs11_target(local, pkcs11_module)
    finally:
        local.down()


def runner_for(target: Pkcs11Target, user: str, password: str = "conformance-1") -> Runner:
    target.crypto_user(user, password)
    return Runner(module=str(target.module), socket=target.socket, token_label=target.token_label, user=user,
                  password=password)


def set_policy(target: Pkcs11Target, name: str, value: str) -> dict[str, str]:
    admin = target.cluster.admin()
    try:
        return admin.cluster_set_policy(name, value)["policies"]
    finally:
        admin.logout()


def eventually(check: Any, what: str, timeout: float = 30.0) -> Any:
    """A policy reaches every worker within a second (and the agent asks again after two): poll, bounded."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.3)


def _b(out: dict[str, Any], name: str) -> bytes:
    return bytes.fromhex(out[name])


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


# --- 1. public objects, before any login ---------------------------------------------------------------------


@needs_python_pkcs11
def test_public_session_sees_public_objects_and_uses_public_keys(target: Pkcs11Target) -> None:
    runner = runner_for(target, "pub_owner")
    signer = ec.generate_private_key(ec.SECP256R1())
    outside_point = signer.public_key().public_bytes(serialization.Encoding.X962,
                                                     serialization.PublicFormat.UncompressedPoint)
    out = runner.python_pkcs11("""
        # The owner (logged in) makes an RSA pair, a certificate-like data object kept private, and signs.
        with token.open(user_pin=PIN, rw=True) as s:
            pub, priv = s.generate_keypair(KeyType.RSA, 2048, label="pub-rsa", store=True)
            s.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.LABEL: "pub-note",
                             Attribute.VALUE: b"private by default"})
            signature = priv.sign(b"signed by the owner", mechanism=Mechanism.SHA256_RSA_PKCS)
            emit(owner_public_private=pub[Attribute.PRIVATE], owner_private_private=priv[Attribute.PRIVATE])
        emit(signature=signature)
    """)
    assert out["owner_public_private"] is False and out["owner_private_private"] is True
    public = runner.python_pkcs11("""
        s = token.open(rw=True)  # no PIN: a public session
        found = {o.label for o in s.get_objects({Attribute.LABEL: "pub-rsa"})}
        kinds = sorted(int(o.object_class) for o in s.get_objects({Attribute.LABEL: "pub-rsa"}))
        notes = len(list(s.get_objects({Attribute.LABEL: "pub-note"})))
        pub = s.get_key(object_class=ObjectClass.PUBLIC_KEY, label="pub-rsa")
        emit(kinds=kinds, notes=notes,
             verified=pub.verify(b"signed by the owner", given("SIG"), mechanism=Mechanism.SHA256_RSA_PKCS),
             sealed=pub.encrypt(b"for the owner's eyes", mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=OAEP),
             digest=s.digest(b"digested in public", mechanism=Mechanism.SHA256),
             random=s.generate_random(256))
        # A public session object of its own: an outside EC public key, used to verify
        from pkcs11.util.ec import encode_named_curve_parameters
        ext = s.create_object({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.KEY_TYPE: KeyType.EC,
                               Attribute.TOKEN: False, Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1"),
                               Attribute.EC_POINT: given("POINT"), Attribute.VERIFY: True})
        emit(ext_verified=ext.verify(b"signed outside", given("ECSIG"), mechanism=Mechanism.ECDSA_SHA256))
        # a public session secret key (CKA_PRIVATE false, asked for), made and used
        aes = s.generate_key(KeyType.AES, 128, store=False, template={Attribute.PRIVATE: False})
        iv = bytes(16)
        emit(aes_round=aes.decrypt(aes.encrypt(b"x" * 20, mechanism_param=iv), mechanism_param=iv) == b"x" * 20)
        # never a private object, never a token object
        emit(private_data=error_name(lambda: s.create_object({Attribute.CLASS: ObjectClass.DATA,
                                                               Attribute.TOKEN: False, Attribute.VALUE: b"x"})),
             token_data=error_name(lambda: s.create_object({Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True,
                                                             Attribute.PRIVATE: False, Attribute.VALUE: b"x"})),
             private_key=error_name(lambda: s.generate_key(KeyType.AES, 128, store=False)))
    """, SIG=_b(out, "signature"), POINT=b"\x04\x41" + outside_point,
        ECSIG=_der_to_rs(signer.sign(b"signed outside", ec.ECDSA(hashes.SHA256()))))
    assert public["kinds"] == [2], public  # CKO_PUBLIC_KEY only: the private key is not there
    assert public["notes"] == 0  # a data object is private unless its maker says otherwise
    assert public["verified"] is True
    assert public["digest"] == _sha256(b"digested in public").hex()
    assert len(_b(public, "random")) == 32  # python-pkcs11 counts bits
    assert public["ext_verified"] is True and public["aes_round"] is True
    assert public["private_data"] == "UserNotLoggedIn"
    assert public["token_data"] == "UserNotLoggedIn"
    assert public["private_key"] == "UserNotLoggedIn"
    clear = runner.python_pkcs11("""
        with token.open(user_pin=PIN) as s:
            priv = s.get_key(object_class=ObjectClass.PRIVATE_KEY, label="pub-rsa")
            emit(clear=priv.decrypt(given("SEALED"), mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=OAEP))
    """, SEALED=_b(public, "sealed"))
    assert _b(clear, "clear") == b"for the owner's eyes"


def _der_to_rs(der: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@needs_pykcs11
def test_policy_hidden_gives_back_the_strict_behaviour(target: Pkcs11Target) -> None:
    runner = runner_for(target, "pub_hidden")
    runner.python_pkcs11("""
        with token.open(user_pin=PIN, rw=True) as s:
            s.generate_keypair(KeyType.RSA, 2048, label="hidden-rsa", store=True)
    """)
    public_view = """
        s = lib.openSession(lib.getSlotList(tokenPresent=True)[0])
        found = len(s.findObjects([(CKA_LABEL, "hidden-rsa")]))
        try:
            s.digest(b"x", Mechanism(CKM_SHA256))
            digest = "ok"
        except PyKCS11Error as exc:
            digest = CKR[exc.value]
        emit(found=found, digest=digest)
    """
    assert runner.pykcs11(public_view) == {"found": 1, "digest": "ok"}
    try:
        policies = set_policy(target, "public_objects", "hidden")
        assert policies["public_objects"] == "hidden"
        assert eventually(lambda: runner.pykcs11(public_view) == {"found": 0, "digest": "CKR_USER_NOT_LOGGED_IN"},
                          "the strict behaviour")
        status = target.cluster.cli("cluster", "status", pin=target.cluster.admin_pin)[1]["data"]
        assert status["policies"]["public_objects"] == "hidden", status
        local = target.cluster.cli("status")[1]["data"]
        assert local["policies"]["public_objects"] == "hidden", local
        # a logged-in user is not affected
        logged = runner.pykcs11("""
            s = lib.openSession(lib.getSlotList(tokenPresent=True)[0])
            s.login(os.environ["USER_PIN"])
            emit(found=len(s.findObjects([(CKA_LABEL, "hidden-rsa")])))
        """)
        assert logged == {"found": 2}
    finally:
        set_policy(target, "public_objects", "visible")
    assert eventually(lambda: runner.pykcs11(public_view) == {"found": 1, "digest": "ok"}, "public objects again")


# --- 3. PyKCS11's multi-part AES-GCM decryption -----------------------------------------------------------


@needs_pykcs11
def test_pykcs11_multi_part_gcm_decryption(target: Pkcs11Target) -> None:
    runner = runner_for(target, "gcm_parts")
    key, iv, aad = os.urandom(32), os.urandom(12), b"associated"
    plain = os.urandom(100)
    sealed = AESGCM(key).encrypt(iv, plain, aad)
    out = runner.pykcs11("""
        s = lib.openSession(lib.getSlotList(tokenPresent=True)[0], CKF_SERIAL_SESSION | CKF_RW_SESSION)
        s.login(os.environ["USER_PIN"])
        k = s.createObject([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_TOKEN, False),
                            (CKA_VALUE, given("KEY")), (CKA_ENCRYPT, True), (CKA_DECRYPT, True)])
        m = AES_GCM_Mechanism(given("IV"), given("AAD"), 128)
        sealed = given("SEALED")
        # PyKCS11's calling pattern: each C_DecryptUpdate is a size query, then the call with that size
        s.decryptInit(m, k)
        parts = [s.decryptUpdate(sealed[:40]), s.decryptUpdate(sealed[40:-16]), s.decryptUpdate(sealed[-16:])]
        last = s.decryptFinal()
        emit(plain=bytes(b"".join(bytes(p) for p in parts) + bytes(last)))
        s.encryptInit(m, k)
        parts = [s.encryptUpdate(given("PLAIN")[:33]), s.encryptUpdate(given("PLAIN")[33:])]
        emit(sealed=bytes(b"".join(bytes(p) for p in parts) + bytes(s.encryptFinal())))
        # a damaged tag: the final says so, and no plaintext came out before it
        s.decryptInit(m, k)
        early = bytes(s.decryptUpdate(sealed[:-1] + bytes([sealed[-1] ^ 1])))
        try:
            s.decryptFinal()
            damaged = "accepted"
        except PyKCS11Error as exc:
            damaged = CKR[exc.value]
        emit(early=len(early), damaged=damaged)
    """, KEY=key, IV=iv, AAD=aad, SEALED=sealed, PLAIN=plain)
    assert _b(out, "plain") == plain
    assert _b(out, "sealed") == sealed
    assert out["early"] == 0 and out["damaged"] == "CKR_ENCRYPTED_DATA_INVALID"


# --- 4. EdDSA: Ed448 with its standard parameter, Ed25519, the prehash variants -------------------------------


@needs_pykcs11
def test_eddsa_variants(target: Pkcs11Target) -> None:
    runner = runner_for(target, "eddsa_user")
    ed448_oid, ed25519_oid = bytes.fromhex("06032b6571"), bytes.fromhex("06032b6570")
    out = runner.pykcs11("""
        s = lib.openSession(lib.getSlotList(tokenPresent=True)[0], CKF_SERIAL_SESSION | CKF_RW_SESSION)
        s.login(os.environ["USER_PIN"])
        res = {}
        for name in ("448", "25519"):
            pub, priv = s.generateKeyPair(
                [(CKA_TOKEN, False), (CKA_EC_PARAMS, given("OID" + name)), (CKA_VERIFY, True)],
                [(CKA_TOKEN, False), (CKA_SIGN, True)], mecha=Mechanism(CKM_EC_EDWARDS_KEY_PAIR_GEN))
            point = bytes(s.getAttributeValue(pub, [CKA_EC_POINT])[0])
            variants = {"none": EDDSA_Mechanism(), "pure": EDDSA_Mechanism(False), "ph": EDDSA_Mechanism(True),
                        "ctx": EDDSA_Mechanism(False, b"context")}
            for label, mech in variants.items():
                try:
                    res[name + "-" + label] = bytes(s.sign(priv, given("MSG"), mech)).hex()
                except PyKCS11Error as exc:
                    res[name + "-" + label] = CKR[exc.value]
            res[name + "-point"] = point.hex()
        emit(**res)
    """, OID448=ed448_oid, OID25519=ed25519_oid, MSG=MESSAGE)
    from Crypto.Hash import SHA512, SHAKE256
    from Crypto.Signature import eddsa

    point448 = _b(out, "448-point")[-57:]
    point25519 = _b(out, "25519-point")[-32:]
    # Ed448: with CK_EDDSA_PARAMS {phFlag false, no context} (what PKCS#11 3.0 requires), and without one
    ed448.Ed448PublicKey.from_public_bytes(point448).verify(_b(out, "448-pure"), MESSAGE)
    ed448.Ed448PublicKey.from_public_bytes(point448).verify(_b(out, "448-none"), MESSAGE)
    ed25519.Ed25519PublicKey.from_public_bytes(point25519).verify(_b(out, "25519-none"), MESSAGE)
    # the prehash and context variants, checked with pycryptodome's RFC 8032 mode (pyca has none)
    key448 = eddsa.import_public_key(point448)
    eddsa.new(key448, "rfc8032").verify(SHAKE256.new(MESSAGE), _b(out, "448-ph"))
    eddsa.new(key448, "rfc8032", context=b"context").verify(MESSAGE, _b(out, "448-ctx"))
    key25519 = eddsa.import_public_key(point25519)
    eddsa.new(key25519, "rfc8032").verify(SHA512.new(MESSAGE), _b(out, "25519-ph"))
    eddsa.new(key25519, "rfc8032", context=b"context").verify(MESSAGE, _b(out, "25519-ctx"))


# --- 5. ECDH to a generic secret without CKA_VALUE_LEN --------------------------------------------------------


@needs_pykcs11
def test_ecdh_without_value_len_takes_the_shared_secret_length(target: Pkcs11Target) -> None:
    runner = runner_for(target, "ecdh_user")
    peer = ec.generate_private_key(ec.SECP256R1())
    peer_point = peer.public_key().public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)
    out = runner.pykcs11("""
        s = lib.openSession(lib.getSlotList(tokenPresent=True)[0], CKF_SERIAL_SESSION | CKF_RW_SESSION)
        s.login(os.environ["USER_PIN"])
        pub, priv = s.generateKeyPair([(CKA_TOKEN, False), (CKA_EC_PARAMS, given("P256"))],
                                      [(CKA_TOKEN, False), (CKA_DERIVE, True)],
                                      mecha=Mechanism(CKM_EC_KEY_PAIR_GEN))
        # SunPKCS11's key agreement template: class and key type only (no CKA_VALUE_LEN); readable here
        secret = s.deriveKey(priv, [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET),
                                    (CKA_TOKEN, False), (CKA_SENSITIVE, False), (CKA_EXTRACTABLE, True)],
                             ECDH1_DERIVE_Mechanism(given("PEER")))
        value, length = s.getAttributeValue(secret, [CKA_VALUE, CKA_VALUE_LEN])
        point = bytes(s.getAttributeValue(pub, [CKA_EC_POINT])[0])
        emit(value=bytes(value), length=length, point=point)
    """, P256=bytes.fromhex("06082a8648ce3d030107"), PEER=peer_point)
    token_public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _b(out, "point")[-65:])
    assert _b(out, "value") == peer.exchange(ec.ECDH(), token_public)
    assert out["length"] == 32


# --- 7. keys in clear: C_CreateObject of secret and private keys, readable non-sensitive keys -----------------


@needs_python_pkcs11
def test_plaintext_import_of_secret_and_private_keys(target: Pkcs11Target) -> None:
    runner = runner_for(target, "import_user")
    aes_value, hmac_value, iv = os.urandom(32), os.urandom(40), os.urandom(16)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    numbers = rsa_key.private_numbers()
    parts = {name: value.to_bytes((value.bit_length() + 7) // 8, "big") for name, value in (
        ("N", numbers.public_numbers.n), ("E", numbers.public_numbers.e), ("D", numbers.d), ("P", numbers.p),
        ("Q", numbers.q), ("DP", numbers.dmp1), ("DQ", numbers.dmq1), ("QI", numbers.iqmp))}
    ed_raw = ed_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
    out = runner.python_pkcs11("""
        from pkcs11.util.ec import encode_named_curve_parameters
        with token.open(user_pin=PIN, rw=True) as s:
            aes = s.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                                   Attribute.TOKEN: True, Attribute.LABEL: "imported-aes",
                                   Attribute.VALUE: given("AES"),
                                   Attribute.ENCRYPT: True, Attribute.DECRYPT: True})
            emit(aes_ct=aes.encrypt(b"imported in clear", mechanism_param=given("IV")),
                 aes_value=error_name(lambda: aes[Attribute.VALUE]),  # sensitive by default
                 aes_flags=[aes[Attribute.LOCAL], aes[Attribute.ALWAYS_SENSITIVE], aes[Attribute.NEVER_EXTRACTABLE]])
            hmac = s.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                                    Attribute.TOKEN: False, Attribute.VALUE: given("HMAC"), Attribute.SIGN: True,
                                    Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True})
            emit(mac=hmac.sign(b"authenticate me", mechanism=Mechanism.SHA256_HMAC), hmac_value=hmac[Attribute.VALUE],
                 hmac_len=hmac[Attribute.VALUE_LEN])
            priv = s.create_object({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.RSA,
                                    Attribute.TOKEN: False, Attribute.SIGN: True, Attribute.MODULUS: given("N"),
                                    Attribute.PUBLIC_EXPONENT: given("E"), Attribute.PRIVATE_EXPONENT: given("D"),
                                    Attribute.PRIME_1: given("P"), Attribute.PRIME_2: given("Q"),
                                    Attribute.EXPONENT_1: given("DP"), Attribute.EXPONENT_2: given("DQ"),
                                    Attribute.COEFFICIENT: given("QI")})
            emit(rsa_sig=priv.sign(b"signed with an imported key", mechanism=Mechanism.SHA256_RSA_PKCS),
                 rsa_d=error_name(lambda: priv[Attribute.PRIVATE_EXPONENT]))
            ecpriv = s.create_object({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC,
                                      Attribute.TOKEN: False, Attribute.SIGN: True,
                                      Attribute.EC_PARAMS: encode_named_curve_parameters("secp384r1"),
                                      Attribute.VALUE: given("ECD")})
            emit(ec_sig=ecpriv.sign(b"signed with an imported key", mechanism=Mechanism.ECDSA_SHA384))
            edpriv = s.create_object({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.KEY_TYPE: KeyType.EC_EDWARDS,
                                      Attribute.TOKEN: False, Attribute.SIGN: True, Attribute.SENSITIVE: False,
                                      Attribute.EXTRACTABLE: True, Attribute.EC_PARAMS: bytes.fromhex("06032b6570"),
                                      Attribute.VALUE: given("ED")})
            emit(ed_sig=edpriv.sign(b"signed with an imported key", mechanism=Mechanism.EDDSA),
                 ed_value=edpriv[Attribute.VALUE])
            # a template that contradicts its values, a value of the wrong size
            emit(short_aes=error_name(lambda: s.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                      Attribute.KEY_TYPE: KeyType.AES, Attribute.TOKEN: False,
                                      Attribute.VALUE: b"x" * 15})),
                 rsa_on_ec=error_name(lambda: s.create_object({Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                                      Attribute.KEY_TYPE: KeyType.EC, Attribute.TOKEN: False,
                                      Attribute.EC_PARAMS: encode_named_curve_parameters("secp384r1"),
                                      Attribute.VALUE: given("ECD"), Attribute.MODULUS: given("N")})))
    """, AES=aes_value, IV=iv, HMAC=hmac_value, ECD=ec_key.private_numbers().private_value.to_bytes(48, "big"),
        ED=ed_raw, **parts)
    from cryptography.hazmat.primitives import hmac as hmac_mod
    from cryptography.hazmat.primitives import padding

    padder = padding.PKCS7(128).padder()
    encryptor = Cipher(__import__("cryptography.hazmat.primitives.ciphers.algorithms",
                                  fromlist=["AES"]).AES(aes_value), modes.CBC(iv)).encryptor()
    assert _b(out, "aes_ct") == encryptor.update(padder.update(b"imported in clear") + padder.finalize()) + \
        encryptor.finalize()
    assert out["aes_value"] == "AttributeSensitive"
    assert out["aes_flags"] == [False, False, False]  # not made here, never "always sensitive"
    mac = hmac_mod.HMAC(hmac_value, hashes.SHA256())
    mac.update(b"authenticate me")
    assert _b(out, "mac") == mac.finalize()
    assert _b(out, "hmac_value") == hmac_value and out["hmac_len"] == 40
    rsa_key.public_key().verify(_b(out, "rsa_sig"), b"signed with an imported key", rsa_padding.PKCS1v15(),
                                hashes.SHA256())
    assert out["rsa_d"] == "AttributeSensitive"
    sig = _b(out, "ec_sig")
    ec_key.public_key().verify(encode_dss_signature(int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big")),
                               b"signed with an imported key", ec.ECDSA(hashes.SHA384()))
    ed_key.public_key().verify(_b(out, "ed_sig"), b"signed with an imported key")
    assert _b(out, "ed_value") == ed_raw
    assert out["short_aes"] == "AttributeValueInvalid"
    assert out["rsa_on_ec"] == "TemplateInconsistent"
    # Audited: the node's audit log names each key made in clear.
    records = [json.loads(line) for path in target.cluster.dir.glob("nodes/*/audit.log")
               for line in path.read_text().splitlines() if line.strip()]
    imported = [r for r in records if r.get("event") == "object.create" and (r.get("details") or {}).get("in_clear")
                and r.get("actor") == "import_user"]
    assert {r["details"]["class"] for r in imported} == {"SECRET_KEY", "PRIVATE_KEY"}, imported
    assert len(imported) >= 5

    # The policy forbids it: keys then enter only wrapped; public keys still come in.
    try:
        assert set_policy(target, "plaintext_import", "forbidden")["plaintext_import"] == "forbidden"
        script = """
            from pkcs11.util.ec import encode_named_curve_parameters
            with token.open(user_pin=PIN, rw=True) as s:
                emit(aes=error_name(lambda: s.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                    Attribute.KEY_TYPE: KeyType.AES, Attribute.TOKEN: False,
                                    Attribute.VALUE: b"k" * 16})),
                     public=error_name(lambda: s.create_object({Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                                       Attribute.KEY_TYPE: KeyType.EC, Attribute.TOKEN: False,
                                       Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1"),
                                       Attribute.EC_POINT: given("POINT")})))
        """
        point = b"\x04\x41" + ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        refused = eventually(lambda: (r := runner.python_pkcs11(script, POINT=point))["aes"] is not None and r,
                             "plaintext import refused")
        assert refused == {"aes": "TemplateInconsistent", "public": None}
    finally:
        set_policy(target, "plaintext_import", "allowed")


# --- 8. the legacy-algorithms policy -------------------------------------------------------------------------


@needs_pykcs11
def test_legacy_algorithms_policy(target: Pkcs11Target) -> None:
    runner = runner_for(target, "legacy_user")
    old_rsa = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    old_sig = old_rsa.sign(MESSAGE, rsa_padding.PKCS1v15(), hashes.SHA256())
    n = old_rsa.public_key().public_numbers().n
    script = """
        slot = lib.getSlotList(tokenPresent=True)[0]
        def code(call):
            try:
                return call()
            except PyKCS11Error as exc:
                return CKR[exc.value]
        s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        s.login(os.environ["USER_PIN"])
        res = {"mechs": [m for m in ("CKM_DES3_KEY_GEN", "CKM_DES2_KEY_GEN", "CKM_DES3_CBC", "CKM_DES3_ECB",
                                      "CKM_DES3_CBC_PAD") if m in lib.getMechanismList(slot)],
               "rsa_min": lib.getMechanismInfo(slot, "CKM_RSA_PKCS_KEY_PAIR_GEN").ulMinKeySize,
               "ec_min": lib.getMechanismInfo(slot, "CKM_EC_KEY_PAIR_GEN").ulMinKeySize}
        # an old certificate's RSA-1024 public key verifies, whatever the policy
        old = s.createObject([(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_RSA), (CKA_TOKEN, False),
                              (CKA_MODULUS, given("N")), (CKA_PUBLIC_EXPONENT, b"\\x01\\x00\\x01"),
                              (CKA_VERIFY, True)])
        res["old_verify"] = code(lambda: s.verify(old, given("MSG"), given("SIG"), Mechanism(CKM_SHA256_RSA_PKCS)))
        def rsa1024():
            pub, priv = s.generateKeyPair([(CKA_TOKEN, False), (CKA_MODULUS_BITS, 1024), (CKA_VERIFY, True)],
                                          [(CKA_TOKEN, False), (CKA_SIGN, True)])
            sig = bytes(s.sign(priv, given("MSG"), Mechanism(CKM_SHA256_RSA_PKCS)))
            return {"n": bytes(s.getAttributeValue(pub, [CKA_MODULUS])[0]).hex(), "sig": sig.hex()}
        res["rsa1024"] = code(rsa1024)
        def des(gen, key_type):
            k = s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, key_type), (CKA_TOKEN, False),
                               (CKA_SENSITIVE, False), (CKA_EXTRACTABLE, True), (CKA_ENCRYPT, True),
                               (CKA_DECRYPT, True)], Mechanism(gen))
            value = bytes(s.getAttributeValue(k, [CKA_VALUE])[0])
            ct = bytes(s.encrypt(k, given("MSG"), Mechanism(CKM_DES3_CBC_PAD, b"\\x00" * 8)))
            ecb = bytes(s.encrypt(k, b"\\x01" * 16, Mechanism(CKM_DES3_ECB)))
            back = bytes(s.decrypt(k, ct, Mechanism(CKM_DES3_CBC_PAD, b"\\x00" * 8)))
            return {"value": value.hex(), "ct": ct.hex(), "ecb": ecb.hex(), "back": back.hex()}
        res["des3"] = code(lambda: des(CKM_DES3_KEY_GEN, CKK_DES3))
        res["des2"] = code(lambda: des(CKM_DES2_KEY_GEN, CKK_DES2))
        def p192():
            pub, priv = s.generateKeyPair([(CKA_TOKEN, False), (CKA_EC_PARAMS, given("P192")), (CKA_VERIFY, True)],
                                          [(CKA_TOKEN, False), (CKA_SIGN, True)], mecha=Mechanism(CKM_EC_KEY_PAIR_GEN))
            sig = bytes(s.sign(priv, given("MSG"), Mechanism(CKM_ECDSA_SHA256)))
            return {"point": bytes(s.getAttributeValue(pub, [CKA_EC_POINT])[0]).hex(), "sig": sig.hex()}
        res["p192"] = code(p192)
        emit(**res)
    """
    inputs = {"N": n.to_bytes(128, "big"), "MSG": MESSAGE, "SIG": old_sig,
              "P192": bytes.fromhex("06082a8648ce3d030101")}
    off = runner.pykcs11(script, **inputs)
    assert off["mechs"] == [] and off["rsa_min"] == 2048 and off["ec_min"] == 256, off
    assert off["old_verify"] is True, off
    assert off["rsa1024"] == "CKR_ATTRIBUTE_VALUE_INVALID", off
    assert off["des3"] == "CKR_MECHANISM_INVALID" and off["des2"] == "CKR_MECHANISM_INVALID", off
    assert off["p192"] == "CKR_CURVE_NOT_SUPPORTED", off
    try:
        set_policy(target, "legacy_algorithms", "on")
        on = eventually(lambda: (result := runner.pykcs11(script, **inputs))["mechs"] and result,
                        "the legacy mechanisms listed")
    finally:
        set_policy(target, "legacy_algorithms", "off")
    assert on["mechs"] == ["CKM_DES3_KEY_GEN", "CKM_DES2_KEY_GEN", "CKM_DES3_CBC", "CKM_DES3_ECB", "CKM_DES3_CBC_PAD"]
    assert on["rsa_min"] == 1024 and on["ec_min"] == 192, on
    public = rsa.RSAPublicNumbers(65537, int(on["rsa1024"]["n"], 16)).public_key()
    assert public.key_size == 1024
    public.verify(bytes.fromhex(on["rsa1024"]["sig"]), MESSAGE, rsa_padding.PKCS1v15(), hashes.SHA256())
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives import padding

    for name, length in (("des3", 24), ("des2", 16)):
        value = bytes.fromhex(on[name]["value"])
        assert len(value) == length and all(bin(b).count("1") % 2 for b in value), name  # odd parity
        three = value + value[:8] if length == 16 else value  # K1 K2 K1
        padder = padding.PKCS7(64).padder()
        encryptor = Cipher(TripleDES(three), modes.CBC(bytes(8))).encryptor()
        assert bytes.fromhex(on[name]["ct"]) == encryptor.update(padder.update(MESSAGE) + padder.finalize()) + \
            encryptor.finalize(), name
        ecb = Cipher(TripleDES(three), modes.ECB()).encryptor()
        assert bytes.fromhex(on[name]["ecb"]) == ecb.update(b"\x01" * 16) + ecb.finalize(), name
        assert bytes.fromhex(on[name]["back"]) == MESSAGE
    point = bytes.fromhex(on["p192"]["point"])[-49:]
    p192 = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP192R1(), point)
    sig = bytes.fromhex(on["p192"]["sig"])
    p192.verify(encode_dss_signature(int.from_bytes(sig[:24], "big"), int.from_bytes(sig[24:], "big")), MESSAGE,
                ec.ECDSA(hashes.SHA256()))
    # off again: nothing legacy is offered or made
    again = eventually(lambda: (result := runner.pykcs11(script, **inputs))["mechs"] == [] and result,
                       "the legacy mechanisms gone")
    assert again["rsa1024"] == "CKR_ATTRIBUTE_VALUE_INVALID" and again["old_verify"] is True


# --- 9. C_DigestKey ----------------------------------------------------------------------------------------------


@needs_pykcs11
def test_digest_key(target: Pkcs11Target) -> None:
    runner = runner_for(target, "digestkey_user")
    value = os.urandom(32)
    out = runner.pykcs11("""
        s = lib.openSession(lib.getSlotList(tokenPresent=True)[0], CKF_SERIAL_SESSION | CKF_RW_SESSION)
        s.login(os.environ["USER_PIN"])
        k = s.createObject([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_TOKEN, False),
                            (CKA_VALUE, given("KEY")), (CKA_EXTRACTABLE, True)])
        kept = s.generateKey([(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 16),
                              (CKA_TOKEN, False)])
        d = bytes(s.digestSession(Mechanism(CKM_SHA256)).update(b"prefix").digestKey(k).update(b"suffix").final())
        try:
            s.digestSession(Mechanism(CKM_SHA256)).digestKey(kept)
            refused = "accepted"
        except PyKCS11Error as exc:
            refused = CKR[exc.value]
        emit(digest=d, refused=refused)
    """, KEY=value)
    assert _b(out, "digest") == _sha256(b"prefix" + value + b"suffix")
    assert out["refused"] == "CKR_KEY_INDIGESTIBLE"  # a key that may never leave is not digested either


# --- 9. C_InitPIN by the SO ------------------------------------------------------------------------------------


@needs_pykcs11
def test_init_pin_by_the_so(target: Pkcs11Target) -> None:
    runner = runner_for(target, "initpin_user", "initpin-password")
    out = runner.pykcs11("""
        slot = lib.getSlotList(tokenPresent=True)[0]
        def code(call):
            try:
                call()
                return "CKR_OK"
            except PyKCS11Error as exc:
                return CKR[exc.value]
        so = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        res = {"public": code(lambda: so.initPin("initpin_user:initpin-password-2"))}
        so.login(given("ADMIN").decode(), user_type=CKU_SO)
        res["so"] = code(lambda: so.initPin("initpin_user:initpin-password-2"))
        res["nobody"] = code(lambda: so.initPin("nobody_at_all:initpin-password-2"))
        res["short"] = code(lambda: so.initPin("initpin_user:short"))
        res["no_user"] = code(lambda: so.initPin("initpin-password-3"))
        so.logout()
        user = lib.openSession(slot)
        res["old"] = code(lambda: user.login("initpin_user:initpin-password"))
        res["new"] = code(lambda: user.login("initpin_user:initpin-password-2"))
        emit(**res)
    """, ADMIN=target.cluster.admin_pin.encode())
    assert out == {"public": "CKR_USER_NOT_LOGGED_IN", "so": "CKR_OK", "nobody": "CKR_PIN_INVALID",
                   "short": out["short"], "no_user": "CKR_PIN_INVALID", "old": "CKR_PIN_INCORRECT", "new": "CKR_OK"}
    assert out["short"] in ("CKR_PIN_LEN_RANGE", "CKR_PIN_INVALID"), out


# --- 6. return codes (last: five wrong PINs pause this host's admin logins for a while) ------------------------


@needs_pykcs11
def test_return_codes_and_pin_flags(target: Pkcs11Target) -> None:
    runner = runner_for(target, "flags_user", "flags-password")
    out = runner.pykcs11("""
        slot = lib.getSlotList(tokenPresent=True)[0]
        def code(call):
            try:
                call()
                return "CKR_OK"
            except PyKCS11Error as exc:
                return CKR[exc.value]
        def flags():
            f = lib.getTokenInfo(slot).flags
            return [name for name, bit in (("low", CKF_USER_PIN_COUNT_LOW), ("final", CKF_USER_PIN_FINAL_TRY),
                                           ("locked", CKF_USER_PIN_LOCKED)) if f & bit]
        s = lib.openSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        res = {"seed": code(lambda: s.seedRandom(b"some seed")), "null_pin": code(lambda: s.login(None)),
               "no_colon": code(lambda: s.login("no-colon-here")), "flags0": flags()}
        closed = lib.openSession(slot)
        closed.closeSession()
        res["seed_closed"] = code(lambda: closed.seedRandom(b"x"))
        wrong = []
        for i in range(5):
            wrong.append(code(lambda: s.login("flags_user:wrong-" + str(i))))
            res["flags" + str(i + 1)] = flags()
        res["wrong"] = wrong
        res["right_but_locked"] = code(lambda: s.login(os.environ["USER_PIN"]))
        res["flags_locked"] = flags()
        emit(**res)
    """)
    assert out["seed"] == "CKR_RANDOM_SEED_NOT_SUPPORTED"
    assert out["seed_closed"] == "CKR_SESSION_HANDLE_INVALID"
    assert out["null_pin"] == "CKR_ARGUMENTS_BAD"
    assert out["no_colon"] == "CKR_PIN_INCORRECT"
    # Item 10: a failed C_Login explains itself on stderr, without a debug switch.
    assert "C_Login(CKU_USER) without a PIN: give the PIN, username:password" in runner.stderr, runner.stderr
    assert "the PIN is not in username:password form" in runner.stderr, runner.stderr
    assert out["flags0"] == []
    assert out["wrong"] == ["CKR_PIN_INCORRECT"] * 5
    assert out["flags1"] == ["low"] and out["flags3"] == ["low"]
    assert out["flags4"] == ["low", "final"]
    assert out["flags5"] == ["low", "locked"]
    assert out["right_but_locked"] == "CKR_PIN_LOCKED"
    assert out["flags_locked"] == ["low", "locked"]

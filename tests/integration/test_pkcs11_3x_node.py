"""PKCS#11 3.x mechanisms of the node (issue 17) through the SDK and the CLI against a real cluster, checked
outside with pyca/cryptography and the standard library: SHA-3 digests and HMACs, HKDF (a secret key and a
data object, salt as data and as a key), ML-DSA keys as objects like any other (PKCS#8 inside AES-KWP,
unwrapped back, a backup restored into a new cluster), the CLI's ML-DSA and ML-KEM commands."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap_with_padding

from strongroom.client import Client, ClientError
from strongroom.constants import CKA, CKK, CKM, CKO
from strongroom.errors import CKR

from .conftest import LocalCluster

pytestmark = pytest.mark.slow

PASSWORD = "password1"
CAROL = f"p3carol:{PASSWORD}"


@pytest.fixture(scope="module")
def hsm(shared_cluster: LocalCluster) -> Iterator[LocalCluster]:
    admin = shared_cluster.admin()
    for name in ("p3alice", "p3bob", "p3carol"):
        admin.user_create(name, "crypto-user", PASSWORD)
    admin.logout()
    yield shared_cluster


def login(cluster: LocalCluster, name: str) -> Client:
    client = cluster.client()
    client.login(name, PASSWORD)
    return client


def refused(code: CKR, call: Any, *args: Any, **kwargs: Any) -> None:
    with pytest.raises(ClientError) as caught:
        call(*args, **kwargs)
    assert caught.value.code == code, caught.value


OPEN = {CKA.TOKEN: True, CKA.SENSITIVE: False, CKA.EXTRACTABLE: True}


def secret(client: Client, mechanism: CKM, length: int, extra: dict[int, Any] | None = None) -> tuple[int, bytes]:
    """A key the caller may read (so the test can compute outside what the cluster computed)."""
    handle = client.generate_key(mechanism, {**OPEN, CKA.VALUE_LEN: length, CKA.DERIVE: True, CKA.SIGN: True,
                                             CKA.VERIFY: True, **(extra or {})})
    return handle, client.get_attribute(handle, CKA.VALUE)


def test_sha3_digests_and_hmacs(hsm: LocalCluster) -> None:
    alice = login(hsm, "p3alice")
    data = bytes(range(256)) * 50
    for ckm, name in ((CKM.SHA3_224, "sha3_224"), (CKM.SHA3_256, "sha3_256"), (CKM.SHA3_384, "sha3_384"),
                      (CKM.SHA3_512, "sha3_512")):
        assert alice.digest(ckm, data) == hashlib.new(name, data).digest()
    listed = {m["mechanism"] for m in alice.mechanisms()}
    assert {CKM.SHA3_256, CKM.SHA3_512_HMAC, CKM.SHA3_256_KEY_GEN, CKM.HKDF_DERIVE, CKM.HKDF_DATA} <= listed

    typed, value = secret(alice, CKM.SHA3_256_KEY_GEN, 32)
    assert alice.get_attributes(typed, [CKA.KEY_TYPE, CKA.KEY_GEN_MECHANISM, CKA.ENCRYPT]) == {
        CKA.KEY_TYPE: CKK.SHA3_256_HMAC, CKA.KEY_GEN_MECHANISM: CKM.SHA3_256_KEY_GEN, CKA.ENCRYPT: False}
    mac = alice.sign(typed, CKM.SHA3_256_HMAC, b"message")
    assert mac == hmac.new(value, b"message", "sha3_256").digest()
    alice.verify(typed, CKM.SHA3_256_HMAC, b"message", mac)
    refused(CKR.SIGNATURE_INVALID, alice.verify, typed, CKM.SHA3_256_HMAC, b"messagE", mac)
    refused(CKR.KEY_TYPE_INCONSISTENT, alice.sign, typed, CKM.SHA3_512_HMAC, b"message")  # typed for SHA3-256

    generic, generic_value = secret(alice, CKM.GENERIC_SECRET_KEY_GEN, 48)
    assert alice.sign(generic, CKM.SHA3_384_HMAC_GENERAL, b"m", {"mac_len": 16}) == hmac.new(
        generic_value, b"m", "sha3_384").digest()[:16]


def test_hkdf_derives_keys_and_data(hsm: LocalCluster) -> None:
    alice, bob = login(hsm, "p3alice"), login(hsm, "p3bob")
    base, ikm = secret(alice, CKM.GENERIC_SECRET_KEY_GEN, 32)
    salt_key, salt = secret(alice, CKM.HKDF_KEY_GEN, 16)
    info = b"strongroom hkdf test"

    def params(**fields: Any) -> dict[str, Any]:
        return {"extract": True, "expand": True, "prf": int(CKM.SHA384), "salt_type": 2, "salt": b"salt bytes",
                "salt_key": None, "info": info} | fields

    aes = alice.derive_key(CKM.HKDF_DERIVE, base, {**OPEN, CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.AES,
                                                   CKA.VALUE_LEN: 32, CKA.ENCRYPT: True}, params())
    assert alice.get_attribute(aes, CKA.VALUE) == HKDF(hashes.SHA384(), 32, b"salt bytes", info).derive(ikm)

    with_key = alice.derive_key(CKM.HKDF_DERIVE, base, {**OPEN, CKA.KEY_TYPE: CKK.GENERIC_SECRET, CKA.VALUE_LEN: 64},
                                params(salt_type=4, salt=None, salt_key=salt_key, prf=int(CKM.SHA3_256)))
    assert alice.get_attribute(with_key, CKA.VALUE) == HKDF(hashes.SHA3_256(), 64, salt, info).derive(ikm)

    data = alice.derive_key(CKM.HKDF_DATA, base, {CKA.TOKEN: True, CKA.LABEL: b"okm", CKA.VALUE_LEN: 40},
                            params(salt_type=1, salt=None))
    assert alice.get_attributes(data, [CKA.CLASS, CKA.LABEL]) == {CKA.CLASS: CKO.DATA, CKA.LABEL: b"okm"}
    assert alice.get_attribute(data, CKA.VALUE) == HKDF(hashes.SHA384(), 40, None, info).derive(ikm)
    prk = alice.derive_key(CKM.HKDF_DATA, base, {CKA.TOKEN: False}, params(expand=False),
                           session=alice.open_session())
    assert alice.get_attribute(prk, CKA.VALUE) == HKDF.extract(hashes.SHA384(), b"salt bytes", ikm)

    # The salt key passes the base key's checks: another user's key is not the caller's to derive from.
    others, _ = secret(bob, CKM.HKDF_KEY_GEN, 16)
    with pytest.raises(ClientError) as caught:
        alice.derive_key(CKM.HKDF_DERIVE, base, {**OPEN, CKA.KEY_TYPE: CKK.GENERIC_SECRET, CKA.VALUE_LEN: 32},
                         params(salt_type=4, salt=None, salt_key=others))
    assert caught.value.code in (CKR.KEY_HANDLE_INVALID, CKR.OBJECT_HANDLE_INVALID), caught.value
    no_derive = alice.generate_key(CKM.HKDF_KEY_GEN, {**OPEN, CKA.VALUE_LEN: 16, CKA.DERIVE: False})
    refused(CKR.KEY_FUNCTION_NOT_PERMITTED, alice.derive_key, CKM.HKDF_DERIVE, base,
            {**OPEN, CKA.KEY_TYPE: CKK.GENERIC_SECRET, CKA.VALUE_LEN: 32},
            params(salt_type=4, salt=None, salt_key=no_derive))
    for bad in (params(prf=int(CKM.MD5)), params(extract=False, expand=False), params(salt_type=2, salt=b""),
                params(salt_type=9), {"extract": True}, b"raw bytes"):
        refused(CKR.MECHANISM_PARAM_INVALID, alice.derive_key, CKM.HKDF_DERIVE, base,
                {**OPEN, CKA.KEY_TYPE: CKK.GENERIC_SECRET, CKA.VALUE_LEN: 32}, bad)
    refused(CKR.KEY_SIZE_RANGE, alice.derive_key, CKM.HKDF_DERIVE, base,
            {**OPEN, CKA.KEY_TYPE: CKK.AES, CKA.VALUE_LEN: 20}, params())
    aes_base = alice.generate_key(CKM.AES_KEY_GEN, {**OPEN, CKA.VALUE_LEN: 16, CKA.DERIVE: True})
    refused(CKR.KEY_TYPE_INCONSISTENT, alice.derive_key, CKM.HKDF_DERIVE, aes_base,
            {**OPEN, CKA.KEY_TYPE: CKK.GENERIC_SECRET, CKA.VALUE_LEN: 32}, params())


def ml_dsa(client: Client, label: bytes, parameter_set: int = 2) -> tuple[int, int]:
    # Not sensitive and extractable: still, neither CKA_SEED nor CKA_VALUE of the private key is ever readable.
    return client.generate_key_pair(CKM.ML_DSA_KEY_PAIR_GEN,
                                    {CKA.TOKEN: True, CKA.PARAMETER_SET: parameter_set, CKA.LABEL: label},
                                    {CKA.TOKEN: True, CKA.LABEL: label, CKA.EXTRACTABLE: True, CKA.SENSITIVE: False})


def test_ml_dsa_keys_wrap_as_pkcs8_in_aes_kwp_and_unwrap(hsm: LocalCluster) -> None:
    alice, bob = login(hsm, "p3alice"), login(hsm, "p3bob")
    public, private = ml_dsa(alice, b"wrapped ml-dsa")
    raw_public = alice.get_attribute(public, CKA.VALUE)
    kek, kek_value = secret(alice, CKM.AES_KEY_GEN, 32, {CKA.WRAP: True, CKA.UNWRAP: True})
    wrapped = alice.wrap_key(CKM.AES_KEY_WRAP_PAD, kek, private)
    # Outside: AES-KWP (RFC 5649) around the PKCS#8 of the ML-DSA-65 key; its public half is the pair's.
    outside = serialization.load_der_private_key(aes_key_unwrap_with_padding(kek_value, wrapped), None)
    assert isinstance(outside, mldsa.MLDSA65PrivateKey)
    assert outside.public_key().public_bytes_raw() == raw_public
    for never in (CKA.SEED, CKA.VALUE):  # never readable, though the key is neither sensitive nor unextractable
        refused(CKR.ATTRIBUTE_SENSITIVE, alice.get_attribute, private, never)

    back = alice.unwrap_key(CKM.AES_KEY_WRAP_PAD, kek, wrapped,
                            {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.ML_DSA, CKA.TOKEN: True, CKA.SIGN: True})
    assert alice.get_attributes(back, [CKA.PARAMETER_SET, CKA.LOCAL, CKA.PUBLIC_KEY_INFO]) == {
        CKA.PARAMETER_SET: 2, CKA.LOCAL: False,
        CKA.PUBLIC_KEY_INFO: outside.public_key().public_bytes(serialization.Encoding.DER,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo)}
    signature = alice.sign(back, CKM.ML_DSA, b"signed by the unwrapped key", {"context": b"ctx", "hedge": 1})
    outside.public_key().verify(signature, b"signed by the unwrapped key", b"ctx")
    refused(CKR.WRAPPED_KEY_INVALID, alice.unwrap_key, CKM.AES_KEY_WRAP_PAD, kek, wrapped,
            {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.ML_KEM, CKA.TOKEN: True})

    # Ownership as for any key: shared, bob signs with it but cannot export it.
    alice.share(private, "p3bob")
    bob_signature = bob.sign(private, CKM.ML_DSA, b"bob's message")
    outside.public_key().verify(bob_signature, b"bob's message")
    bob_kek = bob.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.WRAP: True})
    with pytest.raises(ClientError):
        bob.wrap_key(CKM.AES_KEY_WRAP_PAD, bob_kek, private)


def test_an_ml_dsa_key_survives_backup_and_restore(hsm: LocalCluster, tmp_path: Path) -> None:
    carol = login(hsm, "p3carol")
    public, private = ml_dsa(carol, b"backed-up ml-dsa", parameter_set=3)
    raw_public = carol.get_attribute(public, CKA.VALUE)
    backup = tmp_path / "pq.srbk"
    rc, out = hsm.cli("backup", "create", "--out", str(backup))
    assert rc == 0, out
    restored = LocalCluster(tmp_path / "restored", workers=1)
    rc, out = restored.cli("backup", "restore", "--backup", str(backup), "--from", str(hsm.dir), "--workers", "1",
                           pin=hsm.admin_pin)
    assert rc == 0, out
    try:
        restored.summary = hsm.summary
        again = restored.client()
        again.login("p3carol", PASSWORD)
        (found,) = again.find_objects({CKA.LABEL: b"backed-up ml-dsa", CKA.CLASS: CKO.PRIVATE_KEY})
        assert again.get_attribute(found, CKA.PARAMETER_SET) == 3
        signature = again.sign(found, CKM.ML_DSA, b"after the restore")
        mldsa.MLDSA87PublicKey.from_public_bytes(raw_public).verify(signature, b"after the restore")
    finally:
        restored.down()
    assert private  # the original still signs in the original cluster
    carol.sign(private, CKM.ML_DSA, b"still here")


def test_cli_ml_dsa_and_ml_kem(hsm: LocalCluster, tmp_path: Path) -> None:
    def ok(*args: str) -> dict[str, Any]:
        rc, result = hsm.cli(*args, pin=CAROL)
        assert rc == 0 and result["error_code"] == 0, result
        return result["data"]

    pair = ok("key", "generate-asymmetric-pair", "ml-dsa", "--parameter-set", "44", "--label", "cli-mldsa")
    private = pair["private_key"]["attributes"]
    assert private["key-type"] == "ml-dsa" and private["parameter-set"] == "ML-DSA-44"
    assert private["origin"] == {"generated-in-cluster": True, "mechanism": "ml-dsa-key-pair-gen",
                                 "never-revealed": True}
    pem = tmp_path / "mldsa.pem"
    ok("key", "export-public", "--filter", "attr.label=cli-mldsa", "--path", str(pem))
    public = serialization.load_pem_public_key(pem.read_bytes())
    assert isinstance(public, mldsa.MLDSA44PublicKey)
    message, signature = tmp_path / "message", tmp_path / "signature"
    message.write_bytes(b"signed from the CLI" * 1000)
    ok("crypto", "sign", "--filter", "attr.label=cli-mldsa", "--mechanism", "ml-dsa", "--data-path", str(message),
       "--signature-path", str(signature), "--context", "0a0b")
    public.verify(signature.read_bytes(), message.read_bytes(), b"\x0a\x0b")
    ok("crypto", "verify", "--filter", "attr.label=cli-mldsa", "--mechanism", "ml-dsa", "--data-path", str(message),
       "--signature-path", str(signature), "--context", "0a0b")
    rc, result = hsm.cli("crypto", "verify", "--filter", "attr.label=cli-mldsa", "--mechanism", "ml-dsa",
                         "--data-path", str(message), "--signature-path", str(signature), pin=CAROL)
    assert rc == 1 and result["error_name"] == "CKR_SIGNATURE_INVALID", result  # the context is part of it

    listed = ok("key", "list", "--filter", "attr.label=cli-mldsa", "attr.class=private-key", "--verbose")
    (entry,) = listed["matched_keys"]
    assert entry["attributes"]["origin"]["generated-in-cluster"] is True

    ok("key", "generate-asymmetric-pair", "ml-kem", "--parameter-set", "1024", "--label", "cli-mlkem")
    ciphertext = tmp_path / "ciphertext"
    sent = ok("crypto", "encapsulate", "--filter", "attr.label=cli-mlkem", "--ciphertext-path", str(ciphertext),
              "--label", "kem-sent", "--key-type", "aes")["key"]
    assert ciphertext.stat().st_size == 1568
    received = ok("crypto", "decapsulate", "--filter", "attr.label=cli-mlkem", "--ciphertext-path", str(ciphertext),
                  "--label", "kem-received")["key"]
    # The same 32-byte secret on both sides: the AES keys have the same check value.
    assert sent["attributes"]["check-value"] == received["attributes"]["check-value"] != ""
    assert received["attributes"]["origin"]["generated-in-cluster"] is False

    # A ciphertext made outside with the exported public key decapsulates to the same secret.
    kem_pem = tmp_path / "mlkem.pem"
    ok("key", "export-public", "--filter", "attr.label=cli-mlkem", "--path", str(kem_pem))
    kem_public = serialization.load_pem_public_key(kem_pem.read_bytes())
    assert isinstance(kem_public, mlkem.MLKEM1024PublicKey)
    shared, outside_ciphertext = kem_public.encapsulate()
    ciphertext.write_bytes(outside_ciphertext)
    handle = ok("crypto", "decapsulate", "--filter", "attr.label=cli-mlkem", "--ciphertext-path", str(ciphertext),
                "--label", "kem-outside", "--key-type", "generic-secret", "--attributes", "sensitive=false",
                "extractable=true")["key"]["handle"]
    carol = login(hsm, "p3carol")
    assert carol.get_attribute(handle, CKA.VALUE) == shared

    # import-public takes ML-DSA public keys too; the imported key verifies the CLI's signature.
    imported = ok("key", "import-public", "--pem", str(pem), "--label", "cli-mldsa-imported")["key"]
    assert imported["attributes"]["parameter-set"] == "ML-DSA-44"
    ok("crypto", "verify", "--filter", "attr.label=cli-mldsa-imported", "--mechanism", "ml-dsa", "--data-path",
       str(message), "--signature-path", str(signature), "--context", "0a0b")


def test_ml_kem_keys_wrap_and_unwrap_and_decapsulate_alike(hsm: LocalCluster) -> None:
    alice = login(hsm, "p3alice")
    public, private = alice.generate_key_pair(
        CKM.ML_KEM_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.PARAMETER_SET: 3, CKA.LABEL: b"wrapped ml-kem"},
        {CKA.TOKEN: True, CKA.LABEL: b"wrapped ml-kem", CKA.EXTRACTABLE: True})
    kek, kek_value = secret(alice, CKM.AES_KEY_GEN, 32, {CKA.WRAP: True, CKA.UNWRAP: True})
    wrapped = alice.wrap_key(CKM.AES_KEY_WRAP_PAD, kek, private)
    outside = serialization.load_der_private_key(aes_key_unwrap_with_padding(kek_value, wrapped), None)
    assert isinstance(outside, mlkem.MLKEM1024PrivateKey)
    back = alice.unwrap_key(CKM.AES_KEY_WRAP_PAD, kek, wrapped, {CKA.CLASS: CKO.PRIVATE_KEY, CKA.KEY_TYPE: CKK.ML_KEM,
                                                                CKA.TOKEN: True})
    assert alice.get_attributes(back, [CKA.PARAMETER_SET, CKA.DECAPSULATE]) == {CKA.PARAMETER_SET: 3,
                                                                               CKA.DECAPSULATE: True}
    template = {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.GENERIC_SECRET, **OPEN}
    ciphertext, sent = alice.encapsulate_key(CKM.ML_KEM, public, template)
    received = [alice.decapsulate_key(CKM.ML_KEM, key, ciphertext, template) for key in (private, back)]
    values = {alice.get_attribute(handle, CKA.VALUE) for handle in (sent, *received)}
    assert values == {outside.decapsulate(ciphertext)}  # one secret: the original, the unwrapped copy, outside

    # A public key imported from its value (C_CreateObject) encapsulates too (CKA_ENCAPSULATE true by default).
    imported = alice.create_object({CKA.CLASS: CKO.PUBLIC_KEY, CKA.KEY_TYPE: CKK.ML_KEM, CKA.TOKEN: True,
                                    CKA.PARAMETER_SET: 3, CKA.VALUE: outside.public_key().public_bytes_raw()})
    assert alice.get_attribute(imported, CKA.ENCAPSULATE) is True
    ciphertext, sent = alice.encapsulate_key(CKM.ML_KEM, imported, template)
    assert alice.get_attribute(sent, CKA.VALUE) == outside.decapsulate(ciphertext)


def test_kem_keys_through_the_agent(hsm: LocalCluster) -> None:
    """An SDK/CLI client on an application host reaches the node through the agent's socket: C_EncapsulateKey's
    and C_DecapsulateKey's node operations are on its allow-list like the other key-management calls."""
    client = Client.from_agent(hsm.summary["agent_socket"], timeout=30)
    try:
        client.login("p3alice", PASSWORD)
        public, private = client.generate_key_pair(CKM.ML_KEM_KEY_PAIR_GEN, {CKA.TOKEN: True, CKA.PARAMETER_SET: 2},
                                                   {CKA.TOKEN: True})
        template = {CKA.CLASS: CKO.SECRET_KEY, CKA.KEY_TYPE: CKK.GENERIC_SECRET, **OPEN}
        ciphertext, sent = client.encapsulate_key(CKM.ML_KEM, public, template)
        received = client.decapsulate_key(CKM.ML_KEM, private, ciphertext, template)
        assert client.get_attribute(sent, CKA.VALUE) == client.get_attribute(received, CKA.VALUE)
    finally:
        client.close()

"""`strongroom key …` and `strongroom crypto …` against a real node, checked from outside.

Signatures made by the HSM are verified with pyca/cryptography using the PEM that
`key export-public` wrote; signatures made outside are verified by the HSM after
`key import-public`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from .conftest import LocalCluster

PASSWORD = "password1"


@pytest.fixture(scope="module")
def hsm(shared_cluster: LocalCluster) -> Iterator[LocalCluster]:
    admin = shared_cluster.admin()
    for name in ("kalice", "kbob"):
        admin.user_create(name, "crypto-user", PASSWORD)
    admin.logout()
    yield shared_cluster


ALICE = f"kalice:{PASSWORD}"
BOB = f"kbob:{PASSWORD}"


def ok(cluster: LocalCluster, *args: str, pin: str | None = ALICE) -> dict[str, Any]:
    rc, result = cluster.cli(*args, pin=pin)
    assert rc == 0 and result["error_code"] == 0, result
    return result["data"]


def fails(cluster: LocalCluster, *args: str, pin: str | None = ALICE) -> dict[str, Any]:
    rc, result = cluster.cli(*args, pin=pin)
    assert rc == 1, result
    assert result["error_code"] != 0 and result["error"], result
    return result


def text_error(cluster: LocalCluster, *args: str, pin: str | None = ALICE) -> str:
    """Runs without --json; the error must be one line on stderr and exit code 1, no traceback."""
    result = cluster.run(*args, pin=pin)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def gen_pair(cluster: LocalCluster, kind: str, label: str, *extra: str, pin: str = ALICE) -> dict[str, Any]:
    return ok(cluster, "key", "generate-asymmetric-pair", kind, "--label", label, *extra, pin=pin)


def export_pem(cluster: LocalCluster, tmp_path: Path, label: str, pin: str = ALICE) -> Any:
    path = tmp_path / f"{label}.pem"
    ok(cluster, "key", "export-public", "--filter", f"attr.label={label}", "--path", str(path), pin=pin)
    return serialization.load_pem_public_key(path.read_bytes())


# --- generation and listing ------------------------------------------------------------------


def test_generate_every_key_type_and_list_with_filters(hsm: LocalCluster) -> None:
    rsa_pair = gen_pair(hsm, "rsa", "gen-rsa", "--modulus-size-bits", "2048", "--id", "0a0b",
                        "--attributes", "private.extractable=true", "public.verify=true")
    assert rsa_pair["public_key"]["attributes"]["modulus-size-bits"] == 2048
    assert rsa_pair["public_key"]["attributes"]["public-exponent"] == 65537
    private = rsa_pair["private_key"]["attributes"]
    assert private["class"] == "private-key" and private["key-type"] == "rsa" and private["id"] == "0a0b"
    assert private["extractable"] is True and private["token"] is True and private["local"] is True
    assert rsa_pair["private_key"]["key-info"]["key-owners"] == ["kalice"]

    ec_pair = gen_pair(hsm, "ec", "gen-ec", "--curve", "secp384r1")
    assert ec_pair["public_key"]["attributes"]["curve"] == "secp384r1"
    assert ec_pair["private_key"]["attributes"]["extractable"] is False
    ed_pair = gen_pair(hsm, "ed25519", "gen-ed")
    assert ed_pair["public_key"]["attributes"]["key-type"] == "ec-edwards"
    assert ed_pair["public_key"]["attributes"]["curve"] == "ed25519"
    aes = ok(hsm, "key", "generate-symmetric", "aes", "--label", "gen-aes", "--key-length-bytes", "24",
             "--attributes", "sign=false")["key"]
    assert aes["attributes"]["key-length-bytes"] == 24 and aes["attributes"]["sign"] is False
    assert len(aes["attributes"]["check-value"]) == 6
    secret = ok(hsm, "key", "generate-symmetric", "generic-secret", "--label", "gen-hmac",
                "--key-length-bytes", "48")["key"]
    assert secret["attributes"]["key-type"] == "generic-secret"

    listed = ok(hsm, "key", "list", "--filter", "attr.label=gen-rsa")
    assert listed["total_key_count"] == 2
    assert {k["attributes"]["class"] for k in listed["matched_keys"]} == {"public-key", "private-key"}
    only = ok(hsm, "key", "list", "--filter", "attr.label=gen-rsa", "attr.class=private-key", "--verbose")
    (entry,) = only["matched_keys"]
    assert entry["key-reference"] == rsa_pair["private_key"]["key-reference"]
    assert entry["attributes"]["sign"] is True and entry["attributes"]["sensitive"] is True
    assert entry["attributes"]["key-size-bits"] == 2048
    by_type = ok(hsm, "key", "list", "--filter", "attr.key-type=aes", "attr.class=secret-key")
    assert "gen-aes" in {k["attributes"]["label"] for k in by_type["matched_keys"]}
    by_id = ok(hsm, "key", "list", "--filter", "attr.id=0a0b")
    assert by_id["total_key_count"] == 2
    by_ref = ok(hsm, "key", "list", "--filter", f"key-reference={aes['key-reference']}")
    assert [k["attributes"]["label"] for k in by_ref["matched_keys"]] == ["gen-aes"]
    assert ok(hsm, "key", "list", "--filter", "attr.label=gen-nothing")["total_key_count"] == 0

    table = hsm.run("key", "list", "--filter", "attr.label=gen-ed", pin=ALICE)
    assert table.returncode == 0 and "KEY-REFERENCE" in table.stdout and "ec-edwards" in table.stdout


def test_session_keys_live_only_as_long_as_the_login(hsm: LocalCluster) -> None:
    made = ok(hsm, "key", "generate-symmetric", "aes", "--label", "ephemeral", "--key-length-bytes", "16",
              "--session")["key"]
    assert made["attributes"]["token"] is False
    # single-command mode logs out at the end: the session key is gone
    assert ok(hsm, "key", "list", "--filter", "attr.label=ephemeral")["total_key_count"] == 0


# --- signatures ----------------------------------------------------------------------------


def test_rsa_signatures_verify_outside_with_the_exported_pem(hsm: LocalCluster, tmp_path: Path) -> None:
    gen_pair(hsm, "rsa", "sig-rsa")
    public = export_pem(hsm, tmp_path, "sig-rsa")
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    message = tmp_path / "message"
    message.write_bytes(b"strongroom signs this")
    signature = tmp_path / "sig"
    data = ok(hsm, "crypto", "sign", "--filter", "attr.label=sig-rsa", "--mechanism", "sha256-rsa-pkcs",
              "--data-path", str(message), "--signature-path", str(signature))
    assert signature.read_bytes().hex() == data["signature_hex"]
    public.verify(signature.read_bytes(), message.read_bytes(), padding.PKCS1v15(), hashes.SHA256())

    pss = ok(hsm, "crypto", "sign", "--filter", "attr.label=sig-rsa", "--mechanism", "sha384-rsa-pkcs-pss",
             "--data-path", str(message))
    public.verify(bytes.fromhex(pss["signature_hex"]), message.read_bytes(),
                  padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())
    # and the HSM verifies its own signature with the public key of the pair
    ok(hsm, "crypto", "verify", "--filter", "attr.label=sig-rsa", "--mechanism", "sha256-rsa-pkcs",
       "--data-path", str(message), "--signature-path", str(signature))


def test_ecdsa_signatures_verify_outside(hsm: LocalCluster, tmp_path: Path) -> None:
    gen_pair(hsm, "ec", "sig-ec", "--curve", "secp256r1")
    public = export_pem(hsm, tmp_path, "sig-ec")
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    message = tmp_path / "message"
    message.write_bytes(b"an EC signature")
    data = ok(hsm, "crypto", "sign", "--filter", "attr.label=sig-ec", "--mechanism", "ecdsa-sha256",
              "--data-path", str(message))
    raw = bytes.fromhex(data["signature_hex"])
    assert len(raw) == 64  # PKCS#11: r || s
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, message.read_bytes(), ec.ECDSA(hashes.SHA256()))

    # CKM_ECDSA signs a digest the caller made
    digest = tmp_path / "digest"
    digest.write_bytes(hashlib.sha256(message.read_bytes()).digest())
    data = ok(hsm, "crypto", "sign", "--filter", "attr.label=sig-ec", "--mechanism", "ecdsa",
              "--data-path", str(digest))
    raw = bytes.fromhex(data["signature_hex"])
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, message.read_bytes(), ec.ECDSA(hashes.SHA256()))


def test_signatures_made_outside_verify_in_the_hsm_after_import_public(hsm: LocalCluster, tmp_path: Path) -> None:
    message = tmp_path / "message"
    message.write_bytes(b"signed outside the HSM")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    cases = [
        ("ext-rsa", rsa_key, "sha256-rsa-pkcs", rsa_key.sign(message.read_bytes(), padding.PKCS1v15(),
                                                             hashes.SHA256())),
        ("ext-ec", ec_key, "ecdsa-sha384", _raw_ecdsa(ec_key, message.read_bytes())),
        ("ext-ed", ed_key, "eddsa", ed_key.sign(message.read_bytes())),
    ]
    for label, key, mechanism, signature in cases:
        pem = tmp_path / f"{label}.pem"
        pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))
        imported = ok(hsm, "key", "import-public", "--pem", str(pem), "--label", label)["key"]
        assert imported["attributes"]["class"] == "public-key" and imported["attributes"]["local"] is False
        sig = tmp_path / f"{label}.sig"
        sig.write_bytes(signature)
        verified = ok(hsm, "crypto", "verify", "--filter", f"attr.label={label}", "--mechanism", mechanism,
                      "--data-path", str(message), "--signature-path", str(sig))
        assert verified["valid"] is True
        sig.write_bytes(signature[:-1] + bytes([signature[-1] ^ 1]))
        bad = fails(hsm, "crypto", "verify", "--filter", f"attr.label={label}", "--mechanism", mechanism,
                    "--data-path", str(message), "--signature-path", str(sig))
        assert bad["error_name"] == "CKR_SIGNATURE_INVALID"
        # the exported key is the imported one
        assert export_pem(hsm, tmp_path, label).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) == pem.read_bytes()


def _raw_ecdsa(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA384())))
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def test_a_large_file_is_signed_in_parts(hsm: LocalCluster, tmp_path: Path) -> None:
    gen_pair(hsm, "rsa", "sig-big")
    public = export_pem(hsm, tmp_path, "sig-big")
    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * 6000)  # 1.5 MiB: more than one call carries
    data = ok(hsm, "crypto", "sign", "--filter", "attr.label=sig-big", "--mechanism", "sha256-rsa-pkcs",
              "--data-path", str(big))
    public.verify(bytes.fromhex(data["signature_hex"]), big.read_bytes(), padding.PKCS1v15(), hashes.SHA256())


# --- encryption, wrapping ------------------------------------------------------------------


def test_aes_gcm_round_trip_through_files(hsm: LocalCluster, tmp_path: Path) -> None:
    ok(hsm, "key", "generate-symmetric", "aes", "--label", "gcm-key", "--key-length-bytes", "32")
    plain, sealed, opened = tmp_path / "plain", tmp_path / "sealed", tmp_path / "opened"
    plain.write_bytes(b"attack at dawn" * 100)
    enc = ok(hsm, "crypto", "encrypt", "--filter", "attr.label=gcm-key", "--mechanism", "aes-gcm",
             "--data-path", str(plain), "--output-path", str(sealed), "--aad", "c0ffee")
    iv = enc["iv"]
    assert len(bytes.fromhex(iv)) == 12  # generated by the HSM
    assert sealed.stat().st_size == plain.stat().st_size + 16
    ok(hsm, "crypto", "decrypt", "--filter", "attr.label=gcm-key", "--mechanism", "aes-gcm",
       "--data-path", str(sealed), "--output-path", str(opened), "--iv", iv, "--aad", "c0ffee")
    assert opened.read_bytes() == plain.read_bytes()

    wrong = fails(hsm, "crypto", "decrypt", "--filter", "attr.label=gcm-key", "--mechanism", "aes-gcm",
                  "--data-path", str(sealed), "--output-path", str(opened), "--iv", iv, "--aad", "c0ffef")
    assert wrong["error_name"] == "CKR_ENCRYPTED_DATA_INVALID"
    missing_iv = fails(hsm, "crypto", "decrypt", "--filter", "attr.label=gcm-key", "--mechanism", "aes-gcm",
                       "--data-path", str(sealed), "--output-path", str(opened))
    assert "--iv" in missing_iv["error"]

    # a caller-chosen IV is used as given (and CBC-PAD works the same way)
    ok(hsm, "crypto", "encrypt", "--filter", "attr.label=gcm-key", "--mechanism", "aes-cbc-pad",
       "--data-path", str(plain), "--output-path", str(sealed), "--iv", "00" * 16)
    ok(hsm, "crypto", "decrypt", "--filter", "attr.label=gcm-key", "--mechanism", "aes-cbc-pad",
       "--data-path", str(sealed), "--output-path", str(opened), "--iv", "00" * 16)
    assert opened.read_bytes() == plain.read_bytes()


def test_wrap_an_extractable_key_and_unwrap_it_back(hsm: LocalCluster, tmp_path: Path) -> None:
    ok(hsm, "key", "generate-symmetric", "aes", "--label", "wrap-kek", "--key-length-bytes", "32")
    ok(hsm, "key", "generate-symmetric", "aes", "--label", "wrap-data", "--key-length-bytes", "16",
       "--attributes", "extractable=true")
    ok(hsm, "key", "generate-symmetric", "aes", "--label", "wrap-locked", "--key-length-bytes", "16")
    wrapped = tmp_path / "wrapped"
    data = ok(hsm, "key", "wrap", "--filter", "attr.label=wrap-data", "--wrapping-filter", "attr.label=wrap-kek",
              "--mechanism", "aes-key-wrap", "--path", str(wrapped))
    assert data["bytes"] == 24 == wrapped.stat().st_size  # RFC 3394: 16 bytes + 8
    copy = ok(hsm, "key", "unwrap", "--wrapping-filter", "attr.label=wrap-kek", "--mechanism", "aes-key-wrap",
              "--data-path", str(wrapped), "--key-type-class", "aes", "--label", "wrap-copy")["key"]
    assert copy["attributes"]["local"] is False and copy["attributes"]["key-length-bytes"] == 16

    # the copy is the same key: what one encrypts, the other decrypts
    plain, sealed, opened = tmp_path / "p", tmp_path / "c", tmp_path / "o"
    plain.write_bytes(b"same key, two handles")
    ok(hsm, "crypto", "encrypt", "--filter", "attr.label=wrap-data", "--mechanism", "aes-gcm",
       "--data-path", str(plain), "--output-path", str(sealed), "--iv", "11" * 12)
    ok(hsm, "crypto", "decrypt", "--filter", "attr.label=wrap-copy", "--mechanism", "aes-gcm",
       "--data-path", str(sealed), "--output-path", str(opened), "--iv", "11" * 12)
    assert opened.read_bytes() == plain.read_bytes()

    refused = fails(hsm, "key", "wrap", "--filter", "attr.label=wrap-locked", "--wrapping-filter",
                    "attr.label=wrap-kek", "--mechanism", "aes-key-wrap-pad", "--path", str(tmp_path / "no"))
    assert refused["error_name"] == "CKR_KEY_UNEXTRACTABLE"
    assert not (tmp_path / "no").exists()


# --- sharing, deleting, admins -------------------------------------------------------------------


def test_share_and_unshare_between_crypto_users(hsm: LocalCluster, tmp_path: Path) -> None:
    gen_pair(hsm, "ec", "shared-ec", "--curve", "secp256r1")
    message = tmp_path / "m"
    message.write_bytes(b"bob signs with alice's key")
    sign = ("crypto", "sign", "--filter", "attr.label=shared-ec", "--mechanism", "ecdsa-sha256",
            "--data-path", str(message))
    private_filter = ("--filter", "attr.label=shared-ec", "attr.class=private-key")

    before = fails(hsm, *sign, pin=BOB)
    assert "no key" in before["error"]
    # The public key is a public object (CKA_PRIVATE false, issue 13 item 1): every user lists it, as CloudHSM
    # CLI's key list shows "all public keys in the cluster"; the private key only once it is shared.
    listing = ("key", "list", "--filter", "attr.label=shared-ec")
    listed = ok(hsm, *listing, pin=BOB)["matched_keys"]
    assert [(k["attributes"]["class"], k["key-info"]["key-owners"]) for k in listed] == [("public-key", ["kalice"])]
    shared = ok(hsm, "key", "share", *private_filter, "--username", "kbob")
    assert shared["shared-users"] == ["kbob"]
    ok(hsm, *sign, pin=BOB)
    listed = ok(hsm, *listing, pin=BOB)["matched_keys"]
    assert sorted((k["attributes"]["class"], k["key-info"]["key-owners"]) for k in listed) == [
        ("private-key", ["kalice"]), ("public-key", ["kalice"])]
    # only the owner manages the key
    assert fails(hsm, "key", "delete", *private_filter, pin=BOB)["error_name"] == "CKR_ACTION_PROHIBITED"

    unshared = ok(hsm, "key", "unshare", *private_filter, "--username", "kbob")
    assert unshared["shared-users"] == []
    fails(hsm, *sign, pin=BOB)


def test_delete_a_key(hsm: LocalCluster) -> None:
    made = ok(hsm, "key", "generate-symmetric", "aes", "--label", "doomed", "--key-length-bytes", "16")["key"]
    deleted = ok(hsm, "key", "delete", "--filter", "attr.label=doomed")
    assert deleted["key-reference"] == made["key-reference"]
    assert ok(hsm, "key", "list", "--filter", "attr.label=doomed")["total_key_count"] == 0
    assert "no key" in fails(hsm, "key", "delete", "--filter", "attr.label=doomed")["error"]


def test_admins_list_every_key_and_mark_keys_trusted(hsm: LocalCluster) -> None:
    ok(hsm, "key", "generate-symmetric", "aes", "--label", "to-trust", "--key-length-bytes", "32")
    seen = ok(hsm, "key", "list", "--filter", "attr.label=to-trust", pin=hsm.admin_pin)["matched_keys"]
    assert [k["key-info"]["key-owners"] for k in seen] == [["kalice"]]
    ok(hsm, "key", "set-attribute", "--filter", "attr.label=to-trust", "--name", "trusted", "--value", "true",
       pin=hsm.admin_pin)
    assert ok(hsm, "key", "list", "--filter", "attr.label=to-trust", "attr.trusted=true")["total_key_count"] == 1
    # a crypto user may not set trusted; an admin may set nothing else
    assert fails(hsm, "key", "set-attribute", "--filter", "attr.label=to-trust", "--name", "trusted",
                 "--value", "false")["error_name"] == "CKR_ATTRIBUTE_READ_ONLY"
    fails(hsm, "key", "set-attribute", "--filter", "attr.label=to-trust", "--name", "label", "--value", "x",
          pin=hsm.admin_pin)
    # the owner may relabel
    ok(hsm, "key", "set-attribute", "--filter", "attr.label=to-trust", "--name", "label", "--value", "trusted-kek")
    assert ok(hsm, "key", "list", "--filter", "attr.label=trusted-kek")["total_key_count"] == 1


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_gives_one_line_errors(hsm: LocalCluster, tmp_path: Path) -> None:
    gen_pair(hsm, "ec", "bad-pair", "--curve", "secp256r1")

    line = text_error(hsm, "key", "list", "--filter", "attr.colour=blue")
    assert "unknown attribute 'colour'" in line and "wrap-with-trusted" in line
    line = text_error(hsm, "key", "generate-symmetric", "aes", "--label", "x", "--key-length-bytes", "16",
                      "--attributes", "sign=maybe")
    assert "true or false" in line
    line = text_error(hsm, "key", "delete", "--filter", "attr.label=no-such-key")
    assert "no key matches" in line
    line = text_error(hsm, "key", "delete", "--filter", "attr.label=bad-pair")
    assert "matches 2 keys" in line and "narrow the filter" in line
    line = text_error(hsm, "key", "list", pin=None)
    assert "STRONGROOM_PIN" in line
    line = text_error(hsm, "crypto", "sign", "--filter", "attr.label=bad-pair", "--mechanism", "aes-gcm",
                      "--data-path", str(tmp_path / "x"))
    assert "cannot sign" in line
    line = text_error(hsm, "crypto", "sign", "--filter", "attr.label=bad-pair", "--mechanism", "ecdsa-sha256",
                      "--data-path", str(tmp_path / "missing"))
    assert "cannot read" in line
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    assert "not a PEM public key" in text_error(hsm, "key", "import-public", "--pem", str(not_pem), "--label", "x")

    # --json: the envelope, and the CKR name when the node refused
    unknown = fails(hsm, "key", "set-attribute", "--filter", "attr.label=bad-pair", "attr.class=private-key",
                    "--name", "colour", "--value", "blue")
    assert unknown["error_name"] == "CLI_ERROR" and "valid names" in unknown["error"]
    refused = fails(hsm, "key", "set-attribute", "--filter", "attr.label=bad-pair", "attr.class=private-key",
                    "--name", "extractable", "--value", "true")
    assert refused["error_name"] == "CKR_ATTRIBUTE_READ_ONLY" and refused["error_code"] == 0x10
    rsa_size = fails(hsm, "key", "generate-asymmetric-pair", "rsa", "--label", "tiny", "--modulus-size-bits", "1024")
    assert rsa_size["error_name"] == "CKR_KEY_SIZE_RANGE"
    nobody = fails(hsm, "key", "list", pin="kalice:wrong-password")
    assert nobody["error_name"] == "CKR_PIN_INCORRECT"

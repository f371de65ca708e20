"""M-of-N recovery shares of the cluster key (strongroom.recovery)."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from strongroom.recovery import (
    EncryptedShare,
    PlainShare,
    RecoveryError,
    combine_shares,
    custodian_fingerprint,
    decrypt_share,
    load_custodian_key,
    load_custodian_private_key,
    split_cluster_key,
)

CLUSTER = "8d0f4c1e-6f0b-4f3e-9a43-0c6f1f7d2a10"
OTHER_CLUSTER = "1b2c3d4e-0000-4000-8000-000000000000"


def _pem(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def custodians() -> list:
    """Five custodian private keys: three EC P-384, two RSA-3072 (a mix, as a customer may have)."""
    return ([ec.generate_private_key(ec.SECP384R1()) for _ in range(3)]
            + [rsa.generate_private_key(65537, 3072) for _ in range(2)])


@pytest.fixture(scope="module")
def cluster_key() -> bytearray:
    return bytearray(os.urandom(32))


@pytest.fixture(scope="module")
def encrypted(custodians, cluster_key) -> list[EncryptedShare]:
    publics = [load_custodian_key(_pem(k.public_key())) for k in custodians]
    return split_cluster_key(cluster_key, CLUSTER, publics, 3)


@pytest.fixture(scope="module")
def plain(custodians, encrypted) -> list[PlainShare]:
    # Through the files both ways, as custodians and the operator would see them.
    return [PlainShare.from_json(decrypt_share(EncryptedShare.from_json(e.to_json()), k).to_json())
            for e, k in zip(encrypted, custodians, strict=True)]


def _edit(text: str, **changes) -> str:
    doc = json.loads(text)
    doc.update(changes)
    return json.dumps(doc)


def _flip(data: bytes, position: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 0x01
    return bytes(out)


# --- round trip ---------------------------------------------------------------------------


def test_shares_are_what_the_format_says(encrypted, custodians):
    assert [e.index for e in encrypted] == [1, 2, 3, 4, 5]
    for share, key in zip(encrypted, custodians, strict=True):
        doc = json.loads(share.to_json())
        assert doc["format"] == "strongroom-recovery-share/1"
        assert (doc["cluster_id"], doc["threshold"], doc["total"]) == (CLUSTER, 3, 5)
        assert doc["custodian_fingerprint"] == custodian_fingerprint(key.public_key())
        expected = "hpke-p384-sha384-aes256gcm" if isinstance(key, ec.EllipticCurvePrivateKey) else "rsa-oaep-sha256"
        assert doc["algorithm"] == expected
        base64.b64decode(doc["ciphertext"], validate=True)


def test_every_threshold_subset_reconstructs(plain, cluster_key):
    for subset in itertools.combinations(plain, 3):
        assert combine_shares(list(subset), CLUSTER) == cluster_key
    assert combine_shares(plain[1:], CLUSTER) == cluster_key  # more than M is fine
    assert combine_shares(list(reversed(plain))) == cluster_key


def test_plain_shares_agree_and_hide_the_key(plain, cluster_key):
    assert len({p.check for p in plain}) == 1
    assert all(bytes(cluster_key[:16]) not in bytes(p.share) for p in plain)
    assert base64.b64encode(plain[0].share).decode() not in repr(plain[0])  # never logged


def test_one_of_one(custodians):
    key = bytearray(os.urandom(32))
    [share] = split_cluster_key(key, CLUSTER, [custodians[0].public_key()], 1)
    assert combine_shares([decrypt_share(share, custodians[0])]) == key


def test_plain_share_wipe(plain):
    copy = PlainShare.from_json(plain[0].to_json())
    copy.wipe()
    assert copy.share == bytearray(32)


# --- too few, foreign or damaged shares -----------------------------------------------------


def test_fewer_than_threshold_refused(plain):
    with pytest.raises(RecoveryError, match="need 3 shares, got 2"):
        combine_shares(plain[:2], CLUSTER)


def test_duplicate_index_counts_once(plain):
    with pytest.raises(RecoveryError, match="need 3 shares, got 2"):
        combine_shares([plain[0], plain[1], PlainShare.from_json(plain[1].to_json())])


def test_share_of_another_cluster_refused(custodians, plain):
    other = split_cluster_key(os.urandom(32), OTHER_CLUSTER, [k.public_key() for k in custodians], 3)
    foreign = decrypt_share(other[2], custodians[2])
    with pytest.raises(RecoveryError, match=f"share 3 belongs to cluster {OTHER_CLUSTER}"):
        combine_shares([plain[0], plain[1], foreign])
    with pytest.raises(RecoveryError, match=f"share 1 belongs to cluster {CLUSTER}, not {OTHER_CLUSTER}"):
        combine_shares(plain[:3], OTHER_CLUSTER)


def test_share_of_another_key_of_the_same_cluster_refused(custodians, plain):
    other = split_cluster_key(os.urandom(32), CLUSTER, [k.public_key() for k in custodians], 3)
    with pytest.raises(RecoveryError, match="shares of different keys"):
        combine_shares([plain[0], plain[1], decrypt_share(other[2], custodians[2])])


def test_share_of_another_split_shape_refused(custodians, cluster_key, plain):
    other = split_cluster_key(cluster_key, CLUSTER, [k.public_key() for k in custodians[:4]], 2)
    with pytest.raises(RecoveryError, match="2-of-4 split"):
        combine_shares([plain[0], plain[1], decrypt_share(other[2], custodians[2])])


def test_tampered_plain_share_refused_by_check_value(plain):
    doc = json.loads(plain[1].to_json())
    doc["share"] = base64.b64encode(_flip(base64.b64decode(doc["share"]), 5)).decode()
    tampered = PlainShare.from_json(json.dumps(doc))
    with pytest.raises(RecoveryError, match="do not reconstruct this cluster's key"):
        combine_shares([plain[0], tampered, plain[2]], CLUSTER)


def test_two_different_shares_with_one_index_refused(plain):
    doc = json.loads(plain[1].to_json())
    doc["share"] = base64.b64encode(_flip(base64.b64decode(doc["share"]), 0)).decode()
    with pytest.raises(RecoveryError, match="both carry index 2"):
        combine_shares([plain[0], plain[1], PlainShare.from_json(json.dumps(doc)), plain[2]])


@pytest.mark.parametrize("which", [0, 3], ids=["hpke", "rsa-oaep"])
def test_tampered_ciphertext_refused(encrypted, custodians, which):
    share = encrypted[which]
    doc = json.loads(share.to_json())
    doc["ciphertext"] = base64.b64encode(_flip(share.ciphertext, len(share.ciphertext) // 2)).decode()
    with pytest.raises(RecoveryError, match="does not decrypt"):
        decrypt_share(EncryptedShare.from_json(json.dumps(doc)), custodians[which])


@pytest.mark.parametrize("which", [0, 3], ids=["hpke", "rsa-oaep"])
@pytest.mark.parametrize("field,value", [("threshold", 2), ("index", 5), ("cluster_id", OTHER_CLUSTER)])
def test_edited_metadata_refused(encrypted, custodians, which, field, value):
    edited = EncryptedShare.from_json(_edit(encrypted[which].to_json(), **{field: value}))
    with pytest.raises(RecoveryError, match="does not decrypt"):
        decrypt_share(edited, custodians[which])


def test_wrong_private_key_refused(encrypted, custodians):
    with pytest.raises(RecoveryError, match="this share was not encrypted to that key"):
        decrypt_share(encrypted[0], custodians[1])
    with pytest.raises(RecoveryError, match="this share was not encrypted to that key"):
        decrypt_share(encrypted[3], custodians[0])


# --- custodian keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("make, message", [
    (lambda: rsa.generate_private_key(65537, 2048), "2048 bits, fewer than 3072"),
    (lambda: ec.generate_private_key(ec.SECP256R1()), "secp256r1"),
    (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519PublicKey"),
], ids=["rsa-2048", "p-256", "ed25519"])
def test_weak_or_other_custodian_keys_refused(custodians, make, message):
    weak = make().public_key()
    with pytest.raises(RecoveryError, match=message):
        load_custodian_key(_pem(weak))
    with pytest.raises(RecoveryError, match=f"custodian 2: .*{message}"):
        split_cluster_key(os.urandom(32), CLUSTER, [custodians[0].public_key(), weak], 2)


def test_private_key_or_garbage_instead_of_public_key(custodians):
    private_pem = custodians[0].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())
    with pytest.raises(RecoveryError, match="this is a private key"):
        load_custodian_key(private_pem)
    with pytest.raises(RecoveryError, match="not a PEM public key"):
        load_custodian_key(b"hello")
    assert custodian_fingerprint(load_custodian_private_key(private_pem).public_key()) == \
        custodian_fingerprint(custodians[0].public_key())


@pytest.mark.parametrize("threshold", [0, 3, True])
def test_bad_threshold_refused(custodians, threshold):
    with pytest.raises(RecoveryError, match="threshold must be between 1 and 2"):
        split_cluster_key(os.urandom(32), CLUSTER, [k.public_key() for k in custodians[:2]], threshold)


def test_bad_custodian_lists_refused(custodians):
    publics = [k.public_key() for k in custodians]
    with pytest.raises(RecoveryError, match="custodians 1 and 3 have the same key"):
        split_cluster_key(os.urandom(32), CLUSTER, [publics[0], publics[1], publics[0]], 2)
    with pytest.raises(RecoveryError, match="1 to 16 custodian keys, not 0"):
        split_cluster_key(os.urandom(32), CLUSTER, [], 1)
    with pytest.raises(RecoveryError, match="1 to 16 custodian keys, not 17"):
        split_cluster_key(os.urandom(32), CLUSTER, publics * 3 + publics[:2], 2)
    with pytest.raises(RecoveryError, match="32 bytes, not 16"):
        split_cluster_key(os.urandom(16), CLUSTER, publics, 2)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")
def test_custodian_keys_made_with_openssl_cli(tmp_path: Path):
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384", "-out", str(tmp_path / "ec.key"))
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:3072", "-out", str(tmp_path / "rsa.key"))
    for name in ("ec", "rsa"):
        openssl("pkey", "-in", str(tmp_path / f"{name}.key"), "-pubout", "-out", str(tmp_path / f"{name}.pub"))
    publics = [load_custodian_key((tmp_path / f"{n}.pub").read_bytes()) for n in ("ec", "rsa")]
    privates = [load_custodian_private_key((tmp_path / f"{n}.key").read_bytes()) for n in ("ec", "rsa")]

    key = bytearray(os.urandom(32))
    shares = split_cluster_key(key, CLUSTER, publics, 2)
    assert combine_shares([decrypt_share(s, k) for s, k in zip(shares, privates, strict=True)], CLUSTER) == key

    # The fingerprint is what `openssl pkey -pubin -outform DER | sha256sum` prints.
    der = subprocess.run(["openssl", "pkey", "-pubin", "-in", str(tmp_path / "ec.pub"), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    assert shares[0].custodian_fingerprint == hashlib.sha256(der).hexdigest()


# --- strict file parsing -------------------------------------------------------------------------


def test_encrypted_share_file_validation(encrypted):
    text = encrypted[0].to_json()
    doc = json.loads(text)
    cases = {
        "not json": ("{", "not valid JSON"),
        "array": ("[]", "not a JSON object"),
        "missing": (json.dumps({k: v for k, v in doc.items() if k != "algorithm"}), "missing algorithm"),
        "unknown": (_edit(text, extra=1), "unknown extra"),
        "bool index": (_edit(text, index=True), "index must be an integer"),
        "index > total": (_edit(text, index=6), "index 6 is outside 1..5"),
        "threshold 0": (_edit(text, threshold=0), "threshold 0 is outside"),
        "total 17": (_edit(text, total=17, index=1), "total 17 is outside 1..16"),
        "bad base64": (_edit(text, ciphertext="@@@@"), "ciphertext is not valid base64"),
        "short ct": (_edit(text, ciphertext=base64.b64encode(b"x" * 10).decode()), "not 10"),
        "fingerprint": (_edit(text, custodian_fingerprint="abc"), "64 lowercase hex"),
        "algorithm": (_edit(text, algorithm="rsa-pkcs1"), "'rsa-pkcs1' is not one of"),
        "cluster id": (_edit(text, cluster_id="a\0b"), "printable"),
        "version": (_edit(text, format="strongroom-recovery-share/2"), "not a Strongroom recovery share of a version"),
        "duplicate key": (text.replace('"index": 1,', '"index": 1, "index": 2,'), "appears twice"),
    }
    for name, (bad, message) in cases.items():
        with pytest.raises(RecoveryError, match=message):
            EncryptedShare.from_json(bad)
            pytest.fail(name)


def test_plain_share_file_validation(plain, encrypted):
    text = plain[0].to_json()
    cases = {
        "short share": (_edit(text, share=base64.b64encode(b"x" * 31).decode()), "share must be a bytearray of 32"),
        "check": (_edit(text, check="zz" * 8), "check must be 16 lowercase hex"),
        "share type": (_edit(text, share=5), "share must be a base64 string"),
    }
    for name, (bad, message) in cases.items():
        with pytest.raises(RecoveryError, match=message):
            PlainShare.from_json(bad)
            pytest.fail(name)
    # Each file read as the other kind says what to do instead.
    with pytest.raises(RecoveryError, match="must first decrypt it"):
        PlainShare.from_json(encrypted[0].to_json())
    with pytest.raises(RecoveryError, match="nothing to decrypt"):
        EncryptedShare.from_json(text)

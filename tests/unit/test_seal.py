"""The sealed cluster key on a node's disk: round trip, file modes, tamper evidence, zeroization."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from strongroom.seal import (
    KEK_FILE,
    SEAL_FILE,
    SealedIdentity,
    SealError,
    destroy_seal,
    seal_cluster_key,
    seal_exists,
    unseal_cluster_key,
)

IDENTITY = SealedIdentity("cluster-7f3a", "node-a")


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    path.mkdir()
    return path


@pytest.fixture
def cluster_key() -> bytearray:
    return bytearray(os.urandom(32))


@pytest.fixture
def sealed(node_dir: Path, cluster_key: bytearray) -> Path:
    seal_cluster_key(node_dir, IDENTITY, cluster_key)
    return node_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip(node_dir, cluster_key):
    assert not seal_exists(node_dir)
    seal_cluster_key(node_dir, IDENTITY, bytearray(cluster_key))
    assert seal_exists(node_dir)
    identity, key = unseal_cluster_key(node_dir)
    assert identity == IDENTITY
    assert isinstance(key, bytearray) and key == cluster_key
    # Unsealing again gives the same result; nothing was consumed.
    assert unseal_cluster_key(node_dir) == (IDENTITY, cluster_key)
    assert sorted(p.name for p in node_dir.iterdir()) == sorted([SEAL_FILE, KEK_FILE])  # no temp files left


def test_the_seal_file_does_not_hold_the_key_in_clear(sealed, cluster_key):
    content = (sealed / SEAL_FILE).read_bytes()
    assert bytes(cluster_key) not in content
    assert bytes(cluster_key).hex().encode() not in content


def test_files_are_mode_0600_even_with_a_permissive_umask(node_dir, cluster_key):
    old = os.umask(0)
    try:
        seal_cluster_key(node_dir, IDENTITY, cluster_key)
    finally:
        os.umask(old)
    assert mode(node_dir / SEAL_FILE) == 0o600
    assert mode(node_dir / KEK_FILE) == 0o600


def test_every_single_byte_edit_of_the_seal_file_is_refused(sealed):
    path = sealed / SEAL_FILE
    original = path.read_bytes()
    for i in range(len(original)):
        for mask in (0x01, 0x20, 0xFF):
            edited = bytearray(original)
            edited[i] ^= mask
            if edited[i] in b" \t\n\r" and original[i] in b" \t\n\r":
                continue  # whitespace to whitespace: the same JSON document
            path.write_bytes(bytes(edited))
            with pytest.raises(SealError):
                unseal_cluster_key(sealed)
    path.write_bytes(original)
    assert unseal_cluster_key(sealed)[0] == IDENTITY


def test_truncated_or_empty_seal_file_is_refused(sealed):
    path = sealed / SEAL_FILE
    original = path.read_bytes()
    for cut in (0, 1, len(original) // 2, len(original) - 1):
        path.write_bytes(original[:cut])
        with pytest.raises(SealError):
            unseal_cluster_key(sealed)


@pytest.mark.parametrize(
    "field, value",
    [
        ("cluster_id", "cluster-other"),
        ("cluster_id", "cluster-7f3A"),
        ("node_id", "node-b"),
        ("node_id", ""),
        ("format", 1),
        ("format", 3),
        ("type", "shares"),
        ("type", "tpm"),
        ("kek", {"file": "other.key"}),
        ("nonce", "AAAAAAAAAAAAAAAA"),
        ("nonce", "not base64!"),
        ("ciphertext", ""),
        ("ciphertext", None),
    ],
)
def test_changed_fields_are_refused(sealed, field, value):
    path = sealed / SEAL_FILE
    document = json.loads(path.read_bytes())
    assert field in document
    document[field] = value
    path.write_text(json.dumps(document))
    with pytest.raises(SealError):
        unseal_cluster_key(sealed)


@pytest.mark.parametrize("field", ["format", "cluster_id", "node_id", "nonce", "ciphertext"])
def test_missing_fields_are_refused(sealed, field):
    path = sealed / SEAL_FILE
    document = json.loads(path.read_bytes())
    del document[field]
    path.write_text(json.dumps(document))
    with pytest.raises(SealError):
        unseal_cluster_key(sealed)


@pytest.mark.parametrize("content", ["[]", "null", '"x"', "{}", "1"])
def test_seal_file_that_is_not_a_seal_document_is_refused(sealed, content):
    (sealed / SEAL_FILE).write_text(content)
    with pytest.raises(SealError):
        unseal_cluster_key(sealed)


@pytest.mark.parametrize("replacement", [os.urandom(32), bytes(32), os.urandom(31), os.urandom(33), b""])
def test_replaced_key_encryption_key_is_refused(sealed, replacement):
    (sealed / KEK_FILE).write_bytes(replacement)
    with pytest.raises(SealError):
        unseal_cluster_key(sealed)


def test_missing_key_encryption_key_is_refused(sealed):
    (sealed / KEK_FILE).unlink()
    with pytest.raises(SealError):
        unseal_cluster_key(sealed)
    assert not (sealed / KEK_FILE).exists()  # unsealing never creates a new one


def test_missing_seal_file_is_refused(node_dir):
    with pytest.raises(SealError):
        unseal_cluster_key(node_dir)


def test_seal_copied_to_another_node_does_not_open(sealed, tmp_path, cluster_key):
    other = tmp_path / "other"
    other.mkdir()
    seal_cluster_key(other, SealedIdentity(IDENTITY.cluster_id, "node-b"), bytearray(os.urandom(32)))
    (other / SEAL_FILE).write_bytes((sealed / SEAL_FILE).read_bytes())
    with pytest.raises(SealError):
        unseal_cluster_key(other)


def test_sealing_twice_is_refused(sealed, cluster_key):
    seal_before = (sealed / SEAL_FILE).read_bytes()
    kek_before = (sealed / KEK_FILE).read_bytes()
    with pytest.raises(SealError):
        seal_cluster_key(sealed, IDENTITY, bytearray(os.urandom(32)))
    with pytest.raises(SealError):
        seal_cluster_key(sealed, SealedIdentity("another", "node-z"), bytearray(os.urandom(32)))
    assert (sealed / SEAL_FILE).read_bytes() == seal_before
    assert (sealed / KEK_FILE).read_bytes() == kek_before
    assert unseal_cluster_key(sealed) == (IDENTITY, cluster_key)


def test_destroy_seal_removes_both_files(sealed):
    destroy_seal(sealed)
    assert not (sealed / SEAL_FILE).exists()
    assert not (sealed / KEK_FILE).exists()
    assert not seal_exists(sealed)
    assert list(sealed.iterdir()) == []
    with pytest.raises(SealError):
        unseal_cluster_key(sealed)
    destroy_seal(sealed)  # idempotent: nothing left to destroy is not an error


def test_destroy_then_seal_again(sealed):
    destroy_seal(sealed)
    new_key = bytearray(os.urandom(32))
    seal_cluster_key(sealed, IDENTITY, new_key)
    assert unseal_cluster_key(sealed) == (IDENTITY, new_key)

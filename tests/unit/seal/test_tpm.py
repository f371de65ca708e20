"""The ``tpm`` seal against a real software TPM (swtpm): the KEK opens on this TPM only.

Each module-scoped swtpm is one TPM; a second one (its own state directory, so its own owner
seed) is "another host's TPM".
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from strongroom.seal import (
    SEAL_FILE,
    SealedIdentity,
    SealError,
    SealSettings,
    SealUnavailable,
    provider_for,
    seal_cluster_key,
    unseal_cluster_key,
)
from strongroom.seal.tpm import TpmKek, parse_pcrs
from tests.seal_devices import SwTpm, swtpm

IDENTITY = SealedIdentity("cluster-7f3a", "node-a")


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory):
    with swtpm(tmp_path_factory.mktemp("swtpm") / "state") as device:
        yield device


@pytest.fixture(scope="module")
def other_tpm(tmp_path_factory: pytest.TempPathFactory):
    with swtpm(tmp_path_factory.mktemp("swtpm-other") / "state") as device:
        yield device


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    path.mkdir()
    return path


def settings(tpm: SwTpm, **options: str) -> SealSettings:
    return SealSettings("tpm", {"tcti": tpm.tcti, **options})


def sealed_node(node_dir: Path, tpm: SwTpm, **options: str) -> bytearray:
    key = bytearray(os.urandom(32))
    seal_cluster_key(node_dir, IDENTITY, bytearray(key), settings(tpm, **options))
    return key


def test_round_trip_through_the_seal(node_dir, tpm):
    key = sealed_node(node_dir, tpm)
    document = json.loads((node_dir / SEAL_FILE).read_text())
    assert document["type"] == "tpm" and document["options"] == {"tcti": tpm.tcti}
    assert set(document["kek"]) == {"primary", "public", "private"}
    assert unseal_cluster_key(node_dir) == (IDENTITY, key)
    assert unseal_cluster_key(node_dir, settings(tpm)) == (IDENTITY, key)
    assert sorted(p.name for p in node_dir.iterdir()) == [SEAL_FILE]  # no KEK file, no leftovers
    assert tpm.loaded_handles() == []  # nothing of ours stays loaded in a TPM without resource manager


def test_the_kek_is_nowhere_in_the_document(tpm, tmp_path):
    provider = provider_for(settings(tpm), tmp_path)
    kek, stored = provider.create(IDENTITY)
    blob = json.dumps(stored).encode() + b"".join(base64.b64decode(stored[k]) for k in ("public", "private"))
    assert bytes(kek) not in blob and bytes(kek).hex().encode() not in blob
    assert provider.recover(IDENTITY, stored) == kek
    # Two creations make two KEKs (the KEK is random, not derived from the TPM).
    assert provider.create(IDENTITY)[0] != kek


def test_the_directory_copied_beside_another_tpm_does_not_open(node_dir, tpm, other_tpm, tmp_path):
    sealed_node(node_dir, tpm)
    copy = tmp_path / "stolen"
    shutil.copytree(node_dir, copy)
    with pytest.raises(SealError) as excinfo:
        unseal_cluster_key(copy, settings(other_tpm))
    assert not isinstance(excinfo.value, SealUnavailable)  # a refusal (tamper response), not "retry later"
    assert "refusing to start" in str(excinfo.value)
    assert other_tpm.loaded_handles() == []


def test_the_same_tpm_opens_after_a_restart(tmp_path):
    device = SwTpm(tmp_path / "state").start()
    try:
        node_dir = tmp_path / "node"
        node_dir.mkdir()
        key = sealed_node(node_dir, device)
        device.restart()
        assert unseal_cluster_key(node_dir) == (IDENTITY, key)
    finally:
        device.stop()


def test_no_tpm_answering_is_unavailable_not_a_refusal(tmp_path):
    device = SwTpm(tmp_path / "state").start()
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    try:
        key = sealed_node(node_dir, device)
    finally:
        device.stop()
    started = time.monotonic()
    with pytest.raises(SealUnavailable) as excinfo:
        unseal_cluster_key(node_dir)
    assert time.monotonic() - started < 10
    assert device.tcti in str(excinfo.value) and "does not answer" in str(excinfo.value)
    with pytest.raises(SealUnavailable):
        provider_for(settings(device), tmp_path).create(IDENTITY)
    device.start()  # back: the same seal opens (the node retries)
    try:
        assert unseal_cluster_key(node_dir) == (IDENTITY, key)
    finally:
        device.stop()


def test_an_altered_blob_is_refused(tpm, tmp_path):
    provider = provider_for(settings(tpm), tmp_path)
    _, stored = provider.create(IDENTITY)
    private = bytearray(base64.b64decode(stored["private"]))
    private[len(private) // 2] ^= 0x01
    with pytest.raises(SealError) as excinfo:
        provider.recover(IDENTITY, dict(stored, private=base64.b64encode(private).decode()))
    assert not isinstance(excinfo.value, SealUnavailable)
    for damaged in ({}, dict(stored, public="not base64!"), dict(stored, primary="rsa-something"),
                    dict(stored, private=base64.b64encode(b"x" * 100_000).decode())):
        with pytest.raises(SealError):
            provider.recover(IDENTITY, damaged)
    assert tpm.loaded_handles() == []


def test_another_tpm_cannot_load_the_blob_even_given_it_directly(tpm, other_tpm, tmp_path):
    _, stored = provider_for(settings(tpm), tmp_path).create(IDENTITY)
    with pytest.raises(SealError) as excinfo:
        provider_for(settings(other_tpm), tmp_path).recover(IDENTITY, stored)
    assert not isinstance(excinfo.value, SealUnavailable)
    assert "integrity" in str(excinfo.value)


def test_a_pcr_policy_opens_only_with_the_same_pcr_values(node_dir, tpm):
    pcr = "23"  # resettable from locality 0, so the test can put it back
    tpm.tool("tpm2_pcrreset", pcr)
    key = sealed_node(node_dir, tpm, pcrs=f"sha256:{pcr}")
    document = json.loads((node_dir / SEAL_FILE).read_text())
    assert document["kek"]["pcrs"] == f"sha256:{pcr}"
    assert unseal_cluster_key(node_dir) == (IDENTITY, key)
    tpm.tool("tpm2_pcrextend", f"{pcr}:sha256=" + "ab" * 32)  # "another boot state"
    with pytest.raises(SealError) as excinfo:
        unseal_cluster_key(node_dir)
    assert not isinstance(excinfo.value, SealUnavailable) and "policy" in str(excinfo.value)
    # Dropping the policy from the node's options does not help: the object carries it.
    with pytest.raises(SealError):
        unseal_cluster_key(node_dir, settings(tpm, pcrs=""))
    assert tpm.loaded_handles() == []
    tpm.tool("tpm2_pcrreset", pcr)
    assert unseal_cluster_key(node_dir) == (IDENTITY, key)


@pytest.mark.parametrize("value", ["sha256", "sha256:", "sha256:24", "md5:0", "sha256:0,0", "sha256:0;7", 7])
def test_a_malformed_pcr_option_is_refused(value, tpm, tmp_path):
    with pytest.raises(SealError, match="pcrs"):
        TpmKek({"tcti": tpm.tcti, "pcrs": value}, tmp_path).create(IDENTITY)


def test_pcr_option_normalised_and_described(tpm, tmp_path):
    assert parse_pcrs(" sha256:7,0 ") == "sha256:0,7"
    assert parse_pcrs(None) is None and parse_pcrs("") is None
    assert TpmKek({"tcti": tpm.tcti, "pcrs": "sha256:7,0"}, tmp_path).describe() == \
        f"tpm ({tpm.tcti}, PCR policy sha256:0,7)"
    assert TpmKek({}, tmp_path).describe() == "tpm (device:/dev/tpmrm0)"

"""The ``pkcs11`` seal against real SoftHSMv2 tokens (private token directories, one per fixture)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
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
from strongroom.seal.pkcs11 import DEFAULT_KEY_LABEL
from tests.seal_devices import SOFTHSM_MODULE, SoftHsm

IDENTITY = SealedIdentity("cluster-7f3a", "node-a")
TOKEN = "strongroom-kek"
PIN = "pin-83f1a0"


@pytest.fixture(scope="module")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    device = SoftHsm(tmp_path_factory.mktemp("softhsm"))
    device.init_token(TOKEN, PIN)
    return device


@pytest.fixture(autouse=True)
def active(hsm: SoftHsm):
    with hsm.activate():
        yield


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    path.mkdir()
    return path


def options(hsm: SoftHsm, key_label: str = "seal-key", pin: str = PIN, **more: str) -> dict[str, str]:
    return {"module": SOFTHSM_MODULE, "token_label": TOKEN, "key_label": key_label,
            "pin_file": str(hsm.pin_file(pin, name="pin" if pin == PIN else "other-pin")), **more}


def settings(hsm: SoftHsm, **kwargs: str) -> SealSettings:
    return SealSettings("pkcs11", options(hsm, **kwargs))


def token_keys(hsm: SoftHsm, label: str) -> list[dict[str, object]]:
    """The AES keys labelled ``label`` in the token, with their protection attributes (read as the user)."""
    with hsm.activate():
        lib = pkcs11.lib(SOFTHSM_MODULE)
        try:
            with lib.get_token(token_label=TOKEN).open(user_pin=PIN) as session:
                return [{"sensitive": k[Attribute.SENSITIVE], "extractable": k[Attribute.EXTRACTABLE],
                         "token": k[Attribute.TOKEN], "private": k[Attribute.PRIVATE], "wrap": k[Attribute.WRAP],
                         "bits": k[Attribute.VALUE_LEN] * 8}
                        for k in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY,
                                                      Attribute.KEY_TYPE: KeyType.AES, Attribute.LABEL: label})]
        finally:
            lib.finalize()


def delete_keys(hsm: SoftHsm, label: str) -> None:
    lib = pkcs11.lib(SOFTHSM_MODULE)
    try:
        with lib.get_token(token_label=TOKEN).open(rw=True, user_pin=PIN) as session:
            for key in session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: label}):
                key.destroy()
    finally:
        lib.finalize()


def test_round_trip_makes_a_sensitive_non_extractable_token_key(node_dir, hsm):
    assert token_keys(hsm, "round-trip") == []
    key = bytearray(os.urandom(32))
    seal_cluster_key(node_dir, IDENTITY, bytearray(key), settings(hsm, key_label="round-trip"))
    assert unseal_cluster_key(node_dir) == (IDENTITY, key)
    assert token_keys(hsm, "round-trip") == [
        {"sensitive": True, "extractable": False, "token": True, "private": True, "wrap": False, "bits": 256}]
    document = json.loads((node_dir / SEAL_FILE).read_text())
    assert set(document["kek"]) == {"key_label", "token_serial", "iv", "ciphertext"}
    assert PIN not in (node_dir / SEAL_FILE).read_text()  # the options name the PIN file, never the PIN


def test_later_seals_use_the_same_key(hsm, tmp_path):
    provider = provider_for(settings(hsm, key_label="shared"), tmp_path)
    first = provider.create(IDENTITY)
    second = provider.create(SealedIdentity("cluster-7f3a", "node-b"))
    assert first[0] != second[0]  # each node its own KEK...
    assert len(token_keys(hsm, "shared")) == 1  # ...wrapped by one key of the token
    assert provider.recover(IDENTITY, first[1]) == first[0]


def test_the_default_key_label(hsm, tmp_path):
    opts = options(hsm)
    del opts["key_label"]
    kek, stored = provider_for(SealSettings("pkcs11", opts), tmp_path).create(IDENTITY)
    assert stored["key_label"] == DEFAULT_KEY_LABEL
    assert provider_for(SealSettings("pkcs11", opts), tmp_path).recover(IDENTITY, stored) == kek


def test_another_nodes_seal_is_refused(hsm, tmp_path):
    provider = provider_for(settings(hsm), tmp_path)
    _, stored = provider.create(IDENTITY)
    for other in (SealedIdentity("cluster-7f3a", "node-b"), SealedIdentity("cluster-other", "node-a")):
        with pytest.raises(SealError) as excinfo:
            provider.recover(other, stored)
        assert not isinstance(excinfo.value, SealUnavailable)


def test_another_token_with_the_same_label_is_refused(node_dir, hsm, tmp_path):
    seal_cluster_key(node_dir, IDENTITY, bytearray(os.urandom(32)), settings(hsm, key_label="moved"))
    other = SoftHsm(tmp_path / "other-softhsm")
    other.init_token(TOKEN, PIN)  # same token label, same PIN: another token all the same
    with other.activate():
        with pytest.raises(SealError, match="no AES key labelled 'moved'") as excinfo:
            unseal_cluster_key(node_dir)  # no such key there
        assert not isinstance(excinfo.value, SealUnavailable)
        provider_for(settings(hsm, key_label="moved"), tmp_path).create(IDENTITY)  # now a key of that label
        with pytest.raises(SealError, match="did not open") as excinfo:
            unseal_cluster_key(node_dir)  # ...but another key: GCM's tag check fails
        assert not isinstance(excinfo.value, SealUnavailable)


def test_a_wrong_pin_is_refused_and_never_shown(hsm, tmp_path, caplog):
    wrong = "wrong-pin-5521"
    other = SoftHsm(tmp_path / "pin-softhsm")  # its own token: wrong PINs count against it
    other.init_token(TOKEN, PIN)
    with other.activate():
        kek, stored = provider_for(settings(other), tmp_path).create(IDENTITY)
        caplog.set_level(logging.DEBUG)
        for action in (lambda p: p.recover(IDENTITY, stored), lambda p: p.create(IDENTITY)):
            with pytest.raises(SealError) as excinfo:
                action(provider_for(settings(other, pin=wrong), tmp_path))
            assert not isinstance(excinfo.value, SealUnavailable)
            assert "PIN" in str(excinfo.value) and wrong not in str(excinfo.value)
        assert wrong not in caplog.text and PIN not in caplog.text
        assert provider_for(settings(other), tmp_path).recover(IDENTITY, stored) == kek


def test_a_deleted_key_is_refused(node_dir, hsm):
    seal_cluster_key(node_dir, IDENTITY, bytearray(os.urandom(32)), settings(hsm, key_label="doomed"))
    delete_keys(hsm, "doomed")
    with pytest.raises(SealError, match="deleted") as excinfo:
        unseal_cluster_key(node_dir)
    assert not isinstance(excinfo.value, SealUnavailable)


def test_a_missing_module_or_token_is_unavailable(hsm, tmp_path):
    provider = provider_for(settings(hsm), tmp_path)
    kek, stored = provider.create(IDENTITY)
    missing_module = provider_for(settings(hsm, module=str(tmp_path / "libnothing.so")), tmp_path)
    not_a_module = tmp_path / "libbroken.so"
    not_a_module.write_bytes(b"\x7fELF not really")
    broken_module = provider_for(settings(hsm, module=str(not_a_module)), tmp_path)
    missing_token = provider_for(settings(hsm, token_label="not-inserted"), tmp_path)
    for provider_ in (missing_module, broken_module, missing_token):
        with pytest.raises(SealUnavailable):
            provider_.recover(IDENTITY, stored)
    # The token "inserted" again (here: the module finds it again): the same seal opens.
    assert provider.recover(IDENTITY, stored) == kek


def test_a_damaged_record_or_missing_options_are_refused(hsm, tmp_path):
    provider = provider_for(settings(hsm), tmp_path)
    _, stored = provider.create(IDENTITY)
    flipped = bytearray(__import__("base64").b64decode(stored["ciphertext"]))
    flipped[0] ^= 1
    for damaged in ({}, dict(stored, iv="!!"), dict(stored, iv="AAAA"),
                    dict(stored, ciphertext=__import__("base64").b64encode(bytes(flipped)).decode())):
        with pytest.raises(SealError) as excinfo:
            provider.recover(IDENTITY, damaged)
        assert not isinstance(excinfo.value, SealUnavailable)
    for missing in ("module", "token_label", "pin_file"):
        opts = options(hsm)
        del opts[missing]
        with pytest.raises(SealError, match=missing):
            provider_for(SealSettings("pkcs11", opts), tmp_path).recover(IDENTITY, stored)
    with pytest.raises(SealError, match="cannot read the token PIN"):
        provider_for(settings(hsm, pin_file=str(tmp_path / "no-pin")), tmp_path).recover(IDENTITY, stored)

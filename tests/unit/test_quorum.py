"""Quorum approvals and MFA below the node: the signature schemes (against OpenSSL's own signatures), the
CloudHSM token file format, the token claims and their binding, and the token store over a real SQLite store
(the 1,024-token limit, purging, single-use MFA challenges)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from strongroom.barrier import Barrier
from strongroom.dispatch.quorum import QuorumRule, split
from strongroom.errors import CKR, ArgumentsBad, HsmError
from strongroom.pki import approvals
from strongroom.pki.approvals import ApprovalKeyError, TokenFile, TokenFileError
from strongroom.services import quorum
from strongroom.services.quorum import Claims, QuorumStore, binding, summary
from strongroom.store.sqlite import SqliteStore

OPENSSL = shutil.which("openssl")
CLUSTER_KEY = bytearray(b"\x17" * 32)


def _pem(key: approvals.PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


KEYS: dict[str, Callable[[], approvals.PrivateKey]] = {
    "rsa-2048": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa-3072": lambda: rsa.generate_private_key(public_exponent=65537, key_size=3072),
    "p-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "p-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "ed25519": ed25519.Ed25519PrivateKey.generate,
}


# --- signature schemes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KEYS))
def test_each_key_type_signs_and_verifies_and_a_changed_bit_fails(kind: str) -> None:
    key = KEYS[kind]()
    public = approvals.load_public_key(approvals.public_pem(key.public_key()))
    token = approvals.token_of(b"approval data")
    signature = approvals.sign_token(key, token)
    expected = {"rsa": "rsa-pkcs1", "p": "ecdsa", "ed25519": "ed25519"}[kind.split("-")[0]]
    assert approvals.verify_token(public, token, signature) == expected
    tampered = bytearray(signature)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(InvalidSignature):
        approvals.verify_token(public, token, bytes(tampered))
    with pytest.raises(InvalidSignature):
        approvals.verify_token(public, approvals.token_of(b"other data"), signature)
    other = KEYS[kind]()
    with pytest.raises(InvalidSignature):
        approvals.verify_token(approvals.load_public_key(approvals.public_pem(other.public_key())), token, signature)


def test_rsa_pss_signatures_verify_too() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = approvals.token_of(b"x")
    assert approvals.verify_token(key.public_key(), token, approvals.sign_token(key, token, pss=True)) == "rsa-pss"


@pytest.mark.parametrize("make", [
    lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024),
    lambda: ec.generate_private_key(ec.SECP521R1()),
    lambda: ec.generate_private_key(ec.SECP256K1()),
], ids=["rsa-1024", "p-521", "secp256k1"])
def test_keys_outside_the_policy_are_refused(make: Callable[[], Any]) -> None:
    key = make()
    with pytest.raises(ApprovalKeyError):
        approvals.load_public_key(approvals.public_pem(key.public_key()))
    with pytest.raises(ApprovalKeyError):
        approvals.load_private_key(_pem(key))


def test_garbage_and_oversized_public_keys_are_refused() -> None:
    with pytest.raises(ApprovalKeyError):
        approvals.load_public_key("not a key")
    with pytest.raises(ApprovalKeyError):
        approvals.load_public_key("-----BEGIN PUBLIC KEY-----\n" + "A" * 20000 + "\n-----END PUBLIC KEY-----\n")


def _openssl(tmp_path: Path, key: approvals.PrivateKey, token: bytes, *options: str) -> bytes:
    assert OPENSSL is not None, "openssl is needed (apt-get install openssl)"
    (tmp_path / "key.pem").write_bytes(_pem(key))
    (tmp_path / "token.bin").write_bytes(token)
    subprocess.run([OPENSSL, "pkeyutl", "-sign", "-inkey", str(tmp_path / "key.pem"), *options, "-keyform", "PEM",
                    "-in", str(tmp_path / "token.bin"), "-out", str(tmp_path / "token.sig")], check=True,
                   capture_output=True, timeout=60)
    return (tmp_path / "token.sig").read_bytes()


@pytest.mark.parametrize(("kind", "options", "scheme"), [
    ("rsa-2048", ("-pkeyopt", "digest:sha256"), "rsa-pkcs1"),  # CloudHSM's documented command
    ("rsa-3072", ("-pkeyopt", "digest:sha256", "-pkeyopt", "rsa_padding_mode:pss"), "rsa-pss"),
    ("p-256", ("-pkeyopt", "digest:sha256"), "ecdsa"),
    ("p-384", ("-pkeyopt", "digest:sha256"), "ecdsa"),
    ("ed25519", ("-rawin",), "ed25519"),
])
def test_signatures_made_by_openssl_pkeyutl_verify(tmp_path: Path, kind: str, options: tuple[str, ...],
                                                   scheme: str) -> None:
    key = KEYS[kind]()
    token = approvals.token_of(b"signed by openssl " + kind.encode())
    signature = _openssl(tmp_path, key, token, *options)
    assert approvals.verify_token(key.public_key(), token, signature) == scheme


def test_pkcs1_signature_is_the_one_openssl_makes(tmp_path: Path) -> None:
    """RSA PKCS#1 v1.5 is deterministic: ours is byte for byte OpenSSL's ``-pkeyopt digest:sha256``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = approvals.token_of(b"deterministic")
    assert _openssl(tmp_path, key, token, "-pkeyopt", "digest:sha256") == approvals.sign_token(key, token)


def test_a_token_is_32_bytes() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(ValueError):
        approvals.sign_token(key, b"short")
    with pytest.raises(InvalidSignature):
        approvals.verify_token(key.public_key(), b"short", b"x" * 64)
    with pytest.raises(InvalidSignature):
        approvals.verify_token(key.public_key(), approvals.token_of(b"x"), b"x" * (approvals.MAX_SIGNATURE + 1))


# --- token files ---------------------------------------------------------------------------------------


def test_quorum_file_round_trip_in_cloudhsm_format() -> None:
    data = b'{"kind":"example"}'
    token_file = approvals.quorum_file(data, service="user")
    token_file.add_signature("admin2", b"sig-2")
    token_file.add_signature("admin3", b"sig-3")
    token_file.add_signature("admin2", b"sig-2b")  # replaced, not doubled
    text = token_file.dumps()
    raw = json.loads(text)
    assert raw["version"] == "2.0"
    assert base64.b64decode(raw["approval_data"]) == data
    assert base64.b64decode(raw["token"]) == approvals.token_of(data)
    assert [s["username"] for s in raw["signatures"]] == ["admin3", "admin2"]
    again = TokenFile.loads(text)
    assert again.is_quorum and again.approval_data == data and again.extra == {"service": "user"}
    assert {s.username: s.signature for s in again.signatures} == {"admin3": b"sig-3", "admin2": b"sig-2b"}


def test_cloudhsm_registration_and_mfa_files_parse() -> None:
    data = b"random approval data"
    text = json.dumps({"version": "2.0", "tokens": [
        {"approval_data": base64.b64encode(data).decode(), "unsigned": base64.b64encode(approvals.token_of(data))
         .decode(), "signed": ""},
        {"unsigned": base64.b64encode(b"\x01" * 32).decode(), "signed": base64.b64encode(b"sig").decode()},
    ]})
    parsed = TokenFile.loads(text)
    assert not parsed.is_quorum
    assert parsed.tokens[0].approval_data == data and parsed.tokens[0].signed is None
    assert parsed.tokens[1].signed == b"sig"


@pytest.mark.parametrize("mutate", [
    lambda f: f.update(token=base64.b64encode(b"\x00" * 32).decode()),  # token no longer the digest
    lambda f: f.update(version="1.0"),
    lambda f: f.update(approval_data="***"),
    lambda f: f.update(signatures=[{"username": "x"}]),
    lambda f: f.update(signatures=[{"username": "x", "signature": "!!"}] * 2),
    lambda f: f.update(signatures="no"),
], ids=["edited-token", "version", "bad-base64", "no-signature", "bad-signature-base64", "not-a-list"])
def test_malformed_quorum_files_are_refused(mutate: Callable[[dict[str, Any]], None]) -> None:
    raw = json.loads(approvals.quorum_file(b"data").dumps())
    mutate(raw)
    with pytest.raises(TokenFileError):
        TokenFile.loads(json.dumps(raw))


def test_oversized_and_non_json_files_are_refused() -> None:
    with pytest.raises(TokenFileError):
        TokenFile.loads("x" * (approvals.MAX_FILE_BYTES + 1))
    with pytest.raises(TokenFileError):
        TokenFile.loads("not json")
    with pytest.raises(TokenFileError):
        TokenFile.loads("[]")


# --- claims and binding --------------------------------------------------------------------------------


def test_binding_covers_the_operation_and_every_argument() -> None:
    base = binding("user.delete", {"username": "bob"})
    assert base == binding("user.delete", {"username": "bob"})
    assert base != binding("user.delete", {"username": "alice"})
    assert base != binding("user.create", {"username": "bob"})
    assert binding("x", {"a": 1, "b": 2}) == binding("x", {"b": 2, "a": 1})  # order does not matter
    assert binding("x", {"a": 1}) != binding("x", {"a": True})  # types do
    assert binding("x", {"a": [[1, b"v"]]}) != binding("x", {"a": [[1, b"w"]]})


def test_summary_shows_short_values_and_digests_long_ones() -> None:
    shown = summary({"username": "bob", "handle": 7, "template": [[3, b"label"]], "wrapped": b"\x00" * 300})
    assert shown["username"] == "bob" and shown["handle"] == 7
    assert "sha256" in shown["template"] and "300 long" in shown["wrapped"]


def test_claims_round_trip_and_foreign_data_is_refused() -> None:
    claims = Claims("cluster-1", "user", "user.delete", {"username": "bob"}, binding("user.delete", {}), "user",
                    "admin", "uid-1", 1.5, 601.5, "ab" * 16)
    assert Claims.decode(claims.encode()) == claims
    for data in (b"not json", b'{"kind":"other"}', json.dumps({"kind": quorum.TOKEN_KIND}).encode(),
                 b"x" * (approvals.MAX_APPROVAL_DATA + 1)):
        with pytest.raises(ArgumentsBad):
            Claims.decode(data)


def test_split_takes_the_approval_only_for_operations_with_a_rule() -> None:
    rule = QuorumRule("user")
    raw = {"username": "bob", "approval": b"data"}
    assert split(None, raw) == (raw, None)  # the handler's parser refuses it as an unknown argument
    assert split(rule, raw) == ({"username": "bob"}, b"data")
    with pytest.raises(ArgumentsBad):
        split(rule, {"approval": "text"})
    with pytest.raises(ArgumentsBad):
        split(rule, {"approval": b"x" * (approvals.MAX_APPROVAL_DATA + 1)})


# --- the token store over a real store -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def with_store(tmp_path: Path, body: Callable[[QuorumStore, Clock], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        store = await SqliteStore.open(tmp_path / "store.db")
        clock = Clock()
        try:
            return await body(QuorumStore(Barrier(store, CLUSTER_KEY), "cluster-1", clock=clock), clock)
        finally:
            await store.close()

    return asyncio.run(main())


def _claims(store: QuorumStore, n: int, timeout: int = 600) -> Claims:
    return store.new_claims(service="user", operation="user.delete", arguments={"username": f"u{n}"},
                            subject="user", requester="admin", requester_uid="uid-admin", timeout=timeout)


def test_tokens_are_kept_found_and_limited_to_1024_with_expired_ones_purged(tmp_path: Path) -> None:
    async def body(store: QuorumStore, clock: Clock) -> None:
        first, purged = await store.create(_claims(store, 0, timeout=60))
        assert purged == []
        found = await store.find(first.digest)
        assert found is not None and found.claims == first.claims
        assert await store.find(b"\x00" * 32) is None
        for n in range(1, quorum.MAX_TOKENS):
            await store.create(_claims(store, n))
        with pytest.raises(HsmError) as info:  # full of live tokens: refused, nothing purged
            await store.create(_claims(store, 5000))
        assert info.value.code == CKR.DEVICE_MEMORY
        clock.now += 61  # the first token expired: it makes room
        token, purged = await store.create(_claims(store, 5001))
        assert [t.hex for t in purged] == [first.hex]
        assert await store.find(first.digest) is None and await store.find(token.digest) is not None
        assert await store._barrier.count_prefix(quorum.TOKENS_PREFIX) == quorum.MAX_TOKENS

    with_store(tmp_path, body)


def test_purge_keeps_recently_spent_tokens_so_a_replay_is_told_so(tmp_path: Path) -> None:
    async def body(store: QuorumStore, clock: Clock) -> None:
        token, _ = await store.create(_claims(store, 1))
        token.state = quorum.USED
        await store.write(token)
        assert await store.purge() == []  # still kept: a replay is answered "used", not "unknown"
        clock.now += 600 + quorum.KEEP_AFTER_EXPIRY + 1
        assert [t.hex for t in await store.purge()] == [token.hex]

    with_store(tmp_path, body)


def test_a_token_written_over_a_stale_copy_conflicts(tmp_path: Path) -> None:
    from strongroom.store.base import ConflictError

    async def body(store: QuorumStore, _clock: Clock) -> None:
        token, _ = await store.create(_claims(store, 1))
        stale = await store.find(token.digest)
        assert stale is not None
        token.state = quorum.USED
        await store.write(token)
        stale.uses_left = 0
        with pytest.raises(ConflictError):  # two requests never spend the same use
            await store.write(stale)

    with_store(tmp_path, body)


def test_mfa_challenges_are_per_node_and_single_use(tmp_path: Path) -> None:
    async def body(store: QuorumStore, _clock: Clock) -> None:
        challenges = await store.new_challenges("alice", "uid-a", ["node2", "node1", "node1"])
        assert [c.node for c in challenges] == ["node1", "node2"]
        assert len({c.digest for c in challenges}) == 2
        data = json.loads(challenges[0].approval_data)
        assert data["cluster"] == "cluster-1" and data["node"] == "node1" and data["uid"] == "uid-a"
        assert await store.challenge(challenges[1].digest) is not None
        taken = await store.take_challenge(challenges[0].digest)
        assert taken is not None and taken.uid == "uid-a"
        assert await store.take_challenge(challenges[0].digest) is None
        # One signed file is one login: taking node1's challenge spent node2's too (issue 16: it was left
        # usable, so a signed file logged in once per node).
        assert await store.challenge(challenges[1].digest) is None
        assert await store.take_challenge(challenges[1].digest) is None

    with_store(tmp_path, body)


def test_a_file_whose_sibling_was_taken_is_spent(tmp_path: Path) -> None:
    """Two logins racing with one signed file on two nodes: the one that finds a sibling gone gets nothing."""
    from strongroom.barrier import Remove

    async def body(store: QuorumStore, _clock: Clock) -> None:
        first, second, third = await store.new_challenges("bob", "uid-b", ["node1", "node2", "node3"])
        entry = await store._barrier.get(second.key)
        assert entry is not None
        await store._barrier.commit([Remove(entry.key, entry)])  # as if node2's login took only its own
        assert await store.take_challenge(first.digest) is None
        assert await store.challenge(first.digest) is None and await store.challenge(third.digest) is None

    with_store(tmp_path, body)


def test_registered_keys_are_bound_to_the_account(tmp_path: Path) -> None:
    async def body(store: QuorumStore, _clock: Clock) -> None:
        key = ed25519.Ed25519PrivateKey.generate().public_key()
        saved = await store.save_key("alice", "uid-1", key, quorum=True)
        assert saved is not None and saved.algorithm == "Ed25519"
        assert await store.registered("alice", "uid-1") is not None
        assert await store.registered("alice", "uid-2") is None  # a new account of the same name
        with pytest.raises(ArgumentsBad):  # the new account has no key of its own to keep
            await store.save_key("alice", "uid-2", None, mfa=True)
        both = await store.save_key("alice", "uid-1", None, mfa=True)
        assert both is not None and both.quorum and both.mfa
        assert await store.save_key("alice", "uid-1", None, quorum=False, mfa=False) is None
        assert await store.registered("alice") is None

    with_store(tmp_path, body)


def test_verify_with_gives_the_pkcs11_codes() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = approvals.token_of(b"t")
    assert quorum.verify_with(key.public_key(), token, approvals.sign_token(key, token)) == "ecdsa"
    with pytest.raises(HsmError) as info:
        quorum.verify_with(key.public_key(), token, b"\x30\x00")
    assert info.value.code == CKR.SIGNATURE_INVALID
    with pytest.raises(HsmError) as info:
        quorum.verify_with(key.public_key(), token, b"x" * 2000)
    assert info.value.code == CKR.SIGNATURE_LEN_RANGE
    with pytest.raises(HsmError) as info:
        quorum.load_key("garbage")
    assert info.value.code == CKR.PUBLIC_KEY_INVALID


def test_the_sweep_marks_each_expired_token_once_audits_it_and_purges_it_later(tmp_path: Path) -> None:
    """The sweep over a real store and audit log: a token past its deadline is marked expired (audited as an
    intent and its ok outcome), a second sweep finds nothing, a live one is left alone, and an hour later the
    expired one is removed (quorum.token.purge)."""
    from strongroom.audit import AuditLog
    from strongroom.services.auditor import Auditor, WitnessedBarrier

    async def main() -> None:
        store = await SqliteStore.open(tmp_path / "store.db")
        AuditLog.create(tmp_path / "audit.log")
        auditor = Auditor(AuditLog(tmp_path / "audit.log", node_id="node1", boot=1))
        clock = Clock()
        tokens = QuorumStore(WitnessedBarrier(store, CLUSTER_KEY), "cluster-1", clock=clock)
        try:
            live, _ = await tokens.create(_claims(tokens, 1, timeout=600))
            doomed, _ = await tokens.create(_claims(tokens, 2, timeout=60))
            assert await quorum.sweep(tokens, auditor) == ([], [])
            clock.now += 61
            expired, purged = await quorum.sweep(tokens, auditor)
            assert [t.hex for t in expired] == [doomed.hex] and purged == []
            assert await quorum.sweep(tokens, auditor) == ([], [])  # marked: never audited twice
            found = await tokens.find(doomed.digest)
            assert found is not None and found.state == quorum.EXPIRED
            assert found.public(clock.now)["state"] == "expired"
            survivor = await tokens.find(live.digest)
            assert survivor is not None and survivor.state == quorum.PENDING
            clock.now += quorum.KEEP_AFTER_EXPIRY + 1
            _expired, purged = await quorum.sweep(tokens, auditor)
            assert [t.hex for t in purged] == [doomed.hex] and await tokens.find(doomed.digest) is None
        finally:
            await store.close()
        records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines() if line.strip()]
        expiry = [r for r in records if r["event"] == "quorum.token.expire"]
        # doomed's at the second sweep; live's at the last (an hour on, it expired too).
        assert [r["outcome"] for r in expiry] == ["intent", "ok", "intent", "ok"]
        assert [r["details"].get("token") for r in expiry[::2]] == [doomed.hex, live.hex]
        assert expiry[0]["details"]["arguments"] == {"username": "u2"}
        assert expiry[1]["details"]["intent"] == expiry[0]["seq"]
        assert [r["details"]["token"] for r in records if r["event"] == "quorum.token.purge"] == [doomed.hex]

    asyncio.run(main())

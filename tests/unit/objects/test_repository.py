"""The object repository over a real SQLite store and barrier: indexed search, visibility, the cache.

C_FindObjects (PKCS#11 v2.40 §5.7) returns the objects that match every attribute of the template;
Strongroom answers from a per-worker cache indexed by class, label, id and key type, filtered by what
the caller may see (objects/access.py). These tests drive ObjectRepository as the handlers do.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from strongroom.barrier import Barrier
from strongroom.constants import CKA, CKK, CKO
from strongroom.errors import CKR, HsmError, ObjectHandleInvalid
from strongroom.objects import templates
from strongroom.objects.access import Access, Actor, may
from strongroom.objects.model import SESSION_HANDLE_BASE, TOKEN_HANDLE_LIMIT, StoredObject
from strongroom.objects.repository import INDEXED, ObjectIndex, ObjectLimit, ObjectRepository
from strongroom.store.sqlite import SqliteStore

from .builders import ADMIN, OWNER, SHARED, STRANGER, make_object

KEY = bytearray(b"\x22" * 32)


async def _no_witness() -> None:
    return None


def run(tmp_path: Path, body: Callable[[ObjectRepository, Barrier], Awaitable[Any]], max_objects: int = 100) -> Any:
    async def main() -> Any:
        store = await SqliteStore.open(tmp_path / "store.db")
        try:
            barrier = Barrier(store, KEY)
            return await body(ObjectRepository(barrier, max_objects=max_objects), barrier)
        finally:
            await store.close()

    return asyncio.run(main())


def _obj(object_class: CKO, label: bytes, key_id: bytes = b"", *, owner: Actor = OWNER, token: bool = True,
         key_type: CKK | None = None, p11_session: int | None = None, **supplied: Any) -> StoredObject:
    attrs = {CKA.LABEL: label, **({CKA.ID: key_id} if object_class is not CKO.DATA else {}),
             **{getattr(CKA, name): value for name, value in supplied.items()}}
    return make_object(object_class, attrs, owner=owner, token=token, key_type=key_type, p11_session=p11_session)


def _seen_by(actor: Actor) -> Callable[[StoredObject], bool]:
    return lambda obj: may(obj, actor, Access.SEE)


def _everyone(_obj: StoredObject) -> bool:
    return True


async def _populate(repo: ObjectRepository) -> dict[str, int]:
    objects = {
        "aes": _obj(CKO.SECRET_KEY, b"app", b"\x01"),
        "hmac": _obj(CKO.SECRET_KEY, b"app", b"\x02", key_type=CKK.GENERIC_SECRET),
        "rsa-pub": _obj(CKO.PUBLIC_KEY, b"signer", b"\x03"),
        "rsa-priv": _obj(CKO.PRIVATE_KEY, b"signer", b"\x03"),
        "ec-pub": _obj(CKO.PUBLIC_KEY, b"signer", b"\x04", key_type=CKK.EC),
        "cert": _obj(CKO.CERTIFICATE, b"signer", b"\x03"),
        "data": _obj(CKO.DATA, b"note"),
        "carol": _obj(CKO.SECRET_KEY, b"app", b"\x01", owner=STRANGER).with_changes(shared=frozenset(),
                                                                                   share_ids={}),
    }
    await repo.add(list(objects.values()), _no_witness)
    return {name: obj.handle for name, obj in objects.items()}


SEARCHES: list[tuple[dict[int, Any], set[str]]] = [
    ({}, {"aes", "hmac", "rsa-pub", "rsa-priv", "ec-pub", "cert", "data"}),
    ({CKA.CLASS: CKO.SECRET_KEY}, {"aes", "hmac"}),
    ({CKA.CLASS: CKO.DATA}, {"data"}),  # CKO_DATA is 0: found all the same
    ({CKA.KEY_TYPE: CKK.RSA}, {"rsa-pub", "rsa-priv"}),  # CKK_RSA is 0 too
    ({CKA.LABEL: b"signer"}, {"rsa-pub", "rsa-priv", "ec-pub", "cert"}),
    ({CKA.LABEL: b"signer", CKA.CLASS: CKO.PUBLIC_KEY}, {"rsa-pub", "ec-pub"}),
    ({CKA.ID: b"\x03"}, {"rsa-pub", "rsa-priv", "cert"}),
    ({CKA.ID: b"\x03", CKA.CLASS: CKO.PRIVATE_KEY}, {"rsa-priv"}),
    ({CKA.LABEL: b"app", CKA.KEY_TYPE: CKK.AES}, {"aes"}),
    ({CKA.LABEL: b"app", CKA.SIGN: True}, {"aes", "hmac"}),  # an attribute without an index filters
    ({CKA.LABEL: b"app", CKA.ENCRYPT: True}, {"aes"}),  # HMAC keys do not encrypt by default
    ({CKA.VERIFY: True, CKA.CLASS: CKO.PUBLIC_KEY}, {"rsa-pub", "ec-pub"}),
    ({CKA.LABEL: b"nobody"}, set()),
    ({CKA.LABEL: b"app", CKA.CLASS: CKO.PUBLIC_KEY}, set()),
    ({CKA.ID: b"\x03", CKA.MODULUS_BITS: 2048}, {"rsa-pub"}),
    ({CKA.TOKEN: True, CKA.CLASS: CKO.SECRET_KEY}, {"aes", "hmac"}),
    ({CKA.TOKEN: False}, set()),
    ({CKA.VALUE: b"k" * 32}, set()),  # key material never matches
]


@pytest.mark.parametrize(("template", "expected"), SEARCHES)
def test_indexed_search(tmp_path: Path, template: dict[int, Any], expected: set[str]) -> None:
    async def body(repo: ObjectRepository, _barrier: Barrier) -> None:
        handles = await _populate(repo)
        found = await repo.search(template, _seen_by(OWNER))
        assert found == sorted(handles[name] for name in expected)
        # The indexes only narrow the search: a scan of everything with the same filter agrees.
        everything = [o for o in repo.tokens.by_handle.values() if _seen_by(OWNER)(o)]
        assert found == sorted(o.handle for o in everything if templates.matches(o, template))

    run(tmp_path, body)


def test_search_puts_what_first_picks_before_the_rest_each_group_oldest_first(tmp_path: Path) -> None:
    """object.find passes ``first`` = the caller's own and shared objects: another user's public key under the
    same CKA_ID never comes before the caller's own (pkcs11-tool pairs keys by the first match), and the order
    does not follow the random handles."""
    async def body(repo: ObjectRepository, _barrier: Barrier) -> None:
        made = {name: _obj(CKO.PUBLIC_KEY, name.encode(), b"\x01", owner=owner).with_changes(created=created)
                for name, owner, created in (("stranger-old", STRANGER, 1.0), ("own-new", OWNER, 3.0),
                                             ("stranger-new", STRANGER, 4.0), ("own-old", OWNER, 2.0))}
        await repo.add(list(made.values()), _no_witness)
        order = [made[name].handle for name in ("own-old", "own-new", "stranger-old", "stranger-new")]
        template = {CKA.ID: b"\x01", CKA.CLASS: CKO.PUBLIC_KEY}
        assert await repo.search(template, _everyone, first=_seen_by(Actor(OWNER.name, OWNER.user_id, False,
                                                                           sees_public=False))) == order
        assert await repo.search(template, _everyone) == sorted(order)  # without ``first``: handle order

    run(tmp_path, body)

def test_search_shows_each_caller_only_what_it_may_see(tmp_path: Path) -> None:
    async def body(repo: ObjectRepository, _barrier: Barrier) -> None:
        handles = await _populate(repo)
        template = {CKA.LABEL: b"app"}
        assert await repo.search(template, _seen_by(OWNER)) == sorted([handles["aes"], handles["hmac"]])
        assert await repo.search(template, _seen_by(STRANGER)) == [handles["carol"]]
        assert await repo.search(template, _seen_by(SHARED)) == sorted([handles["aes"], handles["hmac"]])
        assert await repo.search(template, _seen_by(Actor("bob", "bob-2", False))) == []  # not the shared account
        assert len(await repo.search({}, _seen_by(ADMIN))) == len(handles)  # admins see token objects
        # Public keys and certificates are public objects by default: everyone sees them (PKCS#11 §6.7) ...
        public = sorted([handles["rsa-pub"], handles["ec-pub"], handles["cert"]])
        assert await repo.search({}, _seen_by(Actor("mallory", None, False))) == public
        assert await repo.search({}, _seen_by(Actor.anonymous(lambda _h: False))) == public
        # ... unless the cluster policy public_objects is hidden.
        assert await repo.search({}, _seen_by(Actor("mallory", None, False, sees_public=False))) == []
        assert await repo.search({}, _seen_by(Actor.anonymous(lambda _h: False, sees_public=False))) == []

    run(tmp_path, body)


def test_session_objects_are_found_only_by_their_login(tmp_path: Path) -> None:
    async def body(repo: ObjectRepository, _barrier: Barrier) -> None:
        token_key = _obj(CKO.SECRET_KEY, b"k")
        mine = _obj(CKO.SECRET_KEY, b"k", token=False, p11_session=5)
        theirs = _obj(CKO.SECRET_KEY, b"k", token=False, p11_session=6)
        await repo.add([token_key, mine, theirs], _no_witness)
        assert token_key.handle < TOKEN_HANDLE_LIMIT
        assert mine.handle > SESSION_HANDLE_BASE and theirs.handle > SESSION_HANDLE_BASE
        login = Actor("alice", "alice-1", False, holds_session=lambda h: h == 5)
        assert await repo.search({CKA.LABEL: b"k"}, _seen_by(login)) == sorted([token_key.handle, mine.handle])
        assert await repo.search({CKA.LABEL: b"k", CKA.TOKEN: False}, _seen_by(login)) == [mine.handle]
        assert await repo.search({CKA.LABEL: b"k", CKA.TOKEN: True}, _seen_by(login)) == [token_key.handle]
        assert await repo.search({CKA.LABEL: b"k"}, _seen_by(OWNER)) == [token_key.handle]  # another login
        # Nothing of a session object reaches the store.
        assert [r.key for r in (await repo._store.list_prefix("objects/")).records] == [
            f"objects/{token_key.handle:08x}"]
        assert repo.drop_session_objects(5) == 1
        assert await repo.search({CKA.LABEL: b"k"}, _seen_by(login)) == [token_key.handle]
        with pytest.raises(ObjectHandleInvalid):
            await repo.get(mine.handle)
        assert (await repo.get(theirs.handle)).handle == theirs.handle

    run(tmp_path, body)


def _index_entries(index: ObjectIndex) -> dict[tuple[int, Any], set[int]]:
    """What the secondary index should hold for the objects it has: exactly their indexed attribute values."""
    expected: dict[tuple[int, Any], set[int]] = {}
    for obj in index.by_handle.values():
        for cka in INDEXED:
            if cka in obj.attributes:
                expected.setdefault((cka, obj.attributes[cka]), set()).add(obj.handle)
    return expected


def test_a_change_moves_an_object_between_index_entries(tmp_path: Path) -> None:
    async def body(repo: ObjectRepository, _barrier: Barrier) -> None:
        (key,) = await repo.add([_obj(CKO.SECRET_KEY, b"before", b"\x01")], _no_witness)
        changed = key.with_changes(attributes=templates.check_set(key, {CKA.LABEL: b"after", CKA.ID: b"\x02"},
                                                                  is_admin=False))
        await repo.replace(key, changed, _no_witness)
        assert dict(repo.tokens._by_attribute) == _index_entries(repo.tokens)  # no entry left behind
        assert await repo.search({CKA.LABEL: b"before"}, _everyone) == []
        assert await repo.search({CKA.ID: b"\x01"}, _everyone) == []
        assert await repo.search({CKA.LABEL: b"after", CKA.ID: b"\x02"}, _everyone) == [key.handle]
        await repo.destroy(await repo.get(key.handle), _no_witness)
        assert await repo.search({}, _everyone) == []
        assert dict(repo.tokens._by_attribute) == {}
        with pytest.raises(ObjectHandleInvalid):
            await repo.get(key.handle)

    run(tmp_path, body)


def test_another_worker_finds_an_object_as_soon_as_it_was_stored(tmp_path: Path) -> None:
    """Read-your-writes across workers: a search catches up with the store first; a lookup by handle that
    misses the cache reads the store."""
    async def body(repo: ObjectRepository, barrier: Barrier) -> None:
        other = ObjectRepository(barrier, max_objects=100)
        await other.load()
        (key,) = await repo.add([_obj(CKO.SECRET_KEY, b"fresh", b"\x09")], _no_witness)
        assert key.handle not in other.tokens.by_handle
        found = await other.get(key.handle)
        assert found.attributes == key.attributes and found.owner == "alice"
        third = ObjectRepository(barrier, max_objects=100)
        await third.load()
        (second,) = await repo.add([_obj(CKO.SECRET_KEY, b"fresh", b"\x0a")], _no_witness)
        assert await third.search({CKA.LABEL: b"fresh"}, _everyone) == sorted([key.handle, second.handle])
        # A change and a destruction elsewhere are seen too.
        await repo.destroy(await repo.get(key.handle), _no_witness)
        assert await third.search({CKA.LABEL: b"fresh"}, _everyone) == [second.handle]

    run(tmp_path, body)


def test_stored_objects_come_back_as_they_went_in(tmp_path: Path) -> None:
    async def body(repo: ObjectRepository, barrier: Barrier) -> None:
        original = _obj(CKO.SECRET_KEY, b"k", b"\x01", WRAP_TEMPLATE={CKA.EXTRACTABLE: False, CKA.LABEL: b"w"},
                        ALLOWED_MECHANISMS=[0x1087, 0x2109], START_DATE=b"20250101")
        await repo.add([original], _no_witness)
        other = ObjectRepository(barrier, max_objects=100)
        await other.load()
        loaded = await other.get(original.handle)
        assert loaded.attributes == original.attributes
        assert (loaded.material, loaded.shared, loaded.share_ids, loaded.owner_id) == (
            original.material, original.shared, original.share_ids, original.owner_id)
        assert loaded.object_class is CKO.SECRET_KEY and loaded.key_type is CKK.AES
        assert "material" not in loaded.public_view() and b"k" * 32 not in repr(loaded.public_view()).encode()

    run(tmp_path, body)


def test_the_object_limit(tmp_path: Path) -> None:
    async def body(repo: ObjectRepository, _barrier: Barrier) -> None:
        await repo.add([_obj(CKO.DATA, b"1"), _obj(CKO.DATA, b"2")], _no_witness)
        with pytest.raises(ObjectLimit) as info:
            await repo.add([_obj(CKO.DATA, b"3")], _no_witness)
        assert info.value.code == CKR.DEVICE_MEMORY
        with pytest.raises(ObjectLimit):  # a key pair goes in whole or not at all
            await repo.add([_obj(CKO.PUBLIC_KEY, b"p"), _obj(CKO.PRIVATE_KEY, b"p")], _no_witness)
        await repo.add([_obj(CKO.DATA, b"session", token=False)], _no_witness)  # session objects: not counted
        assert len(repo.tokens) == 2

    run(tmp_path, body, max_objects=2)


def test_nothing_is_written_unless_the_witness_recorded_it(tmp_path: Path) -> None:
    """Audit before act: a write whose audit record fails is not made."""
    class AuditDown(HsmError):
        code = CKR.DEVICE_ERROR

    async def refuse() -> None:
        raise AuditDown("the audit log cannot be written")

    async def body(repo: ObjectRepository, _barrier: Barrier) -> None:
        with pytest.raises(AuditDown):
            await repo.add([_obj(CKO.SECRET_KEY, b"k"), _obj(CKO.SECRET_KEY, b"s", token=False)], refuse)
        assert await repo.search({}, _everyone) == [] and len(repo.sessions) == 0
        (key,) = await repo.add([_obj(CKO.SECRET_KEY, b"k")], _no_witness)
        renamed = key.with_changes(attributes={**key.attributes, CKA.LABEL: b"renamed"})
        with pytest.raises(AuditDown):
            await repo.replace(key, renamed, refuse)
        with pytest.raises(AuditDown):
            await repo.destroy(key, refuse)
        assert (await repo.fresh(key)).attributes[CKA.LABEL] == b"k"

    run(tmp_path, body)


def test_a_change_made_on_a_stale_copy_is_refused(tmp_path: Path) -> None:
    """Compare-and-swap: two concurrent changes of one object cannot both win (no lost update)."""
    async def body(repo: ObjectRepository, _barrier: Barrier) -> None:
        (key,) = await repo.add([_obj(CKO.SECRET_KEY, b"k")], _no_witness)
        stale = await repo.fresh(key)
        await repo.replace(stale, stale.with_changes(attributes={**stale.attributes, CKA.LABEL: b"first"}),
                           _no_witness)
        with pytest.raises(HsmError) as info:
            await repo.replace(stale, stale.with_changes(attributes={**stale.attributes, CKA.LABEL: b"second"}),
                               _no_witness)
        assert info.value.code == CKR.FUNCTION_FAILED
        with pytest.raises(HsmError):
            await repo.destroy(stale, _no_witness)
        assert (await repo.fresh(key)).label() == "first"

    run(tmp_path, body)


def test_unsharing_a_deleted_user_everywhere(tmp_path: Path) -> None:
    async def body(repo: ObjectRepository, barrier: Barrier) -> None:
        shared = [_obj(CKO.SECRET_KEY, b"a"), _obj(CKO.SECRET_KEY, b"b")]
        await repo.add([*shared, _obj(CKO.SECRET_KEY, b"c").with_changes(shared=frozenset(), share_ids={})],
                       _no_witness)
        writes = await repo.unshare_changes("bob")
        assert sorted(w.key for w in writes) == sorted(f"objects/{o.handle:08x}" for o in shared)
        await barrier.commit(writes)
        await repo.sync()
        assert await repo.search({}, _seen_by(SHARED)) == []
        assert all(o.shared == frozenset() and o.share_ids == {} for o in repo.tokens.by_handle.values())

    run(tmp_path, body)

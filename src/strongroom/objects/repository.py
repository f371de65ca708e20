"""Where objects live: token objects in the store (through the barrier), session objects in memory.

Each worker keeps every token object it may need decrypted in memory, indexed by
handle, class, label and CKA_ID, and follows the store's watch to stay current. A
search first catches the cache up to the store's current revision, so an object
created through any worker or node is found as soon as its creator was answered
(read-your-writes); a lookup by handle that misses the cache reads the store. Using a key
costs no store query: the cache catches up only to the client's own writes (its revision
token, :meth:`ObjectRepository.caught_up`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from strongroom.barrier import Barrier, Remove, Write
from strongroom.barrier.barrier import Entry, RecordTampered
from strongroom.constants import CKA
from strongroom.errors import CKR, HsmError, ObjectHandleInvalid
from strongroom.objects.model import PREFIX, SESSION_HANDLE_BASE, TOKEN_HANDLE_LIMIT, StoredObject, key_of
from strongroom.store.base import CompactedError, ConflictError, OutcomeUnknownError, UnavailableError

log = logging.getLogger(__name__)

Witness = Callable[[], Awaitable[None]]
#: Attributes with their own index; any other attribute in a search template filters the candidates.
INDEXED = (CKA.CLASS, CKA.LABEL, CKA.ID, CKA.KEY_TYPE)


class ObjectLimit(HsmError):
    code = CKR.DEVICE_MEMORY


class ObjectIndex:
    """Objects by handle plus secondary indexes on a few attributes."""

    def __init__(self) -> None:
        self.by_handle: dict[int, StoredObject] = {}
        self._by_attribute: dict[tuple[int, Any], set[int]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self.by_handle)

    def put(self, obj: StoredObject) -> None:
        self.remove(obj.handle)
        self.by_handle[obj.handle] = obj
        for cka in INDEXED:
            if cka in obj.attributes:
                self._by_attribute[(cka, _hashable(obj.attributes[cka]))].add(obj.handle)

    def remove(self, handle: int) -> None:
        old = self.by_handle.pop(handle, None)
        if old is None:
            return
        for cka in INDEXED:
            if cka in old.attributes:
                bucket = self._by_attribute.get((cka, _hashable(old.attributes[cka])))
                if bucket is not None:
                    bucket.discard(handle)
                    if not bucket:
                        del self._by_attribute[(cka, _hashable(old.attributes[cka]))]

    def candidates(self, template: dict[int, Any]) -> Iterable[StoredObject]:
        """Objects that can match: the smallest index bucket the template names, else all."""
        buckets = [self._by_attribute.get((cka, _hashable(template[cka])), set())
                   for cka in INDEXED if cka in template]
        if not buckets:
            return list(self.by_handle.values())
        smallest = min(buckets, key=len)
        return [self.by_handle[h] for h in smallest if h in self.by_handle]


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class ObjectRepository:
    def __init__(self, barrier: Barrier, *, max_objects: int) -> None:
        self._barrier = barrier
        self._store = barrier.store
        self.max_objects = max_objects
        self.tokens = ObjectIndex()
        self.sessions = ObjectIndex()  # session objects of this worker
        self._revision = 0
        self._sync_lock = asyncio.Lock()
        self._advanced = asyncio.Condition()
        self._following = False
        self._check: asyncio.Future[None] | None = None
        self._last_unavailable_log = 0.0
        self._checks_started = 0
        self._check_number = 0

    # --- keeping the cache current -----------------------------------------------------
    async def load(self) -> None:
        listing = await self._store.list_prefix(PREFIX)
        revision = listing.revision
        index = ObjectIndex()
        for record in listing.records:
            try:
                index.put(StoredObject.from_entry(self._barrier.decode(record)))
            except RecordTampered as exc:
                # One altered record must not take every other key down; it is refused when used.
                log.error("%s", exc.message)
        self.tokens, self._revision = index, max(self._revision, revision)

    async def sync(self) -> None:
        """Catch up with every change committed to the store before this call (anyone's).

        Concurrent callers share one store query, but only one that started after they
        arrived: a batch of pipelined requests costs one query, and none of them can
        miss a change committed before it was received.
        """
        arrival = self._checks_started
        while True:
            check = self._check
            if check is not None and check.done():  # its done-callback may not have run yet
                check = self._check = None
            if check is not None and self._check_number > arrival:
                await asyncio.shield(check)
                return
            if check is None:
                self._checks_started += 1
                self._check_number = self._checks_started
                check = self._check = asyncio.ensure_future(self._catch_up())
                check.add_done_callback(self._check_done)
                await asyncio.shield(check)
                return
            await asyncio.shield(check)  # started before we arrived: it may not cover us

    async def caught_up(self, revision: int, timeout: float = 5.0) -> None:
        """Make the cache hold every change up to ``revision`` (a client's read-your-writes token).

        The cache follows the store's watch, so on the hot path this costs nothing: no store
        query. Only when the client wrote something this worker's watch has not delivered yet
        (through another worker or node, a moment ago) does it wait for the watch; a cache that
        does not follow the store (the watch failed), or does not get there in time, catches up
        the strict way (:meth:`sync`).
        """
        if self._following and revision <= self._revision:
            return
        if self._following:
            self._store.poll_now()
            try:
                async with asyncio.timeout(timeout):
                    async with self._advanced:
                        await self._advanced.wait_for(lambda: self._revision >= revision or not self._following)
                if self._following:
                    return
            except TimeoutError:
                log.warning("object cache lagging behind a client's revision %d; catching up", revision)
        await self.sync()

    def _check_done(self, _task: asyncio.Future[None]) -> None:
        self._check = None

    async def _catch_up(self, timeout: float = 5.0) -> None:
        try:
            current = await self._store.revision()
        except (UnavailableError, OutcomeUnknownError) as exc:
            # Lost quorum: keys already known keep working from this cache (writes fail on their own).
            now = time.monotonic()
            if now - self._last_unavailable_log > 10:
                self._last_unavailable_log = now
                log.warning("store unavailable, serving objects from the cache: %s", exc)
            return
        if current <= self._revision:
            return
        if self._following:
            try:
                async with asyncio.timeout(timeout):
                    async with self._advanced:
                        await self._advanced.wait_for(lambda: self._revision >= current)
                return
            except TimeoutError:
                log.warning("object cache lagging behind revision %d; reloading", current)
        async with self._sync_lock:
            await self.load()

    def _apply(self, deleted: bool, record: Any) -> None:
        handle = int(record.key[len(PREFIX):], 16)
        if deleted:
            self.tokens.remove(handle)
            return
        cached = self.tokens.by_handle.get(handle)
        if cached is not None and cached.entry is not None and cached.revision == record.mod_revision:
            # This worker's own write: its entry came from the commit (a key's mod revision names one write), so
            # decrypting and parsing the record again would rebuild the same object.
            return
        try:
            self.tokens.put(StoredObject.from_entry(self._barrier.decode(record)))
        except RecordTampered as exc:
            # Keep serving the rest; the tampered object is refused when it is used.
            log.error("%s", exc.message)
            self.tokens.remove(handle)

    async def follow(self) -> None:
        """Background task: apply every committed change as the store's watch reports it.

        It watches the whole keyspace, not only objects, so that its revision tracks the
        store's and :meth:`sync` knows when the cache has caught up.
        """
        last_failure: str | None = None
        pause = 1.0
        while True:
            try:
                async with self._sync_lock:
                    await self.load()
                self._following = True
                last_failure, pause = None, 1.0
                async for event in self._store.watch("", self._revision + 1):
                    if event.record.key.startswith(PREFIX):
                        self._apply(event.deleted, event.record)
                    if event.revision > self._revision:
                        self._revision = event.revision
                        async with self._advanced:
                            self._advanced.notify_all()
            except CompactedError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the follower must survive store hiccups
                # The same failure once (a refused store can last): not a traceback every second.
                failure = f"{type(exc).__name__}: {exc}"
                if failure != last_failure:
                    log.warning("object watch failed (%s); retrying with backoff", failure)
                    last_failure = failure
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)
            finally:
                self._following = False

    # --- reading ---------------------------------------------------------------------------
    async def get(self, handle: int) -> StoredObject:
        if handle >= SESSION_HANDLE_BASE:
            obj = self.sessions.by_handle.get(handle)
        else:
            obj = self.tokens.by_handle.get(handle)
            if obj is None and 0 < handle < TOKEN_HANDLE_LIMIT:
                entry = await self._barrier.get(key_of(handle))  # created elsewhere a moment ago?
                if entry is not None:
                    obj = StoredObject.from_entry(entry)
                    self.tokens.put(obj)
        if obj is None:
            raise ObjectHandleInvalid(f"no object with handle {handle}")
        return obj

    async def fresh(self, obj: StoredObject) -> StoredObject:
        """Re-read a token object from the store (before a change: compare-and-swap on it)."""
        if not obj.token:
            return obj
        entry = await self._barrier.get(key_of(obj.handle))
        if entry is None:
            self.tokens.remove(obj.handle)
            raise ObjectHandleInvalid(f"object {obj.handle} was destroyed")
        current = StoredObject.from_entry(entry)
        self.tokens.put(current)
        return current

    async def search(self, template: dict[int, Any], visible: Callable[[StoredObject], bool],
                     first: Callable[[StoredObject], bool] | None = None) -> list[int]:
        """The handles of the visible objects that match ``template``, in handle order; with ``first``, the
        objects it picks come before the others, each group oldest first."""
        from strongroom.objects.templates import matches

        await self.sync()
        token_flag = template.get(CKA.TOKEN)
        found: list[StoredObject] = []
        for index, is_token in ((self.tokens, True), (self.sessions, False)):
            if token_flag is not None and token_flag != is_token:
                continue
            found += [o for o in index.candidates(template) if visible(o) and matches(o, template)]
        if first is None:
            return sorted(o.handle for o in found)
        return [o.handle for o in sorted(found, key=lambda o: (not first(o), o.created, o.handle))]

    # --- writing -----------------------------------------------------------------------------
    async def add(self, objects: list[StoredObject], witness: Witness) -> list[StoredObject]:
        """Store new objects (a key pair together, atomically). Handles are assigned here.

        One store write and no read: the object limit is checked against the watch-fed cache (a
        quota against runaway creation, not an exact count: creations through other nodes in flight
        land anyway), and the new records' entries come from the commit itself.
        """
        tokens = [o for o in objects if o.token]
        if tokens:
            if not self._following:
                await self.sync()  # the cache does not follow the store: count what it holds now
            if len(self.tokens) + len(tokens) > self.max_objects:
                raise ObjectLimit(f"the cluster already holds the maximum of {self.max_objects} objects")
        for obj in objects:
            if obj.token:
                obj.handle = self._new_token_handle()
            else:
                obj.handle = SESSION_HANDLE_BASE + secrets.randbelow(SESSION_HANDLE_BASE - 1) + 1
                while obj.handle in self.sessions.by_handle:
                    obj.handle = SESSION_HANDLE_BASE + secrets.randbelow(SESSION_HANDLE_BASE - 1) + 1
        await witness()
        if tokens:
            written: dict[str, Entry] = {}
            for _ in range(5):
                try:
                    await self._barrier.commit([Write(key_of(o.handle), o.to_record()) for o in tokens], written)
                    break
                except ConflictError:  # a random handle collided: draw again
                    for obj in tokens:
                        obj.handle = self._new_token_handle()
            else:
                raise HsmError("could not allocate object handles", CKR.FUNCTION_FAILED)
            for obj in tokens:
                obj.entry = written[key_of(obj.handle)].stripped()
                self.tokens.put(obj)
        for obj in objects:
            if not obj.token:
                self.sessions.put(obj)
        return objects

    def _new_token_handle(self) -> int:
        """A random token handle no object in the cache has (the commit's must-not-exist compare decides)."""
        handle = secrets.randbelow(TOKEN_HANDLE_LIMIT - 1) + 1
        while handle in self.tokens.by_handle:
            handle = secrets.randbelow(TOKEN_HANDLE_LIMIT - 1) + 1
        return handle

    async def replace(self, obj: StoredObject, updated: StoredObject, witness: Witness) -> StoredObject:
        """Write ``updated`` over ``obj`` if nobody changed ``obj`` since it was read."""
        await witness()
        if not obj.token:
            self.sessions.put(updated)
            return updated
        previous = obj.entry
        if previous is None:
            raise ObjectHandleInvalid(f"object {obj.handle} has no stored record")
        written: dict[str, Entry] = {}
        try:
            await self._barrier.commit([Write(key_of(obj.handle), updated.to_record(), previous)], written)
        except ConflictError:
            raise HsmError("the object was changed concurrently; read it again and retry",
                           CKR.FUNCTION_FAILED) from None
        updated.entry = written[key_of(obj.handle)].stripped()
        self.tokens.put(updated)
        return updated

    async def destroy(self, obj: StoredObject, witness: Witness) -> None:
        await witness()
        if not obj.token:
            self.sessions.remove(obj.handle)
            return
        if obj.entry is None:
            raise ObjectHandleInvalid(f"object {obj.handle} has no stored record")
        try:
            await self._barrier.commit([Remove(key_of(obj.handle), obj.entry)])
        except ConflictError:
            raise HsmError("the object was changed concurrently; try again", CKR.FUNCTION_FAILED) from None
        self.tokens.remove(obj.handle)

    def drop_session_objects(self, p11_session: int) -> int:
        doomed = [h for h, o in self.sessions.by_handle.items() if o.p11_session == p11_session]
        for handle in doomed:
            self.sessions.remove(handle)
        return len(doomed)

    def owned_count(self, username: str) -> int:
        return sum(1 for o in self.tokens.by_handle.values() if o.owner == username)

    async def unshare_changes(self, username: str) -> list[Write]:
        """The writes that take ``username`` out of every share list (user.delete), each conditional
        on the record as this worker knows it after catching up with the store."""
        await self.sync()
        return [
            Write(key_of(obj.handle), _without(obj, username).to_record(), obj.entry)
            for obj in self.tokens.by_handle.values()
            if username in obj.shared and obj.entry is not None
        ]


def entry_of(obj: StoredObject) -> Entry | None:
    return obj.entry


def _without(obj: StoredObject, username: str) -> StoredObject:
    share_ids = {name: uid for name, uid in obj.share_ids.items() if name != username}
    return obj.with_changes(shared=obj.shared - {username}, share_ids=share_ids, entry=None)

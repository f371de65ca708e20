"""Tamper evidence for a store whose bookkeeping anyone with the file can rewrite (SQLite).

The barrier binds each record's ciphertext to its key and version. On etcd the version is
etcd's own; in a SQLite file it is a column, so an old row (old value *and* old version)
copied back authenticates. This module makes the store's bookkeeping itself authenticated,
under a key derived from the cluster key (``Store.enable_integrity``):

* **A digest of the set of live rows.** Each row ``(key, version, create_revision,
  mod_revision, SHA-256(value))`` has a tag ``T = HMAC(K_row, row)``; the store keeps the
  XOR of the tags of all live rows, ``A``, and stores only ``HMAC(K_state, revision ‖ chain
  head ‖ A ‖ origin)``. Every write removes the old row's tag and adds the new one. Neither
  the tags nor ``A`` are ever stored: XOR of *known* values could be solved for by linear
  algebra, XOR of secret PRF outputs cannot (a different set matches with probability 2^-256).
* **A hash-chained, MACed history.** Each revision's changes (keys, versions, hashes of the
  new values — never the values) are linked: ``link_r = HMAC(K_link, link_(r-1) ‖ r ‖
  changes)``. A process that is behind follows the chain from the link it knows, so an
  event deleted, inserted or edited breaks it.
* **An index per process.** On first use the process scans every row and checks ``A``
  against the stored MAC, then keeps ``key -> (version, create, mod, SHA-256(value))``
  current from its own writes and from the chain. Every row read is compared with it: a row
  that is not the one the store last wrote, or present where the index says deleted (or the
  reverse), is refused with :class:`StoreTampered`.
* **An origin.** Integrity starts once per store, with a random ``origin`` bound into the
  state MAC; the node remembers it in its high-water mark (services/freshness.py), so deleting
  the digest to make the store start over is seen.

What this does not do: a process keeps no memory across restarts, so putting back a whole
older copy of the file (consistent with its digest) is left to the node's high-water mark;
and a live attacker who puts the whole file back to a revision some worker last saw can show
that worker the older state until a write by any worker forks the chain (then the others
refuse it). Root on a running node can read the key from memory.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeGuard

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from strongroom.store.base import Record, StoreError

__all__ = ["Change", "Index", "IntegrityKeys", "IntegrityRequired", "State", "StoreTampered", "change_of", "state_of",
           "value_hash"]

#: An index entry: what the store last wrote under a key.
Fingerprint = tuple[int, int, int, bytes]  # version, create_revision, mod_revision, SHA-256(value)

ZERO_LINK = bytes(32)
ORIGIN_SIZE = 16
_INFO = b"strongroom/store-integrity/v1\0"
_REVISIONS = struct.Struct(">QQQ")
_CHANGE = struct.Struct(">BQQB")


class StoreTampered(StoreError):
    """A row, the history or the digest of the store is not what the store wrote; nothing is served from it."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class IntegrityRequired(StoreError):
    """A process without the store-integrity key tried to write to a store that authenticates its rows."""


@dataclass(frozen=True, slots=True)
class Change:
    """One key's change at a revision, as the history records it (no value, only its hash)."""

    key: str
    deleted: bool
    version: int
    create_revision: int
    value_hash: bytes  # b"" for a delete


@dataclass(frozen=True, slots=True)
class State:
    """The authenticated digest row: what the store holds at ``revision``."""

    revision: int
    chain_head: bytes
    origin: bytes
    mac: bytes


def value_hash(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def fingerprint(record: Record) -> Fingerprint:
    return record.version, record.create_revision, record.mod_revision, value_hash(record.value)


def _is_u63(value: object) -> TypeGuard[int]:
    return type(value) is int and 0 <= value < 1 << 63


def _are_ints(*values: object) -> bool:
    return all(_is_u63(v) for v in values)


def change_of(key: object, deleted: object, version: object, created: object, digest: object) -> Change:
    """A history row as a :class:`Change`; a row someone wrote with the wrong types is tampering."""
    if not (isinstance(key, str) and deleted in (0, 1) and _is_u63(version) and _is_u63(created)
            and isinstance(digest, bytes) and len(digest) in (0, 32)):
        raise StoreTampered(f"the store's history has a malformed event for {key!r}")
    return Change(key, bool(deleted), version, created, digest)


def _key_bytes(key: str) -> bytes:
    encoded = key.encode()
    return len(encoded).to_bytes(4, "big") + encoded


def state_of(revision: object, chain_head: object, origin: object, mac: object) -> State:
    """The digest row as a :class:`State`; one with the wrong types or sizes never authenticates."""
    if (_is_u63(revision) and isinstance(chain_head, bytes) and len(chain_head) == 32 and isinstance(origin, bytes)
            and len(origin) == ORIGIN_SIZE and isinstance(mac, bytes)):
        return State(revision, chain_head, origin, mac)
    return State(0, ZERO_LINK, bytes(ORIGIN_SIZE), b"")  # an empty MAC matches nothing


class IntegrityKeys:
    """Three keys derived from the store-integrity key, one per kind of MAC."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the store-integrity key must be at least 32 bytes")
        material = HKDF(hashes.SHA256(), 96, salt=None, info=_INFO).derive(bytes(key))
        self._row, self._link, self._state = material[:32], material[32:64], material[64:]
        self.fingerprint = hashlib.sha256(b"strongroom/store-integrity/id\0" + material).digest()

    def tag(self, key: str, entry: Fingerprint) -> int:
        """The row's secret tag, as an integer (XORed into the digest, never stored)."""
        version, created, modified, digest = entry
        message = _key_bytes(key) + _REVISIONS.pack(version, created, modified) + digest
        return int.from_bytes(hmac.digest(self._row, message, "sha256"), "big")

    def link(self, previous: bytes, revision: int, changes: Sequence[Change]) -> bytes:
        parts = [previous, revision.to_bytes(8, "big"), len(changes).to_bytes(4, "big")]
        for change in sorted(changes, key=lambda c: c.key):
            parts.append(_key_bytes(change.key))
            parts.append(_CHANGE.pack(change.deleted, change.version, change.create_revision, len(change.value_hash)))
            parts.append(change.value_hash)
        return hmac.digest(self._link, b"".join(parts), "sha256")

    def state_mac(self, revision: int, chain_head: bytes, aggregate: int, origin: bytes) -> bytes:
        message = revision.to_bytes(8, "big") + chain_head + aggregate.to_bytes(32, "big") + origin
        return hmac.digest(self._state, message, "sha256")


@dataclass(slots=True)
class Pending:
    """A write prepared inside the store's transaction, applied to the index once it committed."""

    revision: int
    entries: dict[str, Fingerprint | None]
    link: bytes
    aggregate: int
    state: State


class Index:
    """What this process knows the store holds, at :attr:`revision`, each entry authenticated."""

    def __init__(self, keys: IntegrityKeys, where: str, *, keep: int) -> None:
        self.keys = keys
        self.where = where
        self.keep = keep
        self.entries: dict[str, Fingerprint] = {}
        self._sorted: list[str] = []
        self.aggregate = 0
        self.revision = 0
        self.chain_head = ZERO_LINK
        self.origin = b""
        #: Verified links by revision, from :attr:`floor` on: watches re-check history against them.
        self.links: dict[int, bytes] = {}
        self.floor = 0

    # -- building ---------------------------------------------------------------

    def load(self, rows: Iterable[tuple[str, bytes, int, int, int]]) -> None:
        """Fill the index from a full scan (``aggregate`` is then the scan's, to compare with the digest)."""
        entries: dict[str, Fingerprint] = {}
        aggregate = 0
        tag = self.keys.tag
        for key, value, version, created, modified in rows:
            if not (isinstance(key, str) and isinstance(value, bytes) and _are_ints(version, created, modified)):
                raise self._refuse(str(key), "has columns of the wrong type")
            entry = (version, created, modified, value_hash(value))
            entries[key] = entry
            aggregate ^= tag(key, entry)
        self.entries, self._sorted, self.aggregate = entries, sorted(entries), aggregate

    def start(self, state: State) -> None:
        """Check the scan against the digest row; the index then stands at the digest's revision."""
        expected = self.keys.state_mac(state.revision, state.chain_head, self.aggregate, state.origin)
        if not hmac.compare_digest(expected, state.mac):
            raise StoreTampered(
                f"{self.where} does not match its authenticated digest: a record was edited, deleted, added or "
                "copied back from an earlier state (or the digest itself was); refusing to use the store")
        self.revision, self.chain_head, self.origin = state.revision, state.chain_head, state.origin
        self.links, self.floor = {state.revision: state.chain_head}, state.revision

    def state(self) -> State:
        return State(self.revision, self.chain_head, self.origin,
                     self.keys.state_mac(self.revision, self.chain_head, self.aggregate, self.origin))

    def check_successor(self, previous: Index) -> None:
        """A rescan in a running process must not show it an older (or another) store than it knew."""
        if self.origin != previous.origin:
            raise StoreTampered(f"{self.where} started its integrity digest over (it was deleted and made anew)")
        if self.revision < previous.revision or (
                self.revision == previous.revision and self.chain_head != previous.chain_head):
            raise StoreTampered(f"{self.where} went back from revision {previous.revision} to {self.revision} "
                                "(an older copy of the file?)")

    # -- checking rows --------------------------------------------------------------

    def _refuse(self, key: str, why: str) -> StoreTampered:
        return StoreTampered(
            f"stored record {key!r} {why} in {self.where} (edited, deleted, added or copied back from an earlier "
            "state); refusing it", key)

    def check(self, key: str, record: Record | None) -> None:
        expected = self.entries.get(key)
        if record is None:
            if expected is not None:
                raise self._refuse(key, "is missing but was never deleted")
            return
        if expected is None:
            raise self._refuse(key, "is present but the store never wrote it or deleted it since")
        if (record.version, record.create_revision, record.mod_revision) != expected[:3] or (
                not isinstance(record.value, bytes) or value_hash(record.value) != expected[3]):
            raise self._refuse(key, "is not the one the store last wrote")

    def keys_under(self, prefix: str) -> list[str]:
        start = bisect.bisect_left(self._sorted, prefix)
        end = start
        while end < len(self._sorted) and self._sorted[end].startswith(prefix):
            end += 1
        return self._sorted[start:end]

    def check_listing(self, prefix: str, records: Sequence[Record]) -> None:
        expected = self.keys_under(prefix)
        got = [record.key for record in records]
        if got != expected:
            missing = sorted(set(expected) - set(got))
            extra = sorted(set(got) - set(expected))
            if missing:
                raise self._refuse(missing[0], "is missing but was never deleted")
            if extra:
                raise self._refuse(extra[0], "is present but the store never wrote it or deleted it since")
            raise StoreTampered(f"{self.where} listed keys under {prefix!r} out of order (altered collation?)")
        for record in records:
            self.check(record.key, record)

    # -- following history ------------------------------------------------------------

    def follow(self, revision: int, changes: Sequence[Change], link: bytes | None) -> None:
        """Apply the next revision of the history, written by another process, after checking its link."""
        if revision != self.revision + 1:
            raise StoreTampered(f"{self.where}: the history skips from revision {self.revision} to {revision}")
        if not changes or link is None:
            raise StoreTampered(f"{self.where}: revision {revision} is missing from the history "
                                "(events or their link deleted)")
        if not hmac.compare_digest(self.keys.link(self.chain_head, revision, changes), link):
            raise StoreTampered(f"{self.where}: the history of revision {revision} does not authenticate "
                                "(an event was edited, added or deleted)")
        self._apply(self._pending(revision, changes, link))

    def verify_state(self, state: State | None) -> None:
        """After following the history: the digest row must say the same."""
        if state is None or state.revision != self.revision or state.chain_head != self.chain_head or (
                not hmac.compare_digest(state.mac, self.state().mac)):
            raise StoreTampered(f"{self.where}: its digest does not match the history it records at revision "
                                f"{self.revision}")

    def verify_history(self, start: int, last: int, changes: dict[int, list[Change]]) -> None:
        """Re-check revisions ``start``..``last`` (already followed) against the links this process verified."""
        previous = self.links[start - 1]
        for revision in range(start, last + 1):
            link = self.keys.link(previous, revision, changes.get(revision, ()))
            if not changes.get(revision) or link != self.links.get(revision):
                raise StoreTampered(f"{self.where}: the history of revision {revision} was altered since it was "
                                    "written")
            previous = link

    def extend_back(self, start: int, link: bytes, changes: dict[int, list[Change]]) -> None:
        """Verify older history (``start``..:attr:`floor`, from the stored link of ``start``) for a watch.

        It must lead to the link this process verified at :attr:`floor`; then its links are known too.
        """
        links = {start: link}
        for revision in range(start + 1, self.floor + 1):
            if not changes.get(revision):
                raise StoreTampered(f"{self.where}: revision {revision} is missing from the history")
            link = self.keys.link(link, revision, changes[revision])
            links[revision] = link
        if not hmac.compare_digest(link, self.links[self.floor]):
            raise StoreTampered(f"{self.where}: the history before revision {self.floor} does not authenticate")
        self.links.update(links)
        self.floor = start

    # -- this process's own writes ---------------------------------------------------------

    def prepare(self, revision: int, changes: Sequence[Change]) -> Pending:
        link = self.keys.link(self.chain_head, revision, changes)
        return self._pending(revision, changes, link)

    def _pending(self, revision: int, changes: Sequence[Change], link: bytes) -> Pending:
        aggregate = self.aggregate
        entries: dict[str, Fingerprint | None] = {}
        tag = self.keys.tag
        for change in changes:
            old = self.entries.get(change.key)
            if change.deleted:
                if old is None:
                    raise StoreTampered(f"{self.where}: revision {revision} deletes {change.key!r}, which is absent")
                new = None
            else:
                version, created = (old[0] + 1, old[1]) if old is not None else (1, revision)
                if (change.version, change.create_revision) != (version, created):
                    raise StoreTampered(f"{self.where}: revision {revision} gives {change.key!r} version "
                                        f"{change.version}, expected {version}")
                new = (version, created, revision, change.value_hash)
            if old is not None:
                aggregate ^= tag(change.key, old)
            if new is not None:
                aggregate ^= tag(change.key, new)
            entries[change.key] = new
        state = State(revision, link, self.origin, self.keys.state_mac(revision, link, aggregate, self.origin))
        return Pending(revision, entries, link, aggregate, state)

    def apply(self, pending: Pending) -> None:
        self._apply(pending)

    def _apply(self, pending: Pending) -> None:
        for key, entry in pending.entries.items():
            existed = key in self.entries
            if entry is None:
                del self.entries[key]
                position = bisect.bisect_left(self._sorted, key)
                del self._sorted[position]
            else:
                self.entries[key] = entry
                if not existed:
                    bisect.insort(self._sorted, key)
        self.aggregate = pending.aggregate
        self.revision = pending.revision
        self.chain_head = pending.link
        self.links[pending.revision] = pending.link
        while self.floor < self.revision - self.keep:
            self.links.pop(self.floor, None)
            self.floor += 1

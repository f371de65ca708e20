"""The barrier: every persistent record is AES-256-GCM encrypted under the cluster key.

Everything above the barrier handles plaintext values; everything below it (the
store, backups, the operator) only ever sees ciphertext. The associated data binds
the record's key and its per-key version (the store's modification counter), so:

* a value moved to another key fails to open (swap),
* an older value put back under the same key fails to open, because the store's
  version has moved on since (rollback),
* a cut or edited value fails the GCM tag (truncation, modification).

Each failure raises :class:`RecordTampered` naming the key; nothing tampered is
ever returned to the layers above.

Values above the barrier are msgpack maps (see :meth:`Barrier.get`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from strongroom.errors import CKR, HsmError
from strongroom.store.base import Check, Delete, Listing, Put, Record, Store

MAGIC = b"SRB1"
_HEADER = struct.Struct(">4sI12s")  # magic, key epoch, nonce
AAD_PREFIX = b"strongroom/barrier/v1\0"


class RecordTampered(HsmError):
    """A stored record failed authentication: altered, truncated, swapped or rolled back."""

    code = CKR.DEVICE_ERROR

    def __init__(self, key: str, why: str = "failed authentication") -> None:
        super().__init__(
            f"stored record {key!r} {why} (altered, truncated, swapped or rolled back); refusing to use it"
        )
        self.key = key


@dataclass(frozen=True, slots=True)
class Entry:
    """A decrypted record: its value and the store metadata needed to write it back."""

    key: str
    value: dict[str, Any]
    record: Record

    @property
    def revision(self) -> int:
        return self.record.mod_revision

    def stripped(self) -> Entry:
        """This entry without its value and ciphertext: what a conditional write on its key compares (key,
        version, revisions). A cache that keeps the value decoded elsewhere keeps this (half the memory)."""
        r = self.record
        return Entry(self.key, {}, Record(r.key, b"", r.version, r.create_revision, r.mod_revision))


@dataclass(frozen=True, slots=True)
class Write:
    """Write ``value`` at ``key``; ``previous`` is the entry read before (None = must not exist)."""

    key: str
    value: dict[str, Any]
    previous: Entry | None = None


@dataclass(frozen=True, slots=True)
class Remove:
    key: str
    previous: Entry


@dataclass(frozen=True, slots=True)
class Unchanged:
    """Fail the commit unless ``key`` is still as read (``None`` = still absent)."""

    key: str
    previous: Entry | None


Change = Write | Remove | Unchanged


#: HKDF purposes of keys derived from the cluster key (one per use; never reuse the cluster key itself).
STORE_INTEGRITY_PURPOSE = "store-integrity"


def derive_subkey(cluster_key: bytes | bytearray, purpose: str, cluster_id: str) -> bytes:
    """A 32-byte key for one ``purpose``, derived from the cluster key (HKDF-SHA256)."""
    info = b"strongroom/subkey/v1\0" + purpose.encode() + b"\0" + cluster_id.encode()
    return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(bytes(cluster_key))


def _aad(key: str, version: int) -> bytes:
    return AAD_PREFIX + key.encode() + b"\0" + version.to_bytes(8, "big")


class Barrier:
    def __init__(self, store: Store, cluster_key: bytearray, epoch: int = 1) -> None:
        self._store = store
        self._aead = AESGCM(bytes(cluster_key))
        self._epoch = epoch

    @property
    def store(self) -> Store:
        return self._store

    def seal(self, key: str, version: int, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return _HEADER.pack(MAGIC, self._epoch, nonce) + self._aead.encrypt(nonce, plaintext, _aad(key, version))

    def open(self, record: Record) -> bytes:
        blob = record.value
        if len(blob) < _HEADER.size + 16:
            raise RecordTampered(record.key, "is truncated")
        magic, epoch, nonce = _HEADER.unpack_from(blob)
        if magic != MAGIC or epoch != self._epoch:
            raise RecordTampered(record.key, "has an unknown format or key epoch")
        try:
            return self._aead.decrypt(nonce, blob[_HEADER.size :], _aad(record.key, record.version))
        except InvalidTag:
            raise RecordTampered(record.key) from None

    def decode(self, record: Record) -> Entry:
        plaintext = self.open(record)
        try:
            value = msgpack.unpackb(plaintext, raw=False)
        except Exception:  # noqa: BLE001 - msgpack raises many types on bytes it cannot decode
            raise RecordTampered(record.key, "does not decode") from None
        if not isinstance(value, dict):
            raise RecordTampered(record.key, "does not decode to a map")
        return Entry(record.key, value, record)

    async def get(self, key: str) -> Entry | None:
        record = await self._store.get(key)
        return None if record is None else self.decode(record)

    async def list_prefix(self, prefix: str) -> tuple[list[Entry], int]:
        listing = await self._store.list_prefix(prefix)
        return [self.decode(record) for record in listing.records], listing.revision

    async def list_page(self, prefix: str, *, start_after: str = "", limit: int) -> tuple[list[Entry], bool]:
        """At most ``limit`` records under ``prefix`` whose key sorts after ``start_after`` (a whole key), in key
        order, and whether more follow. Only the records returned are decrypted."""
        listing = await self._store.list_prefix(prefix)
        remaining = [record for record in listing.records if record.key > start_after]
        page = remaining[:limit]
        return [self.decode(record) for record in page], len(remaining) > len(page)

    async def count_prefix(self, prefix: str) -> int:
        """How many records there are under ``prefix`` (none is decrypted)."""
        return len((await self._store.list_prefix(prefix)).records)

    async def snapshot(self) -> Listing:
        """Every record of the store at one revision, as stored (encrypted): what a backup holds."""
        return await self._store.list_prefix("")

    def _encrypted(self, write: Write) -> Put:
        version = 1 if write.previous is None else write.previous.record.version + 1
        plaintext = msgpack.packb(write.value, use_bin_type=True)
        expect = 0 if write.previous is None else write.previous.revision
        return Put(write.key, self.seal(write.key, version, plaintext), expect)

    def _operations(self, changes: Sequence[Change]) -> list[Put | Delete | Check]:
        operations: list[Put | Delete | Check] = []
        for change in changes:
            if isinstance(change, Write):
                operations.append(self._encrypted(change))
            elif isinstance(change, Remove):
                operations.append(Delete(change.key, change.previous.revision))
            else:
                expect = 0 if change.previous is None else change.previous.revision
                operations.append(Check(change.key, expect))
        return operations

    @staticmethod
    def _fill_written(changes: Sequence[Change], operations: Sequence[Put | Delete | Check], revision: int,
                      written: dict[str, Entry] | None) -> None:
        """What a read of each key ``changes`` wrote would return now (the commit made ``revision``): no read needed.

        A write is then known by its store metadata (version, revisions) the same as if it had been read back,
        so the next conditional write on it compares the right revision."""
        if written is None:
            return
        for change, operation in zip(changes, operations, strict=True):
            if not isinstance(change, Write) or not isinstance(operation, Put):
                continue
            previous = change.previous
            record = Record(
                key=change.key,
                value=operation.value,
                version=1 if previous is None else previous.record.version + 1,
                create_revision=revision if previous is None else previous.record.create_revision,
                mod_revision=revision,
            )
            # The value as a read would decode it (msgpack turns tuples into lists, for one).
            value = msgpack.unpackb(msgpack.packb(change.value, use_bin_type=True), raw=False)
            written[change.key] = Entry(change.key, value, record)

    async def commit(self, changes: Sequence[Change], written: dict[str, Entry] | None = None) -> int:
        """Apply every change atomically, each conditional on what was read (optimistic locking).

        With ``written``, the entry each :class:`Write` now has is put there by key (as :meth:`get` would
        return it), so a caller keeps what it wrote without reading it back."""
        operations = self._operations(changes)
        revision = await self._store.commit(operations)
        self._fill_written(changes, operations, revision, written)
        return revision

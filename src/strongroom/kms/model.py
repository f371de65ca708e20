"""KMS metadata (keys, aliases) over the cluster's compare-and-swap records (``kms.record.*``).

Records, under the service user's namespace in the store (barrier-encrypted like everything):

* ``keys/<key id>`` — a key: state, description, dates, tags, policy and the list of its key
  material versions (each a cluster object handle and a 64-hex KeyMaterialId; rotation
  appends a version, old ciphertexts keep naming theirs);
* ``aliases/<alias name>`` — an alias and the key it targets.

A deleted key leaves a tombstone (state ``Deleted``, invisible to every operation) until its
cluster objects are destroyed, so a deletion interrupted half-way is finished by the next
sweep. Every change is a conditional commit on the revision that was read; :meth:`update_key`
retries on conflicts.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from strongroom.kms.arn import Location, aws_cluster_id
from strongroom.kms.backend import Backend, ClusterError
from strongroom.kms.errors import InternalError
from strongroom.kms.keyspecs import ALGORITHM_MEMBERS, KEY_SPECS

KEYS = "keys/"
ALIASES = "aliases/"
RECORD_VERSION = 1
ENABLED, DISABLED, PENDING_DELETION, DELETED = "Enabled", "Disabled", "PendingDeletion", "Deleted"
#: Origin EXTERNAL keys without key material (never imported, deleted, or expired).
PENDING_IMPORT = "PendingImport"
#: A material whose cluster objects are gone (imported key material deleted or expired): its handle.
NO_HANDLE = 0
CONFLICT_RETRIES = 20
#: What a key update's ``change`` returns besides changing the key: more record changes to commit with it.
_ExtraChanges = Awaitable[list[dict[str, Any]]] | list[dict[str, Any]] | None


@dataclass
class Material:
    version: int
    handle: int
    material_id: str
    created: float
    #: Asymmetric keys: the public key object (``handle`` is the private key).
    public_handle: int | None = None
    #: Imported key material: what identifies it (a digest of its public key, its check value…), so a
    #: reimport is refused unless it is the same material (ops/imports.py).
    fingerprint: str | None = None

    @property
    def present(self) -> bool:
        """Whether the cluster holds the material (imported material that was deleted or expired does not)."""
        return self.handle != NO_HANDLE

    @property
    def handles(self) -> list[int]:
        """Every cluster object of this material (what deleting the key destroys)."""
        if not self.present:
            return []
        return [self.handle] + ([self.public_handle] if self.public_handle is not None else [])

    def to_record(self) -> dict[str, Any]:
        record: dict[str, Any] = {"version": self.version, "handle": self.handle, "material_id": self.material_id,
                                  "created": self.created}
        if self.public_handle is not None:
            record["public_handle"] = self.public_handle
        if self.fingerprint is not None:
            record["fingerprint"] = self.fingerprint
        return record

    @classmethod
    def from_record(cls, value: dict[str, Any]) -> Material:
        public = value.get("public_handle")
        fingerprint = value.get("fingerprint")
        return cls(int(value["version"]), int(value["handle"]), str(value["material_id"]), float(value["created"]),
                   None if public is None else int(public), None if fingerprint is None else str(fingerprint))


def new_material(version: int, handle: int) -> Material:
    return Material(version, handle, secrets.token_hex(32), time.time())


def new_pair_material(version: int, private_handle: int, public_handle: int) -> Material:
    """An asymmetric key's material: the private key object and its public key object."""
    return Material(version, private_handle, secrets.token_hex(32), time.time(), public_handle)


@dataclass
class KmsKey:
    key_id: str
    created: float
    description: str = ""
    key_usage: str = "ENCRYPT_DECRYPT"
    key_spec: str = "SYMMETRIC_DEFAULT"
    origin: str = "AWS_KMS"
    state: str = ENABLED
    deletion_date: float | None = None
    pending_window: int | None = None
    tags: list[tuple[str, str]] = field(default_factory=list)
    policy: str | None = None
    materials: list[Material] = field(default_factory=list)
    current_material: int = 1
    revision: int = 0  # the record's revision when read (0: not stored yet)
    #: Automatic rotation: the period in days (None: disabled) and when the current period began.
    rotation_period: int | None = None
    rotation_anchor: float | None = None
    #: Completed rotations, oldest first: {"version", "date", "type" (AUTOMATIC | ON_DEMAND)}.
    rotations: list[dict[str, Any]] = field(default_factory=list)
    #: Custom key store keys (Origin AWS_CLOUDHSM): the store and its cluster.
    custom_key_store_id: str | None = None
    cloud_hsm_cluster_id: str | None = None
    #: Not stored: why the key is Unavailable (its store is not connected in this gateway).
    store_unavailable: str | None = None
    #: Origin EXTERNAL: KEY_MATERIAL_EXPIRES or KEY_MATERIAL_DOES_NOT_EXPIRE (None: nothing imported yet)
    #: and, when it expires, when (the sweep deletes the material then).
    expiration_model: str | None = None
    valid_to: float | None = None

    @property
    def enabled(self) -> bool:
        return self.state == ENABLED

    def material(self, version: int) -> Material | None:
        return next((m for m in self.materials if m.version == version), None)

    @property
    def current(self) -> Material:
        material = self.material(self.current_material)
        if material is None:
            raise InternalError(f"key {self.key_id} has no key material version {self.current_material}")
        return material

    def to_record(self) -> dict[str, Any]:
        return {
            "v": RECORD_VERSION, "key_id": self.key_id, "created": self.created, "description": self.description,
            "key_usage": self.key_usage, "key_spec": self.key_spec, "origin": self.origin, "state": self.state,
            "deletion_date": self.deletion_date, "pending_window": self.pending_window,
            "tags": [[k, v] for k, v in self.tags], "policy": self.policy,
            "materials": [m.to_record() for m in self.materials], "current_material": self.current_material,
            "rotation_period": self.rotation_period, "rotation_anchor": self.rotation_anchor,
            "rotations": self.rotations,
            **({"custom_key_store_id": self.custom_key_store_id, "cloud_hsm_cluster_id": self.cloud_hsm_cluster_id}
               if self.custom_key_store_id else {}),
            **({"expiration_model": self.expiration_model, "valid_to": self.valid_to}
               if self.expiration_model else {}),
        }

    @classmethod
    def from_record(cls, value: dict[str, Any], revision: int) -> KmsKey:
        return cls(
            key_id=value["key_id"], created=float(value["created"]), description=value.get("description", ""),
            key_usage=value["key_usage"], key_spec=value["key_spec"], origin=value.get("origin", "AWS_KMS"),
            state=value["state"], deletion_date=value.get("deletion_date"),
            pending_window=value.get("pending_window"),
            tags=[(k, v) for k, v in value.get("tags", [])], policy=value.get("policy"),
            materials=[Material.from_record(m) for m in value.get("materials", [])],
            current_material=int(value.get("current_material", 1)), revision=revision,
            rotation_period=value.get("rotation_period"), rotation_anchor=value.get("rotation_anchor"),
            rotations=list(value.get("rotations", [])),
            custom_key_store_id=value.get("custom_key_store_id"),
            cloud_hsm_cluster_id=value.get("cloud_hsm_cluster_id"),
            expiration_model=value.get("expiration_model"),
            valid_to=value.get("valid_to"),
        )

    def metadata(self, where: Location) -> dict[str, Any]:
        """``KeyMetadata`` as DescribeKey/CreateKey return it."""
        spec = KEY_SPECS[self.key_spec]
        meta: dict[str, Any] = {
            "AWSAccountId": where.account,
            "KeyId": self.key_id,
            "Arn": where.key_arn(self.key_id),
            "CreationDate": self.created,
            "Enabled": self.enabled,
            "Description": self.description,
            "KeyUsage": self.key_usage,
            "KeyState": self.state,
            "Origin": self.origin,
            "KeyManager": "CUSTOMER",
        }
        if spec.legacy:  # the deprecated member's enum has only the older specs
            meta["CustomerMasterKeySpec"] = self.key_spec
        meta.update({"KeySpec": self.key_spec, "MultiRegion": False})
        if self.state == PENDING_DELETION and self.deletion_date is not None:
            meta["DeletionDate"] = self.deletion_date
        if self.origin == "EXTERNAL" and self.expiration_model:
            meta["ExpirationModel"] = self.expiration_model
            if self.expiration_model == "KEY_MATERIAL_EXPIRES" and self.valid_to is not None:
                meta["ValidTo"] = self.valid_to
        if self.custom_key_store_id:
            meta["CustomKeyStoreId"] = self.custom_key_store_id
            meta["CloudHsmClusterId"] = aws_cluster_id(self.cloud_hsm_cluster_id or "")
            if self.store_unavailable and self.state != PENDING_DELETION:
                meta["KeyState"], meta["Enabled"] = "Unavailable", False
        algorithms = spec.algorithms.get(self.key_usage)
        if algorithms:
            meta[ALGORITHM_MEMBERS[self.key_usage]] = list(algorithms)
        if self.materials and spec.symmetric and self.material(self.current_material) is not None:
            meta["CurrentKeyMaterialId"] = self.current.material_id
        return meta

    @property
    def has_material(self) -> bool:
        """Whether the current key material is in the cluster (an EXTERNAL key's may not be)."""
        material = self.material(self.current_material)
        return material is not None and material.present


@dataclass
class Alias:
    name: str
    target: str
    created: float
    updated: float
    revision: int = 0

    def to_record(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "created": self.created, "updated": self.updated}

    @classmethod
    def from_record(cls, value: dict[str, Any], revision: int) -> Alias:
        return cls(value["name"], value["target"], float(value["created"]), float(value["updated"]), revision)


class _Unreachable(Exception):
    """Internal: the cluster could not be reached; ``key`` is a custom-key-store key's last-known record."""

    def __init__(self, key: KmsKey) -> None:
        super().__init__(key.key_id)
        self.key = key


class Conflict(Exception):
    """A record changed between read and write: read again."""


def put(key: str, value: dict[str, Any], revision: int) -> dict[str, Any]:
    return {"key": key, "expect": revision, "value": value}


def delete(key: str, revision: int) -> dict[str, Any]:
    return {"key": key, "expect": revision, "delete": True}


#: Key records kept for the short read cache, and last-known records of custom-key-store keys.
KEY_CACHE_MAX = 10_000
KNOWN_STORE_KEYS_MAX = 10_000


class Metadata:
    """The KMS records in the cluster. Key records read for requests are reused for
    ``cache_seconds`` (0: never): every commit through this object drops the records it names
    (and a read that raced with it is not cached), so changes through this gateway are seen at
    once and another gateway's within ``cache_seconds``. Reads that change a record
    (``update_key``) always read the cluster.

    For keys of custom key stores the last record read is also remembered (bounded): when the
    cluster cannot be reached, such a key is answered from it marked unavailable
    (``unreachable_hook`` tells the key stores), so the caller gets KMSInvalidStateException as
    from AWS instead of a retryable fault; nothing is written."""

    def __init__(self, backend: Backend, *, cache_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        #: Called on every key read (custom key stores mark keys of disconnected stores Unavailable).
        self.key_hook: Callable[[KmsKey], Awaitable[None]] | None = None
        #: Called with a custom-key-store key answered from its last-known record (cluster unreachable).
        self.unreachable_hook: Callable[[KmsKey], None] | None = None
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, Any], int]] = {}
        self._epoch = 0
        self._known_store_keys: OrderedDict[str, tuple[dict[str, Any], int]] = OrderedDict()

    def forget(self, key_ids: Any = None) -> None:
        """Drop cached key records (all when ``key_ids`` is None)."""
        self._epoch += 1
        if key_ids is None:
            self._cache.clear()
            return
        for key_id in key_ids:
            self._cache.pop(key_id, None)

    def _remember(self, key_id: str, value: dict[str, Any] | None, revision: int, epoch: int) -> None:
        if value is not None and value.get("custom_key_store_id") and value.get("state") != DELETED:
            self._known_store_keys[key_id] = (value, revision)
            self._known_store_keys.move_to_end(key_id)
            while len(self._known_store_keys) > KNOWN_STORE_KEYS_MAX:
                self._known_store_keys.popitem(last=False)
        else:
            self._known_store_keys.pop(key_id, None)
        if self.cache_seconds <= 0 or value is None or epoch != self._epoch:
            return
        now = self._clock()
        if len(self._cache) >= KEY_CACHE_MAX:
            for stale in [k for k, (expires, _, _) in self._cache.items() if expires <= now]:
                del self._cache[stale]
            while len(self._cache) >= KEY_CACHE_MAX:
                del self._cache[next(iter(self._cache))]
        self._cache[key_id] = (now + self.cache_seconds, value, revision)

    async def _read_key(self, key_id: str, fresh: bool) -> tuple[dict[str, Any] | None, int]:
        if not fresh and self.cache_seconds > 0:
            hit = self._cache.get(key_id)
            if hit is not None:
                if hit[0] > self._clock():
                    return hit[1], hit[2]
                del self._cache[key_id]
        epoch = self._epoch
        try:
            value, revision = await self.backend.record_get(KEYS + key_id)
        except ClusterError as exc:
            known = self._known_store_keys.get(key_id) if exc.unreachable else None
            if known is None:
                raise
            key = KmsKey.from_record(known[0], known[1])
            if self.unreachable_hook is not None:
                self.unreachable_hook(key)
            raise _Unreachable(key) from None
        self._remember(key_id, value, revision, epoch if not fresh else -1)
        return value, revision

    # --- keys -------------------------------------------------------------------------------------

    async def get_key(self, key_id: str, *, include_deleted: bool = False, fresh: bool = False) -> KmsKey | None:
        """The key's record (None: no such key). ``fresh``: read the cluster, not the cache."""
        try:
            value, revision = await self._read_key(key_id, fresh)
        except _Unreachable as unreachable:
            return unreachable.key
        if value is None:
            return None
        key = KmsKey.from_record(value, revision)
        if key.state == DELETED and not include_deleted:
            return None
        if self.key_hook is not None:
            await self.key_hook(key)
        return key

    async def list_keys(self, start_after: str = "", limit: int = 1000, *, include_deleted: bool = False
                        ) -> tuple[list[KmsKey], bool]:
        """Up to ``limit`` keys after ``start_after`` (key id order); True when more follow."""
        found: list[KmsKey] = []
        cursor = start_after
        while True:
            records, more = await self.backend.record_list(KEYS, KEYS + cursor if cursor else "", min(1000, limit + 1))
            for name, value, revision in records:
                cursor = name[len(KEYS):]
                key = KmsKey.from_record(value, revision)
                if key.state == DELETED and not include_deleted:
                    continue
                if len(found) == limit:
                    return found, True
                found.append(key)
            if not more:
                return found, False

    async def commit(self, changes: list[dict[str, Any]]) -> None:
        touched = [c["key"][len(KEYS):] for c in changes if c["key"].startswith(KEYS)]
        self.forget(touched)
        try:
            ok = await self.backend.record_commit(changes)
        finally:
            self.forget(touched)
        if not ok:
            raise Conflict()

    async def update_key(self, key_id: str, change: Callable[[KmsKey], _ExtraChanges],
                         *, include_deleted: bool = False) -> KmsKey | None:
        """Read, apply ``change`` (which may raise KMS errors or return extra record changes), write; retry."""
        for _ in range(CONFLICT_RETRIES):
            key = await self.get_key(key_id, include_deleted=include_deleted, fresh=True)
            if key is None:
                return None
            revision = key.revision
            outcome = change(key)
            extra = [] if outcome is None else outcome if isinstance(outcome, list) else await outcome
            try:
                await self.commit([put(KEYS + key_id, key.to_record(), revision), *extra])
                return key
            except Conflict:
                continue
        raise InternalError("the key's record keeps changing; try again")

    # --- aliases ------------------------------------------------------------------------------------

    async def get_alias(self, name: str) -> Alias | None:
        value, revision = await self.backend.record_get(ALIASES + name)
        return None if value is None else Alias.from_record(value, revision)

    async def list_aliases(self, start_after: str = "", limit: int = 1000) -> tuple[list[Alias], bool]:
        records, more = await self.backend.record_list(ALIASES, ALIASES + start_after if start_after else "", limit)
        return [Alias.from_record(value, revision) for _, value, revision in records], more

    async def all_aliases(self) -> list[Alias]:
        aliases: list[Alias] = []
        cursor = ""
        while True:
            page, more = await self.list_aliases(cursor, 1000)
            aliases += page
            if not more or not page:
                return aliases
            cursor = page[-1].name

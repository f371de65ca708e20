"""A PKCS#11 object as the node stores it: attributes, key material, owner and share list.

Who may see, use and manage it is decided in :mod:`strongroom.objects.access`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from strongroom.barrier import Entry
from strongroom.constants import CKA, CKK, CKO
from strongroom.objects.attributes import RULES, Kind, is_secret, to_wire

PREFIX = "objects/"
#: Token object handles are random in [1, 2**30); session objects use the range above.
TOKEN_HANDLE_LIMIT = 1 << 30
SESSION_HANDLE_BASE = 1 << 30


def key_of(handle: int) -> str:
    return f"{PREFIX}{handle:08x}"


@dataclass
class StoredObject:
    handle: int
    owner: str
    attributes: dict[int, Any]
    #: Secret value or PKCS#8 DER private key; lives only above the barrier, never leaves the node.
    material: bytes | None = None
    shared: frozenset[str] = frozenset()
    #: The owner's account (``User.uid``); None on records from before accounts had ids.
    owner_id: str | None = None
    #: The account of each user in ``shared`` (by name); a name without one matches by name alone.
    share_ids: dict[str, str] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    #: PKCS#11 session that holds a session object (None for token objects).
    p11_session: int | None = None
    #: The store record it was read from, without its value (:meth:`Entry.stripped`: for compare-and-swap).
    entry: Entry | None = None

    @property
    def object_class(self) -> CKO:
        return CKO(self.attributes[CKA.CLASS])

    @property
    def key_type(self) -> CKK | None:
        value = self.attributes.get(CKA.KEY_TYPE)
        return None if value is None else CKK(value)

    @property
    def token(self) -> bool:
        return bool(self.attributes.get(CKA.TOKEN, False))

    @property
    def revision(self) -> int:
        return 0 if self.entry is None else self.entry.revision

    def flag(self, cka: int) -> bool:
        return bool(self.attributes.get(cka, False))

    def label(self) -> str:
        label: bytes = self.attributes.get(CKA.LABEL, b"")
        return label.decode("utf-8", "replace")

    def with_changes(self, **changes: Any) -> StoredObject:
        return replace(self, **changes)

    # -- persistence ------------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        return {
            "handle": self.handle,
            "owner": self.owner,
            "shared": sorted(self.shared),
            "owner_id": self.owner_id,
            "share_ids": dict(self.share_ids),
            "attributes": to_wire(self.attributes),
            "material": self.material,
            "created": self.created,
        }

    @classmethod
    def from_entry(cls, entry: Entry) -> StoredObject:
        value = entry.value
        return cls(
            handle=int(value["handle"]),
            owner=str(value["owner"]),
            attributes=from_wire(value["attributes"]),
            material=value.get("material"),
            shared=frozenset(value.get("shared", ())),
            owner_id=value.get("owner_id"),
            share_ids=dict(value.get("share_ids") or {}),
            created=float(value.get("created", 0.0)),
            entry=entry.stripped(),  # the decoded value lives in the fields above: not kept twice per object
        )

    def public_view(self) -> dict[str, Any]:
        """What listings show: never key material."""
        return {
            "handle": self.handle,
            "class": self.object_class.name,
            "key_type": None if self.key_type is None else self.key_type.name,
            "label": self.label(),
            "id": self.attributes.get(CKA.ID, b"").hex(),
            "owner": self.owner,
            "shared_with": sorted(self.shared),
            "token": self.token,
        }

    def readable(self, cka: int) -> bool:
        return not is_secret(cka, self.object_class)

    def revealable(self) -> bool:
        """A key whose material may be read in clear: CKA_SENSITIVE false and CKA_EXTRACTABLE true."""
        return (self.object_class in (CKO.SECRET_KEY, CKO.PRIVATE_KEY) and not self.attributes.get(CKA.SENSITIVE, True)
                and bool(self.attributes.get(CKA.EXTRACTABLE, False)))


def from_wire(pairs: list[list[Any]]) -> dict[int, Any]:
    """Stored and wire form of attributes: [type, value] pairs; nested templates likewise."""
    result: dict[int, Any] = {}
    for key, value in pairs:
        rule = RULES.get(key)
        result[int(key)] = from_wire(value) if rule is not None and rule.kind is Kind.TEMPLATE else value
    return result

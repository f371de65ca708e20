"""Grants: records ``grants/<key id>/<grant id>`` in the KMS metadata store, and their tokens.

A grant lets its grantee principal perform the listed operations on one key, in addition to
what policies allow, optionally only when the request's encryption context equals
(``EncryptionContextEquals``) or includes (``EncryptionContextSubset``) given pairs — keys
compared case-insensitively, values exactly, as AWS. Constraints apply only to operations that
take an encryption context; DescribeKey, RetireGrant and CreateGrant are allowed regardless.

Grants here are immediately consistent, so a grant token is never *needed*; a valid token is
accepted and a token that is not one of ours (or names a grant with another secret part) is
``InvalidGrantTokenException``, as AWS. A token: base64url of ``0x01 || key id (16) || grant id
(32) || nonce (32)``; the nonce is stored in the grant.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GRANTS = "grants/"
TOKEN_VERSION = 1
#: Grant operations whose requests carry an encryption context (the constraints apply to them).
CONTEXT_OPERATIONS = frozenset({"Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GenerateDataKey",
                                "GenerateDataKeyWithoutPlaintext", "GenerateDataKeyPair",
                                "GenerateDataKeyPairWithoutPlaintext"})


def prefix(key_id: str) -> str:
    return f"{GRANTS}{key_id}/"


@dataclass
class Grant:
    key_id: str
    grant_id: str
    grantee: str
    operations: list[str]
    created: float
    nonce: str
    issuer: str = ""
    retiring: str | None = None
    name: str | None = None
    constraints: dict[str, dict[str, str]] | None = None
    revision: int = field(default=0, compare=False)

    @property
    def record_key(self) -> str:
        return prefix(self.key_id) + self.grant_id

    def to_record(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "grant_id": self.grant_id, "grantee": self.grantee,
                "operations": self.operations, "created": self.created, "nonce": self.nonce, "issuer": self.issuer,
                "retiring": self.retiring, "name": self.name, "constraints": self.constraints}

    @classmethod
    def from_record(cls, value: dict[str, Any], revision: int) -> Grant:
        return cls(value["key_id"], value["grant_id"], value["grantee"], list(value["operations"]),
                   float(value["created"]), value["nonce"], value.get("issuer", ""), value.get("retiring"),
                   value.get("name"), value.get("constraints"), revision)

    @property
    def token(self) -> str:
        raw = bytes([TOKEN_VERSION]) + uuid.UUID(self.key_id).bytes + bytes.fromhex(self.grant_id) + \
            bytes.fromhex(self.nonce)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def constraint_allows(self, context: Mapping[str, str] | None) -> bool:
        if not self.constraints:
            return True
        request = {k.lower(): v for k, v in (context or {}).items()}
        equals = self.constraints.get("EncryptionContextEquals")
        if equals is not None:
            return request == {k.lower(): v for k, v in equals.items()}
        subset = self.constraints.get("EncryptionContextSubset") or {}
        return all(request.get(k.lower()) == v for k, v in subset.items())

    def allows(self, principal: str, operation: str, context: Mapping[str, str] | None) -> bool:
        if principal != self.grantee or operation not in self.operations:
            return False
        return operation not in CONTEXT_OPERATIONS or self.constraint_allows(context)


def new_grant_id() -> str:
    return secrets.token_hex(32)


def new_nonce() -> str:
    return secrets.token_hex(32)


def parse_token(token: str) -> tuple[str, str, str] | None:
    """(key id, grant id, nonce) of one of our tokens, or None."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        return None
    if len(raw) != 81 or raw[0] != TOKEN_VERSION:
        return None
    return str(uuid.UUID(bytes=raw[1:17])), raw[17:49].hex(), raw[49:81].hex()


async def list_grants(backend: Any, key_id: str | None = None) -> list[Grant]:
    """Every grant of a key (or of every key), in record order."""
    found: list[Grant] = []
    start = ""
    where = prefix(key_id) if key_id else GRANTS
    while True:
        records, more = await backend.record_list(where, start, 1000)
        found += [Grant.from_record(value, revision) for _, value, revision in records]
        if not more or not records:
            return found
        start = records[-1][0]


async def get_grant(backend: Any, key_id: str, grant_id: str) -> Grant | None:
    if not grant_id or any(c not in "0123456789abcdef" for c in grant_id) or len(grant_id) != 64:
        return None
    value, revision = await backend.record_get(prefix(key_id) + grant_id)
    return None if value is None else Grant.from_record(value, revision)

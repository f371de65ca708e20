"""Password hashing with Argon2id (RFC 9106) from pyca/cryptography.

Hashing costs tens of milliseconds of CPU on purpose; callers on the event loop
run these functions in a thread.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

# OWASP's minimum Argon2id profile (19 MiB, 2 passes, 1 lane): ~30 ms here.
DEFAULT_MEMORY_KIB = 19 * 1024
DEFAULT_ITERATIONS = 2
DEFAULT_LANES = 1
HASH_BYTES = 32


@dataclass(frozen=True)
class PasswordHash:
    salt: bytes
    digest: bytes
    memory_kib: int = DEFAULT_MEMORY_KIB
    iterations: int = DEFAULT_ITERATIONS
    lanes: int = DEFAULT_LANES

    def to_record(self) -> dict[str, Any]:
        return {
            "alg": "argon2id",
            "salt": self.salt,
            "hash": self.digest,
            "m": self.memory_kib,
            "t": self.iterations,
            "p": self.lanes,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PasswordHash:
        if record.get("alg") != "argon2id":
            raise ValueError(f"unsupported password hash {record.get('alg')!r}")
        return cls(record["salt"], record["hash"], record["m"], record["t"], record["p"])


def _derive(password: str, salt: bytes, memory_kib: int, iterations: int, lanes: int) -> bytes:
    kdf = Argon2id(salt=salt, length=HASH_BYTES, iterations=iterations, lanes=lanes, memory_cost=memory_kib)
    return kdf.derive(password.encode("utf-8"))


def hash_password(password: str) -> PasswordHash:
    salt = os.urandom(16)
    return PasswordHash(salt, _derive(password, salt, DEFAULT_MEMORY_KIB, DEFAULT_ITERATIONS, DEFAULT_LANES))


def verify_password(password: str, stored: PasswordHash) -> bool:
    candidate = _derive(password, stored.salt, stored.memory_kib, stored.iterations, stored.lanes)
    return hmac.compare_digest(candidate, stored.digest)


# Verifying against this when the user does not exist keeps failed logins for unknown
# and known users equally slow, so timing does not reveal which usernames exist.
_DUMMY = PasswordHash(b"\0" * 16, b"\0" * HASH_BYTES)


def burn_time(password: str) -> None:
    verify_password(password, _DUMMY)

"""M-of-N Shamir sharing of the 32-byte cluster key, on top of pycryptodome.

Library: pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir``. It is actively
maintained and widely deployed, works in GF(2^128) (the AES-GCM field, so there is
no prime to choose or to get wrong) and produces shares of a constant format: an
index 1..N and exactly 16 bytes, which keeps the share files fixed-size and easy to
validate. pyshamir and secretsharing were considered and rejected: both are small,
rarely maintained projects, and secretsharing works over a prime field with
variable-length string shares.

pycryptodome shares 16-byte secrets only, and its documentation offers no
longer-secret mode (its own example shares an AES-128 key that then encrypts the
payload, which would cap a 256-bit cluster key at 128-bit strength). So the key is
shared as two independent 16-byte halves: each half gets its own random polynomial
from ``Shamir.split``, and both use the same indices 1..N, so custodian ``i`` holds
``y_lo(i) || y_hi(i)``. Each half alone is information-theoretically hidden from
fewer than M shares, hence so is the pair.
"""

from __future__ import annotations

from collections.abc import Sequence

from Crypto.Protocol.SecretSharing import Shamir

HALF = 16
SECRET_BYTES = 2 * HALF
SHARE_BYTES = 2 * HALF

__all__ = ["SECRET_BYTES", "SHARE_BYTES", "combine", "split"]


def split(secret: bytes | bytearray, threshold: int, total: int) -> list[tuple[int, bytearray]]:
    """Split a 32-byte secret into ``total`` shares ``(index, 32 bytes)``, indices 1..total."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"the secret must be {SECRET_BYTES} bytes")
    # pycryptodome wants immutable bytes: these two copies cannot be wiped.
    low = Shamir.split(threshold, total, bytes(secret[:HALF]))
    high = Shamir.split(threshold, total, bytes(secret[HALF:]))
    shares = []
    for (i, y_low), (j, y_high) in zip(low, high, strict=True):
        if i != j:  # pycryptodome numbers both lists 1..n; never trust that silently
            raise ValueError("pycryptodome returned shares out of order")
        shares.append((i, bytearray(y_low + y_high)))
    return shares


def combine(shares: Sequence[tuple[int, bytes | bytearray]]) -> bytearray:
    """Recombine exactly ``threshold`` distinct shares into the 32-byte secret.

    pycryptodome documents that ``combine`` takes exactly as many shares as the
    threshold, so the caller picks them. Shamir itself cannot tell a wrong or
    damaged share from a good one: the caller's key check does that.
    """
    low = Shamir.combine([(i, bytes(y[:HALF])) for i, y in shares])
    high = Shamir.combine([(i, bytes(y[HALF:])) for i, y in shares])
    return bytearray(low + high)

"""Message digests: CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512.

SHA-3 is absent on purpose: the p11-kit header our constants come from has no
CKM_SHA3_* values, so there is nothing to register it under.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes

from strongroom.constants import CKM
from strongroom.errors import ArgumentsBad, DataLenRange, OperationNotInitialized
from strongroom.mechanisms.base import MAX_DATA, Capability, DigestOperation, Mechanism, register
from strongroom.mechanisms.hashes import HASHES


def check_part(data: object) -> bytes:
    """One call's input: bytes-like and at most MAX_DATA, so one request cannot pin the node."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ArgumentsBad(f"data must be bytes, not {type(data).__name__}")
    if len(data) > MAX_DATA:
        raise DataLenRange(f"at most {MAX_DATA} bytes per call; send larger inputs in parts")
    return bytes(data)


class _Digest(DigestOperation):
    # The library context raises AlreadyFinalized once used up; tracking our own state
    # turns that (and any use after a failed call) into a PKCS#11 code instead.
    def __init__(self, algorithm: hashes.HashAlgorithm) -> None:
        self._ctx: hashes.Hash | None = hashes.Hash(algorithm)

    def _live(self) -> hashes.Hash:
        if self._ctx is None:
            raise OperationNotInitialized("the digest operation has ended")
        return self._ctx

    def update(self, data: bytes) -> None:
        ctx = self._live()
        try:
            chunk = check_part(data)
        except Exception:
            self._ctx = None
            raise
        ctx.update(chunk)

    def final(self) -> bytes:
        ctx = self._live()
        self._ctx = None
        return ctx.finalize()


class DigestMechanism(Mechanism):
    capabilities = Capability.DIGEST
    multipart = True

    def __init__(self, ckm: CKM) -> None:
        self.ckm = ckm
        self._algorithm = HASHES[ckm]
        self.digest_size: int = self._algorithm().digest_size

    def digest(self, params: Any) -> DigestOperation:
        self.parse_params(params)
        return _Digest(self._algorithm())


DIGESTS: dict[CKM, DigestMechanism] = {
    ckm: DigestMechanism(ckm) for ckm in (CKM.SHA_1, CKM.SHA224, CKM.SHA256, CKM.SHA384, CKM.SHA512)
}
for _mechanism in DIGESTS.values():
    register(_mechanism)

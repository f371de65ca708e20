"""Message digests: CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512.

SHA-3 is absent on purpose: the p11-kit header our constants come from has no
CKM_SHA3_* values, so there is nothing to register it under.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes

from strongroom.constants import CKM
from strongroom.mechanisms.base import Capability, DigestOperation, Mechanism, Stream, register
from strongroom.mechanisms.hashes import HASHES


class _Digest(DigestOperation):
    def __init__(self, algorithm: hashes.HashAlgorithm) -> None:
        self._stream = Stream(hashes.Hash(algorithm), "digest")

    def update(self, data: bytes) -> None:
        self._stream.update(data)

    def final(self) -> bytes:
        return self._stream.finish()


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

"""Message digests: CKM_SHA_1, CKM_SHA224, CKM_SHA256, CKM_SHA384, CKM_SHA512 and (PKCS#11 3.0)
CKM_SHA3_224, CKM_SHA3_256, CKM_SHA3_384, CKM_SHA3_512, all from pyca/cryptography's ``hashes``.

The SHA-3 values are not in p11-kit's v2.40 header; scripts/gen_constants.py adds them from the
PKCS#11 3.0 tables.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import hashes

from strongroom.constants import CKM
from strongroom.mechanisms.base import Capability, DigestOperation, Mechanism, Stream, register
from strongroom.mechanisms.hashes import ALL_HASHES


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
        self._algorithm = ALL_HASHES[ckm]
        self.digest_size: int = self._algorithm().digest_size

    def digest(self, params: Any) -> DigestOperation:
        self.parse_params(params)
        return _Digest(self._algorithm())


DIGESTS: dict[CKM, DigestMechanism] = {
    ckm: DigestMechanism(ckm) for ckm in (CKM.SHA_1, CKM.SHA224, CKM.SHA256, CKM.SHA384, CKM.SHA512,
                                          CKM.SHA3_224, CKM.SHA3_256, CKM.SHA3_384, CKM.SHA3_512)
}
for _mechanism in DIGESTS.values():
    register(_mechanism)

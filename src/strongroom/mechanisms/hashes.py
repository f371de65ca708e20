"""Hash mechanisms and MGF1 identifiers as pyca/cryptography objects (shared by RSA, ECDSA, HMAC)."""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes

from strongroom.constants import CKG, CKM
from strongroom.errors import MechanismParamInvalid

HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    CKM.SHA_1: hashes.SHA1,
    CKM.SHA224: hashes.SHA224,
    CKM.SHA256: hashes.SHA256,
    CKM.SHA384: hashes.SHA384,
    CKM.SHA512: hashes.SHA512,
}

MGF1: dict[int, type[hashes.HashAlgorithm]] = {
    CKG.MGF1_SHA1: hashes.SHA1,
    CKG.MGF1_SHA224: hashes.SHA224,
    CKG.MGF1_SHA256: hashes.SHA256,
    CKG.MGF1_SHA384: hashes.SHA384,
    CKG.MGF1_SHA512: hashes.SHA512,
}


def hash_for(ckm: object) -> hashes.HashAlgorithm:
    """The hash named by a ``CKM_SHA*`` value found in mechanism parameters."""
    if not isinstance(ckm, int) or isinstance(ckm, bool) or ckm not in HASHES:
        raise MechanismParamInvalid(f"unsupported hash mechanism {ckm!r} (use CKM_SHA_1, CKM_SHA224 … CKM_SHA512)")
    return HASHES[ckm]()


def mgf1_for(ckg: object) -> hashes.HashAlgorithm:
    if not isinstance(ckg, int) or isinstance(ckg, bool) or ckg not in MGF1:
        raise MechanismParamInvalid(f"unsupported mask generation function {ckg!r} (use CKG_MGF1_SHA*)")
    return MGF1[ckg]()

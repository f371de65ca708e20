"""Hash mechanisms and MGF1 identifiers as pyca/cryptography objects (shared by RSA, ECDSA, HMAC, HKDF).

:data:`HASHES` (SHA-1, SHA-2) is what RSA-PSS/OAEP parameters may name; :data:`SHA3` adds the PKCS#11 3.0
SHA-3 family for digests, HMACs and HKDF's PRF (:data:`ALL_HASHES`). RSA and ECDSA do not take SHA-3:
their parameters would need CKG_MGF1_SHA3_* and the CKM_SHA3_*_RSA_PKCS* / CKM_ECDSA_SHA3_* mechanisms,
which are not offered."""

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

#: PKCS#11 3.0 SHA-3 (FIPS 202).
SHA3: dict[int, type[hashes.HashAlgorithm]] = {
    CKM.SHA3_224: hashes.SHA3_224,
    CKM.SHA3_256: hashes.SHA3_256,
    CKM.SHA3_384: hashes.SHA3_384,
    CKM.SHA3_512: hashes.SHA3_512,
}

#: Every hash a digest, an HMAC or HKDF's PRF may name.
ALL_HASHES: dict[int, type[hashes.HashAlgorithm]] = HASHES | SHA3

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


def prf_hash_for(ckm: object) -> hashes.HashAlgorithm:
    """The hash a KDF's PRF names (HKDF's prfHashMechanism): SHA-1, SHA-2 or SHA-3."""
    if not isinstance(ckm, int) or isinstance(ckm, bool) or ckm not in ALL_HASHES:
        raise MechanismParamInvalid(f"unsupported hash mechanism {ckm!r} (use CKM_SHA_1, CKM_SHA224 … CKM_SHA512, "
                                    "CKM_SHA3_224 … CKM_SHA3_512)")
    return ALL_HASHES[ckm]()


def mgf1_for(ckg: object) -> hashes.HashAlgorithm:
    if not isinstance(ckg, int) or isinstance(ckg, bool) or ckg not in MGF1:
        raise MechanismParamInvalid(f"unsupported mask generation function {ckg!r} (use CKG_MGF1_SHA*)")
    return MGF1[ckg]()

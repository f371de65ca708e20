"""How a node keeps the cluster key at rest: seal providers (file, shares, tpm, kms, pkcs11).

See :mod:`strongroom.seal.base`.
"""

from strongroom.seal.base import (
    CLUSTER_KEY_BYTES,
    FRESHNESS_FILE,
    KEK_FILE,
    SEAL_FILE,
    SEAL_TYPES,
    SHARES,
    ZEROIZED_FILE,
    KekProvider,
    SealedAwaitingKey,
    SealedIdentity,
    SealError,
    SealSettings,
    SealUnavailable,
    clear_zeroized,
    destroy_seal,
    mark_zeroized,
    provider_for,
    read_seal_document,
    reseal_cluster_key,
    seal_cluster_key,
    seal_exists,
    seal_info,
    shares_check,
    startup_refusal,
    unseal_cluster_key,
    write_private_file,
    zeroized,
)

__all__ = [
    "CLUSTER_KEY_BYTES", "FRESHNESS_FILE", "KEK_FILE", "SEAL_FILE", "SEAL_TYPES", "SHARES", "ZEROIZED_FILE",
    "KekProvider", "SealError", "SealSettings", "SealUnavailable", "SealedAwaitingKey", "SealedIdentity",
    "clear_zeroized", "destroy_seal", "mark_zeroized", "provider_for", "read_seal_document", "reseal_cluster_key",
    "seal_cluster_key", "seal_exists", "seal_info", "shares_check", "startup_refusal", "unseal_cluster_key",
    "write_private_file", "zeroized",
]

"""KMS operations, one module per group, each declaring its handlers with
:func:`strongroom.kms.context.kms_operation` (what a handler is given: :class:`strongroom.kms.context.Context`).

* :mod:`.keys` — CreateKey, DescribeKey, ListKeys, EnableKey, DisableKey, ScheduleKeyDeletion,
  CancelKeyDeletion, UpdateKeyDescription
* :mod:`.aliases` — CreateAlias, UpdateAlias, DeleteAlias, ListAliases
* :mod:`.symmetric` — Encrypt, Decrypt, ReEncrypt (RSA encryption keys too, through :mod:`.asymmetric`),
  GenerateDataKey, GenerateDataKeyWithoutPlaintext
* :mod:`.asymmetric` — Sign, Verify, GetPublicKey, GenerateDataKeyPair(WithoutPlaintext)
* :mod:`.agreement` — Encapsulate, Decapsulate (ML-KEM), DeriveSharedSecret (ECDH)
* :mod:`.imports` — GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial
* :mod:`.usage` — GetKeyLastUsage
* :mod:`.mac` — GenerateMac, VerifyMac
* :mod:`.random` — GenerateRandom
* :mod:`.tags` — TagResource, UntagResource, ListResourceTags
* :mod:`.rotation` — Enable/DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand, ListKeyRotations
* :mod:`.grants` — CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant
* :mod:`.policies` — GetKeyPolicy, PutKeyPolicy, ListKeyPolicies
* :mod:`.keystores` — Create/Describe/Connect/Disconnect/Update/DeleteCustomKeyStore(s)

:mod:`.common` holds what several groups share (key resolution, markers, ciphertext blobs).
"""

from __future__ import annotations

from strongroom.kms.context import OPERATIONS, OperationSpec


def load() -> dict[str, OperationSpec]:
    """Import every operation group (importing one declares its operations) and return the table."""
    from strongroom.kms.ops import (  # noqa: F401 - imported to declare their operations
        agreement,
        aliases,
        asymmetric,
        grants,
        imports,
        keys,
        keystores,
        mac,
        policies,
        random,
        rotation,
        symmetric,
        tags,
        usage,
    )

    return OPERATIONS

"""M-of-N recovery shares of the cluster key (DESIGN.md, "The cluster key").

At initialization the customer registers N custodian public keys (EC P-384, or
RSA of 3072 bits or more) and a threshold M (1 <= M <= N <= 16). The node splits
the cluster key M-of-N with Shamir (:mod:`.shamir`, pycryptodome) and encrypts
share ``i`` to custodian ``i`` (:mod:`.custodian`: HPKE or RSA-OAEP from
``cryptography``), giving one ``strongroom-recovery-share/1`` file each.

When no node survives, each custodian decrypts their own share on their own
machine (:func:`decrypt_share`, giving a ``strongroom-recovery-share-plain/1``
file) and the recovery operator combines at least M of them
(:func:`combine_shares`), which checks the result against the key check value
carried in every share.
"""

from strongroom.recovery.cluster_key import combine_shares, decrypt_share, key_check, split_cluster_key
from strongroom.recovery.custodian import (
    CustodianPrivateKey,
    CustodianPublicKey,
    custodian_fingerprint,
    load_custodian_key,
    load_custodian_private_key,
)
from strongroom.recovery.errors import RecoveryError
from strongroom.recovery.shares import FORMAT_ENCRYPTED, FORMAT_PLAIN, MAX_SHARES, EncryptedShare, PlainShare

__all__ = [
    "FORMAT_ENCRYPTED",
    "FORMAT_PLAIN",
    "MAX_SHARES",
    "CustodianPrivateKey",
    "CustodianPublicKey",
    "EncryptedShare",
    "PlainShare",
    "RecoveryError",
    "combine_shares",
    "custodian_fingerprint",
    "decrypt_share",
    "key_check",
    "load_custodian_key",
    "load_custodian_private_key",
    "split_cluster_key",
]

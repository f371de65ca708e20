"""Splitting the cluster key into encrypted shares, and putting it back together."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.hazmat.primitives import constant_time, hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from strongroom.hardening import wipe
from strongroom.recovery import shamir
from strongroom.recovery.custodian import (
    CustodianPrivateKey,
    CustodianPublicKey,
    algorithm_for,
    check_public_key,
    custodian_fingerprint,
    decrypt_with,
    encrypt_to,
)
from strongroom.recovery.errors import RecoveryError
from strongroom.recovery.shares import (
    CHECK_BYTES,
    MAX_SHARES,
    PAYLOAD_BYTES,
    EncryptedShare,
    PlainShare,
    check_cluster_id,
    share_context,
)

CLUSTER_KEY_BYTES = shamir.SECRET_BYTES
CHECK_LABEL = b"strongroom-recovery-check/1"

__all__ = ["combine_shares", "decrypt_share", "key_check", "split_cluster_key"]


def key_check(cluster_key: bytes | bytearray, cluster_id: str) -> bytes:
    """First 8 bytes of HMAC-SHA256(cluster key, label || cluster id).

    Carried in every share. It depends on the whole key, so fewer than M shares
    (which say nothing about the key) learn nothing from it either; at recovery it
    confirms that the shares belong together and rebuilt the right key.
    """
    mac = hmac.HMAC(cluster_key, hashes.SHA256())
    mac.update(CHECK_LABEL + b"\0" + cluster_id.encode())
    return mac.finalize()[:CHECK_BYTES]


def split_cluster_key(cluster_key: bytes | bytearray, cluster_id: str, custodians: Sequence[CustodianPublicKey],
                      threshold: int) -> list[EncryptedShare]:
    """Split the key ``threshold``-of-``len(custodians)``; share ``i`` is encrypted to ``custodians[i-1]``."""
    if len(cluster_key) != CLUSTER_KEY_BYTES:
        raise RecoveryError(f"a cluster key is {CLUSTER_KEY_BYTES} bytes, not {len(cluster_key)}")
    check_cluster_id(cluster_id)
    total = len(custodians)
    if not 1 <= total <= MAX_SHARES:
        raise RecoveryError(f"register 1 to {MAX_SHARES} custodian keys, not {total}")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= total:
        raise RecoveryError(f"the threshold must be between 1 and {total} (the number of custodians), "
                            f"not {threshold!r}")
    fingerprints: dict[str, int] = {}
    for number, key in enumerate(custodians, 1):
        try:
            check_public_key(key)
        except RecoveryError as exc:
            raise RecoveryError(f"custodian {number}: {exc}") from None
        fp = custodian_fingerprint(key)
        # One person holding two shares would silently lower the threshold.
        if fp in fingerprints:
            raise RecoveryError(f"custodians {fingerprints[fp]} and {number} have the same key ({fp}): "
                                "each custodian needs a key of their own")
        fingerprints[fp] = number

    check = key_check(cluster_key, cluster_id)
    pieces = shamir.split(cluster_key, threshold, total)
    encrypted = []
    try:
        for (index, piece), key in zip(pieces, custodians, strict=True):
            payload = piece + check
            try:
                ciphertext = encrypt_to(key, payload, share_context(cluster_id, index, threshold, total))
            finally:
                wipe(payload)
            encrypted.append(EncryptedShare(cluster_id, index, threshold, total, custodian_fingerprint(key),
                                            algorithm_for(key), ciphertext))
    finally:
        for _, piece in pieces:
            wipe(piece)
    return encrypted


def decrypt_share(share: EncryptedShare, private_key: CustodianPrivateKey) -> PlainShare:
    """The custodian's step, on their own machine: open their share with their private key."""
    if not isinstance(private_key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise RecoveryError(f"a custodian private key is RSA or EC P-384, not {type(private_key).__name__}")
    fp = custodian_fingerprint(check_public_key(private_key.public_key()))
    if fp != share.custodian_fingerprint:
        raise RecoveryError(f"this share was not encrypted to that key (fingerprint {fp}): share {share.index} "
                            f"belongs to the custodian whose public key has fingerprint "
                            f"{share.custodian_fingerprint}")
    payload = decrypt_with(private_key, share.algorithm, share.ciphertext, share.context)
    try:
        if len(payload) != PAYLOAD_BYTES:
            raise RecoveryError(f"share {share.index} decrypted to {len(payload)} bytes instead of {PAYLOAD_BYTES}: "
                                "it was not made by this version of Strongroom")
        return PlainShare(share.cluster_id, share.index, share.threshold, share.total,
                          payload[:shamir.SHARE_BYTES], bytes(payload[shamir.SHARE_BYTES:]))
    finally:
        wipe(payload)


def combine_shares(shares: Sequence[PlainShare], cluster_id: str | None = None) -> bytearray:
    """Rebuild the cluster key from at least ``threshold`` decrypted shares of one split.

    ``cluster_id``, when given, is the cluster the operator means to recover: every
    share must belong to it. Shares with the same index count once. The caller owns
    (and should wipe) the returned key.
    """
    if not shares:
        raise RecoveryError("no shares given")
    for share in shares:
        if not isinstance(share, PlainShare):
            raise RecoveryError(f"expected decrypted shares (PlainShare), got {type(share).__name__}")
    if cluster_id is not None:
        for share in shares:
            if share.cluster_id != cluster_id:
                raise RecoveryError(f"share {share.index} belongs to cluster {share.cluster_id}, not {cluster_id}")
    first = shares[0]
    by_index: dict[int, PlainShare] = {}
    for share in shares:
        _same_split(first, share)
        seen = by_index.setdefault(share.index, share)
        if not constant_time.bytes_eq(bytes(seen.share), bytes(share.share)):
            raise RecoveryError(f"two different shares both carry index {share.index}: one of them is damaged; "
                                "keep the custodian's intact copy and drop the other")
    if len(by_index) < first.threshold:
        have = ", ".join(str(i) for i in sorted(by_index))
        raise RecoveryError(f"need {first.threshold} shares, got {len(by_index)} (share {have}); "
                            f"collect {first.threshold - len(by_index)} more from other custodians")

    # Any threshold-sized subset determines the key; pycryptodome wants exactly that many.
    chosen = [by_index[i] for i in sorted(by_index)[:first.threshold]]
    key = shamir.combine([(s.index, s.share) for s in chosen])
    if not constant_time.bytes_eq(key_check(key, first.cluster_id), first.check):
        wipe(key)
        used = ", ".join(str(s.index) for s in chosen)
        raise RecoveryError(f"the shares do not reconstruct this cluster's key (key check mismatch): at least one "
                            f"of shares {used} is damaged or comes from another issue of the shares. Ask those "
                            "custodians to decrypt their share again from the encrypted file, or use other shares")
    return key


def _same_split(first: PlainShare, other: PlainShare) -> None:
    """Refuse a share that visibly comes from another cluster or another split."""
    if other.cluster_id != first.cluster_id:
        raise RecoveryError(f"share {other.index} belongs to cluster {other.cluster_id} but share {first.index} "
                            f"to cluster {first.cluster_id}: hand in shares of one cluster only")
    if (other.threshold, other.total) != (first.threshold, first.total):
        raise RecoveryError(f"share {other.index} is from a {other.threshold}-of-{other.total} split but share "
                            f"{first.index} from a {first.threshold}-of-{first.total} split: they do not belong "
                            "together")
    if not constant_time.bytes_eq(other.check, first.check):
        raise RecoveryError(f"share {other.index} has key check {other.check.hex()} but share {first.index} has "
                            f"{first.check.hex()}: they are shares of different keys")

"""The two share files and their strict JSON forms.

* ``strongroom-recovery-share/1`` (:class:`EncryptedShare`): written at cluster
  initialization, one per custodian, safe to store anywhere;
* ``strongroom-recovery-share-plain/1`` (:class:`PlainShare`): what a custodian's
  ``decrypt-share`` writes and hands to the recovery operator. It is secret.

Both are read strictly (every field present, of the right type and size, no
unknown field): a damaged file is refused with a message instead of yielding a
wrong key later.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from strongroom.hardening import wipe
from strongroom.recovery.custodian import ALG_HPKE, ALGORITHMS, HPKE_OVERHEAD, MAX_RSA_BITS, MIN_RSA_BITS
from strongroom.recovery.errors import RecoveryError
from strongroom.recovery.shamir import SHARE_BYTES

FORMAT_ENCRYPTED = "strongroom-recovery-share/1"
FORMAT_PLAIN = "strongroom-recovery-share-plain/1"
MAX_SHARES = 16
CHECK_BYTES = 8
#: What is encrypted to a custodian: the share, then the key check.
PAYLOAD_BYTES = SHARE_BYTES + CHECK_BYTES
MAX_CLUSTER_ID = 128

_ENCRYPTED_FIELDS = ("format", "cluster_id", "index", "threshold", "total", "custodian_fingerprint",
                     "algorithm", "ciphertext")
_PLAIN_FIELDS = ("format", "cluster_id", "index", "threshold", "total", "share", "check")

__all__ = ["EncryptedShare", "PlainShare", "share_context"]


def check_cluster_id(cluster_id: object) -> str:
    # No control characters: the context below uses NUL as a separator.
    if not (isinstance(cluster_id, str) and 0 < len(cluster_id) <= MAX_CLUSTER_ID and cluster_id.isprintable()):
        raise RecoveryError(f"cluster id {cluster_id!r} is not 1 to {MAX_CLUSTER_ID} printable characters")
    return cluster_id


def check_counts(index: object, threshold: object, total: object) -> None:
    # bool is an int in Python; a JSON true is not a share index.
    for name, value in (("index", index), ("threshold", threshold), ("total", total)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise RecoveryError(f"{name} must be an integer, not {value!r}")
    assert isinstance(index, int) and isinstance(threshold, int) and isinstance(total, int)
    if not 1 <= total <= MAX_SHARES:
        raise RecoveryError(f"total {total} is outside 1..{MAX_SHARES}")
    if not 1 <= threshold <= total:
        raise RecoveryError(f"threshold {threshold} is outside 1..{total} (the total)")
    if not 1 <= index <= total:
        raise RecoveryError(f"index {index} is outside 1..{total} (the total)")


def share_context(cluster_id: str, index: int, threshold: int, total: int) -> bytes:
    """The HPKE info / OAEP label: binds the ciphertext to this share's metadata."""
    return f"{FORMAT_ENCRYPTED}\0{cluster_id}\0{index}\0{threshold}\0{total}".encode()


@dataclass(frozen=True)
class EncryptedShare:
    """One custodian's share, encrypted to that custodian's public key."""

    cluster_id: str
    index: int
    threshold: int
    total: int
    custodian_fingerprint: str
    algorithm: str
    ciphertext: bytes

    def __post_init__(self) -> None:
        check_cluster_id(self.cluster_id)
        check_counts(self.index, self.threshold, self.total)
        fp = self.custodian_fingerprint
        if not (isinstance(fp, str) and len(fp) == 64 and all(c in "0123456789abcdef" for c in fp)):
            raise RecoveryError("custodian_fingerprint must be 64 lowercase hex characters (SHA-256)")
        if self.algorithm not in ALGORITHMS:
            raise RecoveryError(f"algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if not isinstance(self.ciphertext, bytes):
            raise RecoveryError("ciphertext must be bytes")
        size = len(self.ciphertext)
        if self.algorithm == ALG_HPKE:
            if size != HPKE_OVERHEAD + PAYLOAD_BYTES:
                raise RecoveryError(f"an {ALG_HPKE} ciphertext is {HPKE_OVERHEAD + PAYLOAD_BYTES} bytes, not {size}")
        elif not MIN_RSA_BITS // 8 <= size <= MAX_RSA_BITS // 8:
            raise RecoveryError(f"an RSA-OAEP ciphertext of {size} bytes does not fit a key of "
                                f"{MIN_RSA_BITS} to {MAX_RSA_BITS} bits")

    @property
    def context(self) -> bytes:
        return share_context(self.cluster_id, self.index, self.threshold, self.total)

    def to_json(self) -> str:
        return _dump({
            "format": FORMAT_ENCRYPTED,
            "cluster_id": self.cluster_id,
            "index": self.index,
            "threshold": self.threshold,
            "total": self.total,
            "custodian_fingerprint": self.custodian_fingerprint,
            "algorithm": self.algorithm,
            "ciphertext": base64.b64encode(self.ciphertext).decode(),
        })

    @classmethod
    def from_json(cls, data: str | bytes) -> EncryptedShare:
        what = "encrypted share file"
        doc = _load(data, what, FORMAT_ENCRYPTED, _ENCRYPTED_FIELDS)
        try:
            return cls(doc["cluster_id"], doc["index"], doc["threshold"], doc["total"],
                       doc["custodian_fingerprint"], doc["algorithm"], _b64(doc["ciphertext"], "ciphertext"))
        except RecoveryError as exc:
            raise RecoveryError(f"{what} is damaged: {exc}. {_INTACT}") from None


@dataclass(frozen=True, repr=False)
class PlainShare:
    """One decrypted share: secret, handed by its custodian to the recovery operator.

    ``check`` is the key check value (:func:`strongroom.recovery.key_check`): a
    function of the whole cluster key, identical in every share of a split, that
    lets :func:`combine_shares` confirm the result. ``share`` is a bytearray so
    that :meth:`wipe` can clear it.
    """

    cluster_id: str
    index: int
    threshold: int
    total: int
    share: bytearray
    check: bytes

    def __post_init__(self) -> None:
        check_cluster_id(self.cluster_id)
        check_counts(self.index, self.threshold, self.total)
        if not isinstance(self.share, bytearray) or len(self.share) != SHARE_BYTES:
            raise RecoveryError(f"share must be a bytearray of {SHARE_BYTES} bytes")
        if not isinstance(self.check, bytes) or len(self.check) != CHECK_BYTES:
            raise RecoveryError(f"check must be {CHECK_BYTES} bytes")

    def __repr__(self) -> str:  # never print the secret share in a traceback or a log
        return (f"PlainShare(cluster_id={self.cluster_id!r}, index={self.index}, threshold={self.threshold}, "
                f"total={self.total}, check={self.check.hex()!r})")

    def wipe(self) -> None:
        wipe(self.share)

    def to_json(self) -> str:
        # The JSON text is an immutable str: it cannot be wiped, write it out and drop it.
        return _dump({
            "format": FORMAT_PLAIN,
            "cluster_id": self.cluster_id,
            "index": self.index,
            "threshold": self.threshold,
            "total": self.total,
            "share": base64.b64encode(self.share).decode(),
            "check": self.check.hex(),
        })

    @classmethod
    def from_json(cls, data: str | bytes) -> PlainShare:
        what = "decrypted share file"
        doc = _load(data, what, FORMAT_PLAIN, _PLAIN_FIELDS)
        try:
            check = doc["check"]
            if not (isinstance(check, str) and len(check) == 2 * CHECK_BYTES
                    and all(c in "0123456789abcdef" for c in check)):
                raise RecoveryError(f"check must be {2 * CHECK_BYTES} lowercase hex characters")
            return cls(doc["cluster_id"], doc["index"], doc["threshold"], doc["total"],
                       bytearray(_b64(doc["share"], "share")), bytes.fromhex(check))
        except RecoveryError as exc:
            raise RecoveryError(f"{what} is damaged: {exc}. {_INTACT}") from None


_INTACT = "Ask its custodian for an intact copy (or to run decrypt-share again)"
_OTHER_FORMAT = {
    FORMAT_ENCRYPTED: "this is an encrypted share: its custodian must first decrypt it with "
                      "`strongroom recovery decrypt-share` and their private key",
    FORMAT_PLAIN: "this is an already decrypted share: hand it to the recovery operator, there is nothing to decrypt",
}


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise RecoveryError(f"field {key!r} appears twice")
        doc[key] = value
    return doc


def _load(data: str | bytes, what: str, expected: str, fields: tuple[str, ...]) -> dict[str, Any]:
    try:
        doc = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecoveryError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise RecoveryError(f"{what} is not valid JSON ({exc}). {_INTACT}") from None
    if not isinstance(doc, dict):
        raise RecoveryError(f"{what} is not a JSON object. {_INTACT}")
    found = doc.get("format")
    if found != expected:
        if found in _OTHER_FORMAT:
            raise RecoveryError(f"expected the format {expected}, got {found}: {_OTHER_FORMAT[found]}")
        raise RecoveryError(f"{what} has format {found!r}, expected {expected!r}: it is not a Strongroom "
                            "recovery share of a version this program reads")
    missing = [f for f in fields if f not in doc]
    unknown = sorted(set(doc) - set(fields))
    if missing or unknown:
        detail = "; ".join(part for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"unknown {', '.join(unknown)}" if unknown else "") if part)
        raise RecoveryError(f"{what} is damaged: {detail}. {_INTACT}")
    return doc


def _b64(value: object, name: str) -> bytes:
    if not isinstance(value, str):
        raise RecoveryError(f"{name} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise RecoveryError(f"{name} is not valid base64") from None

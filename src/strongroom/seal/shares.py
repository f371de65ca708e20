"""The ``shares`` seal's cold start: custodians submit their recovery shares to a sealed node.

With a ``shares`` seal no node keeps a usable key on disk. A starting node asks the running
nodes for the key; when none runs (the whole cluster was stopped), it waits, *sealed*, until
M custodians handed in their shares (the recovery shares issued at initialization):

1. ``strongroom unseal --share FILE``: the custodian's tool asks the node for the current
   **unseal attempt** (``node.unseal_begin``): an attempt id, a fresh X25519 public key made
   by the node's supervisor, and the progress (``1 of 2``).
2. The tool encrypts the decrypted share (``recovery decrypt-share`` output) to that key in a
   sealed box whose info names cluster, node and attempt, and sends it inside the mTLS
   connection (``node.unseal_submit``). A share captured on the way is useless to any other
   attempt, and the supervisor forgets the attempt's key once it ends.
3. At M distinct shares the supervisor combines them (Shamir, :mod:`strongroom.recovery`),
   checks the result against the key check value the seal marker keeps, and unseals.

An attempt ends when it unseals, when a share is refused (a damaged or foreign share resets
it: every custodian of that attempt submits again, as Vault's unseal does), or after
:data:`ATTEMPT_SECONDS` without a submission.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import constant_time

from strongroom.pki.sealedbox import BoxError, EphemeralKey, SealedBox, open_box, seal_box
from strongroom.recovery import PlainShare, RecoveryError, combine_shares

INFO_PREFIX = b"strongroom unseal v1\0"
#: An attempt no one submitted to for this long is forgotten (its shares wiped).
ATTEMPT_SECONDS = 900.0
MAX_SHARE_JSON = 4096


class UnsealRefused(Exception):
    """A submission that does not count (message for the custodian)."""


def unseal_info(cluster_id: str, node_id: str, attempt_id: str) -> bytes:
    return INFO_PREFIX + b"\0".join(s.encode() for s in (cluster_id, node_id, attempt_id))


def box_share(attempt: dict[str, Any], share: PlainShare) -> dict[str, Any]:
    """The custodian's side: the ``node.unseal_submit`` arguments for ``share``."""
    if share.cluster_id != attempt["cluster_id"]:
        raise UnsealRefused(f"this share belongs to cluster {share.cluster_id}, the node to {attempt['cluster_id']}")
    text = bytearray(share.to_json().encode())
    try:
        box = seal_box(attempt["public"], text,
                       unseal_info(attempt["cluster_id"], attempt["node_id"], attempt["attempt_id"]))
    except BoxError as exc:
        raise UnsealRefused(f"the node's unseal key is unusable: {exc}") from None
    finally:
        text[:] = bytes(len(text))
    return {"attempt_id": attempt["attempt_id"], "sender_public": box.sender_public, "nonce": box.nonce,
            "ciphertext": box.ciphertext}


@dataclass
class UnsealAttempt:
    """The supervisor's side of one attempt."""

    cluster_id: str
    node_id: str
    #: The key check value the seal marker keeps: only the cluster's own key is accepted.
    check: bytes
    attempt_id: str = field(default_factory=lambda: secrets.token_hex(8))
    key: EphemeralKey = field(default_factory=EphemeralKey.generate)
    shares: dict[int, PlainShare] = field(default_factory=dict)
    threshold: int | None = None
    touched: float = field(default_factory=time.monotonic)

    @property
    def expired(self) -> bool:
        return time.monotonic() - self.touched > ATTEMPT_SECONDS

    def describe(self) -> dict[str, Any]:
        return {"attempt_id": self.attempt_id, "public": self.key.public, "cluster_id": self.cluster_id,
                "node_id": self.node_id, "submitted": len(self.shares), "threshold": self.threshold}

    def submit(self, attempt_id: str, box: SealedBox) -> bytearray | None:
        """Count one share; the cluster key once the threshold is reached (else None).

        Raises UnsealRefused; a share that opens but is wrong also ends the attempt (the
        caller makes a new one), since it was made for this attempt by someone who holds it.
        """
        if attempt_id != self.attempt_id:
            raise UnsealRefused("that unseal attempt is over (unsealed, reset or expired): run `strongroom unseal` "
                                "again")
        self.touched = time.monotonic()
        try:
            text = open_box(self.key, box, unseal_info(self.cluster_id, self.node_id, self.attempt_id))
        except BoxError as exc:
            raise UnsealRefused(f"the submitted share does not open: {exc}") from None
        try:
            if len(text) > MAX_SHARE_JSON:
                raise UnsealRefused("the submitted share is too large")
            share = PlainShare.from_json(bytes(text))
        except RecoveryError as exc:
            raise UnsealRefused(str(exc)) from None
        finally:
            text[:] = bytes(len(text))
        if share.cluster_id != self.cluster_id:
            share.wipe()
            raise UnsealRefused(f"this share belongs to cluster {share.cluster_id}, not {self.cluster_id}")
        if not constant_time.bytes_eq(share.check, self.check):
            share.wipe()
            raise UnsealRefused("this share is of another issue of the cluster key's shares (key check differs)")
        previous = self.shares.get(share.index)
        if previous is not None:
            share.wipe()
            return None  # the same custodian twice counts once
        self.shares[share.index] = share
        self.threshold = share.threshold
        if len(self.shares) < share.threshold:
            return None
        try:
            return combine_shares(list(self.shares.values()), self.cluster_id)
        except RecoveryError as exc:
            raise UnsealRefused(str(exc)) from None

    def wipe(self) -> None:
        for share in self.shares.values():
            share.wipe()
        self.shares.clear()

"""Certificates taken out of the cluster (``hsm.revoke``), and who may connect at all.

``revoked/<certificate serial, lowercase hex>`` records, read through the barrier so that a
forged one is refused. The listener asks :meth:`Revocation.admit_connection` about every new
connection.
"""

from __future__ import annotations

from strongroom.services.keyring import ClusterKeyring
from strongroom.transport.server import ConnectionPeer

REVOKED_PREFIX = "revoked/"


def revoked_key(serial: int) -> str:
    return f"{REVOKED_PREFIX}{serial:x}"


class Revocation:
    def __init__(self, keyring: ClusterKeyring) -> None:
        self._keyring = keyring

    async def is_revoked(self, serial: int) -> bool:
        """Whether the certificate with this serial was revoked (a direct read: connections are rare).

        False while this worker holds no cluster key (there is no cluster to be revoked from).
        """
        barrier = self._keyring.barrier
        if barrier is None:
            return False
        return await barrier.get(revoked_key(serial)) is not None

    async def admit_connection(self, peer: ConnectionPeer) -> str | None:
        """The listener's admission hook: why a new connection must be closed, or None."""
        if peer.role is None:
            return ("its certificate carries no Strongroom role (a SAN URI urn:strongroom:<node|agent|operator>:"
                    "<name>; see the README's certificate section)")
        if await self.is_revoked(peer.serial):
            return "its certificate is revoked"
        return None

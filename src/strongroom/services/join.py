"""Joining a cluster: a new node receives the cluster key from a running node.

The exchange (operation ``hsm.clone_key``) runs inside an mTLS connection on which
both ends present a *node* certificate of the customer's CA (node role, serverAuth and
clientAuth; the serving node checks that the newcomer's certificate is the one an admin
enrolled for that node id and is not revoked, the newcomer checks the server's name,
chain and role). The node's supervisor runs it by itself whenever it has no key: a new
node joining, or a node with a ``shares`` seal starting while others run.

On top of that channel the key itself is encrypted to the newcomer's ephemeral
X25519 key (:mod:`strongroom.pki.sealedbox`), so it never exists in clear outside the
two node processes, and never passes through the store::

    newcomer                                    serving node
    e_c <- X25519 (fresh)
             -- node_id, pub(e_c) ------------>
                                                e_s <- X25519 (fresh)
                                                k = HKDF-SHA256(X25519(e_s, pub(e_c)),
                                                      salt = pub(e_s) || pub(e_c),
                                                      info = INFO || cluster_id || 0 || node_id)
             <- cluster_id, pub(e_s), nonce,
                AES-256-GCM(k, cluster key) ---
    k = same derivation; decrypt; seal it as the node's seal says (strongroom/seal)

The GCM associated data is the HKDF info, so the reply is bound to the cluster id
and to the node id it was made for.
"""

from __future__ import annotations

import asyncio
from typing import Any

from strongroom.pki.sealedbox import NONCE_BYTES, PUBLIC_BYTES, BoxError, EphemeralKey, SealedBox, open_box, seal_box
from strongroom.seal import CLUSTER_KEY_BYTES
from strongroom.services.config import NodeConfig

INFO_PREFIX = b"strongroom clone-key v1\0"
#: Per peer: connecting, the handshake and the exchange.
PEER_TIMEOUT = 15.0

__all__ = ["PUBLIC_BYTES", "JoinError", "JoinKeyPair", "fetch_cluster_key", "open_cluster_key", "seal_for_newcomer"]

#: The newcomer's ephemeral key for one attempt (never reuse it).
JoinKeyPair = EphemeralKey


class JoinError(Exception):
    """The cluster key could not be obtained (the message names every peer's failure)."""


def _info(cluster_id: str, node_id: str) -> bytes:
    return INFO_PREFIX + cluster_id.encode() + b"\0" + node_id.encode()


# --- the serving node's half ------------------------------------------------------------


def seal_for_newcomer(cluster_key: bytes | bytearray, cluster_id: str, node_id: str,
                      client_public: bytes) -> dict[str, Any]:
    """Encrypt the cluster key to the newcomer's ephemeral key: the ``hsm.clone_key`` reply.

    Raises ValueError when ``client_public`` is not a usable X25519 public key.
    """
    if len(cluster_key) != CLUSTER_KEY_BYTES:
        raise ValueError(f"a cluster key is {CLUSTER_KEY_BYTES} bytes")
    try:
        box = seal_box(client_public, cluster_key, _info(cluster_id, node_id))
    except BoxError as exc:
        raise ValueError(str(exc)) from None
    return {"cluster_id": cluster_id, "server_public": box.sender_public, "nonce": box.nonce,
            "ciphertext": box.ciphertext}


# --- the newcomer's half ------------------------------------------------------------------


def open_cluster_key(pair: EphemeralKey, node_id: str, reply: Any) -> tuple[str, bytearray]:
    """Decrypt an ``hsm.clone_key`` reply: (cluster_id, cluster key). Raises JoinError."""
    try:
        cluster_id = reply["cluster_id"]
        server_public = reply["server_public"]
        nonce = reply["nonce"]
        ciphertext = reply["ciphertext"]
    except (KeyError, TypeError):
        raise JoinError("the reply to hsm.clone_key lacks a field") from None
    if not (isinstance(cluster_id, str) and isinstance(server_public, bytes) and isinstance(nonce, bytes)
            and isinstance(ciphertext, bytes) and len(nonce) == NONCE_BYTES):
        raise JoinError("the reply to hsm.clone_key is malformed")
    try:
        cluster_key = open_box(pair, SealedBox(server_public, nonce, ciphertext), _info(cluster_id, node_id))
    except BoxError as exc:
        raise JoinError(f"the encrypted cluster key does not open: {exc}") from None
    if len(cluster_key) != CLUSTER_KEY_BYTES:
        cluster_key[:] = bytes(len(cluster_key))
        raise JoinError("the cluster key received has the wrong size")
    return cluster_id, cluster_key


async def fetch_cluster_key(config: NodeConfig, peer: str, *, timeout: float = PEER_TIMEOUT) -> tuple[str, bytearray]:
    """Run the exchange with one peer (``HOST:PORT``) over mTLS with this node's own certificate."""
    from strongroom.client.connection import AsyncConnection
    from strongroom.client.profile import NodeAddress
    from strongroom.transport.tls import client_context

    address = NodeAddress.parse("peer", peer)
    context = client_context(config.tls_cert, config.tls_key, config.ca_cert)
    pair = EphemeralKey.generate()
    async with asyncio.timeout(timeout):
        connection = await AsyncConnection.open(address.host, address.port, context, timeout=timeout)
        try:
            reply = await connection.call("hsm.clone_key", {"node_id": config.node_id, "ephemeral_public": pair.public})
        finally:
            await connection.close()
    return open_cluster_key(pair, config.node_id, reply)

"""Joining a cluster: a new node receives the cluster key from a running node.

The exchange (operation ``hsm.clone_key``) runs inside an mTLS connection on which
both ends present a *node* certificate of the customer's CA (serverAuth and
clientAuth; the serving node checks the newcomer's CN, EKU and revocation, the
newcomer's TLS context checks the server's name, chain and serverAuth).

On top of that channel the key itself is encrypted to the newcomer's ephemeral
X25519 key, so it never exists in clear outside the two node processes, and never
passes through the store::

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
import os
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from strongroom.seal import CLUSTER_KEY_BYTES, SealedIdentity, SealError, seal_cluster_key, seal_exists
from strongroom.node.config import NodeConfig

INFO_PREFIX = b"strongroom clone-key v1\0"
PUBLIC_BYTES = 32
NONCE_BYTES = 12
#: Per peer: connecting, the handshake and the exchange.
PEER_TIMEOUT = 15.0

__all__ = ["JoinError", "JoinKeyPair", "join_cluster", "open_cluster_key", "seal_for_newcomer"]


class JoinError(Exception):
    """The cluster key could not be obtained (the message names every peer's failure)."""


def _info(cluster_id: str, node_id: str) -> bytes:
    return INFO_PREFIX + cluster_id.encode() + b"\0" + node_id.encode()


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _wrapping_key(private: X25519PrivateKey, peer_public: bytes, server_public: bytes, client_public: bytes,
                  info: bytes) -> bytes:
    """X25519 then HKDF-SHA256. Raises ValueError for a malformed or low-order peer key."""
    if len(peer_public) != PUBLIC_BYTES:
        raise ValueError(f"an X25519 public key is {PUBLIC_BYTES} bytes, not {len(peer_public)}")
    # OpenSSL refuses (ValueError) a peer key that gives the all-zero shared secret.
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    return HKDF(hashes.SHA256(), 32, salt=server_public + client_public, info=info).derive(shared)


# --- the serving node's half ------------------------------------------------------------


def seal_for_newcomer(cluster_key: bytes | bytearray, cluster_id: str, node_id: str,
                      client_public: bytes) -> dict[str, Any]:
    """Encrypt the cluster key to the newcomer's ephemeral key: the ``hsm.clone_key`` reply.

    Raises ValueError when ``client_public`` is not a usable X25519 public key.
    """
    if len(cluster_key) != CLUSTER_KEY_BYTES:
        raise ValueError(f"a cluster key is {CLUSTER_KEY_BYTES} bytes")
    ephemeral = X25519PrivateKey.generate()
    server_public = _raw(ephemeral.public_key())
    info = _info(cluster_id, node_id)
    key = _wrapping_key(ephemeral, client_public, server_public, client_public, info)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(key).encrypt(nonce, bytes(cluster_key), info)
    return {"cluster_id": cluster_id, "server_public": server_public, "nonce": nonce, "ciphertext": ciphertext}


# --- the newcomer's half ------------------------------------------------------------------


@dataclass
class JoinKeyPair:
    """The newcomer's ephemeral X25519 key for one attempt (never reuse it)."""

    private: X25519PrivateKey

    @classmethod
    def generate(cls) -> JoinKeyPair:
        return cls(X25519PrivateKey.generate())

    @property
    def public(self) -> bytes:
        return _raw(self.private.public_key())


def open_cluster_key(pair: JoinKeyPair, node_id: str, reply: Any) -> tuple[str, bytearray]:
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
    info = _info(cluster_id, node_id)
    try:
        key = _wrapping_key(pair.private, server_public, server_public, pair.public, info)
        cluster_key = bytearray(AESGCM(key).decrypt(nonce, ciphertext, info))
    except ValueError as exc:
        raise JoinError(f"the server's ephemeral key is unusable: {exc}") from None
    except InvalidTag:
        raise JoinError("the encrypted cluster key failed authentication (altered, or not made for this node)") \
            from None
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
    pair = JoinKeyPair.generate()
    async with asyncio.timeout(timeout):
        connection = await AsyncConnection.open(address.host, address.port, context, timeout=timeout)
        try:
            reply = await connection.call("hsm.clone_key", {"node_id": config.node_id, "ephemeral_public": pair.public})
        finally:
            await connection.close()
    return open_cluster_key(pair, config.node_id, reply)


async def join_cluster(config: NodeConfig, peers: list[str]) -> SealedIdentity:
    """Obtain the cluster key from the first peer that gives it, and seal it in ``config.node_dir``.

    Call before the node starts (a node without a seal refuses to serve an initialized store).
    """
    if seal_exists(config.node_dir):
        raise JoinError(f"{config.node_dir} already holds a sealed cluster key; this node needs no join")
    if not peers:
        raise JoinError("no running node to receive the cluster key from")
    failures = []
    for peer in peers:
        try:
            cluster_id, cluster_key = await fetch_cluster_key(config, peer)
        except JoinError as exc:
            failures.append(f"{peer}: {exc}")
            continue
        except TimeoutError:
            failures.append(f"{peer}: no answer within {PEER_TIMEOUT:.0f} s")
            continue
        except Exception as exc:  # noqa: BLE001 - connection, TLS and error replies: try the next peer
            failures.append(f"{peer}: {getattr(exc, 'message', None) or exc or type(exc).__name__}")
            continue
        identity = SealedIdentity(cluster_id, config.node_id)
        try:
            config.node_dir.mkdir(parents=True, exist_ok=True)
            seal_cluster_key(config.node_dir, identity, cluster_key)
        except (SealError, OSError) as exc:
            raise JoinError(f"received the cluster key from {peer} but could not seal it: {exc}") from None
        finally:
            cluster_key[:] = bytes(len(cluster_key))
        return identity
    raise JoinError("could not obtain the cluster key from any node: " + "; ".join(failures))

"""``hsm.*``: nodes joining (receiving the cluster key) and leaving (revocation) the cluster.

Neither operation takes a login: they are control-plane acts, authorized by the
certificate the caller presented in the mTLS handshake (both chain to the
customer's CA, or the handshake would have failed):

* ``hsm.clone_key`` — a *node* certificate (serverAuth + clientAuth) whose CN is
  the node id asking, not revoked. The key travels encrypted to the newcomer's
  ephemeral X25519 key (see :mod:`strongroom.node.join`).
* ``hsm.revoke`` — a *client* certificate (clientAuth only): the operator's act of
  removing a node, as CloudHSM's DeleteHsm is an AWS API call rather than an HSM
  login. It grants no access to keys; its worst use is taking a node out.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strongroom.barrier import Remove, Write
from strongroom.dispatch.auditing import audit_refusal, witness
from strongroom.dispatch.table import ACTIVE, ALL_STATES, INITIALIZED, operation
from strongroom.errors import ActionProhibited, ArgumentsBad, DeviceError, HsmError
from strongroom.node.join import PUBLIC_BYTES, seal_for_newcomer
from strongroom.node.services import REVOKED_PREFIX
from strongroom.store.base import ConflictError

log = logging.getLogger(__name__)

STATES = (INITIALIZED, ACTIVE)
#: RFC 5280: a serial number is at most 20 octets.
MAX_SERIAL_HEX = 40


def revoked_key(serial: int) -> str:
    return f"{REVOKED_PREFIX}{serial:x}"


def _who(peer: Any) -> str:
    return "an unidentified peer" if peer is None else f"CN={peer.common_name!r}"


async def check_node_peer(services: Any, peer: Any, node_id: str) -> None:
    """Refuse (ACTION_PROHIBITED) unless ``peer`` is the unrevoked node certificate of ``node_id``."""
    if peer is None or getattr(peer, "serial", None) is None:
        raise ActionProhibited("hsm.clone_key: the peer's certificate is unknown on this connection")
    if not (peer.server_auth and peer.client_auth):
        raise ActionProhibited(
            f"hsm.clone_key needs a node certificate (serverAuth and clientAuth) of the cluster's CA; "
            f"{_who(peer)} is a client certificate"
        )
    if peer.common_name != node_id:
        raise ActionProhibited(
            f"hsm.clone_key: the certificate presented is for {peer.common_name!r}, not for node {node_id!r}"
        )
    if await services.is_revoked(peer.serial):
        raise ActionProhibited(f"hsm.clone_key: the certificate of {node_id!r} (serial {peer.serial:x}) is revoked")


def _check_operator_peer(peer: Any, op: str = "hsm.revoke") -> None:
    if peer is None or getattr(peer, "serial", None) is None:
        raise ActionProhibited(f"{op}: the peer's certificate is unknown on this connection")
    if peer.server_auth or not peer.client_auth:
        raise ActionProhibited(
            f"{op} is the operator's act and needs a client certificate (clientAuth only) of the "
            f"cluster's CA; {_who(peer)} is a node certificate"
        )


@dataclass
class CloneKeyArgs:
    node_id: str
    ephemeral_public: bytes


@operation("hsm.clone_key", args=CloneKeyArgs, states=STATES)
async def clone_key(call: Any, args: CloneKeyArgs) -> dict[str, Any]:
    """Give the cluster key to a joining node, encrypted to its ephemeral X25519 key."""
    services = call.services
    peer = call.peer
    details = {"node_id": args.node_id, "peer_fingerprint": getattr(peer, "fingerprint_sha256", None)}
    try:
        await check_node_peer(services, peer, args.node_id)
        if len(args.ephemeral_public) != PUBLIC_BYTES:
            raise ArgumentsBad(f"ephemeral_public must be a {PUBLIC_BYTES}-byte X25519 public key")
        key, cluster_id = services.cluster_key, services.cluster_id
        if key is None or cluster_id is None:
            raise DeviceError("this node holds no cluster key")
        try:
            reply = seal_for_newcomer(key, cluster_id, args.node_id, args.ephemeral_public)
        except ValueError as exc:
            raise ArgumentsBad(f"ephemeral_public is not a usable X25519 public key ({exc})") from None
    except HsmError as exc:
        await audit_refusal(call, "hsm.clone_key", exc, details)
        raise
    await services.audit("hsm.clone_key", actor=call.actor, details=details)
    return reply


@dataclass
class RevokeArgs:
    node_id: str
    #: The certificate's serial number in hexadecimal (too large for a protocol integer).
    serial: str


@functools.cache
def _own_serial(cert_path: Path) -> int:
    from strongroom.pki import load_certificate

    return load_certificate(cert_path).serial_number


def _parse_serial(text: str) -> int:
    digits = text.lower().removeprefix("0x")
    if not 1 <= len(digits) <= MAX_SERIAL_HEX or any(c not in "0123456789abcdef" for c in digits):
        raise ArgumentsBad(f"serial must be a certificate serial number in hexadecimal, not {text!r}")
    return int(digits, 16)


@operation("hsm.revoke", args=RevokeArgs, states=STATES)
async def revoke(call: Any, args: RevokeArgs) -> dict[str, Any]:
    """Revoke a node's certificate (``revoked/<serial>``) and drop the node from the registry.

    Nodes then close new connections made with that certificate and refuse it
    ``hsm.clone_key``. Idempotent: revoking again answers with the first record.
    """
    from strongroom.node import registry

    services = call.services
    peer = call.peer
    serial = _parse_serial(args.serial)
    details = {"node_id": args.node_id, "serial": f"{serial:x}",
               "peer_fingerprint": getattr(peer, "fingerprint_sha256", None)}
    try:
        _check_operator_peer(peer)
        if serial == _own_serial(Path(services.config.tls_cert)):
            raise ActionProhibited("a node does not revoke its own certificate; send hsm.revoke to another node")
        barrier = services.require_barrier()
        key = revoked_key(serial)
        for _attempt in range(3):
            existing = await barrier.get(key)
            if existing is not None:
                return dict(existing.value, already_revoked=True)
            listed = await barrier.get(registry.key_of(args.node_id))
            record = {"node_id": args.node_id, "serial": f"{serial:x}", "revoked_at": time.time()}
            changes: list[Any] = [Write(key, record)]
            if listed is not None:
                changes.append(Remove(listed.key, listed))
            await witness(call, "hsm.revoke", details)()
            try:
                await barrier.commit(changes)
            except ConflictError:
                continue  # revoked, or the registry entry changed, meanwhile: read again
            return dict(record, already_revoked=False, unregistered=listed is not None)
        raise DeviceError("hsm.revoke: the records kept changing; try again")
    except HsmError as exc:
        await audit_refusal(call, "hsm.revoke", exc, details)
        raise


@dataclass
class ZeroizeArgs:
    #: The node the caller means to zeroize: a request that reached another node is refused.
    node_id: str


@operation("hsm.zeroize", args=ZeroizeArgs, states=ALL_STATES)
async def zeroize(call: Any, args: ZeroizeArgs) -> dict[str, Any]:
    """Destroy this node's copy of the cluster key and take the node out of the cluster.

    Allowed to a logged-in admin (crypto officer) and, with no login, to the operator's
    client certificate: an emergency stop for one node, as the operator may also delete
    an HSM. Other nodes keep serving; with every node zeroized only backups remain,
    restorable with recovery shares.
    """
    from strongroom.node import registry

    services = call.services
    details = {"node_id": args.node_id, "peer": call.peer_name}
    try:
        # No login needed (the operator has none), but a caller who sent a session must be an admin.
        session = None if call.request.session is None else services.sessions.resolve(call.request.session)
        if session is None:
            _check_operator_peer(call.peer, "hsm.zeroize")
        elif session.role.value != "admin":
            raise ActionProhibited("hsm.zeroize: only an admin or the operator may zeroize a node")
        if args.node_id != services.config.node_id:
            raise ArgumentsBad(f"this request reached node {services.config.node_id!r}, not {args.node_id!r}; "
                               "nothing was zeroized")
    except HsmError as exc:
        await audit_refusal(call, "hsm.zeroize", exc, details)
        raise
    await services.audit("hsm.zeroize", actor=None if session is None else session.username, details=details)
    unregistered = False
    if services.barrier is not None:
        try:
            unregistered = await registry.unregister(services.barrier, services.config.node_id)
        except Exception as exc:  # noqa: BLE001 - zeroizing must not depend on the store answering
            log.warning("zeroize: could not remove this node from the registry: %s", exc)
    services.zeroize()
    return {"node_id": services.config.node_id, "zeroized": True, "unregistered": unregistered}

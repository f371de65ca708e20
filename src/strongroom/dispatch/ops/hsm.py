"""``hsm.*``: nodes enrolled by an admin, joining (receiving the cluster key) and leaving the cluster.

* ``hsm.enroll`` — an admin (logged in) names the node certificate that may receive the
  cluster key: ``enrolled/<node id>`` records its SHA-256 fingerprint. Without it no
  certificate of the customer's CA, node role or not, gets the key.
* ``hsm.clone_key`` — no login: a connection whose certificate has the *node* role
  (dispatch checks it), is the enrolled certificate of the node id it names, and is not
  revoked. The key travels encrypted to the newcomer's ephemeral X25519 key (see
  :mod:`strongroom.services.join`).
* ``hsm.revoke`` — the operator's act of removing a node (operator role, no login), as
  CloudHSM's DeleteHsm is an AWS API call rather than an HSM login. It grants no access
  to keys; its worst use is taking a node out.
* ``hsm.zeroize`` — an admin, or the operator with no login.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from strongroom.auth.users import Role
from strongroom.barrier import Change, Remove, Write
from strongroom.dispatch import quorum as q
from strongroom.dispatch.auditing import audited, witness
from strongroom.dispatch.call import Call, Services
from strongroom.dispatch.table import AGENT, NODE, OPERATOR, operation
from strongroom.errors import ActionProhibited, ArgumentsBad, DeviceError
from strongroom.pki import certificate_role, fingerprint_sha256, load_certificate, verify_issued_by
from strongroom.services import registry
from strongroom.services.join import PUBLIC_BYTES, seal_for_newcomer
from strongroom.services.revocation import revoked_key
from strongroom.services.state import ACTIVE, ALL_STATES, INITIALIZED
from strongroom.store.base import ConflictError
from strongroom.transport.server import ConnectionPeer

log = logging.getLogger(__name__)

STATES = (INITIALIZED, ACTIVE)
#: RFC 5280: a serial number is at most 20 octets.
MAX_SERIAL_HEX = 40
#: ``enrolled/<node id>``: the certificate an admin allowed to receive the cluster key.
ENROLLED_PREFIX = "enrolled/"
MAX_PEM = 16 * 1024


def enrolled_key(node_id: str) -> str:
    return f"{ENROLLED_PREFIX}{node_id}"


def _who(peer: ConnectionPeer) -> str:
    return f"CN={peer.common_name!r}"


async def check_node_peer(services: Services, peer: ConnectionPeer | None, node_id: str) -> None:
    """Refuse (ACTION_PROHIBITED) unless ``peer`` is the enrolled, unrevoked node certificate of ``node_id``."""
    if peer is None:
        raise ActionProhibited("hsm.clone_key: the peer's certificate is unknown on this connection")
    if not peer.is_node:
        raise ActionProhibited(
            f"hsm.clone_key needs a node certificate (SAN URI urn:strongroom:node:<id>, serverAuth and "
            f"clientAuth) of the cluster's CA; {_who(peer)} is not one"
        )
    if peer.role_name != node_id:
        raise ActionProhibited(
            f"hsm.clone_key: the certificate presented is for node {peer.role_name!r}, not for node {node_id!r}"
        )
    enrolled = await services.keyring.require_barrier().get(enrolled_key(node_id))
    if enrolled is None:
        raise ActionProhibited(f"hsm.clone_key: node {node_id!r} is not enrolled; an admin enrolls its "
                               "certificate first (strongroom hsm enroll --id ID --cert FILE)")
    if enrolled.value.get("fingerprint") != peer.fingerprint_sha256:
        raise ActionProhibited(f"hsm.clone_key: the certificate presented is not the one enrolled for {node_id!r}")
    if await services.revocation.is_revoked(peer.serial):
        raise ActionProhibited(f"hsm.clone_key: the certificate of {node_id!r} (serial {peer.serial:x}) is revoked")


@dataclass
class EnrollArgs:
    node_id: str
    #: The node's certificate (PEM), as its operator sent it to the admin.
    certificate: str


@operation("hsm.enroll", args=EnrollArgs, roles=(Role.ADMIN.value,), states=STATES, peers=(AGENT,),
           quorum=q.CLUSTER_OPS)
async def enroll(call: Call, args: EnrollArgs) -> dict[str, Any]:
    """An admin allows one node certificate to receive the cluster key (``hsm.clone_key``).

    Idempotent for the same certificate; enrolling another certificate for the same node id
    replaces the first (a node whose certificate was renewed).
    """
    services = call.services
    details: dict[str, Any] = {"node_id": args.node_id}
    async with audited(call, "hsm.enroll", details):
        if len(args.certificate) > MAX_PEM:
            raise ArgumentsBad(f"a certificate is at most {MAX_PEM} bytes of PEM")
        try:
            cert = x509.load_pem_x509_certificate(args.certificate.encode())
        except ValueError:
            raise ArgumentsBad("certificate is not a PEM certificate") from None
        role = certificate_role(cert)
        if role is None or role.role != NODE or role.name != args.node_id:
            raise ArgumentsBad(f"the certificate does not carry the node role for {args.node_id!r} "
                               f"(SAN URI urn:strongroom:node:{args.node_id})")
        if not verify_issued_by(cert, load_certificate(services.config.ca_cert)):
            raise ArgumentsBad("the certificate was not issued by the cluster's CA (the trust anchor)")
        fingerprint = fingerprint_sha256(cert)
        details.update(fingerprint=fingerprint, serial=f"{cert.serial_number:x}")
        if await services.revocation.is_revoked(cert.serial_number):
            raise ActionProhibited(f"that certificate (serial {cert.serial_number:x}) is revoked")
        barrier = services.keyring.require_barrier()
        key = enrolled_key(args.node_id)
        record = {"node_id": args.node_id, "fingerprint": fingerprint, "serial": f"{cert.serial_number:x}",
                  "enrolled_by": call.actor, "enrolled_at": time.time()}
        for _attempt in range(3):
            existing = await barrier.get(key)
            if existing is not None and existing.value.get("fingerprint") == fingerprint:
                return dict(existing.value, already_enrolled=True)
            await witness(call, "hsm.enroll", details)()
            try:
                await barrier.commit([Write(key, record, existing)])
            except ConflictError:
                continue
            return dict(record, already_enrolled=False)
        raise DeviceError("hsm.enroll: the record kept changing; try again")


@dataclass
class CloneKeyArgs:
    node_id: str
    ephemeral_public: bytes


@operation("hsm.clone_key", args=CloneKeyArgs, states=STATES, peers=(NODE,))
async def clone_key(call: Call, args: CloneKeyArgs) -> dict[str, Any]:
    """Give the cluster key to a joining node, encrypted to its ephemeral X25519 key."""
    services = call.services
    peer = call.peer
    details = {"node_id": args.node_id, "peer_fingerprint": getattr(peer, "fingerprint_sha256", None)}
    async with audited(call, "hsm.clone_key", details):
        await check_node_peer(services, peer, args.node_id)
        if len(args.ephemeral_public) != PUBLIC_BYTES:
            raise ArgumentsBad(f"ephemeral_public must be a {PUBLIC_BYTES}-byte X25519 public key")
        key, cluster_id = services.keyring.cluster_key, services.keyring.cluster_id
        if key is None or cluster_id is None:
            raise DeviceError("this node holds no cluster key")
        try:
            reply = seal_for_newcomer(key, cluster_id, args.node_id, args.ephemeral_public)
        except ValueError as exc:
            raise ArgumentsBad(f"ephemeral_public is not a usable X25519 public key ({exc})") from None
    await services.audit.record("hsm.clone_key", actor=call.actor, details=details)
    return reply


@dataclass
class RevokeArgs:
    node_id: str
    #: The certificate's serial number in hexadecimal (too large for a protocol integer).
    serial: str


@functools.cache
def _own_serial(cert_path: Path) -> int:
    return load_certificate(cert_path).serial_number


def _parse_serial(text: str) -> int:
    digits = text.lower().removeprefix("0x")
    if not 1 <= len(digits) <= MAX_SERIAL_HEX or any(c not in "0123456789abcdef" for c in digits):
        raise ArgumentsBad(f"serial must be a certificate serial number in hexadecimal, not {text!r}")
    return int(digits, 16)


@operation("hsm.revoke", args=RevokeArgs, states=STATES, peers=(OPERATOR,))
async def revoke(call: Call, args: RevokeArgs) -> dict[str, Any]:
    """Revoke a node's certificate (``revoked/<serial>``) and drop the node from the registry.

    Nodes then close new connections made with that certificate and refuse it
    ``hsm.clone_key``. Idempotent: revoking again answers with the first record.
    """
    services = call.services
    peer = call.peer
    serial = _parse_serial(args.serial)
    details = {"node_id": args.node_id, "serial": f"{serial:x}",
               "peer_fingerprint": getattr(peer, "fingerprint_sha256", None)}
    async with audited(call, "hsm.revoke", details):
        if serial == _own_serial(Path(services.config.tls_cert)):
            raise ActionProhibited("a node does not revoke its own certificate; send hsm.revoke to another node")
        barrier = services.keyring.require_barrier()
        key = revoked_key(serial)
        for _attempt in range(3):
            existing = await barrier.get(key)
            if existing is not None:
                return dict(existing.value, already_revoked=True)
            listed = await barrier.get(registry.key_of(args.node_id))
            enrolled = await barrier.get(enrolled_key(args.node_id))
            record = {"node_id": args.node_id, "serial": f"{serial:x}", "revoked_at": time.time()}
            changes: list[Change] = [Write(key, record)]
            if listed is not None:
                changes.append(Remove(listed.key, listed))
            if enrolled is not None and enrolled.value.get("serial") == f"{serial:x}":
                changes.append(Remove(enrolled.key, enrolled))
            await witness(call, "hsm.revoke", details)()
            try:
                await barrier.commit(changes)
            except ConflictError:
                continue  # revoked, or the registry entry changed, meanwhile: read again
            return dict(record, already_revoked=False, unregistered=listed is not None)
        raise DeviceError("hsm.revoke: the records kept changing; try again")


@dataclass
class ZeroizeArgs:
    #: The node the caller means to zeroize: a request that reached another node is refused.
    node_id: str


@operation("hsm.zeroize", args=ZeroizeArgs, states=ALL_STATES, peers=(OPERATOR, AGENT), quorum=q.CLUSTER_LOGGED_IN)
async def zeroize(call: Call, args: ZeroizeArgs) -> dict[str, Any]:
    """Destroy this node's copy of the cluster key and take the node out of the cluster.

    Allowed to a logged-in admin (crypto officer) and, with no login, to the operator's
    certificate: an emergency stop for one node, as the operator may also delete
    an HSM. Other nodes keep serving; with every node zeroized only backups remain,
    restorable with recovery shares.
    """
    services = call.services
    details = {"node_id": args.node_id, "peer": call.peer_name}
    async with audited(call, "hsm.zeroize", details):
        # No login needed (the operator has none), but a caller who sent a session must be an admin.
        session = None if call.request.session is None else services.sessions.logins.resolve(call.request.session)
        if session is None:
            if getattr(call.peer, "role", None) != OPERATOR:
                raise ActionProhibited("hsm.zeroize: without a login only the operator's certificate may zeroize "
                                       "a node; an application host's needs an admin login")
        elif session.role.value != "admin":
            raise ActionProhibited("hsm.zeroize: only an admin or the operator may zeroize a node")
        if args.node_id != services.config.node_id:
            raise ArgumentsBad(f"this request reached node {services.config.node_id!r}, not {args.node_id!r}; "
                               "nothing was zeroized")
    await services.audit.record("hsm.zeroize", actor=None if session is None else session.username, details=details)
    unregistered = False
    if services.keyring.barrier is not None:
        try:
            unregistered = await registry.unregister(services.keyring.barrier, services.config.node_id)
        except Exception as exc:  # noqa: BLE001 - zeroizing must not depend on the store answering
            log.warning("zeroize: could not remove this node from the registry: %s", exc)
    services.keyring.zeroize()
    return {"node_id": services.config.node_id, "zeroized": True, "unregistered": unregistered}

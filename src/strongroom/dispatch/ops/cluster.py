"""``cluster.*``: the life cycle of the cluster (initialize -> activate) and its status."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from strongroom.auth.passwords import hash_password
from strongroom.auth.users import Role, check_password_rules, key_of, normalize_username
from strongroom.barrier import Barrier, Entry, Write
from strongroom.dispatch import quorum as q
from strongroom.dispatch.auditing import audited, witness
from strongroom.dispatch.call import Call
from strongroom.dispatch.table import AGENT, EVERY_PEER, operation
from strongroom.errors import ActionProhibited, ArgumentsBad, DeviceError, PinIncorrect
from strongroom.pki import fingerprint_sha256, load_certificate
from strongroom.recovery import RecoveryError, load_custodian_key, split_cluster_key
from strongroom.seal import CLUSTER_KEY_BYTES, SHARES, SealedIdentity, SealError, seal_cluster_key, seal_exists
from strongroom.services import policy, registry
from strongroom.services.backups import LAST_BACKUP_KEY
from strongroom.services.identity import IDENTITY_KEY, ClusterIdentity, IdentityError, check_cluster_certificate
from strongroom.services.state import (
    ACTIVE,
    ALL_STATES,
    CLUSTER_META_KEY,
    INITIALIZE_IN_PROGRESS,
    INITIALIZED,
    UNINITIALIZED,
)
from strongroom.store.base import ConflictError

#: The first admin exists from initialization on, without a password, until activation.
FIRST_ADMIN = "admin"


@dataclass
class InitializeArgs:
    cluster_name: str = "strongroom"


#: Initialization is the customer's act (they hold the CA that signs the cluster CSR, and activation
#: makes the first admin): an application host's certificate, never the operator's.
OWNER = (AGENT,)


@operation("cluster.initialize", args=InitializeArgs, states=(UNINITIALIZED,), peers=OWNER)
async def initialize(call: Call, args: InitializeArgs) -> dict[str, Any]:
    """Create the cluster key and the cluster's identity key inside this node; return the cluster CSR.

    Anyone holding a certificate of the customer's CA may initialize: it is the
    operator's act of creating a cluster, and it grants no access to keys. The
    cluster stays ``initialize_in_progress`` until the customer installs the
    certificate their CA made from the CSR (``cluster.install_certificate``).
    """
    services = call.services
    if not 1 <= len(args.cluster_name) <= 32 or not args.cluster_name.isprintable():
        raise ArgumentsBad("a cluster name is 1 to 32 printable characters")
    cluster_id = str(uuid.uuid4())
    identity = await asyncio.to_thread(ClusterIdentity.generate)
    csr = identity.csr(cluster_id, args.cluster_name).decode()
    key = bytearray(os.urandom(CLUSTER_KEY_BYTES))
    try:
        await asyncio.to_thread(seal_cluster_key, services.config.node_dir,
                                SealedIdentity(cluster_id, services.config.node_id), key, services.config.seal)
    except SealError as exc:
        key[:] = bytes(len(key))
        if seal_exists(services.config.node_dir):
            raise ActionProhibited("this node already holds a cluster key") from None
        raise DeviceError(f"the cluster key could not be sealed ({services.config.seal.type} seal): {exc}") from None
    services.keyring.share_new_key(cluster_id, key)
    barrier = services.keyring.require_barrier()
    now = time.time()
    meta = {"cluster_id": cluster_id, "name": args.cluster_name, "state": INITIALIZE_IN_PROGRESS, "created": now,
            "csr": csr}
    admin = {"name": FIRST_ADMIN, "role": Role.ADMIN.value, "password": None, "failed_logins": 0, "created": now}
    await services.audit.record("cluster.initialize", actor=None, details={"cluster_id": cluster_id})
    try:
        await barrier.commit([Write(CLUSTER_META_KEY, meta), Write(IDENTITY_KEY, identity.to_record()),
                              Write(key_of(FIRST_ADMIN), admin)])
    except BaseException:
        # No cluster was created: the key sealed above belongs to nothing, destroy it.
        services.keyring.forget_cluster_key()
        raise
    await services.registration.register()
    return {"cluster_id": cluster_id, "state": INITIALIZE_IN_PROGRESS, "admin_username": FIRST_ADMIN, "csr": csr}


async def _cluster_record(barrier: Barrier, key: str) -> Entry:
    """A record every cluster past ``cluster.initialize`` has: without it, the store is not this cluster's."""
    entry = await barrier.get(key)
    if entry is None:
        raise DeviceError(f"the store holds no {key!r} record: it is not this cluster's store")
    return entry


@operation("cluster.csr", states=(INITIALIZE_IN_PROGRESS, INITIALIZED, ACTIVE), peers=OWNER)
async def csr(call: Call, _args: None) -> dict[str, Any]:
    """The cluster CSR again (it is public), e.g. when the first copy was lost."""
    meta = await _cluster_record(call.services.keyring.require_barrier(), CLUSTER_META_KEY)
    return {"cluster_id": call.services.keyring.cluster_id, "csr": meta.value["csr"]}


#: At most this many recovery custodians (and so shares); PEM public keys up to this size.
MAX_CUSTODIANS = 16
MAX_PEM = 16 * 1024


@dataclass
class InstallCertificateArgs:
    certificate: str
    trust_anchor: str
    custodians: list[str] = field(default_factory=list)
    threshold: int = 0


@operation("cluster.install_certificate", args=InstallCertificateArgs, states=(INITIALIZE_IN_PROGRESS,), peers=OWNER)
async def install_certificate(call: Call, args: InstallCertificateArgs) -> dict[str, Any]:
    """Complete initialization: the customer's certificate for the cluster CSR, their CA, and optionally
    the custodians among whom the cluster key is split M-of-N (the encrypted shares are returned once)."""
    services = call.services
    barrier = services.keyring.require_barrier()
    if len(args.certificate) > MAX_PEM or len(args.trust_anchor) > MAX_PEM:
        raise ArgumentsBad(f"a certificate is at most {MAX_PEM} bytes of PEM")
    if len(args.custodians) > MAX_CUSTODIANS or any(len(c) > MAX_PEM for c in args.custodians):
        raise ArgumentsBad(f"at most {MAX_CUSTODIANS} custodians, each a PEM public key of at most {MAX_PEM} bytes")
    identity = ClusterIdentity.from_record((await _cluster_record(barrier, IDENTITY_KEY)).value)
    try:
        cert, anchor = check_cluster_certificate(identity, args.certificate, args.trust_anchor)
    except IdentityError as exc:
        raise ArgumentsBad(str(exc)) from None
    node_anchor = load_certificate(services.config.ca_cert)
    if fingerprint_sha256(anchor) != fingerprint_sha256(node_anchor):
        raise ArgumentsBad(
            f"the trust anchor {fingerprint_sha256(anchor)} is not the CA this node's TLS trusts "
            f"({fingerprint_sha256(node_anchor)}): nodes and clients must chain to the trust anchor")
    shares: list[str] = []
    recovery: dict[str, Any] | None = None
    if args.custodians or args.threshold:
        try:
            keys = [load_custodian_key(pem.encode()) for pem in args.custodians]
            if not 1 <= args.threshold <= len(keys):
                raise RecoveryError(f"the threshold must be between 1 and the number of custodians ({len(keys)})")
            cluster_id, cluster_key = services.keyring.require_cluster_key()
            encrypted = split_cluster_key(cluster_key, cluster_id, keys, args.threshold)
        except RecoveryError as exc:
            raise ArgumentsBad(str(exc)) from None
        shares = [share.to_json() for share in encrypted]
        recovery = {"threshold": args.threshold, "total": len(keys),
                    "custodians": [share.custodian_fingerprint for share in encrypted]}
    if services.config.seal.type == SHARES and recovery is None:
        raise ArgumentsBad("this node's seal is of type shares: a cold start needs the custodians' recovery shares, "
                           "so initialization needs custodians (--custodian PEM ... --threshold M)")
    meta = await _cluster_record(barrier, CLUSTER_META_KEY)
    # Activation makes the first admin: only whoever holds this secret (the customer who completed
    # initialization) may do it, not whoever reaches a node or an agent socket first.
    activation_secret = secrets.token_urlsafe(ACTIVATION_SECRET_BYTES)
    value = dict(meta.value, state=INITIALIZED, cluster_certificate=args.certificate, trust_anchor=args.trust_anchor,
                 trust_anchor_fingerprint=fingerprint_sha256(anchor), certificate_fingerprint=fingerprint_sha256(cert),
                 recovery=recovery, activation_digest=_activation_digest(activation_secret))
    await services.audit.record("cluster.install_certificate", actor=None,
                                details={"trust_anchor": fingerprint_sha256(anchor), "recovery": recovery})
    try:
        await barrier.commit([Write(CLUSTER_META_KEY, value, meta)])
    except ConflictError:
        raise ActionProhibited("the cluster's certificate was installed concurrently") from None
    return {"cluster_id": services.keyring.cluster_id, "state": INITIALIZED,
            "trust_anchor_fingerprint": fingerprint_sha256(anchor), "recovery": recovery, "shares": shares,
            "activation_secret": activation_secret}


ACTIVATION_SECRET_BYTES = 24


def _activation_digest(secret: str) -> str:
    # A random 192-bit secret: a plain hash is enough (nothing to stretch), compared in constant time.
    return hashlib.sha256(b"strongroom activation\0" + secret.encode()).hexdigest()


@dataclass
class ActivateArgs:
    password: str
    #: Printed once by cluster.install_certificate (``strongroom cluster initialize``).
    activation_secret: str
    username: str = FIRST_ADMIN


@operation("cluster.activate", args=ActivateArgs, states=(INITIALIZED,), peers=OWNER)
async def activate(call: Call, args: ActivateArgs) -> dict[str, Any]:
    """The unactivated admin sets its password; the cluster becomes active."""
    services = call.services
    barrier = services.keyring.require_barrier()
    username = normalize_username(args.username)
    check_password_rules(args.password)
    meta = await barrier.get(CLUSTER_META_KEY)
    admin = await barrier.get(key_of(username))
    digest = None if meta is None else meta.value.get("activation_digest")
    if (meta is None or digest is None
            or not hmac.compare_digest(str(digest), _activation_digest(args.activation_secret))):
        await services.audit.record("cluster.activate", actor=username, outcome="CKR_PIN_INCORRECT",
                                    details={"reason": "wrong activation secret"})
        raise PinIncorrect("the activation secret is wrong: use the one `strongroom cluster initialize` printed")
    if admin is None or admin.value.get("password") is not None:
        await services.audit.record("cluster.activate", actor=username, outcome="CKR_PIN_INCORRECT")
        raise PinIncorrect(f"{username!r} is not the unactivated admin of this cluster")
    password_hash = await asyncio.to_thread(hash_password, args.password)
    await services.audit.record("cluster.activate", actor=username)
    new_admin = dict(admin.value, password=password_hash.to_record())
    try:
        await barrier.commit(
            [Write(CLUSTER_META_KEY, {**{k: v for k, v in meta.value.items() if k != "activation_digest"},
                                      "state": ACTIVE, "activated": time.time()}, meta),
             Write(admin.key, new_admin, admin)]
        )
    except ConflictError:
        raise ActionProhibited("the cluster was activated concurrently") from None
    return {"cluster_id": services.keyring.cluster_id, "state": ACTIVE}


@dataclass
class SetPolicyArgs:
    name: str
    value: str


@operation("cluster.set_policy", args=SetPolicyArgs, roles=(Role.ADMIN.value,), quorum=q.CLUSTER_OPS)
async def set_policy(call: Call, args: SetPolicyArgs) -> dict[str, Any]:
    """(Admin) change one cluster policy (strongroom.services.policy), kept in the cluster's meta record and
    audited with its old and new value. Every worker of every node follows within a second."""
    barrier = call.services.keyring.require_barrier()
    policy.check(args.name, args.value)
    details: dict[str, Any] = {"policy": args.name, "value": args.value}
    async with audited(call, "cluster.set_policy", details):
        for _ in range(5):
            meta = await _cluster_record(barrier, CLUSTER_META_KEY)
            old = policy.from_meta(meta.value)
            new = old.changed(args.name, args.value)
            details["previous"] = getattr(old, args.name)
            await witness(call, "cluster.set_policy", details)()
            try:
                await barrier.commit([Write(CLUSTER_META_KEY, {**meta.value, policy.META_FIELD: new.as_dict()}, meta)])
            except ConflictError:
                continue  # the meta record changed meanwhile (another policy): read it again
            policy.remember(barrier, new)
            return {"policies": new.as_dict()}
        raise ActionProhibited("the cluster's meta record keeps changing; try again")
    raise AssertionError("unreachable")


@operation("cluster.status", states=ALL_STATES, peers=EVERY_PEER)
async def status(call: Call, _args: None) -> dict[str, Any]:
    services = call.services
    state = await services.state.current()
    result: dict[str, Any] = {"state": state, "cluster_id": services.keyring.cluster_id, "name": None,
                              "trust_anchor_fingerprint": None, "last_backup": None, "recovery": None}
    if services.keyring.barrier is not None:
        meta = await services.keyring.barrier.get(CLUSTER_META_KEY)
        if meta is not None:
            for name in ("name", "created", "activated", "trust_anchor_fingerprint", "certificate_fingerprint",
                         "recovery"):
                result[name] = meta.value.get(name)
            result["policies"] = policy.from_meta(meta.value).as_dict()
        last = await services.keyring.barrier.get(LAST_BACKUP_KEY)
        if last is not None:
            result["last_backup"] = last.value
    config = services.config
    known = [] if services.keyring.barrier is None else await registry.nodes(services.keyring.barrier)
    if not any(n["id"] == config.node_id for n in known):
        known.append({"id": config.node_id, "zone": config.zone, "address": config.address, "health": "healthy"})
    result["nodes"] = known
    result["answered_by"] = config.node_id
    return result

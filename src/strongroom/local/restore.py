"""``strongroom backup restore`` / ``strongroom cluster recover``: a new cluster from a backup.

The new cluster's first node needs the cluster key before it can read anything in
the backup. It gets it either

* from a running node of the original cluster (``--from DIR``): the same
  authenticated key exchange as ``hsm add`` — the new node's certificate is
  issued by the original cluster's CA, or the old node refuses; or
* from recovery shares (``--share FILE`` …), each decrypted by its custodian on
  their own machine: at least the threshold of them, of this cluster.

Then every record of the backup is opened under the cluster key — a record that
fails authentication, a signature that is not the cluster's own, or a checksum
that does not match refuses the whole restore and writes nothing — and written
to the new store under its new version (the barrier binds a record to its
version, so each is sealed again). Registry records of the old nodes are left
behind: the new nodes register themselves. Finally the cluster is started as
``strongroom up`` would.

With ``nodes`` above 1 the new cluster has that many nodes, one per zone, over etcd
members of its own (as ``strongroom up --nodes N``): the records go straight into etcd,
every new node is sealed with the key and enrolled (``enrolled/<node id>``, by the
restore) so that it can also rejoin later as any enrolled node does.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgpack

from strongroom import pki
from strongroom.backup import Backup, BackupError, decode_backup
from strongroom.barrier import Barrier
from strongroom.barrier.barrier import STORE_INTEGRITY_PURPOSE, derive_subkey
from strongroom.client import ClientProfile, ProfileError
from strongroom.dispatch.ops.hsm import enrolled_key
from strongroom.local import cluster, etcd
from strongroom.local.layout import HOST, Layout, LocalClusterError
from strongroom.recovery import PlainShare, RecoveryError, combine_shares
from strongroom.seal import SealedIdentity, SealError, destroy_seal, seal_cluster_key, unseal_cluster_key
from strongroom.services.config import NodeConfig
from strongroom.services.identity import IDENTITY_KEY, ClusterIdentity, verify_digest_signature
from strongroom.store.base import MAX_COMMIT_OPERATIONS, Put, Record, Store
from strongroom.store.sqlite import SqliteStore

META_KEY = "cluster/meta"
#: Not restored: each new node registers itself and records the head of its own (new) audit log.
SKIPPED_PREFIXES = ("nodes/", "audit/heads/")
MAX_BACKUP_BYTES = 1 << 30


def read_backup(path: Path) -> Backup:
    try:
        size = path.stat().st_size
        if size > MAX_BACKUP_BYTES:
            raise LocalClusterError(f"{path} is {size} bytes, larger than any backup ({MAX_BACKUP_BYTES})")
        return decode_backup(path.read_bytes())
    except FileNotFoundError:
        raise LocalClusterError(f"backup file {path} does not exist") from None
    except BackupError as exc:
        raise LocalClusterError(f"{path}: {exc}") from None


def _ca_for(old: Layout | None, ca_cert: Path | None, ca_key: Path | None, name: str) -> tuple[Any, Any]:
    try:
        if ca_cert is not None or ca_key is not None:
            if ca_cert is None or ca_key is None:
                raise LocalClusterError("give both --ca-cert and --ca-key (the customer's CA), or neither")
            return pki.load_private_key(ca_key), pki.load_certificate(ca_cert)
        if old is not None:
            return pki.load_private_key(old.ca_key), pki.load_certificate(old.ca_cert)
    except pki.PkiError as exc:
        raise LocalClusterError(str(exc)) from None
    return pki.create_ca(f"{name} local customer CA")


def _load_shares(paths: list[Path]) -> list[PlainShare]:
    shares = []
    for path in paths:
        try:
            shares.append(PlainShare.from_json(path.read_bytes()))
        except FileNotFoundError:
            raise LocalClusterError(f"share file {path} does not exist") from None
        except RecoveryError as exc:
            raise LocalClusterError(f"{path}: {exc}") from None
    return shares


def _key_from_old_cluster(old: Layout, config: NodeConfig, admin: tuple[str, str] | None) -> tuple[str, bytearray]:
    """The cluster key from a running node of the old cluster, as a node enrolled there for this once.

    The restoring process gets a one-time node certificate (``restore-<random>``) from the old
    cluster's CA, an admin of the old cluster enrolls it, and the key comes through the usual
    ``hsm.clone_key`` exchange. The certificate's private key is never written to disk, so its
    enrollment is useless once this process ends.
    """
    from strongroom.client import ClientError
    from strongroom.services.join import fetch_cluster_key

    if admin is None:
        raise LocalClusterError(f"the nodes of {old.root} give the cluster key only to an enrolled node: set "
                                "STRONGROOM_PIN=admin:password (an admin of that cluster)")
    try:
        profile = ClientProfile.load(old.profile)
        ca_key, ca_cert = pki.load_private_key(old.ca_key), pki.load_certificate(old.ca_cert)
    except (ProfileError, pki.PkiError) as exc:
        raise LocalClusterError(f"--from {old.root}: {exc}") from None
    name = f"restore-{secrets.token_hex(4)}"
    key, cert = pki.issue_node_certificate(ca_key, ca_cert, name, hosts=[HOST], days=1)
    with tempfile.TemporaryDirectory(prefix="strongroom-restore-") as scratch:
        cert_path, key_path = Path(scratch) / "node.crt", Path(scratch) / "node.key"
        pki.write_cert(cert_path, cert)
        pki.write_private_key(key_path, key)
        try:
            cluster.enroll_nodes(profile, admin, [(name, cert_path)])
        except ClientError as exc:
            raise LocalClusterError(f"could not enroll the restoring process in {old.root}: {exc.message}") from None
        as_node = replace(config, node_id=name, tls_cert=cert_path, tls_key=key_path)
        failures = []
        for peer in profile.nodes:
            try:
                return asyncio.run(fetch_cluster_key(as_node, peer.address))
            except Exception as exc:  # noqa: BLE001 - any peer failure: try the next one
                failures.append(f"{peer.node_id}: {getattr(exc, 'message', None) or exc}")
    raise LocalClusterError(f"no node of {old.root} gave the cluster key: {'; '.join(failures)}")


def _obtain_key(layout: Layout, node_ids: list[str], backup: Backup, old: Layout | None, shares: list[Path],
                admin: tuple[str, str] | None = None) -> None:
    """Seal the cluster key in each new node's directory, from a surviving node or from shares."""
    config = NodeConfig.load(layout.node_config(node_ids[0]))
    cluster_id = backup.header.cluster_id
    if old is not None:
        received_id, key = _key_from_old_cluster(old, config, admin)
        if received_id != cluster_id:
            key[:] = bytes(len(key))
            raise LocalClusterError(f"the nodes of {old.root} belong to cluster {received_id}, "
                                    f"the backup to {cluster_id}")
    else:
        try:
            key = combine_shares(_load_shares(shares), cluster_id=cluster_id)
        except RecoveryError as exc:
            raise LocalClusterError(f"recovery refused: {exc}") from None
    try:
        for node_id in node_ids:
            seal_cluster_key(layout.node_dir(node_id), SealedIdentity(cluster_id, node_id), key)
    except SealError as exc:
        raise LocalClusterError(str(exc)) from None
    finally:
        key[:] = bytes(len(key))


def _reseal(barrier: Barrier, backup: Backup, ca: tuple[Any, Any], enrolled: dict[str, bytes]) -> list[Put]:
    """Open every record (refusing the backup on any failure) and seal it again for a new store, with
    ``enrolled`` (record key -> plaintext) in place of the backup's records of the same names."""
    records = {r.key: r for r in backup.records}
    if META_KEY not in records or IDENTITY_KEY not in records:
        raise LocalClusterError("the backup holds no initialized cluster (cluster metadata missing)")
    opened: dict[str, bytes] = {}
    try:
        for record in backup.records:
            opened[record.key] = barrier.open(Record(record.key, record.value, record.version, 0, 0))
    except Exception as exc:  # noqa: BLE001 - RecordTampered or anything else: a backup not opened is refused
        raise LocalClusterError(f"the backup was altered or is not this cluster's: {getattr(exc, 'message', exc)}; "
                                "nothing was restored") from None
    identity = ClusterIdentity.from_record(msgpack.unpackb(opened[IDENTITY_KEY], raw=False))
    if not backup.signature or not verify_digest_signature(identity.public_key(), backup.digest, backup.signature):
        raise LocalClusterError("the backup's signature is not the cluster's own; nothing was restored")
    meta = msgpack.unpackb(opened[META_KEY], raw=False)
    if meta.get("cluster_id") != backup.header.cluster_id:
        raise LocalClusterError("the backup's header names another cluster than its records; nothing was restored")
    ca_key, ca_cert = ca
    if meta.get("trust_anchor_fingerprint") != pki.fingerprint_sha256(ca_cert):
        # A new trust anchor: the cluster's certificate is issued again by it, so the record stays true.
        csr = identity.csr(meta["cluster_id"], str(meta.get("name", "")))
        cert = pki.sign_csr(ca_key, ca_cert, csr, days=3650, server=False, client=True)
        meta.update(cluster_certificate=pki.cert_to_pem(cert).decode(),
                    trust_anchor=pki.cert_to_pem(ca_cert).decode(),
                    trust_anchor_fingerprint=pki.fingerprint_sha256(ca_cert),
                    certificate_fingerprint=pki.fingerprint_sha256(cert))
        opened[META_KEY] = msgpack.packb(meta, use_bin_type=True)
    opened.update(enrolled)
    return [Put(key, barrier.seal(key, 1, plaintext), 0) for key, plaintext in sorted(opened.items())
            if not key.startswith(SKIPPED_PREFIXES)]


def _enrollments(layout: Layout, node_ids: list[str]) -> dict[str, bytes]:
    """``enrolled/<id>`` for every new node's certificate, as ``hsm.enroll`` writes it (by the restore)."""
    records = {}
    for node_id in node_ids:
        cert = pki.load_certificate(layout.node_dir(node_id) / "tls" / "node.crt")
        record = {"node_id": node_id, "fingerprint": pki.fingerprint_sha256(cert), "serial": f"{cert.serial_number:x}",
                  "enrolled_by": "backup restore", "enrolled_at": time.time()}
        records[enrolled_key(node_id)] = msgpack.packb(record, use_bin_type=True)
    return records


async def _is_empty(store: Store) -> bool:
    if isinstance(store, SqliteStore):
        return await store.revision() == 0
    # etcd counts revisions from 1 and another cluster may share it: look for records in our namespace.
    return not (await store.list_prefix("")).records


async def _import(config: NodeConfig, backup: Backup, ca: tuple[Any, Any], enrolled: dict[str, bytes]) -> int:
    identity, key = unseal_cluster_key(config.node_dir)
    store = config.open_store()
    try:
        barrier = Barrier(store, key)
        # The new store authenticates its rows from the first write, as the nodes will expect.
        store.enable_integrity(derive_subkey(key, STORE_INTEGRITY_PURPOSE, identity.cluster_id))
        key[:] = bytes(len(key))
        if not await _is_empty(store):
            raise LocalClusterError("the new cluster's store is not empty; restore into a new directory")
        puts = await asyncio.to_thread(_reseal, barrier, backup, ca, enrolled)
        for start in range(0, len(puts), MAX_COMMIT_OPERATIONS):
            await store.commit(puts[start : start + MAX_COMMIT_OPERATIONS])
        return len(puts)
    finally:
        await store.close()


def restore(backup_path: Path, directory: Path, *, from_dir: Path | None = None, shares: list[Path] | None = None,
            ca_cert: Path | None = None, ca_key: Path | None = None, workers: int | None = None,
            admin: tuple[str, str] | None = None, nodes: int = 1) -> dict[str, Any]:
    """Build and start a cluster of ``nodes`` nodes (above 1: over etcd) in ``directory`` from the backup at
    ``backup_path``."""
    if (from_dir is None) == (not shares):
        raise LocalClusterError("say where the cluster key comes from: --from DIR (a running node of the "
                                "original cluster) or --share FILE ... (decrypted recovery shares)")
    backup = read_backup(backup_path)
    layout = Layout(directory.resolve())
    if layout.profile.exists() or (layout.root.exists() and any(layout.root.iterdir())):
        raise LocalClusterError(f"{layout.root} is not empty; restore into a new directory")
    old = None if from_dir is None else Layout(from_dir.resolve())
    if old is not None and not old.profile.exists():
        raise LocalClusterError(f"{old.root} holds no Strongroom cluster")
    name = backup.header.cluster_name or "strongroom"
    ca = _ca_for(old, ca_cert, ca_key, name)
    created = not layout.root.exists()
    try:
        cluster.create(layout, nodes, workers or 1, name, ca=ca)
        node_ids = layout.node_ids()
        if nodes > 1:
            etcd.start(layout.root)
        _obtain_key(layout, node_ids, backup, old, shares or [], admin)
        restored = asyncio.run(_import(NodeConfig.load(layout.node_config(node_ids[0])), backup, ca,
                                       _enrollments(layout, node_ids)))
    except BaseException as exc:
        # Nothing half-made stays behind: no sealed key, no partial store, no etcd member running.
        etcd.stop(layout.root)
        for node_id in layout.node_ids():
            destroy_seal(layout.node_dir(node_id))
        if created:
            shutil.rmtree(layout.root, ignore_errors=True)
        else:
            for child in layout.root.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        if isinstance(exc, etcd.EtcdError):
            raise LocalClusterError(str(exc)) from None
        raise
    summary = cluster.up(layout.root, workers=workers)
    summary["restored"] = {"backup_id": backup.header.backup_id, "cluster_id": backup.header.cluster_id,
                           "revision": backup.header.revision, "records": restored,
                           "key_source": "cluster" if old is not None else "recovery shares"}
    return summary

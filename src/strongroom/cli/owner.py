"""Owning the cluster: initialization with the customer's CA, backups, restore, recovery shares.

    strongroom cluster init        --dir DIR [--name N] [--out cluster.csr]
    strongroom ca sign-csr         --ca-cert C --ca-key K --csr cluster.csr --out cluster.crt
    strongroom cluster initialize  --dir DIR --signed-cert cluster.crt --trust-anchor ca.crt
                                   [--custodian pub.pem ... --threshold M --shares-dir D]
    strongroom backup create|list|delete|verify|restore
    strongroom recovery decrypt-share --share F --key custodian.key --out F
    strongroom cluster recover     --backup F --share S1 --share S2 ... --dir NEW
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from strongroom.cli.common import admin_pin, directory, local, node_client
from strongroom.cli.context import AddCommand, Context
from strongroom.cli.output import CliError, emit, table


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


# --- initialization -----------------------------------------------------------------


def cmd_init(args: argparse.Namespace, _ctx: Context) -> None:
    with node_client(args, operator=False) as client:
        result = client.cluster_initialize(args.name)
    from strongroom.local.cluster import rename

    # The token label, client.json and `status` follow the name (a local directory's agent restarts).
    local(lambda: rename(directory(args), args.name))
    if args.out:
        Path(args.out).write_text(result["csr"])
    emit(result, as_json=args.json,
         text=(f"cluster {result['cluster_id']} created (state {result['state']}).\n"
               + (f"cluster CSR written to {args.out}" if args.out else result["csr"])
               + "\nSign it with your CA, then: strongroom cluster initialize --signed-cert CERT --trust-anchor CA"))


def cmd_initialize(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.seal import write_private_file

    certificate = _read(args.signed_cert, "certificate").decode(errors="replace")
    anchor = _read(args.trust_anchor, "trust anchor").decode(errors="replace")
    custodians = [_read(path, "custodian public key").decode(errors="replace") for path in args.custodian or []]
    if custodians and not args.shares_dir:
        raise CliError("give --shares-dir DIR: the encrypted recovery shares are shown only once")
    with node_client(args, operator=False) as client:
        result = client.cluster_install_certificate(certificate, anchor, custodians, args.threshold or 0)
    files = []
    if result["shares"]:
        directory = Path(args.shares_dir)
        directory.mkdir(parents=True, exist_ok=True)
        for index, share in enumerate(result["shares"], start=1):
            path = directory / f"share-{index}-of-{len(result['shares'])}.json"
            write_private_file(path, share.encode())
            files.append(str(path))
    data = {k: v for k, v in result.items() if k != "shares"}
    data["share_files"] = files
    text = f"cluster {result['cluster_id']} initialized; trust anchor {result['trust_anchor_fingerprint']}"
    if files:
        text += (f"\n{len(files)} encrypted recovery shares ({result['recovery']['threshold']} needed) in "
                 f"{args.shares_dir}: give share N to custodian N; each opens only with that custodian's key")
    if args.activation_secret_file:
        write_private_file(Path(args.activation_secret_file), (result["activation_secret"] + "\n").encode())
        del data["activation_secret"]  # written only where the customer asked
        data["activation_secret_file"] = args.activation_secret_file
        text += f"\nactivation secret written to {args.activation_secret_file} (mode 0600)"
    else:
        text += f"\nactivation secret (shown once): {result['activation_secret']}"
    text += "\nnext: strongroom cluster activate --activation-secret ... (sets the first admin's password)"
    emit(data, as_json=args.json, text=text)


def _confirm(args: argparse.Namespace, question: str) -> None:
    """Go on with ``--yes``, or when the terminal answers y; refuse otherwise."""
    if getattr(args, "yes", False):
        return
    if not sys.stdin.isatty():
        raise CliError(f"{question} Pass --yes to confirm (no terminal to ask on)")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise CliError("not deleted")


def cmd_ca_create(args: argparse.Namespace, _ctx: Context) -> None:
    """A CA for customers without one: an EC P-384 key (0600) and a self-signed CA certificate."""
    from strongroom import pki

    for path in (args.out_key, args.out_cert):
        if Path(path).exists():
            raise CliError(f"{path} exists; a CA is never overwritten")
    try:
        key, cert = pki.create_ca(args.name, days=args.days)
        pki.write_private_key(args.out_key, key)
        pki.write_cert(args.out_cert, cert)
    except pki.PkiError as exc:
        raise CliError(str(exc)) from None
    emit({"certificate": str(args.out_cert), "key": str(args.out_key), "subject": cert.subject.rfc4514_string(),
          "fingerprint": pki.fingerprint_sha256(cert)}, as_json=args.json,
         text=f"CA {cert.subject.rfc4514_string()}: certificate {args.out_cert}, key {args.out_key} (mode 0600; keep "
              "it offline once the cluster is initialized)")


def cmd_sign_csr(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom import pki

    try:
        ca_key = pki.load_private_key(args.ca_key)
        ca_cert = pki.load_certificate(args.ca_cert)
        cert = pki.sign_csr(ca_key, ca_cert, _read(args.csr, "CSR"), days=args.days, server=False, client=True)
        pki.write_cert(args.out, cert)
    except pki.PkiError as exc:
        raise CliError(str(exc)) from None
    emit({"certificate": args.out, "fingerprint": pki.fingerprint_sha256(cert),
          "subject": cert.subject.rfc4514_string()}, as_json=args.json,
         text=f"signed {cert.subject.rfc4514_string()} -> {args.out}")


# --- backups --------------------------------------------------------------------------


def _catalog(args: argparse.Namespace) -> Any:
    from strongroom.backup import BackupCatalog

    return BackupCatalog(directory(args) / "backups")


def cmd_backup_create(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.backup import BackupError, decode_backup
    from strongroom.seal import write_private_file

    with node_client(args) as client:
        _header, data = client.backup_create()
    try:
        backup = decode_backup(data)
    except BackupError as exc:
        raise CliError(f"the node's backup does not verify: {exc}") from None
    if args.out:
        path = Path(args.out)
        if path.exists():
            raise CliError(f"{path} exists; backups are never overwritten")
        write_private_file(path, data, exclusive=True)
    else:
        path = _catalog(args).write(data, backup.header)
    header = backup.header
    emit({"backup_id": header.backup_id, "cluster_id": header.cluster_id, "revision": header.revision,
          "records": header.record_count, "size": len(data), "file": str(path)}, as_json=args.json,
         text=f"backup {header.backup_id}: {header.record_count} records at revision {header.revision} -> {path}")


def _entry(entry: Any) -> dict[str, Any]:
    return {"backup_id": entry.backup_id, "cluster_id": entry.cluster_id, "created": entry.created,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry.created)),
            "revision": entry.revision, "trigger": entry.trigger, "size": entry.size, "file": str(entry.path)}


def cmd_backup_list(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.backup import BackupError

    try:
        entries = [_entry(e) for e in _catalog(args).list()]
    except BackupError as exc:
        raise CliError(str(exc)) from None
    emit({"backups": entries}, as_json=args.json,
         text=table(entries, ["backup_id", "created_utc", "trigger", "revision", "size"]) if entries
         else "no backups")


def cmd_backup_delete(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.backup import BackupError

    catalog = _catalog(args)
    try:
        found = catalog.find(args.backup_id)
        newest = catalog.newest(found.cluster_id)
        if newest is not None and newest.backup_id == found.backup_id == args.backup_id.strip().lower():
            _confirm(args, f"{found.backup_id} is the newest backup of cluster {found.cluster_id}: without it "
                           "only older ones remain. Delete it?")
        entry = catalog.delete(args.backup_id)
    except BackupError as exc:
        raise CliError(str(exc)) from None
    emit(_entry(entry), as_json=args.json, text=f"deleted backup {entry.backup_id}")


def cmd_backup_verify(args: argparse.Namespace, _ctx: Context) -> None:
    """Offline, without the cluster key: the checksum; with --trust-anchor also the cluster's signature."""
    from strongroom.backup import BackupError, decode_backup

    try:
        backup = decode_backup(_read(args.backup, "backup"))
    except BackupError as exc:
        raise CliError(f"{args.backup}: {exc}") from None
    header = backup.header
    result: dict[str, Any] = {"backup_id": header.backup_id, "cluster_id": header.cluster_id,
                              "revision": header.revision, "records": header.record_count,
                              "checksum": "ok", "signature": "not checked (give --trust-anchor)"}
    if args.trust_anchor:
        result["signature"] = _check_signature(backup, _read(args.trust_anchor, "trust anchor"))
    emit(result, as_json=args.json,
         text=f"backup {header.backup_id}: checksum OK, {header.record_count} records; "
              f"signature: {result['signature']}")


def _check_signature(backup: Any, anchor_pem: bytes) -> str:
    from cryptography import x509

    from strongroom import pki
    from strongroom.services.identity import verify_digest_signature

    if not backup.signature:
        raise CliError("the backup is not signed: it cannot be shown to come from the cluster")
    if not backup.header.cluster_certificate_pem:
        raise CliError("the backup carries no cluster certificate to check its signature with")
    try:
        anchor = x509.load_pem_x509_certificate(anchor_pem)
        cert = x509.load_pem_x509_certificate(backup.header.cluster_certificate_pem.encode())
    except ValueError as exc:
        raise CliError(f"cannot read a certificate: {exc}") from None
    if not pki.verify_issued_by(cert, anchor):
        raise CliError(f"the backup's cluster certificate was not issued by the trust anchor "
                       f"{pki.fingerprint_sha256(anchor)}")
    if not verify_digest_signature(cert.public_key(), backup.digest, backup.signature):
        raise CliError("the backup's signature does not verify with its cluster certificate: altered")
    return f"ok (cluster certificate {pki.fingerprint_sha256(cert)}, issued by the trust anchor)"


def cmd_backup_restore(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local.restore import restore

    summary = local(lambda: restore(Path(args.backup), directory(args), from_dir=Path(args.from_dir),
                                     ca_cert=_path(args.ca_cert), ca_key=_path(args.ca_key), workers=args.workers,
                                     admin=admin_pin(), nodes=args.nodes))
    emit(summary, as_json=args.json, text=_restored_text(summary))


def cmd_recover(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local.restore import restore

    summary = local(lambda: restore(Path(args.backup), directory(args), shares=[Path(s) for s in args.share],
                                     ca_cert=_path(args.ca_cert), ca_key=_path(args.ca_key), workers=args.workers,
                                     nodes=args.nodes))
    emit(summary, as_json=args.json, text=_restored_text(summary))


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _restored_text(summary: dict[str, Any]) -> str:
    restored = summary["restored"]
    return (f"cluster {restored['cluster_id']} restored from backup {restored['backup_id']} "
            f"({restored['records']} records, key from {restored['key_source']}) in {summary['dir']}; "
            f"agent socket {summary['agent_socket']}")


# --- recovery shares ---------------------------------------------------------------------


def cmd_decrypt_share(args: argparse.Namespace, _ctx: Context) -> None:
    """The custodian's step, on their own machine: open their share with their private key."""
    from strongroom.recovery import EncryptedShare, RecoveryError, decrypt_share, load_custodian_private_key
    from strongroom.seal import write_private_file

    password = os.environ.get("STRONGROOM_CUSTODIAN_KEY_PASSWORD")
    try:
        share = EncryptedShare.from_json(_read(args.share, "share"))
        key = load_custodian_private_key(_read(args.key, "private key"), password.encode() if password else None)
        plain = decrypt_share(share, key)
    except RecoveryError as exc:
        raise CliError(str(exc)) from None
    path = Path(args.out)
    if path.exists():
        raise CliError(f"{path} exists; choose another --out")
    try:
        write_private_file(path, plain.to_json().encode(), exclusive=True)
    finally:
        plain.wipe()
    emit({"cluster_id": share.cluster_id, "index": share.index, "threshold": share.threshold, "out": str(path)},
         as_json=args.json,
         text=f"share {share.index} of cluster {share.cluster_id} decrypted to {path} (mode 0600); hand it to "
              f"the recovery operator over a trusted channel, {share.threshold} shares are needed")


# --- registration ---------------------------------------------------------------------------


def register_cluster(cluster: Any, add: AddCommand) -> None:
    p = add(cluster, "init", cmd_init, "create the cluster key and identity in the first node; prints the CSR")
    p.add_argument("--name", default="strongroom", help="cluster name (1 to 32 characters)")
    p.add_argument("--out", help="write the cluster CSR to this file")
    p.add_argument("--node", help="node to initialize (default: the first of client.json)")
    p = add(cluster, "initialize", cmd_initialize,
            "complete initialization with your CA's certificate for the cluster CSR and your trust anchor")
    p.add_argument("--signed-cert", required=True, help="the certificate your CA issued for the cluster CSR")
    p.add_argument("--trust-anchor", required=True, help="your CA's certificate (nodes and clients chain to it)")
    p.add_argument("--custodian", action="append", help="a recovery custodian's public key (PEM; RSA-3072+ or "
                   "EC P-384); repeat for each custodian")
    p.add_argument("--threshold", type=int, help="how many custodians' shares rebuild the cluster key (M of N)")
    p.add_argument("--shares-dir", help="where the encrypted shares are written (one file per custodian)")
    p.add_argument("--activation-secret-file",
                   help="write the one-time activation secret here (0600) instead of printing it")
    p.add_argument("--node", help="node to talk to (default: the first of client.json)")
    p = add(cluster, "recover", cmd_recover,
            "build a new cluster in --dir from a backup and M decrypted recovery shares (no node survives)")
    p.add_argument("--backup", required=True)
    p.add_argument("--share", action="append", required=True, help="a decrypted share file; repeat M times")
    _restore_options(p)


def _restore_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ca-cert", help="your CA certificate for the new nodes (default: a throw-away local CA, "
                   "or the --from cluster's)")
    p.add_argument("--ca-key", help="your CA's private key (with --ca-cert)")
    p.add_argument("--workers", type=int, default=None, help="worker processes of each new node")
    p.add_argument("--nodes", type=int, default=1,
                   help="nodes of the new cluster (above 1: one per zone over etcd members of its own, as up --nodes)")


def register(sub: Any, add: AddCommand) -> None:
    backup = sub.add_parser("backup", help="backups of the encrypted store (operator)").add_subparsers(
        dest="backup_command", required=True, metavar="BACKUP_COMMAND")
    p = add(backup, "create", cmd_backup_create, "take a backup now through a node (no customer credential)")
    p.add_argument("--out", help="write here instead of DIR/backups/")
    p.add_argument("--node", help="node to take it from (default: the first of client.json)")
    add(backup, "list", cmd_backup_list, "list the backups in DIR/backups, newest first")
    p = add(backup, "delete", cmd_backup_delete, "delete one backup (the newest one only after a confirmation)")
    p.add_argument("--backup-id", required=True, help="the backup's whole id (see backup list)")
    p.add_argument("--yes", action="store_true", help="delete even the newest backup without asking")
    p = add(backup, "verify", cmd_backup_verify, "check a backup file offline (no cluster key needed)")
    p.add_argument("--backup", required=True)
    p.add_argument("--trust-anchor", help="also check the cluster's signature against your CA")
    p = add(backup, "restore", cmd_backup_restore,
            "build a new cluster in --dir from a backup; the key comes from a running node of --from DIR")
    p.add_argument("--backup", required=True)
    p.add_argument("--from", dest="from_dir", required=True, help="directory of the original (running) cluster")
    _restore_options(p)

    recovery = sub.add_parser("recovery", help="recovery shares (custodians)").add_subparsers(
        dest="recovery_command", required=True, metavar="RECOVERY_COMMAND")
    p = add(recovery, "decrypt-share", cmd_decrypt_share,
            "decrypt your recovery share with your private key (on your own machine)")
    p.add_argument("--share", required=True, help="the encrypted share file you were given")
    p.add_argument("--key", required=True, help="your private key (PEM; password in "
                   "$STRONGROOM_CUSTODIAN_KEY_PASSWORD if encrypted)")
    p.add_argument("--out", required=True, help="where to write the decrypted share (mode 0600)")

    ca = sub.add_parser("ca", help="a CA kept on your machine (convenience; any CA works)").add_subparsers(
        dest="ca_command", required=True, metavar="CA_COMMAND")
    p = add(ca, "create", cmd_ca_create, "make a CA (EC P-384) for a customer who has none")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("examples:\n  strongroom ca create --out-cert ca.crt --out-key ca.key --name 'Example Corp HSM CA'\n"
                "  strongroom up --dir D --ca-cert ca.crt --ca-key ca.key --no-initialize\n")
    p.add_argument("--out-cert", required=True, help="where to write the CA certificate (PEM)")
    p.add_argument("--out-key", required=True, help="where to write its private key (PEM, mode 0600)")
    p.add_argument("--name", default="Strongroom customer CA", help="the CA's common name")
    p.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    p = add(ca, "sign-csr", cmd_sign_csr, "sign the cluster CSR with your CA")
    p.add_argument("--ca-cert", required=True)
    p.add_argument("--ca-key", required=True)
    p.add_argument("--csr", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--days", type=int, default=3650)

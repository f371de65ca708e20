"""``strongroom unseal`` and ``strongroom seal status|migrate``: how nodes keep the cluster key at rest.

``unseal`` is the custodian's act on a node with a ``shares`` seal that found no running
peer: the share is decrypted locally (or was, with ``recovery decrypt-share``), then sent to
the node in a sealed box bound to the node's current unseal attempt, inside mTLS.
``seal migrate`` changes one node's seal (``node.toml [seal]``) and restarts that node, which
re-seals its key with the new provider and destroys the old provider's key-encryption key;
the other nodes keep serving.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from strongroom.cli.common import directory
from strongroom.cli.context import AddCommand, Context
from strongroom.cli.output import CliError, emit


def _plain_share(args: argparse.Namespace) -> Any:
    from strongroom.recovery import (
        FORMAT_ENCRYPTED,
        EncryptedShare,
        PlainShare,
        RecoveryError,
        decrypt_share,
        load_custodian_private_key,
    )

    try:
        text = Path(args.share).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {args.share}: {exc.strerror or exc}") from None
    try:
        if FORMAT_ENCRYPTED.encode() in text:
            if not args.key:
                raise CliError(f"{args.share} is an encrypted share: give the custodian's private key with --key "
                               "(it is used here, on this machine, and never sent)")
            key = load_custodian_private_key(Path(args.key).read_bytes())
            return decrypt_share(EncryptedShare.from_json(text), key)
        return PlainShare.from_json(text)
    except (RecoveryError, OSError) as exc:
        raise CliError(str(exc)) from None


def _node_statuses(root: Path, operator: bool = True) -> list[tuple[Any, dict[str, Any] | None]]:
    from strongroom.client import Client, ClientError, ClientProfile, ProfileError

    try:
        profile = ClientProfile.load(root / "client.json")
        if operator:
            profile = profile.as_operator()
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    result: list[tuple[Any, dict[str, Any] | None]] = []
    for node in profile.nodes:
        try:
            with Client(profile, node, timeout=10) as client:
                result.append((node, client.node_status()))
        except ClientError:
            result.append((node, None))
    return result


def cmd_unseal(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.client import Client, ClientError, ClientProfile, ProfileError
    from strongroom.hardening import harden_process
    from strongroom.seal.shares import UnsealRefused, box_share

    harden_process()  # a decrypted share is about to be in this process's memory
    root = directory(args)
    statuses = _node_statuses(root)
    if args.node:
        targets = [n for n, _s in statuses if n.node_id == args.node]
        if not targets:
            raise CliError(f"{root} lists no node {args.node!r}")
    else:
        targets = [n for n, s in statuses if s is not None and s.get("state") == "sealed"][:1]
        if not targets:
            raise CliError("no node of this cluster is sealed (see `strongroom status`)")
    node = targets[0]
    share = _plain_share(args)
    try:
        profile = ClientProfile.load(root / "client.json").as_operator()
        with Client(profile, node, timeout=30) as client:
            attempt = client.call("node.unseal_begin")
            result = client.call("node.unseal_submit", **box_share(attempt, share))
    except (ClientError, ProfileError, UnsealRefused) as exc:
        raise CliError(getattr(exc, "message", None) or str(exc)) from None
    finally:
        share.wipe()
    text = (f"node {node.node_id} is unsealed" if result["unsealed"] else
            f"share accepted: node {node.node_id} has {result['submitted']} of {result['threshold']} shares")
    emit(result, as_json=args.json, text=text)


def cmd_status(args: argparse.Namespace, _ctx: Context) -> None:
    rows = []
    for node, status in _node_statuses(directory(args)):
        seal = (status or {}).get("seal") or {}
        rows.append({"id": node.node_id, "state": (status or {}).get("state", "unreachable"),
                     "seal": seal.get("type"), "seal_state": seal.get("state"), "detail": seal.get("detail")})
    from strongroom.cli.output import table

    emit({"nodes": rows}, as_json=args.json, text=table(rows, ["id", "state", "seal", "seal_state", "detail"]))


def cmd_migrate(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local.layout import LocalClusterError
    from strongroom.local.seal import migrate

    options = {}
    for item in args.seal_option or []:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise CliError(f"--seal-option takes KEY=VALUE, not {item!r}")
        options[name] = value
    try:
        result = migrate(directory(args), args.node, args.to, options)
    except LocalClusterError as exc:
        raise CliError(str(exc)) from None
    emit(result, as_json=args.json,
         text=f"node {result['id']}: seal migrated from {result['from']} to {result['to']} (pid {result['pid']})")


def register(sub: Any, add: AddCommand) -> None:
    p = add(sub, "unseal", cmd_unseal, "submit one custodian's recovery share to a sealed node (shares seal)")
    p.add_argument("--share", required=True,
                   help="the share: decrypted (recovery decrypt-share) or encrypted with --key")
    p.add_argument("--key", help="the custodian's private key, to decrypt an encrypted share here")
    p.add_argument("--node", help="the node to unseal (default: the first sealed one; the others then receive "
                                  "the key from it)")
    group = sub.add_parser("seal", help="how nodes keep the cluster key at rest").add_subparsers(
        dest="seal_command", required=True, metavar="SEAL_COMMAND")
    add(group, "status", cmd_status, "each node's seal: type, sealed or not, unseal progress")
    p = add(group, "migrate", cmd_migrate,
            "change one node's seal (the node restarts and re-seals its key; the others keep serving)")
    p.add_argument("--node", required=True, help="the node id")
    p.add_argument("--to", required=True, choices=["file", "shares", "tpm", "kms", "pkcs11"])
    p.add_argument("--seal-option", action="append", metavar="KEY=VALUE", help="an option of the new seal")

"""``strongroom hsm add / remove``: add a node to, or take one out of, a local cluster (operator acts)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from strongroom.cli.common import admin_pin, directory, local, node_client
from strongroom.cli.context import AddCommand, Context
from strongroom.cli.output import CliError, emit


def cmd_add(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local.hsm import add_node

    node = local(lambda: add_node(directory(args), args.zone, admin=admin_pin()))
    emit(node, as_json=args.json,
         text=f"added {node['id']} (zone {node['zone']}) at {node['address']}, pid {node['pid']}")


def cmd_remove(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local.hsm import remove_node

    result = local(lambda: remove_node(directory(args), args.id))
    emit(result, as_json=args.json,
         text=f"removed {result['id']}: certificate {result['serial']} revoked, node stopped, sealed key destroyed")


def cmd_enroll(args: argparse.Namespace, _ctx: Context) -> None:
    """An admin allows a node certificate to receive the cluster key (for nodes on other hosts)."""
    admin = admin_pin()
    if admin is None:
        raise CliError("set STRONGROOM_PIN=admin-user:password (enrolling a node is an admin's act)")
    try:
        certificate = Path(args.cert).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {args.cert}: {exc.strerror or exc}") from None
    with node_client(args, operator=False) as client:
        client.login(admin[0], admin[1], "admin")
        result = client.hsm_enroll(args.id, certificate)
    emit(result, as_json=args.json,
         text=f"node {result['node_id']} enrolled (certificate {result['fingerprint']}): it may now receive the "
              "cluster key from a running node")


def cmd_revoke(args: argparse.Namespace, _ctx: Context) -> None:
    """The operator revokes a node's certificate through another node (hosts of your own: docs/deploy.md)."""
    from strongroom import pki
    from strongroom.client import Client, ClientError, ClientProfile, ProfileError

    try:
        serial = pki.load_certificate(args.cert).serial_number
        profile = ClientProfile.load(directory(args) / "client.json").as_operator()
    except (pki.PkiError, ProfileError) as exc:
        raise CliError(str(exc)) from None
    failures = []
    for node in profile.nodes:
        if node.node_id == args.id:
            continue  # a node does not revoke its own certificate
        try:
            with Client(profile, node, timeout=30) as client:
                result = client.call("hsm.revoke", node_id=args.id, serial=f"{serial:x}")
            break
        except ClientError as exc:
            failures.append(f"{node.node_id}: {exc.message}")
    else:
        raise CliError("no other node revoked it: " + ("; ".join(failures) or f"the directory lists only {args.id}"))
    emit(result, as_json=args.json,
         text=f"certificate {result['serial']} of node {result['node_id']} revoked: nodes refuse it from now on")


def cmd_zeroize(args: argparse.Namespace, ctx: Any) -> None:
    """Admin (STRONGROOM_PIN of an admin) or, with --operator, the operator's emergency stop of one node."""
    with node_client(args, operator=args.operator) as client:
        if not args.operator:
            pin = os.environ.get("STRONGROOM_PIN")
            if not pin or ":" not in pin:
                raise CliError("set STRONGROOM_PIN=admin-user:password, or pass --operator (emergency stop "
                               "with the operator's client certificate)")
            username, _, password = pin.partition(":")
            client.login(username, password, "admin")
        result = client.zeroize(args.node)
    emit(result, as_json=args.json,
         text=f"node {result['node_id']} zeroized: its cluster key is destroyed and it has stopped")


def register(sub: Any, add: AddCommand) -> None:
    group = sub.add_parser("hsm", help="add or remove nodes of a local cluster (operator)").add_subparsers(
        dest="hsm_command", required=True, metavar="HSM_COMMAND")
    p = add(group, "add", cmd_add,
            "start a new node that receives the cluster key from a running node (authenticated key exchange)")
    p.add_argument("--zone", help="the new node's zone (default: the first letter no node uses)")
    p = add(group, "enroll", cmd_enroll, "allow a node certificate to receive the cluster key (admin)")
    p.add_argument("--id", required=True, help="the node id (the certificate carries urn:strongroom:node:ID)")
    p.add_argument("--cert", required=True, help="the node's certificate (PEM)")
    p = add(group, "remove", cmd_remove, "revoke a node's certificate, stop it and destroy its sealed key")
    p.add_argument("--id", required=True, help="the node id (see `strongroom status`)")
    p = add(group, "revoke", cmd_revoke,
            "revoke a node's certificate (operator): nodes refuse it, it leaves the registry and its enrollment")
    p.add_argument("--id", required=True, help="the node id")
    p.add_argument("--cert", required=True, help="the node's certificate (PEM): its serial is revoked")
    p = add(group, "zeroize", cmd_zeroize,
            "destroy one node's copy of the cluster key and stop it (other nodes are unaffected)")
    p.add_argument("--node", required=True, help="the node id (the request goes to that node only)")
    p.add_argument("--operator", action="store_true",
                   help="as the operator (client certificate, no login): an emergency stop")

"""``strongroom cert rotate``: new node, agent and operator certificates without downtime
(strongroom.local.rotate)."""

from __future__ import annotations

import argparse
from typing import Any

from strongroom.cli.common import admin_pin, directory, local
from strongroom.cli.context import AddCommand, Context
from strongroom.cli.output import emit, table

EXAMPLES = """how it works: each node and the agent load their new certificate on SIGHUP into the TLS context they
serve with, so new connections present it and nothing restarts; with STRONGROOM_PIN=admin:... the new
node certificates are enrolled too (a node needs that to receive the cluster key again later).

examples:
  strongroom cert rotate --dir /tmp/strongroom                           # nodes, agent and operator
  STRONGROOM_PIN=admin:... strongroom cert rotate --dir /tmp/strongroom  # and enroll the new node certificates
  strongroom cert rotate --dir /tmp/strongroom --only agent --days 365

with a CA kept elsewhere: issue the new certificate (same role URI and names), replace node.crt/node.key,
`kill -HUP` the node's process group (or the agent), then `strongroom hsm enroll --id ID --cert node.crt`.
"""


def cmd_cert_rotate(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local.rotate import WHAT, rotate

    what = tuple(args.only) if args.only else WHAT
    result = local(lambda: rotate(directory(args), days=args.days, what=what, admin=admin_pin()))
    rows = [{**r, "reloaded": r.get("reloaded", "-"), "enrolled": r.get("enrolled", "-")} for r in result["rotated"]]
    text = table(rows, ["name", "serial", "not_after", "reloaded", "enrolled"])
    notes = [f"{r['name']}: {r['enrollment']}" for r in result["rotated"] if r.get("enrollment")]
    notes += [f"{r['name']}: {r['reload_problem']}" for r in result["rotated"] if r.get("reload_problem")]
    emit(result, as_json=args.json, text="\n".join([text, *notes]))


def register(sub: Any, add: AddCommand) -> None:
    cert = sub.add_parser("cert", help="the local cluster's certificates").add_subparsers(
        dest="cert_command", required=True, metavar="CERT_COMMAND")
    p = add(cert, "rotate", cmd_cert_rotate,
            "issue new certificates for the nodes, the agent and the operator from DIR's CA and load them into the "
            "running processes without restarting them")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EXAMPLES
    p.add_argument("--only", nargs="+", choices=["nodes", "agent", "operator"], help="rotate only these")
    p.add_argument("--days", type=int, default=825, help="validity of the new certificates (default 825)")

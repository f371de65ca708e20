"""``strongroom status-page``: the operator's read-only page (strongroom.statuspage)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import Any

from strongroom.cli.common import directory
from strongroom.cli.context import AddCommand, Context
from strongroom.cli.output import CliError, emit

EXAMPLES = """examples:
  strongroom status-page --dir /tmp/strongroom                       # http://127.0.0.1:8080/ until ^C
  strongroom status-page --dir /tmp/strongroom --listen 127.0.0.1:0  # any free port (printed)
  strongroom status-page --dir /tmp/strongroom --out status.html     # write the page once and exit
"""


def cmd_status_page(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.statuspage.collect import StatusPageError
    from strongroom.statuspage.server import check_listen, serve, write_once

    root = directory(args)
    if not (root / "client.json").exists():
        raise CliError(f"{root} holds no client.json (the directory of `strongroom up`, or an operator profile)")
    try:
        if args.out:
            write_once(root, Path(args.out))
            emit({"file": str(Path(args.out).resolve())}, as_json=args.json, text=f"wrote {args.out}")
            return
        check_listen(args.listen)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(root, args.listen))
    except StatusPageError as exc:
        raise CliError(str(exc)) from None


def register(sub: Any, add: AddCommand) -> None:
    p = add(sub, "status-page", cmd_status_page,
            "serve a read-only status page of the cluster (nodes by zone, etcd, seals, last backup, certificate "
            "expiry, recent audit events) on loopback, asking the nodes with the operator's certificate")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EXAMPLES
    p.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="a loopback address (default 127.0.0.1:8080; port 0: any free port)")
    p.add_argument("--out", metavar="FILE", help="write the page to FILE once instead of serving it")

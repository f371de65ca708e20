"""``strongroom vault-kv …``: the Vault KV version 2 front door for databases (docs/tde.md).

* ``vault-kv serve --config F`` or ``--dir DIR``: run the service in the foreground (``--dir``: of a
  ``strongroom up`` directory, set up on first use as the admin of ``STRONGROOM_PIN``).
* ``vault-kv start --dir DIR`` / ``vault-kv stop --dir DIR``: the service of DIR in the background.
* ``vault-kv token create --mount M --policy read|write --ttl 768h [--name PATTERN ...]``,
  ``token list``, ``token revoke --accessor A``: admins (``STRONGROOM_PIN=admin:…``). The token is
  printed once, by ``create``; the cluster keeps only its digest.
* ``vault-kv key rotate --mount M --name N [--bits 256]``: a new key version (the first one too),
  generated in the cluster, through the service with a write token (``--url``/``VAULT_ADDR``,
  ``--token``/``VAULT_TOKEN``, ``--ca-bundle``/``VAULT_CACERT``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

from strongroom.cli.common import directory
from strongroom.cli.context import AddCommand, Context
from strongroom.cli.output import CliError, emit, iso_times, table

_DURATION_RE = re.compile(r"^([0-9]{1,9})([smhd]?)\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``90``, ``45s``, ``30m``, ``768h``, ``7d`` -> seconds; ``0``: never expires."""
    found = _DURATION_RE.match(text.strip())
    if found is None:
        raise CliError(f"--ttl takes a duration such as 3600, 30m, 768h or 7d (0: never expires), not {text!r}")
    return int(found.group(1)) * _UNITS[found.group(2)]


def _local(action: Any) -> Any:
    from strongroom.local.layout import LocalClusterError
    from strongroom.vaultkv.config import ConfigError
    from strongroom.vaultkv.local import VaultKvStartError

    try:
        return action()
    except (VaultKvStartError, ConfigError, LocalClusterError) as exc:
        raise CliError(str(exc)) from None


def cmd_serve(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.vaultkv import local
    from strongroom.vaultkv.server import serve

    if args.config:
        if args.port is not None:
            raise CliError("--port goes with --dir; with --config edit the file")
        raise SystemExit(serve(Path(args.config), insecure_http=args.insecure_http))
    root = directory(args).resolve()
    _local(lambda: local.setup(root))
    _local(lambda: local.write_config(root, port=args.port, insecure_http=True if args.insecure_http else None))
    raise SystemExit(serve(root / local.CONFIG_FILE))


def cmd_start(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local.vaultkv import start_vault_kv

    result = _local(lambda: start_vault_kv(directory(args), port=args.port,
                                           insecure_http=True if args.insecure_http else None))
    trust = f"; CA bundle {result['vault_kv_ca_bundle']}" if result.get("vault_kv_ca_bundle") else ""
    emit(result, as_json=args.json, text=f"Vault KV endpoint {result['vault_kv_url']} (pid {result['vault_kv_pid']})"
                                         f"{trust}; local token for the mount {result['vault_kv_mount']}: "
                                         f"{result['vault_kv_token']}")


def cmd_stop(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local.vaultkv import stop_vault_kv

    pid = stop_vault_kv(directory(args))
    emit({"stopped": pid}, as_json=args.json, text="stopped" if pid else "the Vault KV service was not running")


def cmd_token_create(args: argparse.Namespace, ctx: Context) -> None:
    ttl = parse_ttl(args.ttl)
    result = ctx.logged_in(args).call("vaultkv.token.create", mount=args.mount, policy=args.policy,
                                      names=args.name or ["*"], ttl_seconds=ttl, service_user=args.service_user,
                                      display_name=args.display_name or "")
    expiry = "never expires" if not result["expires"] else f"expires in {ttl} s"
    emit(result, as_json=args.json,
         text=f"token:    {result['token']}\naccessor: {result['accessor']} ({args.policy} on mount "
              f"{result['mount']}, names {', '.join(result['names'])}; {expiry})\n(the token is shown only now)")


def cmd_token_list(args: argparse.Namespace, ctx: Context) -> None:
    tokens = ctx.logged_in(args).call("vaultkv.token.list")["tokens"]
    rows = [dict(t, names=",".join(t.get("names") or []), expires=t.get("expires") or "never")
            for t in iso_times(tokens)]
    emit({"tokens": tokens}, as_json=args.json,
         text=table(rows, ["accessor", "display_name", "mount", "policy", "names", "service_user", "expires"]))


def cmd_token_revoke(args: argparse.Namespace, ctx: Context) -> None:
    result = ctx.logged_in(args).call("vaultkv.token.revoke", accessor=args.accessor)
    emit(result, as_json=args.json, text=f"revoked token {result['accessor']} (mount {result['mount']})")


def cmd_key_rotate(args: argparse.Namespace, _ctx: Context) -> None:
    import httpx

    url = (args.url or os.environ.get("VAULT_ADDR") or "").rstrip("/")
    token = args.token or os.environ.get("VAULT_TOKEN")
    if not url or not token:
        raise CliError("give the service's address and a write token: --url/VAULT_ADDR and --token/VAULT_TOKEN")
    ca = args.ca_bundle or os.environ.get("VAULT_CACERT")
    body: dict[str, Any] = {"data": {"bits": str(args.bits)} if args.bits else {}}
    if args.cas is not None:
        body["options"] = {"cas": args.cas}
    try:
        reply = httpx.post(f"{url}/v1/{args.mount}/data/{args.name}", json=body, headers={"X-Vault-Token": token},
                           verify=ca or True, timeout=30)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {url}: {exc}") from None
    try:
        answer = reply.json()
    except json.JSONDecodeError:
        answer = {}
    if reply.status_code != 200:
        messages = answer.get("errors") if isinstance(answer, dict) else None
        raise CliError(f"{url} answered {reply.status_code}: {'; '.join(map(str, messages or [])) or reply.text[:200]}")
    metadata = answer["data"]
    emit(metadata, as_json=args.json, text=f"{args.mount}/{args.name}: version {metadata['version']}")


def register(sub: Any, add: AddCommand) -> None:
    group = sub.add_parser("vault-kv", help="the Vault KV v2 endpoint for database encryption (MariaDB, pg_tde)"
                           ).add_subparsers(dest="vault_kv_command", required=True, metavar="VAULT_KV_COMMAND")
    insecure = ("serve plain HTTP instead of HTTPS (tests, or a TLS proxy on the same host); the service warns "
                "about it in its log")
    p = add(group, "serve", cmd_serve, "run the Vault KV service in the foreground (--config F, or --dir DIR)")
    p.add_argument("--config", help="service configuration file (TOML)")
    p.add_argument("--port", type=int, help="with --dir: the port (default: kept from DIR/vaultkv.toml, else free)")
    p.add_argument("--insecure-http", action="store_true", help=insecure)
    p = add(group, "start", cmd_start, "start the Vault KV service of DIR in the background")
    p.add_argument("--port", type=int)
    p.add_argument("--insecure-http", action="store_true", help=insecure)
    add(group, "stop", cmd_stop, "stop the Vault KV service of DIR")

    tokens = group.add_parser("token", help="tokens databases present (admins)").add_subparsers(
        dest="token_command", required=True, metavar="TOKEN_COMMAND")
    p = add(tokens, "create", cmd_token_create, "create a token for one mount; it is shown once")
    p.add_argument("--mount", required=True, help="the mount it reaches (the /v1/<mount> of the database's URL)")
    p.add_argument("--policy", required=True, choices=["read", "write"],
                   help="read: fetch key versions (a database); write: also make new versions (rotation)")
    p.add_argument("--ttl", required=True, help="lifetime: 3600, 30m, 768h, 7d; 0: never expires")
    p.add_argument("--name", action="append", metavar="PATTERN",
                   help="a key name it reaches (* and ? match; repeatable; default: every name of the mount)")
    p.add_argument("--display-name", help="a name for people, shown in the audit log")
    p.add_argument("--service-user", default="vaultkv", help="the service's crypto user (default vaultkv)")
    add(tokens, "list", cmd_token_list, "list tokens (never their text)")
    p = add(tokens, "revoke", cmd_token_revoke, "revoke a token at once")
    p.add_argument("--accessor", required=True, help="the token's accessor (token list)")

    keys = group.add_parser("key", help="key versions, through the service").add_subparsers(
        dest="key_command", required=True, metavar="KEY_COMMAND")
    p = add(keys, "rotate", cmd_key_rotate, "make a new version of a key (the first one too), generated in the cluster")
    p.add_argument("--mount", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--bits", type=int, choices=[128, 192, 256], help="key size (default 256, or as before)")
    p.add_argument("--cas", type=int, help="only if this is the current version (0: only if the key is new)")
    p.add_argument("--url", help="the service's address, https://host:port (default: $VAULT_ADDR)")
    p.add_argument("--token", help="a write token (default: $VAULT_TOKEN)")
    p.add_argument("--ca-bundle", help="the CA that verifies the service (default: $VAULT_CACERT)")

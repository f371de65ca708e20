"""``strongroom kms …``: the KMS-compatible API — run the gateway, manage its access keys.

* ``kms serve --config F`` or ``kms serve --dir DIR [--port P] [--region R] [--account-id A]``:
  run the gateway in the foreground (``--dir``: of a ``strongroom up`` directory, set up on
  first use — the gateway's crypto user ``kmsgateway`` with a full-rights access key and the key
  stores' crypto user ``kmsuser``, as the admin of ``STRONGROOM_PIN=admin:…`` — with an HTTPS
  certificate from DIR's CA).
* ``kms setup --dir DIR``: only that set-up; prints the access key.
* ``kms start --dir DIR`` / ``kms stop --dir DIR``: the gateway of DIR in the background.
* ``--insecure-http`` (serve, start): plain HTTP instead of HTTPS, which the gateway then warns
  about in its log (with ``--dir``/``start`` it is kept in DIR/kms.toml).
* ``kms access-key create --name N [--policy F] [--service-user U]``, ``kms access-key list``,
  ``kms access-key delete --id AKIA…``: admins (``STRONGROOM_PIN=admin:…``). The secret is
  printed once, by ``create``; the cluster keeps it encrypted and never shows it again.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from strongroom.cli.common import directory
from strongroom.cli.context import AddCommand, Context
from strongroom.cli.output import CliError, emit, table


def _local(action: Any) -> Any:
    from strongroom.kms.config import ConfigError
    from strongroom.kms.local import GatewayStartError

    try:
        return action()
    except (GatewayStartError, ConfigError) as exc:
        raise CliError(str(exc)) from None


def cmd_serve(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.kms import local
    from strongroom.kms.server import serve

    if args.config:
        if any(v is not None for v in (args.port, args.region, args.account_id)):
            raise CliError("--port, --region and --account-id go with --dir; with --config edit the file")
        raise SystemExit(serve(Path(args.config), insecure_http=args.insecure_http))
    root = directory(args).resolve()
    _local(lambda: local.setup(root))
    _local(lambda: local.write_config(root, port=args.port, region=args.region, account_id=args.account_id,
                                      insecure_http=True if args.insecure_http else None))
    raise SystemExit(serve(root / local.CONFIG_FILE))


def cmd_setup(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.kms import local

    root = directory(args).resolve()
    key = _local(lambda: local.setup(root))
    config = _local(lambda: local.write_config(root))
    result = dict(key, config=str(root / local.CONFIG_FILE), region=config.kms.region,
                  endpoint=local.endpoint(config), ca_bundle=local.ca_bundle(root, config))
    emit(result, as_json=args.json,
         text=f"access key {key['access_key_id']} (secret in {root / local.ACCESS_KEY_FILE}); "
              f"configuration {root / local.CONFIG_FILE}")


def cmd_start(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local.gateway import start_gateway

    root = directory(args)
    result = _local(lambda: start_gateway(root, port=args.port, region=args.region, account_id=args.account_id,
                                          insecure_http=True if args.insecure_http else None))
    trust = f"; CA bundle {result['kms_ca_bundle']}" if result.get("kms_ca_bundle") else ""
    emit(result, as_json=args.json, text=f"KMS endpoint {result['kms_endpoint']} (pid {result['kms_pid']}){trust}")


def cmd_stop(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local.gateway import stop_gateway

    pid = stop_gateway(directory(args))
    emit({"stopped": pid}, as_json=args.json, text="stopped" if pid else "the KMS gateway was not running")


def _gateway_user(args: argparse.Namespace) -> str:
    """The service user of DIR's gateway (DIR/kms.toml), else kmsuser (the name deployments use)."""
    from strongroom.kms.local import CONFIG_FILE, users_of

    directory = getattr(args, "dir", None)
    if directory and (Path(directory) / CONFIG_FILE).exists():
        return users_of(Path(directory))[0]
    return "kmsuser"


def cmd_access_key_create(args: argparse.Namespace, ctx: Context) -> None:
    policy = None
    if args.policy:
        from strongroom.kms.policy import PolicyError, parse_policy

        try:
            policy = Path(args.policy).read_text()
        except OSError as exc:
            raise CliError(f"cannot read {args.policy}: {exc.strerror or exc}") from None
        try:
            parse_policy(policy)
        except PolicyError as exc:
            raise CliError(f"{args.policy} is not a usable access-key policy: {exc}") from None
    client = ctx.logged_in(args)
    service_user = args.service_user or _gateway_user(args)
    result = client.call("kms.access_key.create", name=args.name, policy=policy, service_user=service_user)
    emit(result, as_json=args.json,
         text=f"access key id:     {result['access_key_id']}\nsecret access key: {result['secret_access_key']}\n"
              "(the secret is shown only now)")


def cmd_access_key_list(args: argparse.Namespace, ctx: Context) -> None:
    keys = ctx.logged_in(args).call("kms.access_key.list")["access_keys"]
    rows = [dict(k, policy="custom" if k.get("policy") else "full access") for k in keys]
    emit({"access_keys": keys}, as_json=args.json,
         text=table(rows, ["access_key_id", "name", "service_user", "policy"]))


def cmd_access_key_delete(args: argparse.Namespace, ctx: Context) -> None:
    result = ctx.logged_in(args).call("kms.access_key.delete", access_key_id=args.id)
    emit(result, as_json=args.json, text=f"deleted access key {result['access_key_id']} ({result['name']})")


INSECURE_HELP = ("serve plain HTTP instead of HTTPS (tests, or a TLS proxy on the same host); the gateway warns "
                 "about it in its log")


def register(sub: Any, add: AddCommand) -> None:
    group = sub.add_parser("kms", help="the KMS-compatible API: gateway and access keys").add_subparsers(
        dest="kms_command", required=True, metavar="KMS_COMMAND")
    p = add(group, "serve", cmd_serve, "run the KMS gateway in the foreground (--config F, or --dir DIR)")
    p.add_argument("--config", help="gateway configuration file (TOML)")
    p.add_argument("--port", type=int, help="with --dir: the port (default: kept from DIR/kms.toml, else free)")
    p.add_argument("--region", help="with --dir: the region it serves (default us-east-1)")
    p.add_argument("--account-id", help="with --dir: the 12-digit account id in ARNs (default 111122223333)")
    p.add_argument("--insecure-http", action="store_true", help=INSECURE_HELP)
    add(group, "setup", cmd_setup,
        "create the gateway's crypto user (kmsgateway), a full-rights access key, and the key stores' crypto "
        "user (kmsuser) for the gateway of DIR (local use)")
    p = add(group, "start", cmd_start, "start the gateway of DIR in the background")
    p.add_argument("--port", type=int)
    p.add_argument("--region")
    p.add_argument("--account-id")
    p.add_argument("--insecure-http", action="store_true", help=INSECURE_HELP)
    add(group, "stop", cmd_stop, "stop the gateway of DIR")
    keys = group.add_parser("access-key", help="SigV4 access keys (admins)").add_subparsers(
        dest="access_key_command", required=True, metavar="ACCESS_KEY_COMMAND")
    p = add(keys, "create", cmd_access_key_create, "create an access key; its secret is shown once")
    p.add_argument("--name", required=True, help="a name for people (1 to 64 of letters, digits, _.@+=,-)")
    p.add_argument("--policy", help="a JSON policy file (default: every right)")
    p.add_argument("--service-user", help="the gateway's service user (default: the one DIR/kms.toml names, "
                                          "else kmsuser)")
    add(keys, "list", cmd_access_key_list, "list access keys (never their secrets)")
    p = add(keys, "delete", cmd_access_key_delete, "delete an access key")
    p.add_argument("--id", required=True, help="the access key id (AKIA…)")

"""The ``strongroom`` command, modelled on CloudHSM CLI.

Single-command mode takes credentials from ``STRONGROOM_PIN=username:password``
(and ``STRONGROOM_ROLE`` to name the role); ``strongroom interactive`` keeps a
login across commands. Every command accepts ``--json`` and then prints
``{"error_code": 0, "data": ...}`` or ``{"error_code": N, "error": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from strongroom.cli import quorum as quorum_cli
from strongroom.cli.common import directory, local
from strongroom.cli.context import Context, Handler
from strongroom.cli.output import CliError, emit, emit_error, table
from strongroom.client import Client, ClientError, ProfileError
from strongroom.hardening import harden_process

EPILOG = """the first hour:
  strongroom up --dir /tmp/strongroom            # a local cluster (prints the admin password once)
  . /tmp/strongroom/strongroom.env               # STRONGROOM_AGENT_SOCKET, STRONGROOM_DIR
  STRONGROOM_PIN=admin:PASSWORD strongroom user create --username alice --role crypto-user --password 'correct horse'
  strongroom status                              # health, metrics URLs, certificates
  strongroom status-page --dir /tmp/strongroom   # a read-only page on http://127.0.0.1:8080/
  strongroom down                                # stop it

`strongroom COMMAND --help` shows each command's options (and examples); every command takes --json.
completion: source <(strongroom completion bash)
"""
UP_EPILOG = """examples:
  strongroom up --dir /tmp/strongroom                        # one node (SQLite) and the agent
  strongroom up --dir /tmp/sr3 --nodes 3                     # three nodes in zones a, b, c over etcd
  strongroom up --dir /tmp/sr --kms                          # also the KMS-compatible gateway
  strongroom up --dir /tmp/strongroom --socket-group www-data   # nginx workers may use the agent socket
  strongroom up --dir D --ca-cert ca.crt --ca-key ca.key --no-initialize   # your CA; you initialize

`up` on an existing directory starts what it holds again (keys and users as they were; its agent.toml
with your edits); --nodes only shapes a new directory.
"""
DOWN_EPILOG = "example:\n  strongroom down --dir /tmp/strongroom\n"
STATUS_EPILOG = """examples:
  strongroom status --dir /tmp/strongroom
  strongroom status --dir /tmp/strongroom --json   # error_code 0 when healthy; otherwise CLUSTER_UNHEALTHY, exit 1

it shows each node (health, seal, version, metrics URL), the agent, etcd members, the KMS gateway and
certificates that expire within 30 days (strongroom cert rotate).
"""


# --- commands -------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local import cluster

    seal = None
    if args.seal or args.seal_option:
        from strongroom.seal import SealError, SealSettings

        options = {}
        for item in args.seal_option or []:
            name, equals, value = item.partition("=")
            if not equals or not name:
                raise CliError(f"--seal-option takes KEY=VALUE, not {item!r}")
            options[name] = value
        try:
            seal = SealSettings(args.seal or "file", options)
        except SealError as exc:
            raise CliError(str(exc)) from None
    summary = local(lambda: cluster.up(
        directory(args, up=True), nodes=args.nodes, workers=args.workers, ca_cert=args.ca_cert and Path(args.ca_cert),
        ca_key=args.ca_key and Path(args.ca_key), initialize=not args.no_initialize, kms=args.kms, seal=seal,
        vault_kv=args.vault_kv,
        custodians=[Path(c) for c in args.custodian or []], threshold=args.threshold, socket_group=args.socket_group))
    # `up` always prints one JSON object: scripts and tests read it.
    emit(summary, as_json=args.json, text=_json_text(summary))


def cmd_down(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local import cluster

    result = local(lambda: cluster.down(directory(args)))
    stopped = ", ".join(f"{n['id']} (pid {n['pid']})" for n in result["stopped"]) or "nothing was running"
    emit(result, as_json=args.json, text=f"stopped: {stopped}")


def cmd_status(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.local import cluster

    result = local(lambda: cluster.status(directory(args)))
    text = f"cluster {result['cluster_name']}: {'healthy' if result['healthy'] else 'NOT healthy'}\n"
    text += table(result["nodes"], ["id", "zone", "address", "pid", "health", "state", "seal", "version", "restarts",
                                    "error"])
    for node in result["nodes"]:
        for worker in node.get("workers") or []:
            if worker.get("last_exit"):
                text += (f"\n{node['id']} worker {worker['index']}: restarted {worker['restarts']} times, last "
                         f"{worker['last_exit']}")
    if any(n.get("seal") == "file" for n in result["nodes"]):
        from strongroom.seal.file import WARNING

        text += f"\nwarning: {WARNING}"
    agent = result["agent"]
    text += f"\nagent: {agent['health']} (pid {agent['pid'] or '-'}, socket {agent['socket']})"
    text += _policies_line(result.get("policies"))
    if result.get("etcd"):
        text += "\n" + table(result["etcd"], ["id", "endpoint", "pid", "health"])
    if result.get("kms"):
        kms = result["kms"]
        text += f"\nkms gateway: {kms['health']} (pid {kms['pid'] or '-'}, {kms['endpoint']})"
    if result["certificates_expiring"]:
        text += "\nwarning: certificates expiring within 30 days (`strongroom cert rotate`): " + ", ".join(
            f"{c['name']} ({c['not_after']})" for c in result["certificates"] if c["expiring"])
    if result["healthy"]:
        emit(result, as_json=args.json, text=text)
        return
    # Not healthy: an error envelope (a non-zero error_code) that still carries what was seen, and exit 1.
    unwell = [n["id"] for n in result["nodes"] if n["health"] != "healthy"]
    unwell += ["agent"] if result["agent"]["health"] != "running" else []
    unwell += [m["id"] for m in result["etcd"] if m["health"] != "healthy"]
    unwell += ["kms" for kms in [result.get("kms")] if kms and kms["health"] != "running"]
    error = CliError(f"not healthy: {', '.join(unwell)}", name="CLUSTER_UNHEALTHY")
    if args.json:
        emit_error(error, as_json=True, data=result)
    else:
        print(text)
    raise SystemExit(1)


def cmd_node_serve(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.node.main import serve
    from strongroom.services.config import ConfigError

    try:
        raise SystemExit(serve(Path(args.config)))
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def cmd_agent(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.agent.main import run

    raise SystemExit(run(Path(args.config)))


def cmd_cluster_status(args: argparse.Namespace, ctx: Context) -> None:
    result = ctx.connect(args).cluster_status()
    text = f"cluster {result['name']} ({result['cluster_id']}): {result['state']}\n"
    text += f"trust anchor: {result.get('trust_anchor_fingerprint') or '(not installed)'}\n"
    last = result.get("last_backup")
    text += ("last backup: none\n" if not last else
             f"last backup: {last['backup_id']} ({last['trigger']}, "
             f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(last['created']))})\n")
    text += table(result["nodes"], ["id", "zone", "address", "health", "last_seen"])
    text += _policies_line(result.get("policies"))
    emit(result, as_json=args.json, text=text)


def _policies_line(policies: dict[str, str] | None) -> str:
    if not policies:
        return ""
    return "\npolicies: " + ", ".join(f"{name}={value}" for name, value in sorted(policies.items()))


def cmd_cluster_set_policy(args: argparse.Namespace, ctx: Context) -> None:
    result = ctx.logged_in(args).cluster_set_policy(args.name, args.value)
    emit(result, as_json=args.json, text=_policies_line(result.get("policies")).strip())


def _activation_secret(args: argparse.Namespace) -> str:
    if args.activation_secret_file:
        try:
            return Path(args.activation_secret_file).read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read {args.activation_secret_file}: {exc.strerror or exc}") from None
    secret = args.activation_secret or os.environ.get("STRONGROOM_ACTIVATION_SECRET")
    if not secret:
        raise CliError("give the activation secret `strongroom cluster initialize` printed: --activation-secret S, "
                       "--activation-secret-file F or STRONGROOM_ACTIVATION_SECRET")
    return secret


def cmd_cluster_activate(args: argparse.Namespace, ctx: Context) -> None:
    secret = _activation_secret(args)
    password = args.password or _ask_password("new admin password: ")
    result = ctx.connect(args).cluster_activate(password, secret, args.username)
    emit(result, as_json=args.json, text=f"cluster {result['cluster_id']} is active")


def cmd_login(args: argparse.Namespace, ctx: Context) -> None:
    password = args.password or _ask_password("password: ")
    result = ctx.connect(args).login(args.username, password, args.role)
    emit({"username": result["username"], "role": result["role"]}, as_json=args.json,
         text=f"logged in as {result['username']} ({result['role']})")


def cmd_logout(args: argparse.Namespace, ctx: Context) -> None:
    if ctx.client is not None:
        ctx.client.logout()
    emit({}, as_json=args.json, text="logged out")


def cmd_user_create(args: argparse.Namespace, ctx: Context) -> None:
    password = args.password or _ask_password(f"password for {args.username}: ")
    user = ctx.logged_in(args).user_create(args.username, args.role, password)
    emit(user, as_json=args.json, text=f"created {user['role']} {user['username']}")


def cmd_user_delete(args: argparse.Namespace, ctx: Context) -> None:
    user = ctx.logged_in(args).user_delete(args.username)
    emit(user, as_json=args.json, text=f"deleted {user['role']} {user['username']}")


def cmd_user_list(args: argparse.Namespace, ctx: Context) -> None:
    client = ctx.logged_in(args)
    users = quorum_cli.with_strategies(client, client.user_list())
    emit({"users": users}, as_json=args.json,
         text=table(quorum_cli.readable(users), ["username", "role", "locked", "activated", "failed_logins", "mfa",
                                                 "quorum"]))


def cmd_user_change_password(args: argparse.Namespace, ctx: Context) -> None:
    password = args.password or _ask_password(f"new password for {args.username}: ")
    user = ctx.logged_in(args).user_change_password(args.username, password)
    emit(user, as_json=args.json, text=f"password of {user['username']} changed")


def cmd_audit_verify(args: argparse.Namespace, _ctx: Context) -> None:
    from strongroom.audit import outcomes, verify

    paths = [Path(args.file)] if args.file else _audit_logs(args)
    reports: dict[str, outcomes.Report] = {}
    # The heads first, then the logs: a head is recorded only after its records are on disk.
    recorded, heads_note = _recorded_audit_heads(args)
    results = []
    for path in paths:
        try:
            result = verify(path)
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
        entry: dict[str, Any] = {"file": str(path), "ok": result.ok, "records": result.records,
                                 "last_seq": result.last_seq, "last_hash": result.last_hash}
        if result.first_break is not None:
            brk = result.first_break
            entry["first_break"] = {"line": brk.line, "seq": brk.seq, "reason": brk.reason}
        elif recorded is not None:
            entry["head_check"] = _check_audit_head(path, result.last_seq, recorded)
            if entry["head_check"]["problem"] is not None:
                entry["ok"] = False
        reports[str(path)] = outcomes.analyze(path)
        entry["outcomes"] = outcomes.check(reports[str(path)], time.time())
        entry["ok"] = entry["ok"] and entry["outcomes"]["ok"]
        results.append(entry)
    claims, claims_note = _false_claims(args, reports)
    lines = []
    for entry in results:
        check = entry.get("head_check")
        if "first_break" in entry:
            brk = entry["first_break"]
            lines.append(f"{entry['file']}: BROKEN at line {brk['line']} (seq {brk['seq']}): {brk['reason']}")
        elif check is not None and check["problem"] is not None:
            lines.append(f"{entry['file']}: NOT WHAT ITS NODE RECORDED: {check['problem']}")
        else:
            suffix = ""
            if check is not None and check["recorded_seq"] is not None:
                suffix = f"; holds the head its node recorded (seq {check['recorded_seq']})"
            elif check is not None:
                suffix = "; no head recorded for it yet"
            lines.append(f"{entry['file']}: OK, {entry['records']} records, last seq {entry['last_seq']}{suffix}")
        acts = entry["outcomes"]
        for problem in acts["problems"]:
            lines.append(f"  OUTCOME DOES NOT FIT: {problem}")
        for act in acts["unsettled"]:
            lines.append(f"  NO OUTCOME: {act}")
    for claim in claims or []:
        lines.append(f"FALSE CLAIM in {claim['node']}: {claim['act']}: {claim['why']}")
    if heads_note:
        lines.append(heads_note)
    if claims_note:
        lines.append(claims_note)
    emit({"logs": results, "heads_checked": recorded is not None, "heads_note": heads_note,
          "objects_checked": claims is not None, "false_claims": claims or [], "objects_note": claims_note},
         as_json=args.json, text="\n".join(lines))
    if not all(entry["ok"] for entry in results) or claims:
        raise SystemExit(1)


def _false_claims(args: argparse.Namespace, reports: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The ``ok`` creations in the logs of objects that do not exist (strongroom.audit.outcomes.false_claims),
    asking a node which objects exist; (None, why) when no node answers."""
    from strongroom.audit.outcomes import false_claims
    from strongroom.client import ClientProfile

    unchecked = "whether every ok creation names an object that exists was NOT checked"
    if args.file:
        return None, f"one log given (the others may remove what it creates): {unchecked}"
    directory = getattr(args, "dir", None) or os.environ.get("STRONGROOM_DIR")
    if not directory:
        return None, f"no cluster directory given: {unchecked}"
    try:
        profile = ClientProfile.load(Path(directory))
    except ProfileError as exc:
        return None, f"the cluster's client profile cannot be read ({exc}): {unchecked}"
    failures = []
    for node in profile.nodes:
        try:
            with Client(profile, node, timeout=30) as client:
                def exists(keys: list[str], client: Client = client) -> set[str]:
                    return set(client.call("audit.objects", keys=keys)["exists"])

                found = false_claims(reports, exists)
            return [{"node": c.node, "act": c.act, "why": c.why} for c in found], None
        except Exception as exc:  # noqa: BLE001 - any node that answers will do; say why none did
            failures.append(f"{node.node_id}: {getattr(exc, 'message', None) or exc}")
    return None, f"the cluster could not be reached ({'; '.join(failures) or 'no nodes'}): {unchecked}"


def _recorded_audit_heads(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]] | None, str | None]:
    """The audit heads the nodes recorded in the store (by node id), asked of any reachable node.

    (None, why) when the cluster cannot be reached: a cut-off tail cannot be seen offline.
    """
    from strongroom.client import ClientProfile

    offline = "truncation of the newest records was NOT checked"
    directory = getattr(args, "dir", None) or os.environ.get("STRONGROOM_DIR")
    if not directory:
        return None, f"no cluster directory given: {offline} (the chains were checked offline)"
    try:
        profile = ClientProfile.load(Path(directory))
    except ProfileError as exc:
        return None, f"the cluster's client profile cannot be read ({exc}): {offline}"
    failures = []
    for node in profile.nodes:
        try:
            with Client(profile, node, timeout=10) as client:
                answer = client.call("audit.heads")
            return {str(h["node"]): h for h in answer["heads"]}, None
        except Exception as exc:  # noqa: BLE001 - any node that answers will do; say why none did
            failures.append(f"{node.node_id}: {getattr(exc, 'message', None) or exc}")
    return None, f"the cluster could not be reached ({'; '.join(failures) or 'no nodes'}): {offline}"


def _check_audit_head(path: Path, last_seq: int | None, recorded: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from strongroom.audit.heads import first_record, head_problem
    from strongroom.audit.log import RecordFormatError

    try:
        first = first_record(path)
    except (OSError, RecordFormatError):
        first = None
    node = first.node if first is not None else path.parent.name
    head = recorded.get(node)
    if head is None:
        return {"node": node, "recorded_seq": None, "problem": None}
    try:
        problem = head_problem(path, head, last_seq)
    except OSError as exc:
        problem = f"cannot be read to compare with its recorded head: {exc}"
    return {"node": node, "recorded_seq": head["seq"], "recorded_hash": head["hash"], "problem": problem}


def _audit_logs(args: argparse.Namespace) -> list[Path]:
    directory = getattr(args, "dir", None) or os.environ.get("STRONGROOM_DIR")
    if not directory:
        raise CliError("give a log with --file FILE, or a cluster directory with --dir DIR")
    logs = sorted(Path(directory).glob("nodes/*/audit.log"))
    if not logs:
        raise CliError(f"no audit log under {directory}/nodes/*/")
    return logs


def cmd_interactive(args: argparse.Namespace, _ctx: Context) -> None:
    ctx = Context(interactive=True)
    parser = build_parser(interactive=True)
    default_dir = getattr(args, "dir", None)
    print("Strongroom interactive shell; 'help' lists commands, 'quit' leaves.")
    try:
        while True:
            try:
                line = input("strongroom> " if ctx.client is None or ctx.client.username is None
                             else f"strongroom [{ctx.client.username}]> ")
            except EOFError:
                print()
                break
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if words[0] in ("quit", "exit"):
                break
            if words[0] == "help":
                parser.print_help()
                continue
            if default_dir and "--dir" not in words:
                words += ["--dir", default_dir]
            run(words, ctx, parser)
    finally:
        ctx.interactive = False
        ctx.close()


# --- helpers ---------------------------------------------------------------------------


def _ask_password(prompt: str) -> str:
    if not sys.stdin.isatty():
        raise CliError("give the password with --password (no terminal to ask on)")
    return getpass.getpass(prompt)


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value, indent=2)


def build_parser(interactive: bool = False) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser must not reset a value given before the subcommand.
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON ({error_code, data} / {error_code, error})")
    common.add_argument("--dir", default=argparse.SUPPRESS, help="cluster directory (default: $STRONGROOM_DIR)")
    common.add_argument("--approval", default=argparse.SUPPRESS, metavar="FILE",
                        help="a quorum token file: its signatures approve this request (docs/quorum.md)")

    parser = argparse.ArgumentParser(
        prog="strongroom", description="Strongroom: a self-hosted, clustered software HSM.", parents=[common],
        epilog=None if interactive else EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        exit_on_error=not interactive,
    )
    if not interactive:
        from strongroom import __version__

        parser.add_argument("--version", action="version", version=f"strongroom {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str, handler: Handler,
            help_text: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, parents=[common], description=help_text)
        p.set_defaults(handler=handler)
        return p

    if not interactive:
        p = add(sub, "up", cmd_up, "start (and on first use create and initialize) a local cluster in DIR")
        p.formatter_class, p.epilog = argparse.RawDescriptionHelpFormatter, UP_EPILOG
        p.add_argument("--nodes", type=int, default=None,
                       help="number of nodes of a new directory (default 1 = embedded SQLite store; more = etcd); "
                            "an existing directory keeps its nodes (hsm add / hsm remove)")
        p.add_argument("--workers", type=int, default=None, help="worker processes per node (default: cores)")
        p.add_argument("--ca-cert", help="your CA certificate for a new directory (default: a throw-away CA)")
        p.add_argument("--ca-key", help="your CA's private key (with --ca-cert)")
        p.add_argument("--seal", choices=["file", "shares", "tpm", "kms", "pkcs11"],
                       help="how a new directory's nodes keep the cluster key at rest (default: file, which is "
                            "for development only: see the README's trust model)")
        p.add_argument("--seal-option", action="append", metavar="KEY=VALUE",
                       help="an option of the seal's provider, e.g. tcti=swtpm:port=2321, endpoint=https://..., "
                            "module=/usr/lib/softhsm/libsofthsm2.so (repeatable)")
        p.add_argument("--custodian", action="append", metavar="PEM",
                       help="a recovery custodian's public key (EC P-384 or RSA-3072+); repeatable")
        p.add_argument("--threshold", type=int, help="shares needed to recover/unseal (default: a majority)")
        p.add_argument("--socket-group", metavar="GROUP",
                       help="the group whose members may use the agent's socket (e.g. www-data for nginx); "
                            "kept in DIR/agent.toml")
        p.add_argument("--kms", action="store_true",
                       help="also start the KMS-compatible gateway (adds kms_endpoint and an access key to the JSON)")
        p.add_argument("--vault-kv", action="store_true", help="also start the Vault KV v2 endpoint for databases "
                       "(adds vault_kv_url and a local token to the JSON; docs/tde.md)")
        p.add_argument("--no-initialize", action="store_true",
                       help="leave a new cluster uninitialized (then: cluster init / initialize / activate)")
        p = add(sub, "down", cmd_down, "stop everything `up` started in DIR")
        p.formatter_class, p.epilog = argparse.RawDescriptionHelpFormatter, DOWN_EPILOG
        p = add(sub, "status", cmd_status, "health of the local cluster in DIR")
        p.formatter_class, p.epilog = argparse.RawDescriptionHelpFormatter, STATUS_EPILOG
        node = sub.add_parser("node", help="run an HSM node").add_subparsers(dest="node_command", required=True)
        p = add(node, "serve", cmd_node_serve, "run a node in the foreground")
        p.add_argument("--config", required=True, help="node configuration file (TOML)")
        p = add(sub, "agent", cmd_agent, "run the PKCS#11 agent in the foreground (logs to stderr)")
        p.add_argument("--config", required=True, help="agent configuration file (TOML)")
        add(sub, "interactive", cmd_interactive, "an interactive shell that keeps a login")
    else:
        p = add(sub, "login", cmd_login, "log in")
        p.add_argument("--username", required=True)
        p.add_argument("--role", choices=["admin", "crypto-user"])
        p.add_argument("--password", help="(asked for when omitted)")
        quorum_cli.register_login(p, add)
        add(sub, "logout", cmd_logout, "log out")

    cluster = sub.add_parser("cluster", help="cluster life cycle and status").add_subparsers(
        dest="cluster_command", required=True)
    add(cluster, "status", cmd_cluster_status, "state of the cluster and its nodes")
    p = add(cluster, "set-policy", cmd_cluster_set_policy,
            "(admin) set a cluster policy: public_objects visible|hidden, plaintext_import allowed|forbidden, "
            "legacy_algorithms off|on")
    p.add_argument("name", choices=["public_objects", "plaintext_import", "legacy_algorithms"])
    p.add_argument("value")
    p = add(cluster, "activate", cmd_cluster_activate, "set the first admin's password (activates the cluster)")
    p.add_argument("--username", default="admin")
    p.add_argument("--password")
    p.add_argument("--activation-secret", help="printed once by `cluster initialize`")
    p.add_argument("--activation-secret-file", help="a file holding it (cluster initialize --activation-secret-file)")
    from strongroom.cli import owner

    owner.register_cluster(cluster, add)

    user = sub.add_parser("user", help="manage users (admins)").add_subparsers(dest="user_command", required=True)
    p = add(user, "create", cmd_user_create, "create a user")
    p.add_argument("--username", required=True)
    p.add_argument("--role", required=True, choices=["admin", "crypto-user"])
    p.add_argument("--password", help="7 to 32 characters (asked for when omitted)")
    p = add(user, "delete", cmd_user_delete, "delete a user")
    p.add_argument("--username", required=True)
    add(user, "list", cmd_user_list, "list users")
    p = add(user, "change-password", cmd_user_change_password,
            "change a password (admins: anyone's, which also unlocks; others: their own)")
    p.add_argument("--username", required=True)
    p.add_argument("--password")
    quorum_cli.register_user(user, add)

    audit = sub.add_parser("audit", help="the audit log").add_subparsers(dest="audit_command", required=True)
    p = add(audit, "verify", cmd_audit_verify,
            "check audit log hash chains offline (no key needed) and, when the cluster answers, that no log "
            "lost its newest records (each node records its log's head in the store)")
    p.add_argument("--file", help="one audit log file (default: every node's log under --dir)")

    from strongroom.cli import certs, completion, encrypt, hsm, keys, kms, pkcs11, seal, statuspage, vaultkv

    keys.register(sub, add)
    quorum_cli.register(sub, add)
    pkcs11.register(sub, add)
    hsm.register(sub, add)
    seal.register(sub, add)
    owner.register(sub, add)
    kms.register(sub, add)
    statuspage.register(sub, add)
    certs.register(sub, add)
    if not interactive:
        completion.register(sub, add, parser)
    vaultkv.register(sub, add)
    encrypt.register(sub, add)
    return parser


def run(argv: list[str], ctx: Context, parser: argparse.ArgumentParser) -> int:
    as_json = "--json" in argv
    try:
        if as_json:  # a usage error is an envelope too, not argparse's text on stderr
            with contextlib.redirect_stderr(io.StringIO()) as said:
                args = parser.parse_args(argv)
        else:
            args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse printed the usage error (or --help, --version)
        if as_json and exc.code:
            lines = said.getvalue().strip().splitlines()
            message = lines[-1].partition(": error: ")[2] if lines else "invalid arguments"
            emit_error(CliError(message or lines[-1], name="USAGE"), as_json=True)
        return int(exc.code or 0)
    except argparse.ArgumentError as exc:
        emit_error(CliError(str(exc), name="USAGE"), as_json=as_json)
        return 2
    args.json = getattr(args, "json", False)
    args.dir = getattr(args, "dir", None)
    try:
        args.handler(args, ctx)
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    except ClientError as exc:
        emit_error(CliError(exc.message, int(exc.raw_code), exc.code.spec_name), as_json=args.json)
    except CliError as exc:
        emit_error(exc, as_json=args.json)
    except KeyboardInterrupt:
        emit_error(CliError("interrupted"), as_json=args.json)
    return 1


def main(argv: list[str] | None = None) -> int:
    # The CLI reads PINs, passwords and recovery shares: keep them out of core dumps and other
    # processes of the same user (ptrace), as the node and the agent do.
    harden_process()
    ctx = Context()
    try:
        return run(list(sys.argv[1:] if argv is None else argv), ctx, build_parser())
    finally:
        ctx.close()

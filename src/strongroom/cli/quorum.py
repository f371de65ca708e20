"""CloudHSM CLI's quorum and MFA commands, with Strongroom's additions (docs/quorum.md):

* ``strongroom quorum token-sign generate|sign|approve|get|list|delete|list-quorum-values|set-quorum-value|
  set-timeout``
* ``strongroom user change-quorum token-sign register|deregister``
* ``strongroom user change-mfa token-sign``
* ``login ... mfa-token-sign --token FILE`` (interactive mode; one-shot commands sign with STRONGROOM_MFA_KEY)

A token is a pending approval *in the cluster*, bound to one request. ``generate`` writes CloudHSM's token
file; approvers sign it anywhere (``sign``, or ``openssl pkeyutl -sign -pkeyopt digest:sha256`` over the
decoded ``token``) and either send their signature to the cluster (``approve``) or add it to the file, which
the requester then passes with ``--approval FILE`` (every command takes it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from strongroom.cli import approvals as files
from strongroom.cli.context import AddCommand, Context
from strongroom.cli.output import CliError, emit, table
from strongroom.client import Client
from strongroom.pki.approvals import Challenge, TokenFile, registration_file

SERVICES = ("registration", "user", "quorum", "cluster", "key-management", "key-usage")
#: CloudHSM CLI's command names (and Strongroom's) for the node operations a token may approve.
OPERATIONS = {
    "user create": "user.create", "user delete": "user.delete", "user change-password": "user.change_password",
    "user change-mfa": "quorum.mfa_register", "user change-quorum": "quorum.register",
    "quorum set-quorum-value": "quorum.set_value", "quorum set-timeout": "quorum.set_timeout",
    "hsm enroll": "hsm.enroll", "hsm zeroize": "hsm.zeroize", "cluster set-policy": "cluster.set_policy",
    "key delete": "object.destroy", "key share": "object.share", "key unshare": "object.unshare",
    "key set-attribute": "object.set_attributes", "key copy": "object.copy", "key wrap": "key.wrap",
    "key unwrap": "key.unwrap",
}
USES = ("sign", "decrypt", "encrypt", "verify", "derive", "decapsulate")


def _value(text: str) -> Any:
    """An --argument value: an integer (decimal or 0x...), true/false, hex:..., else text."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text, 0)
    except ValueError:
        pass
    if lowered.startswith("hex:"):
        try:
            return bytes.fromhex(text[4:])
        except ValueError:
            raise CliError(f"{text!r} is not hex") from None
    return text


def _arguments(items: list[str] | None) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for item in items or []:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise CliError(f"--argument takes NAME=VALUE, not {item!r}")
        result[name.replace("-", "_")] = _value(value)
    return result


def _handle(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise CliError(f"a key reference is a number (0x... as `key list` shows), not {text!r}") from None


def _token_rows(tokens: list[dict[str, Any]]) -> str:
    rows = [dict(t, token_id=t["token_id"][:16], arguments=", ".join(f"{k}={v}" for k, v in t["arguments"].items()),
                 approvals=f"{t.get('valid-approvals', t['number-of-approvals'])}/{t.get('approvals-required', '?')}",
                 expires=t["token-timeout-seconds"]) for t in tokens]
    return table(rows, ["token_id", "username", "service", "operation", "arguments", "approvals", "state",
                        "expires"])


# --- quorum token-sign ------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace, ctx: Context) -> None:
    client = ctx.logged_in(args)
    operation = OPERATIONS.get(" ".join((args.operation or "").split()), args.operation)
    arguments = _arguments(args.argument)
    key = _handle(args.key)
    if args.service in ("key-management",) and key is None and not arguments:
        raise CliError("a key-management token names the operation (--operation) and its key (--key REF)")
    result = client.quorum_generate(args.service, operation, arguments or None, key=key, uses=args.use,
                                    window=args.window, count=args.count, timeout=args.timeout)
    files.write_file(args.token, result["file"])
    emit({"path": args.token, "token_id": result["token_id"], "approvals-required": result.get("approvals-required"),
          "expires-in-seconds": result["token-timeout-seconds"]}, as_json=args.json,
         text=f"wrote {args.token}: token {result['token_id'][:16]} ({args.service}, {result['operation']}), "
              f"{result.get('approvals-required')} approval(s) needed within {result['token-timeout-seconds']} s")


def _username(args: argparse.Namespace, ctx: Context) -> str:
    if args.username:
        return str(args.username)
    if ctx.client is not None and ctx.client.username:
        return ctx.client.username
    from strongroom.cli.common import admin_pin

    pin = admin_pin()
    if pin is None:
        raise CliError("give --username (the approver's Strongroom username)")
    return pin[0]


def cmd_sign(args: argparse.Namespace, ctx: Context) -> None:
    """Offline: sign a token file with an approver's private key (no cluster needed)."""
    token_file = files.read_file(args.token)
    if not args.private_key:
        raise CliError("give --private-key KEY (PEM); or sign with openssl pkeyutl as docs/quorum.md shows")
    sign = files.signer(files.private_key(args.private_key, args.passphrase), pss=args.pss)
    if token_file.is_quorum:
        assert token_file.token is not None
        username = _username(args, ctx)
        token_file.add_signature(username, sign(token_file.token))
        what = f"signature of {username}"
    else:
        files.sign_entries(token_file, sign)
        what = f"{len(token_file.tokens)} signed token(s)"
    files.write_file(args.token, token_file)
    emit({"path": args.token, "signatures": len(token_file.signatures) or len(token_file.tokens)}, as_json=args.json,
         text=f"added the {what} to {args.token}")


def cmd_approve(args: argparse.Namespace, ctx: Context) -> None:
    """Approve in the cluster: sign (with --private-key) and send, or send the signatures a file collected."""
    client = ctx.logged_in(args)
    if args.token_id:
        token_file = TokenFile.loads(json.dumps(client.quorum_token(args.token_id)["file"]))
    elif args.token:
        token_file = files.read_file(args.token)
    else:
        raise CliError("give --token FILE or --token-id ID")
    if not token_file.is_quorum or token_file.approval_data is None or token_file.token is None:
        raise CliError("a registration or MFA token is not approved: sign it and register with it")
    if args.private_key:
        username = _username(args, ctx)
        signature = files.signer(files.private_key(args.private_key, args.passphrase), pss=args.pss)(token_file.token)
        result = client.quorum_approve(token_file.approval_data, username, signature)
        if args.token:
            token_file.add_signature(username, signature)
            files.write_file(args.token, token_file)
    elif args.token:
        result = files.submit_approval(client, args.token)
    else:
        raise CliError("give --private-key KEY (to sign now) or a --token FILE that holds signatures")
    emit(result, as_json=args.json,
         text=f"token {result.get('token_id', '')[:16]}: {result.get('valid-approvals')} of "
              f"{result.get('approvals-required')} approvals")


def cmd_get(args: argparse.Namespace, ctx: Context) -> None:
    result = ctx.logged_in(args).quorum_token(args.token_id)
    files.write_file(args.token, result["file"])
    emit({"path": args.token, **{k: v for k, v in result.items() if k != "file"}}, as_json=args.json,
         text=f"wrote {args.token}: {result['service']} {result['operation']} {result['arguments']}")


def cmd_list(args: argparse.Namespace, ctx: Context) -> None:
    tokens = ctx.logged_in(args).quorum_tokens()
    emit({"tokens": tokens}, as_json=args.json, text=_token_rows(tokens))


def cmd_delete(args: argparse.Namespace, ctx: Context) -> None:
    deleted = ctx.logged_in(args).quorum_delete(args.token_id, args.scope)
    emit({"deleted": deleted}, as_json=args.json, text=f"deleted {len(deleted)} token(s)")


def cmd_list_values(args: argparse.Namespace, ctx: Context) -> None:
    values = ctx.connect(args).quorum_values()
    emit(values, as_json=args.json, text="\n".join(f"{k}: {v}" for k, v in values.items()))


def cmd_set_value(args: argparse.Namespace, ctx: Context) -> None:
    result = ctx.logged_in(args).quorum_set_value(args.service, args.value)
    emit(result, as_json=args.json, text=f"quorum value of {args.service}: {args.value}")


def cmd_set_timeout(args: argparse.Namespace, ctx: Context) -> None:
    if (args.service is None) != (args.seconds is None):
        raise CliError("give --service and --seconds together (or CloudHSM's --generated / --approved)")
    if args.service is None and args.generated is None and args.approved is None:
        raise CliError("give --service S --seconds N, --generated N or --approved N")
    result = ctx.logged_in(args).quorum_set_timeout(args.service, args.seconds, generated=args.generated,
                                                    approved=args.approved)
    emit(result, as_json=args.json, text="\n".join(
        [f"{service}: {seconds} s to collect approvals" for service, seconds in result["timeouts"].items()]
        + [f"approved tokens: usable {result['approved']} s"]))


def timeouts(values: dict[str, Any]) -> dict[str, Any]:
    """CloudHSM's ``list-timeouts`` shape: ``generated`` (one number when every service has the same, else per
    service) and ``approved``."""
    per_service = dict(values.get("timeouts") or {})
    distinct = set(per_service.values())
    return {"generated": distinct.pop() if len(distinct) == 1 else per_service, "approved": values.get("approved")}


def cmd_list_timeouts(args: argparse.Namespace, ctx: Context) -> None:
    result = timeouts(ctx.connect(args).quorum_values())
    emit(result, as_json=args.json, text=f"generated: {result['generated']}\napproved: {result['approved']}")


# --- user change-quorum / change-mfa ------------------------------------------------------------------


def cmd_register(args: argparse.Namespace, ctx: Context) -> None:
    client = ctx.logged_in(args)
    token_file = files.read_file(args.signed_token)
    if args.private_key:
        files.sign_entries(token_file, files.signer(files.private_key(args.private_key, args.passphrase),
                                                    pss=args.pss))
        files.write_file(args.signed_token, token_file)
    entry = files.signed_entries(token_file, args.signed_token)[0]
    if entry.approval_data is None:
        raise CliError(f"{args.signed_token} lacks approval_data: use the file quorum token-sign generate wrote")
    result = client.quorum_register(files.public_key_pem(args.public_key), entry.approval_data, entry.signed,
                                    username=args.username)
    emit(result, as_json=args.json, text=f"registered the {result.get('algorithm')} approval key of "
                                         f"{result.get('username')}")


def cmd_deregister(args: argparse.Namespace, ctx: Context) -> None:
    result = ctx.logged_in(args).quorum_register(None, None, None, deregister=True, username=args.username)
    emit(result, as_json=args.json, text=f"{result.get('username')} no longer approves quorum tokens")


def _ask(prompt: str) -> str:
    print(prompt, end="", flush=True)
    line = sys.stdin.readline()
    if not line:
        raise CliError("no answer (end of input): give the option instead of answering the prompt")
    return line.strip()


def _signed_file(args: argparse.Namespace, token_file: TokenFile) -> TokenFile:
    """The signed form of ``token_file`` (written to --token): signed now with --private-key, else by the user
    (CloudHSM's prompt), in --signed-token or the same file."""
    if getattr(args, "private_key", None):
        files.sign_entries(token_file, files.signer(files.private_key(args.private_key, args.passphrase),
                                                    pss=args.pss))
        files.write_file(args.token, token_file)
        return token_file
    path = getattr(args, "signed_token", None) or _ask(
        "Enter signed token file path (press enter if same as the unsigned token file):") or args.token
    return files.read_file(path)


def cmd_change_mfa(args: argparse.Namespace, ctx: Context) -> None:
    client = ctx.logged_in(args)
    if args.deregister:
        result = client.mfa_register(args.username, deregister=True)
        emit(result, as_json=args.json, text=f"MFA of {args.username} is off")
        return
    if not args.token:
        raise CliError("give --token FILE (where the token to sign is written), or --deregister")
    generated = client.quorum_generate("registration")
    unsigned = TokenFile.loads(json.dumps(generated["file"]))
    written = registration_file([Challenge(e.unsigned, None, e.approval_data) for e in unsigned.tokens])
    files.write_file(args.token, written)
    signed = _signed_file(args, written)
    entry = files.signed_entries(signed, "the signed token file")[0]
    if args.public_key:
        pem: str | None = files.public_key_pem(args.public_key)
    elif args.private_key:
        from strongroom.pki import approvals

        pem = approvals.public_pem(files.private_key(args.private_key, args.passphrase).public_key())
    else:
        answer = _ask("Enter public key PEM file path:")
        pem = files.public_key_pem(answer) if answer else None
    result = client.mfa_register(args.username, pem, unsigned.tokens[0].approval_data, entry.signed,
                                 change_quorum=args.change_quorum)
    emit(result, as_json=args.json, text=f"MFA (token-sign) is on for {args.username}")


def with_strategies(client: Client, users: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``user list`` rows with CloudHSM's ``mfa`` and ``quorum`` fields ([{strategy, status}])."""
    registered = {row["username"]: row for row in client.quorum_users()}
    return [dict(user, mfa=registered.get(user["username"], {}).get("mfa", []),
                 quorum=registered.get(user["username"], {}).get("quorum", [])) for user in users]



def readable(users: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same rows for a text table: the enabled strategies by name."""
    def names(entries: list[dict[str, Any]]) -> str:
        return ",".join(e["strategy"] for e in entries if e.get("status") == "enabled")

    return [dict(user, mfa=names(user.get("mfa", [])), quorum=names(user.get("quorum", []))) for user in users]


# --- login ... mfa-token-sign --------------------------------------------------------------------------


def cmd_login_mfa(args: argparse.Namespace, ctx: Context) -> None:
    import getpass

    password = args.password or (getpass.getpass("password: ") if sys.stdin.isatty() else _ask("Enter password:"))
    client = ctx.connect(args)

    def sign(token_file: TokenFile) -> TokenFile:
        files.write_file(args.token, token_file)
        return _signed_file(args, token_file)

    started = time.monotonic()
    result = files.mfa_login(client, args.username, password, args.role, sign)
    emit({"username": result["username"], "role": result["role"]}, as_json=args.json,
         text=f"logged in as {result['username']} ({result['role']}) with MFA "
              f"({time.monotonic() - started:.1f} s to sign)")


# --- the parsers ------------------------------------------------------------------------------------------


def _signing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--private-key", help="sign with this private key (PEM) instead of signing off-box")
    p.add_argument("--passphrase", help="the private key's pass phrase")
    p.add_argument("--pss", action="store_true", help="RSA keys: RSASSA-PSS instead of PKCS#1 v1.5")


def register(sub: Any, add: AddCommand) -> None:
    """``strongroom quorum token-sign ...`` (called by build_parser)."""
    group = sub.add_parser("quorum", help="quorum (M of N) approvals").add_subparsers(
        dest="quorum_command", required=True, metavar="QUORUM_COMMAND")
    token_sign = group.add_parser("token-sign", help="token-sign quorum tokens").add_subparsers(
        dest="token_sign_command", required=True, metavar="COMMAND")

    p = add(token_sign, "generate", cmd_generate, "ask for approvals: a token bound to one request, written to FILE")
    p.add_argument("--service", required=True, choices=SERVICES)
    p.add_argument("--token", required=True, help="the token file to write (CloudHSM's format)")
    p.add_argument("--operation", help="what the token approves: " + ", ".join(OPERATIONS) + " (or a node "
                   "operation such as user.delete)")
    p.add_argument("--argument", action="append", metavar="NAME=VALUE",
                   help="an argument of that operation (username=bob, role=crypto-user, handle=0x..)")
    p.add_argument("--key", help="key-management and key-usage: the key's reference (key list)")
    p.add_argument("--use", action="append", choices=USES, help="key-usage: what the key may be used for (sign)")
    p.add_argument("--window", type=int, help="key-usage: seconds the approval stays usable once complete")
    p.add_argument("--count", type=int, help="key-usage: how many uses (0: any number within the window; default 1)")
    p.add_argument("--timeout", type=int, help="seconds to collect the approvals (at most the service's timeout)")

    p = add(token_sign, "sign", cmd_sign, "sign a token file with your private key (offline)")
    p.add_argument("--token", required=True)
    p.add_argument("--username", help="your username (quorum tokens; default: the login or STRONGROOM_PIN's)")
    _signing_options(p)

    p = add(token_sign, "approve", cmd_approve, "approve a token in the cluster (sign now, or send a file's "
            "signatures)")
    p.add_argument("--token", help="the token file")
    p.add_argument("--token-id", help="a token of the cluster (quorum token-sign list)")
    p.add_argument("--username", help="the approver (default: the login or STRONGROOM_PIN's)")
    _signing_options(p)

    p = add(token_sign, "get", cmd_get, "write the file of a token of the cluster (to sign it)")
    p.add_argument("--token-id", required=True)
    p.add_argument("--token", required=True, help="the file to write")

    add(token_sign, "list", cmd_list, "the tokens you asked for or may approve")

    p = add(token_sign, "delete", cmd_delete, "delete tokens")
    p.add_argument("--token-id")
    p.add_argument("--scope", choices=["user", "all"], help="user: your tokens; all (admins): every admin token")

    add(token_sign, "list-quorum-values", cmd_list_values, "the quorum value of each admin service (no login)")
    p = add(token_sign, "set-quorum-value", cmd_set_value, "set an admin service's quorum value (admins)")
    p.add_argument("--service", required=True, choices=["user", "quorum", "cluster"])
    p.add_argument("--value", required=True, type=int, help="1 (no quorum) to 8")
    p = add(token_sign, "set-timeout", cmd_set_timeout, "how long tokens wait for approvals, and how long an approved "
            "token stays usable (admins)")
    p.add_argument("--service", choices=SERVICES, help="one service's tokens (with --seconds)")
    p.add_argument("--seconds", type=int)
    p.add_argument("--generated", type=int, help="CloudHSM's: every service's time to collect approvals")
    p.add_argument("--approved", type=int, help="CloudHSM's: how long an approved token may be used")
    add(token_sign, "list-timeouts", cmd_list_timeouts, "the token timeouts, as CloudHSM shows them (no login)")


def register_user(user: Any, add: AddCommand) -> None:
    """``strongroom user change-quorum token-sign register|deregister`` and ``user change-mfa token-sign``."""
    quorum = user.add_parser("change-quorum", help="your quorum approval key").add_subparsers(
        dest="change_quorum_command", required=True, metavar="STRATEGY")
    token_sign = quorum.add_parser("token-sign", help="the token-sign strategy").add_subparsers(
        dest="change_quorum_action", required=True, metavar="ACTION")
    p = add(token_sign, "register", cmd_register, "register your approval key (RSA-2048+, ECDSA P-256/P-384, "
            "Ed25519) with a signed registration token")
    p.add_argument("--public-key", required=True, help="PEM file")
    p.add_argument("--signed-token", required=True, help="the registration token file, signed")
    p.add_argument("--username", help="admins: another user's key (that user signed the token; user service quorum)")
    _signing_options(p)
    p = add(token_sign, "deregister", cmd_deregister, "stop approving quorum tokens")
    p.add_argument("--username", help="admins: remove another user's key (user service quorum)")

    mfa = user.add_parser("change-mfa", help="multi-factor authentication").add_subparsers(
        dest="change_mfa_command", required=True, metavar="STRATEGY")
    p = add(mfa, "token-sign", cmd_change_mfa, "turn MFA on (a key that signs login challenges) or off")
    p.add_argument("--username", required=True)
    p.add_argument("--role", choices=["admin", "crypto-user"], help="the user's role (as CloudHSM asks it)")
    p.add_argument("--token", help="where to write the token to sign")
    p.add_argument("--signed-token", help="the signed token file (default: asked; enter = the same file)")
    p.add_argument("--public-key", help="PEM file (default: asked)")
    p.add_argument("--change-quorum", action="store_true", help="replace the quorum approval key too")
    p.add_argument("--deregister", action="store_true", help="turn MFA off")
    _signing_options(p)


def register_login(login: argparse.ArgumentParser, add: AddCommand) -> None:
    """``login --username U --role R mfa-token-sign --token FILE``."""
    factor = login.add_subparsers(dest="login_factor", metavar="FACTOR")
    p = add(factor, "mfa-token-sign", cmd_login_mfa, "log in with MFA: write the challenge to FILE, sign it")
    p.add_argument("--token", required=True, help="where the unsigned tokens are written")
    p.add_argument("--signed-token", help="the signed file (default: asked; enter = the same file)")
    _signing_options(p)

"""Token files on the CLI's side: reading and writing them, signing them, handing their signatures to the
cluster (``--approval FILE``) and the MFA login. No parser here: :mod:`strongroom.cli.quorum` has the
commands, and :mod:`strongroom.cli.context` uses :func:`submit_approval` and :func:`mfa_login` for every
command that logs in."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strongroom.cli.output import CliError
from strongroom.client import Client
from strongroom.pki import approvals
from strongroom.pki.approvals import ApprovalKeyError, Challenge, TokenFile, TokenFileError

#: One-shot commands of a user with MFA sign the login challenge with this key (PEM; pass phrase in
#: STRONGROOM_MFA_KEY_PASSPHRASE).
MFA_KEY_ENV = "STRONGROOM_MFA_KEY"
MFA_PASSPHRASE_ENV = "STRONGROOM_MFA_KEY_PASSPHRASE"


def read_file(path: str | Path) -> TokenFile:
    try:
        return TokenFile.loads(Path(path).read_bytes())
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except TokenFileError as exc:
        raise CliError(f"{path}: {exc}") from None


def write_file(path: str | Path, token_file: TokenFile | dict[str, Any]) -> None:
    text = token_file.dumps() if isinstance(token_file, TokenFile) else json.dumps(token_file, indent=2) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from None


def private_key(path: str | Path, passphrase: str | None = None) -> approvals.PrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return approvals.load_private_key(data, None if passphrase is None else passphrase.encode())
    except ApprovalKeyError as exc:
        raise CliError(f"{path}: {exc}") from None


def public_key_pem(path: str | Path) -> str:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return approvals.public_pem(approvals.load_public_key(text))
    except ApprovalKeyError as exc:
        raise CliError(f"{path}: {exc}") from None


def signer(key: approvals.PrivateKey, pss: bool = False) -> Callable[[bytes], bytes]:
    return lambda token: approvals.sign_token(key, token, pss=pss)


def sign_entries(token_file: TokenFile, sign: Callable[[bytes], bytes]) -> None:
    """Sign every entry of a registration or MFA file (``signed``)."""
    for entry in token_file.tokens:
        entry.signed = sign(entry.unsigned)


def signed_entries(token_file: TokenFile, what: str) -> list[Challenge]:
    if token_file.is_quorum:
        raise CliError(f"{what} is a quorum token file (approval_data/token/signatures), not a file of tokens to sign")
    signed = [entry for entry in token_file.tokens if entry.signed]
    if not signed:
        raise CliError(f"{what} holds no signature: sign its 'unsigned' tokens and put them in 'signed'")
    return signed


def submit_approval(client: Client, path: str | Path) -> dict[str, Any]:
    """``--approval FILE``: hand the signatures the file collected to the cluster. The request the token approves
    then finds it (a token is bound to one request: operation and arguments)."""
    token_file = read_file(path)
    if not token_file.is_quorum:
        raise CliError(f"{path} is not a quorum token file (quorum token-sign generate --service ... --token FILE)")
    assert token_file.approval_data is not None
    latest: dict[str, Any] = {}
    for signature in token_file.signatures:
        latest = client.quorum_approve(token_file.approval_data, signature.username, signature.signature)
    return latest


def mfa_login(client: Client, username: str, password: str, role: str | None,
              sign: Callable[[TokenFile], TokenFile]) -> dict[str, Any]:
    """Log in with MFA: a fresh challenge from the cluster, signed by ``sign`` (which returns the signed file)."""
    challenge = client.mfa_challenge(username, password, role)
    signed = sign(TokenFile.loads(json.dumps(challenge["file"])))
    entries = signed_entries(signed, "the signed MFA file")
    return client.login(username, password, role, mfa=[{"token": e.unsigned, "signature": e.signed or b""}
                                                       for e in entries])


def mfa_login_from_env(client: Client, username: str, password: str, role: str | None) -> dict[str, Any] | None:
    """One-shot commands: the MFA login with STRONGROOM_MFA_KEY's key, if that is set (else None)."""
    path = os.environ.get(MFA_KEY_ENV)
    if not path:
        return None
    key = private_key(path, os.environ.get(MFA_PASSPHRASE_ENV))

    def sign(token_file: TokenFile) -> TokenFile:
        sign_entries(token_file, signer(key))
        return token_file

    return mfa_login(client, username, password, role, sign)

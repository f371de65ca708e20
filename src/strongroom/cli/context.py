"""What every command handler receives, and the shape of a handler and of the parser's ``add``.

Its own module so that the command groups (``keys``, ``owner`` …) and :mod:`strongroom.cli.main`,
which registers them, both import it without importing each other.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from strongroom.cli.approvals import mfa_login_from_env, submit_approval
from strongroom.cli.common import reachable_node
from strongroom.cli.output import CliError
from strongroom.client import Client, ClientError, ClientProfile, ProfileError


class Context:
    """What a command needs: where the cluster is and, lazily, a logged-in client."""

    def __init__(self, interactive: bool = False) -> None:
        self.interactive = interactive
        self.client: Client | None = None
        self.directory: Path | str | None = None

    def connect(self, args: argparse.Namespace) -> Client:
        """``--dir`` talks to a node directly (operator/admin tooling, needs the client certificate);
        otherwise the host's agent (``STRONGROOM_AGENT_SOCKET``), else ``STRONGROOM_DIR``."""
        explicit = getattr(args, "dir", None)
        agent = os.environ.get("STRONGROOM_AGENT_SOCKET")
        target: Path | str | None
        if explicit:
            target = Path(explicit)
        elif agent:
            target = agent
        elif os.environ.get("STRONGROOM_DIR"):
            target = Path(os.environ["STRONGROOM_DIR"])
        else:
            raise CliError("no cluster given: set STRONGROOM_AGENT_SOCKET (source the env file of `strongroom up`) "
                           "or pass --dir DIR")
        if self.client is None or self.directory != target:
            if self.client is not None:
                self.client.close()
            try:
                if isinstance(target, str):
                    self.client = Client.from_agent(target)
                else:  # any node of the directory's client.json that answers, not only the first
                    profile = ClientProfile.load(target)
                    self.client = Client(profile, reachable_node(profile))
            except ProfileError as exc:
                raise CliError(str(exc)) from None
            self.directory = target
        return self.client

    def logged_in(self, args: argparse.Namespace) -> Client:
        client = self.connect(args)
        if client.session is None:
            self._log_in(client)
        if getattr(args, "approval", None):
            submit_approval(client, args.approval)  # the request then finds its approval in the cluster
        return client

    def _log_in(self, client: Client) -> None:
        if self.interactive:
            raise CliError("log in first: login --username NAME --role admin|crypto-user")
        pin = os.environ.get("STRONGROOM_PIN")
        if not pin or ":" not in pin:
            raise CliError("set STRONGROOM_PIN=username:password (and STRONGROOM_ROLE if needed) to run this command")
        username, _, password = pin.partition(":")
        role = os.environ.get("STRONGROOM_ROLE") or None
        # A user with MFA signs the login challenge with STRONGROOM_MFA_KEY's key (docs/quorum.md).
        if mfa_login_from_env(client, username, password, role) is None:
            client.login(username, password, role)

    def close(self) -> None:
        if self.client is not None:
            if not self.interactive:
                try:
                    self.client.logout()
                except ClientError:
                    pass
            self.client.close()
            self.client = None


#: A command: its parsed arguments and the context; it prints with :func:`strongroom.cli.output.emit`.
Handler = Callable[[argparse.Namespace, Context], None]

#: ``add(subparsers, name, handler, help)``: a subcommand whose handler is ``handler`` (see ``build_parser``).
AddCommand = Callable[[Any, str, Handler, str], argparse.ArgumentParser]

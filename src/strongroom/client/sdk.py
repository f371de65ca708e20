"""The blocking Python SDK: what the CLI, the tests and scripts use to talk to Strongroom.

:class:`Client` connects through the host's agent (``STRONGROOM_AGENT_SOCKET``) or straight to
a node with the client certificate of a profile, and offers every call of
:class:`~strongroom.client.calls.AsyncClient` with the same arguments, run to completion on the
connection's event-loop thread: one definition of each call serves both.
"""

from __future__ import annotations

import asyncio
import functools
import os
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from strongroom.client.calls import AsyncClient, Login, Template, pairs
from strongroom.client.connection import ClientError, Connection
from strongroom.client.profile import ClientProfile, NodeAddress, ProfileError, default_profile_path
from strongroom.errors import CKR
from strongroom.transport.tls import client_context

__all__ = ["Client", "Template", "pairs"]

P = ParamSpec("P")
R = TypeVar("R")
#: How long ``close`` waits for its logout.
LOGOUT_TIMEOUT = 5.0


def _blocking(
    call: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Client, P], R]:
    """The blocking form of one AsyncClient call: same arguments, same result, same errors."""

    @functools.wraps(call)
    def run(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> R:
        connection, calls = self._bound()
        return connection.run(call(calls, *args, **kwargs))

    run.__qualname__ = f"Client.{call.__name__}"
    return run


class Client:
    """A session with the cluster, either straight to a node (a profile with a client
    certificate: operator and admin tooling) or through the host's agent (``agent_socket``)."""

    def __init__(self, profile: ClientProfile | None = None, node: NodeAddress | None = None, *,
                 timeout: float = 60.0, agent_socket: str | None = None) -> None:
        if agent_socket is None and (profile is None or not profile.nodes):
            raise ProfileError("give a profile that names a node, or the agent's socket")
        self.profile = profile
        self.agent_socket = agent_socket
        self.node = node or (profile.nodes[0] if profile is not None and profile.nodes else None)
        self._timeout = timeout
        self._context: ssl.SSLContext | None = None
        self._connection: Connection | None = None
        self._login = Login()
        #: The calls bound to the connection they run on (replaced when the connection is).
        self._calls: tuple[Connection, AsyncClient] | None = None

    @classmethod
    def from_dir(cls, directory: Path | str, **kwargs: Any) -> Client:
        return cls(ClientProfile.load(Path(directory)), **kwargs)

    @classmethod
    def from_agent(cls, socket_path: str | None = None, **kwargs: Any) -> Client:
        path = socket_path or os.environ.get("STRONGROOM_AGENT_SOCKET")
        if not path:
            raise ProfileError("set STRONGROOM_AGENT_SOCKET (source the env file written by `strongroom up`)")
        return cls(agent_socket=path, **kwargs)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        """The agent when ``STRONGROOM_AGENT_SOCKET`` is set (the default path), else ``STRONGROOM_DIR``."""
        if os.environ.get("STRONGROOM_AGENT_SOCKET"):
            return cls.from_agent(**kwargs)
        path = default_profile_path()
        if path is None:
            raise ProfileError("set STRONGROOM_AGENT_SOCKET or STRONGROOM_DIR (source the env file written by "
                               "`strongroom up`) or pass --dir")
        return cls.from_dir(path, **kwargs)

    # --- plumbing ------------------------------------------------------------------

    @property
    def connection(self) -> Connection:
        if (self._connection is None or self._connection.closed) and self.agent_socket is not None:
            try:
                self._connection = Connection("", 0, None, unix_path=self.agent_socket, timeout=self._timeout)
            except OSError as exc:
                raise ClientError(CKR.DEVICE_REMOVED,
                                  f"cannot reach the agent at {self.agent_socket}: {exc.strerror or exc}") from None
        if self._connection is None or self._connection.closed:
            assert self.profile is not None and self.node is not None
            if self._context is None:
                self._context = client_context(self.profile.cert, self.profile.key, self.profile.ca)
            try:
                self._connection = Connection(
                    self.node.host, self.node.port, self._context, server_hostname=self.node.host,
                    timeout=self._timeout,
                )
            except (OSError, ssl.SSLError) as exc:
                raise ClientError(
                    CKR.DEVICE_REMOVED, f"cannot reach node {self.node.node_id} at {self.node.address}: {exc}"
                ) from None
        return self._connection

    def _bound(self) -> tuple[Connection, AsyncClient]:
        connection = self.connection
        bound = self._calls
        if bound is None or bound[0] is not connection:
            send = functools.partial(connection.aio.call, timeout=self._timeout)
            bound = self._calls = (connection, AsyncClient(send, login=self._login))
        return bound

    @property
    def session(self) -> bytes | None:
        return self._login.session

    @session.setter
    def session(self, value: bytes | None) -> None:
        self._login.session = value
        self._login.owned = False  # a session handed over: whoever made it logs it out

    @property
    def username(self) -> str | None:
        return self._login.username

    @property
    def role(self) -> str | None:
        return self._login.role

    def close(self) -> None:
        """Log out (a login this client made, not a session handed to it or one kept) and disconnect."""
        connection, self._connection = self._connection, None
        bound, self._calls = self._calls, None
        if connection is None:
            return
        if self._login.owned and self._login.session is not None and not connection.closed and bound is not None:
            try:
                # Through the agent the connection to the node outlives this client: say so to the node.
                connection.run(asyncio.wait_for(bound[1].logout(), LOGOUT_TIMEOUT))
            except (ClientError, OSError, TimeoutError, RuntimeError):
                pass  # the login ends with the connection anyway, or idles out
            self._login.session = self._login.username = self._login.role = None
            self._login.owned = False
        connection.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the calls (AsyncClient's, blocking) ---------------------------------------------

    call = _blocking(AsyncClient.call)

    # sessions
    login = _blocking(AsyncClient.login)
    logout = _blocking(AsyncClient.logout)
    context_login = _blocking(AsyncClient.context_login)

    # node and cluster
    node_status = _blocking(AsyncClient.node_status)
    cluster_status = _blocking(AsyncClient.cluster_status)
    cluster_set_policy = _blocking(AsyncClient.cluster_set_policy)
    cluster_initialize = _blocking(AsyncClient.cluster_initialize)
    cluster_install_certificate = _blocking(AsyncClient.cluster_install_certificate)
    cluster_csr = _blocking(AsyncClient.cluster_csr)
    cluster_activate = _blocking(AsyncClient.cluster_activate)
    hsm_enroll = _blocking(AsyncClient.hsm_enroll)
    zeroize = _blocking(AsyncClient.zeroize)
    backup_create = _blocking(AsyncClient.backup_create)

    # users
    user_create = _blocking(AsyncClient.user_create)
    user_delete = _blocking(AsyncClient.user_delete)
    user_list = _blocking(AsyncClient.user_list)
    user_change_password = _blocking(AsyncClient.user_change_password)

    # PKCS#11 sessions, objects, keys
    open_session = _blocking(AsyncClient.open_session)
    close_session = _blocking(AsyncClient.close_session)
    create_object = _blocking(AsyncClient.create_object)
    find_objects = _blocking(AsyncClient.find_objects)
    list_objects = _blocking(AsyncClient.list_objects)
    get_attributes = _blocking(AsyncClient.get_attributes)
    get_attribute = _blocking(AsyncClient.get_attribute)
    set_attributes = _blocking(AsyncClient.set_attributes)
    destroy_object = _blocking(AsyncClient.destroy_object)
    copy_object = _blocking(AsyncClient.copy_object)
    share = _blocking(AsyncClient.share)
    unshare = _blocking(AsyncClient.unshare)
    generate_key = _blocking(AsyncClient.generate_key)
    generate_key_pair = _blocking(AsyncClient.generate_key_pair)
    wrap_key = _blocking(AsyncClient.wrap_key)
    unwrap_key = _blocking(AsyncClient.unwrap_key)
    derive_key = _blocking(AsyncClient.derive_key)
    encapsulate_key = _blocking(AsyncClient.encapsulate_key)
    decapsulate_key = _blocking(AsyncClient.decapsulate_key)
    mechanisms = _blocking(AsyncClient.mechanisms)

    # crypto
    generate_random = _blocking(AsyncClient.generate_random)
    encrypt = _blocking(AsyncClient.encrypt)
    decrypt = _blocking(AsyncClient.decrypt)
    sign = _blocking(AsyncClient.sign)
    verify = _blocking(AsyncClient.verify)
    digest = _blocking(AsyncClient.digest)
    multipart = _blocking(AsyncClient.multipart)

    # quorum and MFA (docs/quorum.md)
    mfa_challenge = _blocking(AsyncClient.mfa_challenge)
    quorum_generate = _blocking(AsyncClient.quorum_generate)
    quorum_approve = _blocking(AsyncClient.quorum_approve)
    quorum_tokens = _blocking(AsyncClient.quorum_tokens)
    quorum_token = _blocking(AsyncClient.quorum_token)
    quorum_delete = _blocking(AsyncClient.quorum_delete)
    quorum_values = _blocking(AsyncClient.quorum_values)
    quorum_set_value = _blocking(AsyncClient.quorum_set_value)
    quorum_set_timeout = _blocking(AsyncClient.quorum_set_timeout)
    quorum_register = _blocking(AsyncClient.quorum_register)
    mfa_register = _blocking(AsyncClient.mfa_register)
    quorum_users = _blocking(AsyncClient.quorum_users)

    def approved(self, approval: bytes | None, call: Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, R]],
                 /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one call carrying a quorum approval (a token's approval data), e.g.
        ``client.approved(data, AsyncClient.user_delete, "bob")``."""
        connection, calls = self._bound()
        return connection.run(call(calls.approved(approval), *args, **kwargs))

"""The Python SDK: what the CLI and the tests use to talk to Strongroom.

Today it connects straight to a node with the client certificate of a profile;
once the agent exists the same calls go through ``STRONGROOM_AGENT_SOCKET``.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from strongroom.client.connection import ClientError, Connection
from strongroom.client.profile import ClientProfile, NodeAddress, ProfileError, default_profile_path
from strongroom.errors import CKR
from strongroom.transport.tls import client_context


class Client:
    def __init__(self, profile: ClientProfile, node: NodeAddress | None = None, *, timeout: float = 60.0) -> None:
        if not profile.nodes:
            raise ProfileError("the profile names no node")
        self.profile = profile
        self.node = node or profile.nodes[0]
        self._timeout = timeout
        self._context: ssl.SSLContext | None = None
        self._connection: Connection | None = None
        self.session: bytes | None = None
        self.username: str | None = None
        self.role: str | None = None

    @classmethod
    def from_dir(cls, directory: Path | str, **kwargs: Any) -> Client:
        return cls(ClientProfile.load(Path(directory)), **kwargs)

    @classmethod
    def from_env(cls, **kwargs: Any) -> Client:
        path = default_profile_path()
        if path is None:
            raise ProfileError("set STRONGROOM_DIR (source the env file written by `strongroom up`) or pass --dir")
        return cls.from_dir(path, **kwargs)

    # --- plumbing ------------------------------------------------------------------

    @property
    def connection(self) -> Connection:
        if self._connection is None or self._connection.closed:
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

    def call(self, op: str, **args: Any) -> Any:
        return self.connection.call(op, {k: v for k, v in args.items() if v is not None}, self.session)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sessions --------------------------------------------------------------------

    def login(self, username: str, password: str, role: str | None = None) -> dict[str, Any]:
        result = self.call("session.login", username=username, password=password, role=role)
        self.session = result["session"]
        self.username = result["username"]
        self.role = result["role"]
        return result

    def logout(self) -> None:
        if self.session is not None:
            try:
                self.call("session.logout")
            finally:
                self.session = None
                self.username = self.role = None

    # --- node and cluster ----------------------------------------------------------------

    def node_status(self) -> dict[str, Any]:
        return self.call("node.status")

    def cluster_status(self) -> dict[str, Any]:
        return self.call("cluster.status")

    def cluster_initialize(self, cluster_name: str = "strongroom") -> dict[str, Any]:
        return self.call("cluster.initialize", cluster_name=cluster_name)

    def cluster_activate(self, password: str, username: str = "admin") -> dict[str, Any]:
        return self.call("cluster.activate", username=username, password=password)

    # --- users ------------------------------------------------------------------------------

    def user_create(self, username: str, role: str, password: str) -> dict[str, Any]:
        return self.call("user.create", username=username, role=role, password=password)

    def user_delete(self, username: str) -> dict[str, Any]:
        return self.call("user.delete", username=username)

    def user_list(self) -> list[dict[str, Any]]:
        return self.call("user.list")["users"]

    def user_change_password(self, username: str, password: str) -> dict[str, Any]:
        return self.call("user.change_password", username=username, password=password)

    # --- crypto (crypto users) ---------------------------------------------------------------

    def generate_random(self, length: int) -> bytes:
        return self.call("random.generate", length=length)["random"]

"""The Python SDK: what the CLI and the tests use to talk to Strongroom.

Today it connects straight to a node with the client certificate of a profile;
once the agent exists the same calls go through ``STRONGROOM_AGENT_SOCKET``.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from pathlib import Path
from typing import Any

from strongroom.client.connection import ClientError, Connection
from strongroom.client.profile import ClientProfile, NodeAddress, ProfileError, default_profile_path
from strongroom.errors import CKR
from strongroom.transport.tls import client_context

Template = dict[int, Any]


def pairs(template: Template) -> list[list[Any]]:
    """Templates travel as [type, value] pairs; nested templates likewise."""
    return [[int(k), pairs(v) if isinstance(v, dict) else v] for k, v in template.items()]


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
        self.session: bytes | None = None
        self.username: str | None = None
        self.role: str | None = None

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

    def cluster_install_certificate(self, certificate: str, trust_anchor: str, custodians: list[str] | None = None,
                                    threshold: int = 0) -> dict[str, Any]:
        """Complete initialization with the customer's certificate for the cluster CSR and their CA."""
        return self.call("cluster.install_certificate", certificate=certificate, trust_anchor=trust_anchor,
                         custodians=custodians or [], threshold=threshold)

    def cluster_csr(self) -> str:
        return str(self.call("cluster.csr")["csr"])

    def cluster_activate(self, password: str, activation_secret: str, username: str = "admin") -> dict[str, Any]:
        """Set the first admin's password; ``activation_secret`` is what cluster_install_certificate returned."""
        return self.call("cluster.activate", username=username, password=password,
                         activation_secret=activation_secret)

    def hsm_enroll(self, node_id: str, certificate_pem: str) -> dict[str, Any]:
        """(Admin) allow this node certificate to receive the cluster key."""
        return self.call("hsm.enroll", node_id=node_id, certificate=certificate_pem)

    def zeroize(self, node_id: str) -> dict[str, Any]:
        """Destroy the cluster key of the node this client is connected to (``node_id`` must name it)."""
        return self.call("hsm.zeroize", node_id=node_id)

    def backup_create(self) -> tuple[dict[str, Any], bytes]:
        """Have the node make a backup now; returns its header and the file's bytes."""
        made = self.call("backup.create")
        backup_id, size = made["header"]["backup_id"], made["size"]
        parts: list[bytes] = []
        received = 0
        try:
            while received < size:
                part = self.call("backup.read", backup_id=backup_id, offset=received, length=made["chunk"])["data"]
                if not part:
                    raise ClientError(CKR.DEVICE_ERROR, "the node returned an empty backup chunk")
                parts.append(part)
                received += len(part)
        finally:
            self.call("backup.release", backup_id=backup_id)
        data = b"".join(parts)
        if hashlib.sha256(data).hexdigest() != made["sha256"]:
            raise ClientError(CKR.DEVICE_ERROR, "the backup changed in transit (SHA-256 differs from the node's)")
        return made["header"], data

    # --- users ------------------------------------------------------------------------------

    def user_create(self, username: str, role: str, password: str) -> dict[str, Any]:
        return self.call("user.create", username=username, role=role, password=password)

    def user_delete(self, username: str) -> dict[str, Any]:
        return self.call("user.delete", username=username)

    def user_list(self) -> list[dict[str, Any]]:
        return self.call("user.list")["users"]

    def user_change_password(self, username: str, password: str) -> dict[str, Any]:
        return self.call("user.change_password", username=username, password=password)

    # --- PKCS#11 sessions, objects, keys (the node's PKCS#11 object model) ---------------------

    def open_session(self) -> int:
        return self.call("p11session.open")["session"]

    def close_session(self, session: int) -> None:
        self.call("p11session.close", session=session)

    def create_object(self, template: Template, session: int | None = None) -> int:
        return self.call("object.create", template=pairs(template), session=session)["handle"]

    def find_objects(self, template: Template | None = None) -> list[int]:
        return self.call("object.find", template=pairs(template or {}))["handles"]

    def list_objects(self, template: Template | None = None) -> list[dict[str, Any]]:
        return self.call("object.list", template=pairs(template or {}))["objects"]

    def get_attributes(self, handle: int, types: list[int]) -> dict[int, Any]:
        """Readable attributes as a map; raises ClientError with the call's CKR code if any was refused."""
        result = self.call("object.get_attributes", handle=handle, types=[int(t) for t in types])
        if result["error"] is not None:
            raise ClientError(result["error"], f"attributes of object {handle}: {result['attributes']}")
        return {k: v for k, v in result["attributes"]}

    def get_attribute(self, handle: int, cka: int) -> Any:
        return self.get_attributes(handle, [cka])[cka]

    def set_attributes(self, handle: int, template: Template) -> None:
        self.call("object.set_attributes", handle=handle, template=pairs(template))

    def destroy_object(self, handle: int) -> None:
        self.call("object.destroy", handle=handle)

    def copy_object(self, handle: int, template: Template, session: int | None = None) -> int:
        return self.call("object.copy", handle=handle, template=pairs(template), session=session)["handle"]

    def share(self, handle: int, username: str) -> list[str]:
        return self.call("object.share", handle=handle, username=username)["shared_with"]

    def unshare(self, handle: int, username: str) -> list[str]:
        return self.call("object.unshare", handle=handle, username=username)["shared_with"]

    def generate_key(self, mechanism: int, template: Template, params: Any = None,
                     session: int | None = None) -> int:
        return self.call("key.generate", mechanism=int(mechanism), template=pairs(template), params=params,
                         session=session)["handle"]

    def generate_key_pair(self, mechanism: int, public_template: Template, private_template: Template,
                          params: Any = None, session: int | None = None) -> tuple[int, int]:
        result = self.call("key.generate_pair", mechanism=int(mechanism), public_template=pairs(public_template),
                           private_template=pairs(private_template), params=params, session=session)
        return result["public"], result["private"]

    def wrap_key(self, mechanism: int, wrapping_key: int, key: int, params: Any = None) -> bytes:
        return self.call("key.wrap", mechanism=int(mechanism), wrapping_key=wrapping_key, key=key,
                         params=params)["wrapped"]

    def unwrap_key(self, mechanism: int, unwrapping_key: int, wrapped: bytes, template: Template,
                   params: Any = None, session: int | None = None) -> int:
        return self.call("key.unwrap", mechanism=int(mechanism), unwrapping_key=unwrapping_key, wrapped=wrapped,
                         template=pairs(template), params=params, session=session)["handle"]

    def derive_key(self, mechanism: int, base_key: int, template: Template, params: Any = None,
                   session: int | None = None) -> int:
        return self.call("key.derive", mechanism=int(mechanism), base_key=base_key, template=pairs(template),
                         params=params, session=session)["handle"]

    def mechanisms(self) -> list[dict[str, Any]]:
        return self.call("mechanism.list")["mechanisms"]

    # --- crypto (crypto users) ---------------------------------------------------------------

    def generate_random(self, length: int) -> bytes:
        return self.call("random.generate", length=length)["random"]

    def encrypt(self, key: int, mechanism: int, data: bytes, params: Any = None) -> dict[str, Any]:
        """Returns {"data": ciphertext} plus {"iv": ...} when the node generated a GCM IV."""
        return self.call("crypto.encrypt", key=key, mechanism=int(mechanism), data=data, params=params)

    def decrypt(self, key: int, mechanism: int, data: bytes, params: Any = None) -> bytes:
        return self.call("crypto.decrypt", key=key, mechanism=int(mechanism), data=data, params=params)["data"]

    def sign(self, key: int, mechanism: int, data: bytes, params: Any = None) -> bytes:
        return self.call("crypto.sign", key=key, mechanism=int(mechanism), data=data, params=params)["signature"]

    def verify(self, key: int, mechanism: int, data: bytes, signature: bytes, params: Any = None) -> None:
        """Raises ClientError (CKR_SIGNATURE_INVALID …) when the signature does not verify."""
        self.call("crypto.verify", key=key, mechanism=int(mechanism), data=data, signature=signature,
                  params=params)

    def digest(self, mechanism: int, data: bytes) -> bytes:
        return self.call("crypto.digest", mechanism=int(mechanism), data=data)["digest"]

    def context_login(self, session: int, password: str) -> None:
        """C_Login(CKU_CONTEXT_SPECIFIC): the password again, for the operation just initialized in
        ``session`` whose key has CKA_ALWAYS_AUTHENTICATE (valid for that one operation)."""
        self.call("session.context_login", session=session, password=password)

    def multipart(self, kind: str, session: int, mechanism: int, parts: list[bytes], key: int | None = None,
                  params: Any = None, signature: bytes | None = None) -> dict[str, Any]:
        """Run ``kind`` (encrypt/decrypt/sign/verify/digest) in parts; returns outputs joined."""
        started = self.call(f"crypto.{kind}_init", session=session, mechanism=int(mechanism), key=key,
                            params=params)
        output = b""
        for part in parts:
            output += self.call(f"crypto.{kind}_update", session=session, data=part).get("data", b"")
        if kind == "verify":
            self.call("crypto.verify_final", session=session, signature=signature)
            return {"valid": True}
        final = self.call(f"crypto.{kind}_final", session=session)
        result: dict[str, Any] = dict(started)
        if kind in ("encrypt", "decrypt"):
            result["data"] = output + final["data"]
        else:
            result.update(final)
        return result

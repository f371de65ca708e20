"""Every call of the cluster's protocol, spelled out once: :class:`AsyncClient`.

Each method names one node operation, maps its arguments onto the request and its reply onto a
Python value. How a request travels is the ``send`` function it is given:

* one connection, the login held here — ``AsyncClient(connection.call)`` over an
  :class:`~strongroom.client.connection.AsyncConnection` (``open`` to a node, ``open_unix`` to
  the host's agent);
* the blocking :class:`~strongroom.client.sdk.Client`, which runs these same methods on its
  connection's event-loop thread (the CLI, the tests, scripts);
* the KMS gateway's :class:`~strongroom.kms.backend.Backend`, whose links reconnect, log in
  again and retry idempotent requests by themselves (no session passes through here).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Required, TypedDict, TypeVar

from strongroom.client.connection import ClientError
from strongroom.errors import CKR

#: Attribute type (CKA) -> value; a nested template (CKA_WRAP_TEMPLATE …) is a template again.
Template = Mapping[int, Any]
#: ``send(op, args, session)``: one request, its reply body; an error reply raises.
Send = Callable[[str, dict[str, Any], "bytes | None"], Awaitable[Any]]
#: The exception for a refusal inside a successful reply (an attribute that may not be read).
Refusal = Callable[[int, str], Exception]
#: A node operation's reply body: every handler answers with a map (``dispatch.table.Handler``).
Body = dict[str, Any]

T = TypeVar("T")


class Encrypted(TypedDict, total=False):
    """``crypto.encrypt``'s reply: the ciphertext, and the IV when the node made one (AES-GCM without one)."""

    data: Required[bytes]
    iv: bytes

#: The three node operations of each multi-part kind, by their literal names.
_MULTIPART = {
    "encrypt": ("crypto.encrypt_init", "crypto.encrypt_update", "crypto.encrypt_final"),
    "decrypt": ("crypto.decrypt_init", "crypto.decrypt_update", "crypto.decrypt_final"),
    "sign": ("crypto.sign_init", "crypto.sign_update", "crypto.sign_final"),
    "verify": ("crypto.verify_init", "crypto.verify_update", "crypto.verify_final"),
    "digest": ("crypto.digest_init", "crypto.digest_update", "crypto.digest_final"),
}


def pairs(template: Template) -> list[list[Any]]:
    """Templates travel as [type, value] pairs; nested templates likewise."""
    return [[int(k), pairs(v) if isinstance(v, dict) else v] for k, v in template.items()]


@dataclass
class Login:
    """Who a client is logged in as; the session token goes with every request."""

    session: bytes | None = None
    username: str | None = None
    role: str | None = None
    #: This client made the login (not a session handed to it): closing the client logs it out.
    owned: bool = False


class AsyncClient:
    """The cluster's calls over ``send``. ``login`` may be shared with other clients that stand for
    the same session (the blocking Client keeps one per connection it opens)."""

    def __init__(self, send: Send, *, login: Login | None = None, refused: Refusal = ClientError) -> None:
        self._send = send
        self._refused = refused
        self.login_state = login if login is not None else Login()

    @property
    def session(self) -> bytes | None:
        return self.login_state.session

    @session.setter
    def session(self, value: bytes | None) -> None:
        self.login_state.session = value
        self.login_state.owned = False

    async def call(self, op: str, /, **args: Any) -> Body:
        """Any node operation by name; arguments that are None are left out. The reply comes off the
        wire here, so this is where its shape is checked: a map, or the call fails (``refused``)."""
        body = await self._send(op, {k: v for k, v in args.items() if v is not None}, self.login_state.session)
        if not isinstance(body, dict):
            raise self._refused(int(CKR.DEVICE_ERROR), f"{op}: the reply is a {type(body).__name__}, not a map")
        return body

    def _field(self, op: str, reply: Body, name: str, kind: type[T]) -> T:
        """``reply[name]``, checked to be a ``kind`` (bytes, list ...) before a caller relies on it."""
        value = reply.get(name)
        if not isinstance(value, kind):
            raise self._refused(int(CKR.DEVICE_ERROR),
                                f"{op}: the reply's {name!r} is a {type(value).__name__}, not a {kind.__name__}")
        return value

    # --- sessions --------------------------------------------------------------------

    async def login(self, username: str, password: str, role: str | None = None, *,
                    keep: bool = False, mfa: list[dict[str, bytes]] | None = None) -> dict[str, Any]:
        """Log in. The login ends with this client's connection (or by ``logout``); ``keep`` makes it outlast
        the connection, until logout or its idle limit, for a token handed to another connection. ``mfa``: a user
        with MFA signs the tokens of :meth:`mfa_challenge` with its registered key: ``[{token, signature}]``."""
        result = await self.call("session.login", username=username, password=password, role=role,
                                 keep=keep or None, mfa=mfa)
        state = self.login_state
        session = self._field("session.login", result, "session", bytes)
        state.session, state.username, state.role = session, result["username"], result["role"]
        state.owned = not keep
        return result

    async def logout(self) -> None:
        if self.login_state.session is not None:
            try:
                await self.call("session.logout")
            finally:
                self.login_state.session = self.login_state.username = self.login_state.role = None
                self.login_state.owned = False

    async def context_login(self, session: int, password: str) -> None:
        """C_Login(CKU_CONTEXT_SPECIFIC): the password again, for the operation just initialized in
        ``session`` whose key has CKA_ALWAYS_AUTHENTICATE (valid for that one operation)."""
        await self.call("session.context_login", session=session, password=password)

    # --- node and cluster ----------------------------------------------------------------

    async def node_status(self) -> dict[str, Any]:
        return await self.call("node.status")

    async def cluster_status(self) -> dict[str, Any]:
        return await self.call("cluster.status")

    async def cluster_set_policy(self, name: str, value: str) -> dict[str, Any]:
        """(Admin) set a cluster policy (public_objects, plaintext_import, legacy_algorithms); the policies now."""
        return await self.call("cluster.set_policy", name=name, value=value)

    async def cluster_initialize(self, cluster_name: str = "strongroom") -> dict[str, Any]:
        return await self.call("cluster.initialize", cluster_name=cluster_name)

    async def cluster_install_certificate(self, certificate: str, trust_anchor: str,
                                          custodians: list[str] | None = None, threshold: int = 0) -> dict[str, Any]:
        """Complete initialization with the customer's certificate for the cluster CSR and their CA."""
        return await self.call("cluster.install_certificate", certificate=certificate,
                               trust_anchor=trust_anchor, custodians=custodians or [], threshold=threshold)

    async def cluster_csr(self) -> str:
        return str((await self.call("cluster.csr"))["csr"])

    async def cluster_activate(self, password: str, activation_secret: str, username: str = "admin") -> dict[str, Any]:
        """Set the first admin's password; ``activation_secret`` is what cluster_install_certificate returned."""
        return await self.call("cluster.activate", username=username, password=password,
                               activation_secret=activation_secret)

    async def hsm_enroll(self, node_id: str, certificate_pem: str) -> dict[str, Any]:
        """(Admin) allow this node certificate to receive the cluster key."""
        return await self.call("hsm.enroll", node_id=node_id, certificate=certificate_pem)

    async def zeroize(self, node_id: str) -> dict[str, Any]:
        """Destroy the cluster key of the node this client is connected to (``node_id`` must name it)."""
        return await self.call("hsm.zeroize", node_id=node_id)

    async def backup_create(self) -> tuple[dict[str, Any], bytes]:
        """Have the node make a backup now; returns its header and the file's bytes."""
        made = await self.call("backup.create")
        backup_id, size = made["header"]["backup_id"], made["size"]
        parts: list[bytes] = []
        received = 0
        try:
            while received < size:
                part = (await self.call("backup.read", backup_id=backup_id, offset=received,
                                        length=made["chunk"]))["data"]
                if not part:
                    raise ClientError(CKR.DEVICE_ERROR, "the node returned an empty backup chunk")
                parts.append(part)
                received += len(part)
        finally:
            await self.call("backup.release", backup_id=backup_id)
        data = b"".join(parts)
        if hashlib.sha256(data).hexdigest() != made["sha256"]:
            raise ClientError(CKR.DEVICE_ERROR, "the backup changed in transit (SHA-256 differs from the node's)")
        return made["header"], data

    # --- users ------------------------------------------------------------------------------

    async def user_create(self, username: str, role: str, password: str) -> dict[str, Any]:
        return await self.call("user.create", username=username, role=role,
                               password=password)

    async def user_delete(self, username: str) -> dict[str, Any]:
        return await self.call("user.delete", username=username)

    async def user_list(self) -> list[dict[str, Any]]:
        return self._field("user.list", await self.call("user.list"), "users", list)

    async def user_change_password(self, username: str, password: str) -> dict[str, Any]:
        return await self.call("user.change_password", username=username,
                               password=password)

    # --- PKCS#11 sessions, objects, keys (the node's PKCS#11 object model) ---------------------

    async def open_session(self) -> int:
        return int((await self.call("p11session.open"))["session"])

    async def close_session(self, session: int) -> None:
        await self.call("p11session.close", session=session)

    async def create_object(self, template: Template, session: int | None = None) -> int:
        return int((await self.call("object.create", template=pairs(template), session=session))["handle"])

    async def find_objects(self, template: Template | None = None) -> list[int]:
        reply = await self.call("object.find", template=pairs(template or {}))
        return self._field("object.find", reply, "handles", list)

    async def list_objects(self, template: Template | None = None) -> list[dict[str, Any]]:
        reply = await self.call("object.list", template=pairs(template or {}))
        return self._field("object.list", reply, "objects", list)

    async def get_attributes(self, handle: int, types: Sequence[int]) -> dict[int, Any]:
        """Readable attributes as a map; raises (``refused``) with the call's CKR code if any was refused."""
        result = await self.call("object.get_attributes", handle=handle, types=[int(t) for t in types])
        if result.get("error") is not None:
            raise self._refused(int(result["error"]), f"attributes of object {handle} are not readable")
        return {int(k): v for k, v in result["attributes"]}

    async def get_attribute(self, handle: int, cka: int) -> Any:
        return (await self.get_attributes(handle, [cka]))[cka]

    async def set_attributes(self, handle: int, template: Template) -> None:
        await self.call("object.set_attributes", handle=handle, template=pairs(template))

    async def destroy_object(self, handle: int) -> None:
        await self.call("object.destroy", handle=handle)

    async def copy_object(self, handle: int, template: Template, session: int | None = None) -> int:
        return int((await self.call("object.copy", handle=handle, template=pairs(template), session=session))["handle"])

    async def share(self, handle: int, username: str) -> list[str]:
        return self._field("object.share", await self.call("object.share", handle=handle, username=username),
                           "shared_with", list)

    async def unshare(self, handle: int, username: str) -> list[str]:
        return self._field("object.unshare", await self.call("object.unshare", handle=handle, username=username),
                           "shared_with", list)

    async def generate_key(self, mechanism: int, template: Template, params: Any = None,
                           session: int | None = None) -> int:
        return int((await self.call("key.generate", mechanism=int(mechanism), template=pairs(template),
                                    params=params, session=session))["handle"])

    async def generate_key_pair(self, mechanism: int, public_template: Template, private_template: Template,
                                params: Any = None, session: int | None = None) -> tuple[int, int]:
        result = await self.call("key.generate_pair", mechanism=int(mechanism), public_template=pairs(public_template),
                                 private_template=pairs(private_template), params=params, session=session)
        return int(result["public"]), int(result["private"])

    async def wrap_key(self, mechanism: int, wrapping_key: int, key: int, params: Any = None) -> bytes:
        reply = await self.call("key.wrap", mechanism=int(mechanism), wrapping_key=wrapping_key, key=key, params=params)
        return self._field("key.wrap", reply, "wrapped", bytes)

    async def unwrap_key(self, mechanism: int, unwrapping_key: int, wrapped: bytes, template: Template,
                         params: Any = None, session: int | None = None) -> int:
        return int((await self.call("key.unwrap", mechanism=int(mechanism), unwrapping_key=unwrapping_key,
                                    wrapped=wrapped, template=pairs(template), params=params,
                                    session=session))["handle"])

    async def derive_key(self, mechanism: int, base_key: int, template: Template, params: Any = None,
                         session: int | None = None) -> int:
        return int((await self.call("key.derive", mechanism=int(mechanism), base_key=base_key,
                                    template=pairs(template), params=params, session=session))["handle"])

    async def encapsulate_key(self, mechanism: int, public_key: int, template: Template, params: Any = None,
                              session: int | None = None) -> tuple[bytes, int]:
        """C_EncapsulateKey: (the ciphertext, the handle of the secret key holding the shared secret)."""
        reply = await self.call("key.encapsulate", mechanism=int(mechanism), public_key=public_key,
                                template=pairs(template), params=params, session=session)
        return self._field("key.encapsulate", reply, "ciphertext", bytes), int(reply["handle"])

    async def decapsulate_key(self, mechanism: int, private_key: int, ciphertext: bytes, template: Template,
                              params: Any = None, session: int | None = None) -> int:
        """C_DecapsulateKey: the handle of the secret key holding the shared secret ``ciphertext`` carries."""
        return int((await self.call("key.decapsulate", mechanism=int(mechanism), private_key=private_key,
                                    ciphertext=ciphertext, template=pairs(template), params=params,
                                    session=session))["handle"])

    async def mechanisms(self) -> list[dict[str, Any]]:
        return self._field("mechanism.list", await self.call("mechanism.list"), "mechanisms", list)

    # --- crypto (crypto users) ---------------------------------------------------------------

    async def generate_random(self, length: int) -> bytes:
        return self._field("random.generate", await self.call("random.generate", length=length), "random", bytes)

    async def encrypt(self, key: int, mechanism: int, data: bytes, params: Any = None) -> Encrypted:
        """Returns {"data": ciphertext} plus {"iv": ...} when the node generated a GCM IV."""
        reply = await self.call("crypto.encrypt", key=key, mechanism=int(mechanism), data=data, params=params)
        encrypted: Encrypted = {"data": self._field("crypto.encrypt", reply, "data", bytes)}
        if "iv" in reply:
            encrypted["iv"] = self._field("crypto.encrypt", reply, "iv", bytes)
        return encrypted

    async def decrypt(self, key: int, mechanism: int, data: bytes, params: Any = None) -> bytes:
        reply = await self.call("crypto.decrypt", key=key, mechanism=int(mechanism), data=data, params=params)
        return self._field("crypto.decrypt", reply, "data", bytes)

    async def sign(self, key: int, mechanism: int, data: bytes, params: Any = None) -> bytes:
        reply = await self.call("crypto.sign", key=key, mechanism=int(mechanism), data=data, params=params)
        return self._field("crypto.sign", reply, "signature", bytes)

    async def verify(self, key: int, mechanism: int, data: bytes, signature: bytes, params: Any = None) -> None:
        """Raises (CKR_SIGNATURE_INVALID …) when the signature does not verify."""
        await self.call("crypto.verify", key=key, mechanism=int(mechanism), data=data, signature=signature,
                        params=params)

    async def digest(self, mechanism: int, data: bytes) -> bytes:
        return self._field("crypto.digest", await self.call("crypto.digest", mechanism=int(mechanism), data=data),
                           "digest", bytes)

    # --- quorum (M of N approvals) and MFA: docs/quorum.md ------------------------------------

    def approved(self, approval: bytes | None) -> AsyncClient:
        """These calls carrying a quorum approval (a token's approval data): use it for the one request the token
        approves. None: this client."""
        if approval is None:
            return self
        send = self._send

        async def with_approval(op: str, args: dict[str, Any], session: bytes | None) -> Any:
            return await send(op, {**args, "approval": approval}, session)

        return AsyncClient(with_approval, login=self.login_state, refused=self._refused)

    async def mfa_challenge(self, username: str, password: str, role: str | None = None) -> dict[str, Any]:
        """An MFA login's first step: fresh challenges (a CloudHSM-format token file under ``file``)."""
        return await self.call("quorum.mfa_challenge", username=username, password=password, role=role)

    async def quorum_generate(self, service: str, operation: str | None = None,
                              arguments: dict[str, Any] | None = None, *, key: int | None = None,
                              uses: list[str] | None = None, window: int | None = None, count: int | None = None,
                              timeout: int | None = None) -> dict[str, Any]:
        """A pending approval bound to one request (``operation`` with ``arguments``) or, for key usage, to a key,
        its uses, a window and a use count; the token file is under ``file``."""
        return await self.call("quorum.token_generate", service=service, operation=operation, arguments=arguments,
                               key=key, uses=uses, window=window, count=count, timeout=timeout)

    async def quorum_approve(self, approval_data: bytes, username: str, signature: bytes) -> dict[str, Any]:
        return await self.call("quorum.token_approve", token=approval_data, username=username, signature=signature)

    async def quorum_tokens(self) -> list[dict[str, Any]]:
        return self._field("quorum.token_list", await self.call("quorum.token_list"), "tokens", list)

    async def quorum_token(self, token_id: str) -> dict[str, Any]:
        return await self.call("quorum.token_get", token_id=token_id)

    async def quorum_delete(self, token_id: str | None = None, scope: str | None = None) -> list[str]:
        reply = await self.call("quorum.token_delete", token_id=token_id, scope=scope)
        return self._field("quorum.token_delete", reply, "deleted", list)

    async def quorum_values(self) -> dict[str, Any]:
        return await self.call("quorum.values")

    async def quorum_set_value(self, service: str, value: int) -> dict[str, Any]:
        return await self.call("quorum.set_value", service=service, value=value)

    async def quorum_set_timeout(self, service: str | None = None, seconds: int | None = None, *,
                                 generated: int | None = None, approved: int | None = None) -> dict[str, Any]:
        """One service's time to collect approvals, or CloudHSM's ``generated`` (every service) and ``approved``
        (the time to use a token once approved)."""
        return await self.call("quorum.set_timeout", service=service, seconds=seconds, generated=generated,
                               approved=approved)

    async def quorum_register(self, public_key: str | None, registration: bytes | None, signature: bytes | None, *,
                              deregister: bool = False, username: str | None = None) -> dict[str, Any]:
        """Register (or deregister) the caller's approval key with a signed registration token; an admin gives
        ``username`` for another user's (under the user service's quorum)."""
        return await self.call("quorum.register", public_key=public_key, registration=registration,
                               signature=signature, deregister=deregister or None, username=username)

    async def mfa_register(self, username: str, public_key: str | None = None, registration: bytes | None = None,
                           signature: bytes | None = None, *, change_quorum: bool = False,
                           deregister: bool = False) -> dict[str, Any]:
        return await self.call("quorum.mfa_register", username=username, public_key=public_key,
                               registration=registration, signature=signature, change_quorum=change_quorum or None,
                               deregister=deregister or None)

    async def quorum_users(self) -> list[dict[str, Any]]:
        return self._field("quorum.users", await self.call("quorum.users"), "users", list)

    async def multipart(self, kind: str, session: int, mechanism: int, parts: list[bytes], key: int | None = None,
                        params: Any = None, signature: bytes | None = None) -> dict[str, Any]:
        """Run ``kind`` (encrypt/decrypt/sign/verify/digest) in parts; returns outputs joined."""
        init, update, final_op = _MULTIPART[kind]
        started = await self.call(init, session=session, mechanism=int(mechanism), key=key, params=params)
        output = b""
        for part in parts:
            output += (await self.call(update, session=session, data=part)).get("data", b"")
        if kind == "verify":
            await self.call(final_op, session=session, signature=signature)
            return {"valid": True}
        final = await self.call(final_op, session=session)
        result: dict[str, Any] = dict(started)
        if kind in ("encrypt", "decrypt"):
            result["data"] = output + final["data"]
        else:
            result.update(final)
        return result

"""The SDK's path through the agent: node-protocol requests relayed to one node.

A connection whose messages have the node protocol's shape
(``[1, id, op, session, args]``, five elements; the module's have four) is an SDK or
CLI client. Its requests go, unchanged and pipelined, to one node connection of the
agent — the same one for the life of the Unix connection, so a login token it got
stays valid there. If that node goes away the client gets ``CKR_DEVICE_REMOVED`` and
logs in again (the SDK does not retry logins on its own). The agent's mTLS identity
stands in for the client's: hosts that run applications need no client certificate
of their own, only access to the socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from strongroom.agent.nodes import NodeLink, NodeTimeout, NodeUnavailable
from strongroom.errors import CKR
from strongroom.transport.protocol import ProtocolError, decode_request, encode_reply

log = logging.getLogger("strongroom.agent")

#: Requests that change nothing: when the node dies under one, it is sent again to another node.
IDEMPOTENT = frozenset({
    "node.status", "node.metrics", "cluster.status", "mechanism.list", "session.info", "user.list",
    "object.find", "object.list", "object.get_attributes", "crypto.sign", "crypto.verify",
    "crypto.encrypt", "crypto.decrypt", "crypto.digest", "random.generate",
    "kms.sigv4.verify", "kms.sigv4.signing_key", "kms.record.get", "kms.record.list", "kms.data_key.generate",
})

#: What an SDK/CLI client on this host may ask of a node through the agent: the customer's users'
#: operations (log in, manage users, keys and objects, cryptography) and status. Nothing else goes
#: through: not initialization or activation (whoever opens the socket first must not become the
#: first admin), not the operator's acts (backups, zeroize, revocation), not a node's (the cluster
#: key), not enrollment or unsealing. Those need a certificate of their own, straight to a node.
ALLOWED = frozenset({
    "node.status", "cluster.status", "mechanism.list",
    "session.login", "session.logout", "session.info", "session.context_login",
    "user.create", "user.delete", "user.list", "user.change_password",
    "p11session.open", "p11session.close",
    "object.create", "object.find", "object.list", "object.get_attributes", "object.set_attributes",
    "object.destroy", "object.copy", "object.share", "object.unshare",
    "key.generate", "key.generate_pair", "key.wrap", "key.unwrap", "key.derive", "key.encapsulate", "key.decapsulate",
    "crypto.encrypt", "crypto.decrypt", "crypto.sign", "crypto.verify", "crypto.digest", "crypto.cancel",
    "crypto.encrypt_init", "crypto.encrypt_single", "crypto.encrypt_update", "crypto.encrypt_final",
    "crypto.decrypt_init", "crypto.decrypt_single", "crypto.decrypt_update", "crypto.decrypt_final",
    "crypto.sign_init", "crypto.sign_single", "crypto.sign_update", "crypto.sign_final",
    "crypto.verify_init", "crypto.verify_single", "crypto.verify_update", "crypto.verify_final",
    "crypto.digest_init", "crypto.digest_single", "crypto.digest_update", "crypto.digest_final",
    "random.generate",
    "kms.access_key.create", "kms.access_key.list", "kms.access_key.delete",
    # The KMS gateway through this host's agent (kms.toml: [cluster] agent_socket), logged in as its service
    # user: SigV4 checks, key records, data keys, and the cryptography of KEM and key-agreement keys.
    "kms.sigv4.verify", "kms.sigv4.signing_key", "kms.record.get", "kms.record.list", "kms.record.commit",
    "kms.data_key.generate", "crypto.encapsulate", "crypto.decapsulate", "crypto.derive_secret",
    # The Vault KV endpoint: admins' tokens, the service user's requests (each checks its token in the node).
    "vaultkv.token.create", "vaultkv.token.list", "vaultkv.token.revoke",
    "vaultkv.mount.read", "vaultkv.key.list", "vaultkv.key.read", "vaultkv.key.write",
    # Quorum approvals and MFA (docs/quorum.md): tokens, approval keys, the challenge of an MFA login.
    "quorum.token_generate", "quorum.token_approve", "quorum.token_list", "quorum.token_get", "quorum.token_delete",
    "quorum.values", "quorum.set_value", "quorum.set_timeout", "quorum.register", "quorum.mfa_register",
    "quorum.users", "quorum.mfa_challenge",
})


#: How long ``cluster.status`` through the agent waits for each other node's own answer.
STATUS_PROBE_SECONDS = 2.0


async def _ask(link: NodeLink) -> tuple[str | None, str | None]:
    """(why the node is unreachable, None) or (None, the state it answers ``node.status`` with) right now."""
    try:
        reply = await link.request("node.status", {}, None, timeout=STATUS_PROBE_SECONDS)
    except NodeTimeout:
        return f"no answer within {STATUS_PROBE_SECONDS:.0f} s", None
    except NodeUnavailable as exc:
        return str(exc), None
    if not reply.ok:
        return None, "unhealthy"
    state = reply.body.get("state") if isinstance(reply.body, dict) else None
    return None, str(state or "unhealthy")


async def with_agent_view(links: list[NodeLink], status: dict[str, Any], answered: NodeLink) -> dict[str, Any]:
    """``cluster.status`` as this host sees it now. The registry's health is a heartbeat up to 30 s old, and the
    agent's own health check runs every few seconds; so each node other than the one that just answered is
    asked at once (on one of its links, STATUS_PROBE_SECONDS at most), and a node that this agent cannot reach,
    that does not answer (a host cut off, a frozen process) or that does not serve is never shown ``healthy``.
    A node the agent does not know yet (learned from the registry within seconds) is ``unknown`` rather than
    taken on trust."""
    by_node: dict[str, list[NodeLink]] = {}
    for link in links:  # links_per_node links share a node's id
        by_node.setdefault(link.name, []).append(link)
    entries: list[dict[str, Any]] = [entry for entry in status.get("nodes") or [] if isinstance(entry, dict)]
    to_ask: dict[str, NodeLink] = {}
    for entry in entries:
        node_id = str(entry.get("id"))
        connected = [link for link in by_node.get(node_id, []) if link.connected]
        if connected and node_id != answered.name:
            to_ask[node_id] = connected[0]
    answers = await asyncio.gather(*(_ask(link) for link in to_ask.values()))
    seen = dict(zip(to_ask, answers, strict=True))
    nodes = []
    for entry in entries:
        node_id = str(entry.get("id"))
        node_links = by_node.get(node_id, [])
        if not node_links:
            entry = dict(entry, agent="not known to this agent yet")
            if entry.get("health") == "healthy":
                entry["health"] = "unknown"
            nodes.append(entry)
            continue
        unreachable: str | None
        state: str | None
        if node_id == answered.name:
            unreachable, state = None, "active"  # it answered this very request
        elif node_id in seen:
            unreachable, state = seen[node_id]
        else:
            unreachable, state = node_links[0].last_error or "connection lost", None
        shown: dict[str, Any] = dict(entry)
        if unreachable is not None:
            shown.update(agent=f"unreachable: {unreachable}", health="unreachable")
        else:
            shown["agent"] = "connected"
            if state != "active" and shown.get("health") == "healthy":
                shown["health"] = state or "unhealthy"
        nodes.append(shown)
    return dict(status, nodes=nodes)


#: Requests of one SDK/CLI client relayed at once (the node allows 128 per connection).
MAX_IN_FLIGHT = 128
#: Replies waiting in a client's socket buffer beyond this make its relays wait for it to read.
WRITE_HIGH_WATER = 1 << 20
#: Logins remembered per client connection (to log them out when it closes).
MAX_LOGINS = 256
LOGOUT_TIMEOUT = 5.0


class Passthrough:
    """One SDK/CLI client's requests, relayed.

    At most :data:`MAX_IN_FLIGHT` of its requests are relayed at once: ``submit`` waits for room, so the
    server stops reading the client meanwhile. A reply leaves once the client's socket buffer is under
    :data:`WRITE_HIGH_WATER`; until then its relay keeps its place. A client that sends and never reads
    therefore holds at most that much memory here (the node does the same for the agent).

    Logins made through it end with it: they were made on the agent's connection to the node, which
    outlives this client, so ``close`` logs them out (but those the client asked to keep).
    """

    def __init__(self, pool: Any, writer: asyncio.StreamWriter) -> None:
        self._pool = pool
        self._writer = writer
        self._link: NodeLink | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._drain_lock = asyncio.Lock()
        #: Login tokens made through this client (and not kept), with the link they live on.
        self._logins: dict[bytes, NodeLink] = {}

    async def submit(self, payload: bytes) -> None:
        """Relay one request; waits while :data:`MAX_IN_FLIGHT` are already on their way."""
        await self._room.acquire()
        task = asyncio.get_running_loop().create_task(self._relay(payload))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._room.release()

    async def _reply(self, request_id: int, code: int, body: Any) -> None:
        writer = self._writer
        if writer.is_closing():
            return
        writer.write(encode_reply(request_id, code, body))
        if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
            async with self._drain_lock:
                try:
                    await writer.drain()
                except (ConnectionError, OSError):
                    pass

    async def _relay(self, payload: bytes) -> None:
        try:
            request = decode_request(payload)
        except ProtocolError as exc:
            await self._reply(exc.request_id or 0, exc.code, str(exc))
            return
        if request.op not in ALLOWED:
            await self._reply(request.request_id, CKR.ACTION_PROHIBITED,
                              f"{request.op} is not available through the agent (it forwards only "
                              "the operations of the HSM's users); run it against a node with a "
                              "certificate of your own (strongroom --dir DIR ...)")
            return
        attempts = 2 if request.op in IDEMPOTENT else 1
        failed: list[NodeLink] = []
        try:
            for attempt in range(attempts):
                try:
                    if self._link is None or not self._link.connected or self._link in failed:
                        self._link = await self._pool.acquire(None, exclude=failed)
                    link = self._link
                    reply = await link.request(request.op, request.args, request.session)
                except NodeUnavailable as exc:
                    if self._link is not None:
                        # Every link to that node is suspect (a node that died takes them all, and the others
                        # may not have noticed yet): the retry goes to another node, as NodePool.call's does.
                        failed.extend(self._link.group.links)
                    if attempt + 1 < attempts:
                        continue
                    await self._reply(request.request_id, CKR.DEVICE_REMOVED, str(exc))
                    return
                body = reply.body
                if request.op == "cluster.status" and reply.ok and isinstance(body, dict):
                    body = await with_agent_view(self._pool.links, body, link)
                self._note_login(request.op, request.args, request.session, reply.ok, body, link)
                await self._reply(request.request_id, reply.code, body)
                return
        except Exception:  # a relay failure must reach the client as a code
            log.exception("relaying %s failed", request.op)
            await self._reply(request.request_id, CKR.GENERAL_ERROR, "agent error; see its log")

    def _note_login(self, op: str, args: Any, session: bytes | None, ok: bool, body: Any, link: NodeLink) -> None:
        if not ok:
            return
        if op == "session.login" and isinstance(body, dict) and isinstance(body.get("session"), bytes):
            if not (isinstance(args, dict) and args.get("keep") is True) and len(self._logins) < MAX_LOGINS:
                self._logins[body["session"]] = link
        elif op == "session.logout" and session is not None:
            self._logins.pop(session, None)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        logins, self._logins = self._logins, {}
        for token, link in logins.items():
            if link.connected:
                try:
                    await link.request("session.logout", {}, token, timeout=LOGOUT_TIMEOUT)
                except Exception as exc:  # noqa: BLE001 - the login idles out on the node anyway
                    log.info("could not log out a closed client's login on %s: %s", link.name, exc)

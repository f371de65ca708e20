"""The path of every request through a worker: error state -> operation lookup -> peer role ->
cluster state -> session and role -> argument check -> quorum -> handler; and every failure becomes a reply."""

from __future__ import annotations

import asyncio
from typing import Any

from strongroom.dispatch import quorum, table
from strongroom.dispatch.auditing import audit_refusal
from strongroom.dispatch.call import Call, Services
from strongroom.errors import CKR, CryptokiNotInitialized, HsmError
from strongroom.services.state import ALL_STATES, INITIALIZE_IN_PROGRESS, INITIALIZED, LIFE_CYCLE, UNINITIALIZED
from strongroom.transport.protocol import Request
from strongroom.transport.server import ConnectionPeer


class Pipeline:
    def __init__(self, services: Services) -> None:
        self.services = services
        self._health = services.health
        self._state = services.state
        self._logins = services.sessions.logins

    async def handle(self, request: Request, connection_id: int, peer: ConnectionPeer | str) -> tuple[int, Any]:
        """The listener's request handler. ``peer``: the connection's verified certificate, or just a name."""
        health = self._health
        health.counters["requests"] += 1
        try:
            spec = table.lookup(request.op)
            if isinstance(peer, str):
                call = Call(self.services, request, connection_id, peer, None)
            else:
                call = Call(self.services, request, connection_id, peer.name, None, peer)
            await self._check_peer(spec, call)
            if health.error is not None and not spec.in_error_state:
                raise HsmError(f"the node is in the error state: {health.error}", CKR.DEVICE_ERROR)
            if health.error is None and spec.states != ALL_STATES:
                state = await self._state.current()
                if state not in spec.states:
                    raise state_error(state, spec.name, spec.states)
            if spec.roles is not None:
                call.session = self._logins.resolve(request.session)
                table.check_role(spec, call.session.role.value)
            raw, approval = quorum.split(spec.quorum, request.args)
            args = table.parse_args(spec.args, raw)
            if spec.quorum is not None:
                await quorum.enforce(call, spec.name, spec.quorum, args, approval)
            result = await spec.handler(call, args)
            return CKR.OK, result
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure must become a reply
            health.counters["errors"] += 1
            return table.error_reply(exc, request.op)

    async def _check_peer(self, spec: table.OperationSpec, call: Call) -> None:
        """The certificate's role must be one the operation names; a refusal of a privileged
        operation (one an application host may not call) is audited."""
        peer = call.peer
        try:
            table.check_peer(spec, None if peer is None else peer.role)
        except HsmError as exc:
            if table.AGENT not in spec.peers:
                await audit_refusal(call, spec.name, exc, {
                    "peer": call.peer_name, "peer_role": None if peer is None else peer.role,
                    "peer_fingerprint": None if peer is None else peer.fingerprint_sha256})
            raise


def state_error(state: str, op: str, allowed: frozenset[str]) -> HsmError:
    """Why ``op`` (allowed in the states ``allowed``) is refused while the cluster is ``state``."""
    if all(LIFE_CYCLE.index(s) < LIFE_CYCLE.index(state) for s in allowed):
        return HsmError(f"{op}: the cluster is already {state}", CKR.ACTION_PROHIBITED)
    if state == UNINITIALIZED:
        return CryptokiNotInitialized(f"{op}: the cluster is not initialized (run cluster.initialize first)")
    if state == INITIALIZE_IN_PROGRESS:
        return CryptokiNotInitialized(
            f"{op}: the cluster's certificate is not installed yet; sign the cluster CSR with your CA and run "
            "strongroom cluster initialize --signed-cert CERT --trust-anchor CA"
        )
    if state == INITIALIZED:
        return CryptokiNotInitialized(
            f"{op}: the cluster is initialized but not activated; "
            "only activation works now (strongroom cluster activate)"
        )
    return HsmError(f"{op} is not available while the cluster is {state}", CKR.ACTION_PROHIBITED)

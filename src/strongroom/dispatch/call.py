"""What a handler receives: the :class:`Call` being served, and through it the worker's :class:`Services`.

Handlers are ``async def handler(call: Call, args: ArgsDataclass) -> dict``. ``Services`` is the
narrow set of concerns they reach, each an object of :mod:`strongroom.services` built by the node
process (:mod:`strongroom.node.worker`).
"""

from __future__ import annotations

from dataclasses import dataclass

from strongroom.auth.sessions import Session
from strongroom.errors import UserNotLoggedIn
from strongroom.services.auditor import Auditor
from strongroom.services.backups import Backups
from strongroom.services.config import NodeConfig
from strongroom.services.health import Health
from strongroom.services.keyring import ClusterKeyring, SupervisorPort
from strongroom.services.registry import Registration
from strongroom.services.revocation import Revocation
from strongroom.services.sessions import Sessions
from strongroom.services.state import ClusterState
from strongroom.transport.protocol import Request
from strongroom.transport.server import ConnectionPeer


@dataclass(frozen=True, slots=True)
class Services:
    """One worker's services, one object per concern."""

    config: NodeConfig
    #: Error state, self-test report, counters.
    health: Health
    #: The cluster key's life cycle; the barrier, users, objects and loaded keys over it.
    keyring: ClusterKeyring
    #: The cluster's life-cycle state.
    state: ClusterState
    #: Logins, PKCS#11 sessions, the admin-login throttle.
    sessions: Sessions
    audit: Auditor
    revocation: Revocation
    #: This node's registry record.
    registration: Registration
    #: Backups made here: produced for the operator, and automatic ones.
    backups: Backups
    #: The channel to this node's supervisor (seal status, unsealing).
    supervisor: SupervisorPort


@dataclass(slots=True)
class Call:
    """One request being served: who asks, through which connection, in which session."""

    services: Services
    request: Request
    connection_id: int
    peer_name: str
    session: Session | None
    #: The verified peer certificate (None when not known).
    peer: ConnectionPeer | None = None

    @property
    def actor(self) -> str | None:
        return None if self.session is None else self.session.username

    @property
    def login(self) -> Session:
        """The caller's login: the pipeline resolved it for every operation that names roles."""
        session = self.session
        if session is None:
            raise UserNotLoggedIn("this operation needs a login")
        return session

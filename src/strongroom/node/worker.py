"""The wiring of one worker: its services, one object per concern, and the request pipeline over them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from strongroom.audit import AuditLog
from strongroom.dispatch import ops  # noqa: F401  (registers every operation)
from strongroom.dispatch.call import Services
from strongroom.dispatch.pipeline import Pipeline
from strongroom.errors import HsmError
from strongroom.node.channel import SupervisorLink
from strongroom.services.auditor import Auditor
from strongroom.services.backups import Backups
from strongroom.services.config import NodeConfig
from strongroom.services.freshness import Freshness
from strongroom.services.health import Health, SelfTestReport
from strongroom.services.keyring import ClusterKeyring
from strongroom.services.registry import Registration
from strongroom.services.revocation import Revocation
from strongroom.services.sessions import Sessions
from strongroom.services.state import ClusterState
from strongroom.store.base import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Worker:
    services: Services
    pipeline: Pipeline
    #: Store rollback and audit head checks (see strongroom.services.freshness).
    freshness: Freshness

    async def connection_closed(self, connection_id: int) -> None:
        """The listener's hook: a client connection ended, and with it its logins (unless kept)."""
        for session in self.services.sessions.connection_closed(connection_id):
            if session.role.value == "public":
                continue  # an anonymous session authenticated nobody
            try:
                await self.services.audit.record("auth.logout", actor=session.username,
                                                 details={"reason": "connection closed"})
            except HsmError as exc:
                log.error("could not audit the end of a login with its connection: %s", exc)


def build_worker(config: NodeConfig, store: Store, selftest: SelfTestReport, boot: int, error: str | None = None,
                 supervisor: SupervisorLink | None = None, *, index: int = 0) -> Worker:
    """Worker ``index`` of a node (0 advances the store epoch and records the audit head). ``supervisor``:
    the channel to the node's supervisor; None runs detached (unit tests)."""
    link = supervisor or SupervisorLink(None)
    health = Health(selftest, boot, error)
    audit = Auditor(AuditLog(config.audit_path, node_id=config.node_id, boot=boot))
    keyring = ClusterKeyring(config, store, link, health)
    audit.barrier = lambda: keyring.barrier
    link.on_key = keyring.adopt_key
    registration = Registration(config, keyring, health)
    services = Services(
        config=config,
        health=health,
        keyring=keyring,
        state=ClusterState(keyring, store),
        sessions=Sessions(config.limits, keyring, store),
        audit=audit,
        revocation=Revocation(keyring),
        registration=registration,
        backups=Backups(config, keyring, audit, health),
        supervisor=link,
    )
    fresh = Freshness(config, store, keyring, health, audit, advance=index == 0)

    async def key_installed() -> None:
        if await fresh.check():
            await registration.register()
            if index == 0:
                await fresh.publish_audit_head()

    keyring.on_key_installed = key_installed
    return Worker(services, Pipeline(services), fresh)

"""``strongroom agent --config FILE``: the agent in the foreground, logging to stderr.

SIGTERM and SIGINT stop it cleanly: the socket stops accepting, every application's
node logins end, the connections to the nodes close and the socket file is removed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from pathlib import Path

from strongroom import __version__
from strongroom.agent.config import AgentConfig, ConfigError
from strongroom.agent.nodes import NodePool
from strongroom.agent.runtime import Agent
from strongroom.agent.server import AgentServer, AgentSocketError
from strongroom.hardening import harden_process
from strongroom.metrics import agent as agent_metrics
from strongroom.pki import PkiError
from strongroom.pki.reload import reload_on_sighup
from strongroom.transport import loop as event_loop

log = logging.getLogger("strongroom.agent")


async def serve(config: AgentConfig, ready: asyncio.Event | None = None) -> int:
    try:
        pool = NodePool(config)
    except (OSError, ssl.SSLError, PkiError) as exc:
        log.error("cannot load the client certificate, key or CA (%s, %s, %s): %s",
                  config.cert, config.key, config.ca, exc)
        return 2
    agent = Agent(config, pool)
    server = AgentServer(agent, config.socket, config.socket_group)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
    except AgentSocketError as exc:
        log.error("%s", exc)
        return 1
    await pool.start()
    agent_metrics.start(config, agent)
    reload_on_sighup(pool._context, config.cert, config.key)  # strongroom cert rotate: new connections, new cert
    reachable = [link.key for link in pool.links if link.connected]
    log.info("Strongroom %s agent ready: slot %d, token %r, nodes reachable: %s", __version__, config.slot_id,
             config.cluster_name, ", ".join(reachable) or "none yet")
    from strongroom.sdnotify import notify_ready  # systemd Type=notify: the socket answers

    notify_ready(f"agent socket {config.socket}")
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await server.close()
        await agent.shutdown()
        await pool.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped")
    return 0


def run(config_path: Path) -> int:
    try:
        config = AgentConfig.load(config_path)
    except ConfigError as exc:
        print(f"strongroom agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s agent %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The agent holds its applications' PINs (for transparent re-login): no core dumps, no ptrace.
    log.info("hardening: %s", harden_process())
    return event_loop.run(serve(config))

"""The node process: harden, self-test, open the seal, then serve with worker processes.

pyca/cryptography holds the GIL during RSA and EC operations, so a node runs
several worker processes (about one per core) that accept on one shared listening
socket. Each worker has its own store connection, caches and login sessions; a
client connection stays on the worker that accepted it. The main process is the
workers' supervisor (:mod:`strongroom.node.supervisor`): it holds the seal and the
cluster key for the node, and no worker outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import sys
from pathlib import Path

from strongroom import __version__
from strongroom.audit import AuditLog
from strongroom.hardening import harden_process
from strongroom.metrics import node as node_metrics
from strongroom.node import selftest, supervisor
from strongroom.node.channel import SupervisorLink
from strongroom.node.worker import build_worker
from strongroom.pki.reload import reload_on_sighup
from strongroom.seal import startup_refusal
from strongroom.services import quorum, telemetry
from strongroom.services.config import NodeConfig
from strongroom.services.health import SelfTestReport
from strongroom.services.registry import HEARTBEAT_SECONDS
from strongroom.transport import loop as event_loop
from strongroom.transport.server import NodeListener
from strongroom.transport.tls import server_context

log = logging.getLogger("strongroom.node")
#: glibc's mallopt parameter (malloc.h).
_M_MMAP_THRESHOLD = -3


def _next_boot(config: NodeConfig) -> int:
    path = config.boot_counter_path
    try:
        boot = int(path.read_text().strip()) + 1
    except FileNotFoundError:
        boot = 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{boot}\n")
    os.replace(tmp, path)
    return boot


def _prepare_audit_log(config: NodeConfig, boot: int) -> str | None:
    """Create the log on first boot; a log missing later means it was deleted: refuse to serve."""
    if config.audit_path.exists():
        return None
    if boot == 1:
        AuditLog.create(config.audit_path)
        return None
    return f"the audit log {config.audit_path} is missing (deleted?); the node refuses to serve"


def _listen(config: NodeConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((config.host, config.port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _worker(config: NodeConfig, sock: socket.socket, report: SelfTestReport, boot: int,
                  error: str | None, channel: socket.socket | None = None,
                  initial: tuple[str, bytearray] | None = None, index: int = 0) -> None:
    store = config.open_store()
    link = SupervisorLink(channel)
    worker = build_worker(config, store, report, boot, error, link, index=index)
    services = worker.services
    stop = asyncio.Event()

    def shutdown() -> None:
        stop.set()
        os.kill(os.getppid(), signal.SIGTERM)  # the supervisor stops the sibling workers

    services.health.shutdown = shutdown
    link.on_lost = stop.set
    await link.start()
    if initial is not None and services.health.error is None:
        services.keyring.adopt_key(*initial)
    listener = NodeListener(
        node_metrics.timed(worker.pipeline.handle),
        admit=services.revocation.admit_connection,
        on_close=worker.connection_closed,
        max_frame=config.limits.max_frame,
        max_in_flight=config.limits.max_in_flight,
        max_connections=config.limits.max_connections,
    )
    context = server_context(config.tls_cert, config.tls_key, config.ca_cert)
    await listener.start(sock, context)
    reload_on_sighup(context, config.tls_cert, config.tls_key)  # strongroom cert rotate: no restart
    tasks = [asyncio.create_task(services.sessions.watch_users()), asyncio.create_task(services.sessions.reap()),
             asyncio.create_task(worker.freshness.run(HEARTBEAT_SECONDS)),
             # Audit outcomes still to settle or write; worker 0 also settles a dead worker's intents.
             asyncio.create_task(services.audit.run(orphans=index == 0, checkpoint=config.node_dir / "audit.scan")),
             asyncio.create_task(telemetry.sample(services.sessions, services.keyring, primary=index == 0))]
    if index == 0:
        # One worker per node keeps the heartbeat and looks after automatic backups.
        tasks.append(asyncio.create_task(services.registration.heartbeat()))
        # ...and writes the failed logins the node counted while the store had no quorum (auth/offline.py).
        tasks.append(asyncio.create_task(services.sessions.reconcile_lockouts()))
        # ...and audits the quorum tokens that expire (docs/quorum.md).
        tasks.append(asyncio.create_task(quorum.run_sweep(services.keyring, services.audit)))
        if config.backup.dir is not None:
            tasks.append(asyncio.create_task(services.backups.run_scheduler()))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("worker %d serving on %s", os.getpid(), config.address)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if index == 0:
        await worker.freshness.publish_audit_head()  # clean shutdown: the head as it is now
    await services.keyring.stop_background()
    await listener.close()
    node_metrics.flush_requests()  # what the last half second counted
    await link.close()
    await store.close()


def _run_worker(config: NodeConfig, sock: socket.socket, report: SelfTestReport, boot: int,
                error: str | None, channel: socket.socket, initial: tuple[str, bytearray] | None,
                index: int = 0) -> None:
    event_loop.run(_worker(config, sock, report, boot, error, channel, initial, index))


def _prepare_for_many_connections() -> str:
    """Descriptors for every connection the listener allows, and memory that goes back to the system.

    glibc raises its mmap threshold to the size of the first large block freed, so the 256 KiB TLS
    buffer of each connection (asyncio's SSLProtocol) then comes from the heap, and a flood of
    connections leaves the heap that large after they are gone (measured: 1,000 connections, +300 MB
    kept). A fixed threshold keeps such buffers mapped on their own: closed, they are returned.
    """
    done = []
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
    done.append(f"open files {soft}")
    try:
        libc = ctypes.CDLL(None)
        if libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024) == 1:
            done.append("malloc mmap threshold fixed at 128 KiB")
    except (OSError, AttributeError):
        done.append("malloc left as it is (not glibc)")
    return ", ".join(done)


def serve(config_path: Path) -> int:
    config = NodeConfig.load(config_path)
    node_metrics.prepare(config)  # before anything is counted: the workers count into DIR/metrics
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s {config.node_id} %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per etcd request would drown the node's log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # First of all, before any secret is read: no core dumps, no ptrace by the same user.
    hardening = harden_process()
    log.info("Strongroom %s: node %s (zone %s) starting", __version__, config.node_id, config.zone)
    log.info("hardening: %s", hardening)
    log.info("memory and descriptors: %s", _prepare_for_many_connections())
    refusal = startup_refusal(config.node_dir)
    if refusal is not None:
        # Say it where the operator looks first (stderr/node.log), then refuse: no worker, no socket.
        log.error("refusing to start: %s", refusal)
        return 2
    report = selftest.run_all(fail=frozenset(config.fail_selftests))
    error = None
    if not report.ok:
        error = "power-on self-test failed: " + "; ".join(f.reason for f in report.failed)
        log.error("%s; the node stays in the error state and refuses every operation", error)
    boot = _next_boot(config)
    error = error or _prepare_audit_log(config, boot)
    if config.audit_path.exists():
        AuditLog(config.audit_path, node_id=config.node_id, boot=boot).append(
            "node.start",
            actor=None,
            outcome="ok" if error is None else "CKR_DEVICE_ERROR",
            details={"self_tests": "passed" if report.ok else f"failed: {', '.join(report.failed_names)}",
                     "error": error, "workers": config.workers, "seal": config.seal.type},
        )
    sock = _listen(config)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor ignores it; each worker reloads its certificate

    def run_worker(channel: socket.socket, initial: tuple[str, bytearray] | None, index: int) -> None:
        _run_worker(config, sock, report, boot, error, channel, initial, index)

    from strongroom.sdnotify import notify_ready  # systemd Type=notify: it listens

    notify_ready(f"node {config.node_id} listening on {config.address}")
    try:
        return supervisor.run(config, sock, boot, run_worker)
    finally:
        node_metrics.release(config.node_dir)

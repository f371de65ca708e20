"""A node's supervisor: it opens the seal, holds the cluster key for the node, and runs the workers.

The node process (the pid ``strongroom up`` records) hardens itself, self-tests, then:

1. opens its seal (:mod:`strongroom.seal`): a ``file``/``tpm``/``kms``/``pkcs11`` seal opens
   here, before any worker exists; a seal whose provider cannot be reached now is retried;
   one that fails authentication stops the node (tamper response). A seal whose type differs
   from ``node.toml [seal]`` is migrated as soon as the key is open (``seal migrate``);
2. forks the workers (about one per core), each with a private channel
   (:mod:`strongroom.node.channel`) and ``PR_SET_PDEATHSIG``, so that no worker outlives it;
3. while it has no key — a new node, or a ``shares`` seal — asks the peers for it
   (``hsm.clone_key``) and, for a ``shares`` seal, collects the custodians' shares that the
   workers forward (:mod:`strongroom.seal.shares`); the key, once here, goes to every worker;
4. keeps the key a worker made (``cluster.initialize``) and hands it to the others.

A worker that dies is restarted (:meth:`Supervisor._restart`), after a pause that doubles with
each death in a row (up to :data:`MAX_BACKOFF`); every death is logged and audited
(``node.worker_exit``) and shows in ``node.status`` (``workers``). The node as a whole stops
only when told to (SIGTERM/SIGINT, a worker asking it to: zeroize), or on a tamper response; it
then says why in its log and its audit log (``node.stop``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from strongroom.audit import AuditLog, AuditWriteError
from strongroom.auth.offline import OfflineCounts
from strongroom.hardening import die_with_parent
from strongroom.metrics import node as node_metrics
from strongroom.node.channel import ChannelClosed, encode, open_stream, read_message
from strongroom.pki.sealedbox import SealedBox
from strongroom.seal import (
    SHARES,
    SealedAwaitingKey,
    SealedIdentity,
    SealError,
    SealUnavailable,
    reseal_cluster_key,
    seal_cluster_key,
    seal_exists,
    seal_info,
    shares_check,
    unseal_cluster_key,
)
from strongroom.seal.shares import UnsealAttempt, UnsealRefused
from strongroom.services.config import NodeConfig
from strongroom.services.peers import load_peers

log = logging.getLogger("strongroom.node")

#: Between two rounds of asking the peers for the key, and of retrying an unreachable seal provider.
RETRY_SECONDS = 3.0
#: The first pause before a dead worker is started again; it doubles with each death in a row.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: A worker that ran this long before dying starts its series of restarts afresh.
STABLE_SECONDS = 60.0


class SealRefusal(Exception):
    """The seal failed authentication: the node must not start."""


@dataclass
class SealState:
    """What ``node.status`` and ``strongroom status`` show about the seal."""

    type: str
    state: str = "sealed"  # sealed | unsealed | uninitialized
    detail: str = ""
    sealed_type: str | None = None  # the type of the seal on disk, when it differs (migration pending)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "state": self.state, "detail": self.detail, "sealed_type": self.sealed_type}


@dataclass
class WorkerHandle:
    pid: int
    #: The supervisor's end of the worker's channel.
    channel: socket.socket
    index: int = 0
    started: float = field(default_factory=time.monotonic)
    writer: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


@dataclass
class WorkerRecord:
    """What ``node.status`` shows of one worker slot: restarts and the last death."""

    index: int
    pid: int | None = None
    started: float = 0.0
    restarts: int = 0
    #: Deaths in a row without a stable run in between (sets the backoff).
    streak: int = 0
    last_exit: str | None = None
    last_exit_at: float | None = None
    restart_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        now = time.time()
        return {"index": self.index, "pid": self.pid, "restarts": self.restarts, "last_exit": self.last_exit,
                "last_exit_at": self.last_exit_at,
                "uptime_seconds": None if self.pid is None else round(time.monotonic() - self.started, 1),
                "restart_in_seconds": None if self.restart_at is None else max(0.0, round(self.restart_at - now, 1))}


def describe_exit(status: int) -> str:
    """How a worker ended, in words (a signal by name)."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        return f"killed by {name}" + (" (core dumped)" if os.WCOREDUMP(status) else "")
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    def __init__(self, config: NodeConfig, sock: socket.socket, boot: int, run_worker: Callable[..., None]) -> None:
        self.config = config
        self.sock = sock
        self.boot = boot
        self.run_worker = run_worker
        self.cluster_id: str | None = None
        self.key: bytearray | None = None
        self.seal = SealState(config.seal.type)
        self.workers: dict[int, WorkerHandle] = {}
        self.slots: dict[int, WorkerRecord] = {}
        #: Failed logins counted while the store could not (auth/offline.py): one counter per node.
        self.offline_logins = OfflineCounts()
        self.attempt: UnsealAttempt | None = None
        self.status = 0
        self._stopping = False
        #: Why the node stops (logged and audited once).
        self.stop_reason: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None
        self._audit = AuditLog(config.audit_path, node_id=config.node_id, boot=boot)

    # --- the seal ----------------------------------------------------------------------------

    def open_seal(self) -> None:
        """Before the workers exist: open the seal if it can be opened now. Raises SealRefusal."""
        node_dir = self.config.node_dir
        if not seal_exists(node_dir):
            self.seal.state, self.seal.detail = "uninitialized", "no cluster key: waiting to be initialized or " \
                                                                  "to receive the key from a peer (enrolled node)"
            return
        try:
            identity, sealed_type = seal_info(node_dir)
            self.seal.sealed_type = None if sealed_type == self.config.seal.type else sealed_type
            identity, key = unseal_cluster_key(node_dir, self.config.seal)
        except SealedAwaitingKey:
            self.cluster_id = identity.cluster_id
            self.seal.detail = "waiting for the key from a running node or for the custodians' shares " \
                               "(strongroom unseal)"
            return
        except SealUnavailable as exc:
            self.seal.detail = f"the seal's provider cannot be reached: {exc}; retrying"
            log.warning("sealed: %s", self.seal.detail)
            return
        except SealError as exc:
            raise SealRefusal(str(exc)) from None
        self._install(identity.cluster_id, key, how=f"seal {sealed_type}")
        if sealed_type == "file":
            from strongroom.seal.file import WARNING

            log.warning("%s", WARNING)

    def _install(self, cluster_id: str, key: bytearray, *, how: str) -> None:
        self._wipe()
        self.cluster_id = cluster_id
        self.key = key
        self.seal.state, self.seal.detail = "unsealed", f"unsealed ({how})"
        self._migrate_if_needed()
        log.info("holding the cluster key of cluster %s (%s)", cluster_id, how)

    def _migrate_if_needed(self) -> None:
        node_dir = self.config.node_dir
        if self.key is None or self.cluster_id is None or not seal_exists(node_dir):
            return
        try:
            _identity, sealed_type = seal_info(node_dir)
        except SealError:
            return
        if sealed_type == self.config.seal.type and self.seal.sealed_type is None:
            return
        identity = SealedIdentity(self.cluster_id, self.config.node_id)
        try:
            old = reseal_cluster_key(node_dir, identity, self.key, self.config.seal)
        except SealError as exc:
            log.error("seal migration to %s failed (the %s seal stays): %s", self.config.seal.type, sealed_type, exc)
            self.seal.detail += f"; migration to {self.config.seal.type} failed: {exc}"
            return
        self.seal.sealed_type = None
        log.info("seal migrated from %s to %s", old, self.config.seal.type)
        self._record("seal.migrate", {"from": old, "to": self.config.seal.type})

    def _wipe(self) -> None:
        if self.key is not None:
            self.key[:] = bytes(len(self.key))
            self.key = None

    def _record(self, event: str, details: dict[str, Any], outcome: str = "ok") -> None:
        try:
            self._audit.append(event, actor=None, outcome=outcome, details=details)
        except AuditWriteError as exc:
            log.error("audit log write failed (%s): %s", event, exc)

    # --- workers -----------------------------------------------------------------------------

    def start_workers(self) -> None:
        for index in range(max(1, self.config.workers)):
            self._spawn(index)
        # The listening socket stays open here: a worker started again later accepts on it, and
        # connections that arrive while no worker runs wait in its backlog instead of being refused.

    def _spawn(self, index: int) -> WorkerHandle:
        parent = os.getpid()
        ours, theirs = socket.socketpair()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                # Forked from a running supervisor (a restart): nothing of its loop's signal set-up applies.
                signal.set_wakeup_fd(-1)
                for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                ours.close()
                for sibling in self.workers.values():
                    # The supervisor's ends of the siblings' channels: held here, they would keep a
                    # sibling from seeing end-of-file when the supervisor dies.
                    sibling.channel.close()
                if not die_with_parent(parent):
                    os._exit(0)
                initial = None
                if self.key is not None and self.cluster_id is not None:
                    initial = (self.cluster_id, bytearray(self.key))
                self._wipe()  # the worker keeps its own copy only
                self.run_worker(theirs, initial, index)
            except BaseException:  # a worker must never return into the supervisor's code
                log.exception("worker crashed")
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        handle = WorkerHandle(pid, ours, index)
        self.workers[pid] = handle
        slot = self.slots.setdefault(index, WorkerRecord(index))
        slot.pid, slot.started, slot.restart_at = pid, handle.started, None
        return handle

    async def _attach(self, handle: WorkerHandle) -> None:
        reader, handle.writer = await open_stream(handle.channel)
        assert self._loop is not None
        handle.tasks.append(self._loop.create_task(self._serve_worker(handle, reader)))

    async def supervise(self) -> int:
        loop = self._loop = asyncio.get_running_loop()
        for handle in list(self.workers.values()):
            await self._attach(handle)
        done = self._done = asyncio.Event()
        loop.add_signal_handler(signal.SIGCHLD, self._reap, done)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._signalled, signum)
        obtain = loop.create_task(self._obtain_key())
        node_metrics.start_supervisor(self.config, self.seal_status)
        self._reap(done)  # a worker may have died before the handler was in place
        await done.wait()
        obtain.cancel()
        for handle in self.workers.values():
            for task in handle.tasks:
                task.cancel()
        self._wipe()
        if self.attempt is not None:
            self.attempt.wipe()
        self.sock.close()
        reason = self.stop_reason or "every worker ended"
        log.log(logging.ERROR if self.status else logging.INFO, "node stopped (status %d): %s", self.status, reason)
        self._record("node.stop", {"reason": reason, "status": self.status},
                     outcome="ok" if self.status == 0 else "CKR_DEVICE_ERROR")
        return self.status

    def _signalled(self, signum: int) -> None:
        self._stop_all(f"received {signal.Signals(signum).name}")

    def _stop_all(self, reason: str = "stopping") -> None:
        if not self._stopping:
            self._stopping = True
            self.stop_reason = reason
            log.info("stopping the node: %s", reason)
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if not self.workers and self._done is not None:
            self._done.set()  # every worker was dead already (waiting to be started again)

    def _reap(self, done: asyncio.Event) -> None:
        # Only our workers' pids: a seal provider's tool (tpm2-tools) is reaped by its own caller.
        for pid in list(self.workers):
            try:
                reaped, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped, status = pid, 0
            if reaped == 0:
                continue
            handle = self.workers.pop(pid)
            for task in handle.tasks:
                task.cancel()
            handle.channel.close()
            if not self._stopping:
                self._worker_died(handle, status)
        if self._stopping and not self.workers:
            done.set()

    def _worker_died(self, handle: WorkerHandle, status: int) -> None:
        """Log and audit the death of a worker, and start it again after its backoff."""
        slot = self.slots.setdefault(handle.index, WorkerRecord(handle.index))
        ran = time.monotonic() - handle.started
        slot.streak = 1 if ran >= STABLE_SECONDS else slot.streak + 1
        delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (slot.streak - 1))
        how = describe_exit(status)
        slot.pid, slot.last_exit, slot.last_exit_at = None, how, time.time()
        slot.restart_at = time.time() + delay
        log.error("worker %d (index %d) %s after %.1f s; starting it again in %.1f s (restart %d)",
                  handle.pid, handle.index, how, ran, delay, slot.restarts + 1)
        self._record("node.worker_exit", {"pid": handle.pid, "index": handle.index, "exit": how,
                                          "ran_seconds": round(ran, 1), "restart_in_seconds": delay},
                     outcome="CKR_DEVICE_ERROR")
        assert self._loop is not None
        self._loop.call_later(delay, lambda: self._loop.create_task(self._restart(handle.index))
                              if self._loop is not None else None)

    async def _restart(self, index: int) -> None:
        if self._stopping or any(h.index == index for h in self.workers.values()):
            return
        slot = self.slots[index]
        try:
            handle = self._spawn(index)
            await self._attach(handle)
        except Exception as exc:  # noqa: BLE001 - a failed fork is retried like a death
            log.error("could not start worker %d again: %s; retrying in %.0f s", index, exc, MAX_BACKOFF)
            slot.restart_at = time.time() + MAX_BACKOFF
            assert self._loop is not None
            self._loop.call_later(MAX_BACKOFF, lambda: self._loop.create_task(self._restart(index))
                                  if self._loop is not None else None)
            return
        slot.restarts += 1
        log.info("worker %d started again as pid %d", index, handle.pid)
        self._record("node.worker_restart", {"index": index, "pid": handle.pid, "restarts": slot.restarts})

    def workers_status(self) -> list[dict[str, Any]]:
        return [self.slots[index].to_dict() for index in sorted(self.slots)]

    def _broadcast_key(self, skip: WorkerHandle | None = None) -> None:
        if self.key is None or self.cluster_id is None:
            return
        message = encode({"t": "key", "cluster_id": self.cluster_id, "key": bytes(self.key)})
        for handle in self.workers.values():
            if handle is not skip and handle.writer is not None:
                handle.writer.write(message)

    async def _serve_worker(self, handle: WorkerHandle, reader: asyncio.StreamReader) -> None:
        assert handle.writer is not None
        try:
            while True:
                message = await read_message(reader)
                kind = message.get("t")
                if kind == "key":
                    # A worker made the key (cluster.initialize): keep it and give it to the siblings.
                    self._install(str(message["cluster_id"]), bytearray(message["key"]), how="initialized here")
                    self._broadcast_key(skip=handle)
                elif kind == "forget":
                    self._wipe()
                    self.seal.state, self.seal.detail = "uninitialized", "zeroized"
                else:
                    reply = await self._answer(kind, message)
                    handle.writer.write(encode({"t": "reply", "id": message.get("id", 0), **reply}))
        except asyncio.CancelledError:
            raise
        except ChannelClosed:
            return
        except Exception:  # one bad message must not take the supervisor down
            log.exception("channel to worker %d failed", handle.pid)

    async def _answer(self, kind: Any, message: dict[str, Any]) -> dict[str, Any]:
        if kind == "status":
            return {"seal": self.seal_status(), "workers": self.workers_status()}
        counted = self.offline_logins.answer(str(kind), message)
        if counted is not None:
            return counted
        if kind == "unseal_begin":
            try:
                return {"attempt": self._attempt().describe()}
            except UnsealRefused as exc:
                return {"error": str(exc)}
        if kind == "unseal_submit":
            return self._submit(message)
        return {"error": f"unknown request {kind!r}"}

    # --- obtaining the key ----------------------------------------------------------------------

    def seal_status(self) -> dict[str, Any]:
        status = self.seal.to_dict()
        if self.seal.state == "sealed" and self.attempt is not None and not self.attempt.expired:
            if self.attempt.threshold:
                status["detail"] = (f"sealed ({len(self.attempt.shares)} of {self.attempt.threshold} shares); "
                                    "waiting for more custodians (strongroom unseal) or a running node")
        return status

    def _attempt(self) -> UnsealAttempt:
        if self.key is not None:
            raise UnsealRefused("this node is not sealed")
        if self.config.seal.type != SHARES and not self._has_shares_seal():
            raise UnsealRefused(f"this node's seal is of type {self.config.seal.type}: it is unsealed by its "
                                "provider, not by recovery shares")
        if self.cluster_id is None:
            raise UnsealRefused("this node holds no seal of any cluster")
        if self.attempt is None or self.attempt.expired:
            if self.attempt is not None:
                self.attempt.wipe()
            self.attempt = UnsealAttempt(self.cluster_id, self.config.node_id, shares_check(self.config.node_dir))
        return self.attempt

    def _has_shares_seal(self) -> bool:
        try:
            return seal_info(self.config.node_dir)[1] == SHARES
        except SealError:
            return False

    def _submit(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            attempt = self._attempt()
            box = SealedBox(bytes(message["sender_public"]), bytes(message["nonce"]), bytes(message["ciphertext"]))
            key = attempt.submit(str(message["attempt_id"]), box)
        except UnsealRefused as exc:
            if self.attempt is not None and self.attempt.shares and str(message.get("attempt_id")) == \
                    self.attempt.attempt_id:
                # A share made for this attempt that is wrong: start over (as Vault's unseal reset).
                self.attempt.wipe()
                self.attempt = None
            self._record("node.unseal", {"accepted": False, "reason": str(exc)}, outcome="CKR_ARGUMENTS_BAD")
            return {"error": str(exc)}
        except (KeyError, TypeError, ValueError):
            return {"error": "malformed unseal submission"}
        progress = {"submitted": len(attempt.shares), "threshold": attempt.threshold}
        self._record("node.unseal", {"accepted": True, **progress})
        if key is None:
            return {"unsealed": False, **progress}
        attempt.wipe()
        self.attempt = None
        assert self.cluster_id is not None
        self._install(self.cluster_id, key, how="custodians' shares")
        self._broadcast_key()
        self._record("node.unsealed", {"by": "shares"})
        return {"unsealed": True, **progress}

    async def _obtain_key(self) -> None:
        """While this node has no key: retry an unreachable provider, or ask the peers."""
        from strongroom.services.join import fetch_cluster_key

        failures_logged = False
        while True:
            await asyncio.sleep(0 if not failures_logged else RETRY_SECONDS)
            if self.key is not None:
                failures_logged = False
                await asyncio.sleep(RETRY_SECONDS)
                continue
            node_dir = self.config.node_dir
            if seal_exists(node_dir) and not self._has_shares_seal():
                try:
                    identity, key = await asyncio.to_thread(unseal_cluster_key, node_dir, self.config.seal)
                except SealUnavailable as exc:
                    self.seal.detail = f"the seal's provider cannot be reached: {exc}; retrying"
                    failures_logged = True
                    continue
                except SealError as exc:
                    log.error("refusing to serve: tamper response: %s", exc)
                    self.seal.detail = f"tamper response: {exc}"
                    self.status = 2
                    self._stop_all(f"tamper response: {exc}")
                    return
                self._install(identity.cluster_id, key, how="seal provider reached")
                self._broadcast_key()
                continue
            failures = []
            for peer in load_peers(self.config):
                try:
                    cluster_id, key = await fetch_cluster_key(self.config, peer)
                except Exception as exc:  # noqa: BLE001 - any peer failure: try the next one
                    failures.append(f"{peer}: {getattr(exc, 'message', None) or exc or type(exc).__name__}")
                    continue
                if not await self._accept_peer_key(cluster_id, key, peer):
                    continue
                break
            if self.key is None and failures and not failures_logged:
                log.info("no peer gave the cluster key yet (%s); retrying every %.0f s", "; ".join(failures),
                         RETRY_SECONDS)
            failures_logged = True

    async def _accept_peer_key(self, cluster_id: str, key: bytearray, peer: str) -> bool:
        node_dir = self.config.node_dir
        if self.cluster_id is not None and cluster_id != self.cluster_id:
            key[:] = bytes(len(key))
            log.error("peer %s gave the key of cluster %s; this node belongs to %s", peer, cluster_id, self.cluster_id)
            return False
        if self._has_shares_seal():
            from cryptography.hazmat.primitives import constant_time

            from strongroom.recovery import key_check

            if not constant_time.bytes_eq(key_check(key, cluster_id), shares_check(node_dir)):
                key[:] = bytes(len(key))
                log.error("peer %s gave a key that does not match this node's seal", peer)
                return False
        elif not seal_exists(node_dir):
            try:
                seal_cluster_key(node_dir, SealedIdentity(cluster_id, self.config.node_id), bytearray(key),
                                 self.config.seal)
            except SealError as exc:
                key[:] = bytes(len(key))
                log.error("received the cluster key from %s but could not seal it: %s", peer, exc)
                return False
            self._record("node.join", {"from": peer, "cluster_id": cluster_id, "seal": self.config.seal.type})
        self._install(cluster_id, key, how=f"from node {peer}")
        self._broadcast_key()
        return True


def run(config: NodeConfig, sock: socket.socket, boot: int, run_worker: Callable[..., None]) -> int:
    """Open the seal, start the workers, supervise them; the node's exit status."""
    supervisor = Supervisor(config, sock, boot, run_worker)
    try:
        supervisor.open_seal()
    except SealRefusal as exc:
        log.error("refusing to start: tamper response: %s", exc)
        sock.close()
        return 2
    supervisor.start_workers()
    return asyncio.run(supervisor.supervise())


__all__ = ["SealState", "Supervisor", "run"]

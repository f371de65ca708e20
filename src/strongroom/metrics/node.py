"""A node's metrics: the request wrapper its workers serve through, the gauges they sample, and the
supervisor's /metrics listener, which adds up every worker (multiprocess mode) and reads the seal
state and the certificates when Prometheus asks.

The hooks (one line each): ``prepare`` in ``node.main.serve``, ``timed`` around the pipeline's
handler, ``strongroom.services.telemetry.sample`` in each worker, ``start_supervisor`` in
``Supervisor.supervise``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from strongroom.metrics import labels, names, registry, server
from strongroom.metrics.settings import MetricsSettings

#: An operation name: a group and a name, or a group, a part and a name (kms.data_key.generate).
_OPS = labels.BoundedLabel(re.compile(r"[a-z0-9_]{1,24}(\.[a-z0-9_]{1,40}){1,2}"))
#: The supervisor's listener task (kept referenced: the loop holds tasks weakly).
_tasks: set[asyncio.Task[None]] = set()


class NodeRequest(Protocol):
    @property
    def op(self) -> str: ...
    @property
    def args(self) -> dict[str, Any]: ...


class NodeSettings(Protocol):
    """What the supervisor's listener reads of node.toml."""

    @property
    def node_id(self) -> str: ...
    @property
    def zone(self) -> str: ...
    @property
    def node_dir(self) -> Path: ...
    @property
    def tls_cert(self) -> Path: ...
    @property
    def ca_cert(self) -> Path: ...
    @property
    def metrics(self) -> MetricsSettings: ...


R = TypeVar("R", bound=NodeRequest)
P = TypeVar("P")
Handler = Callable[[R, int, P], Awaitable[tuple[int, Any]]]


#: Memory file systems for the workers' counter files. prometheus_client writes them through mmap and
#: grows them as sparse files: on a full disk, writing into a page the file system cannot back kills the
#: worker with SIGBUS (tests/integration/test_faults.py, the full-disk test). A node's disk fills; memory
#: rarely does, and when it does the node has bigger problems.
MEMORY_FILE_SYSTEMS = (Path("/dev/shm"),)
_PREFIX = "strongroom-metrics-"
#: In the node's directory: where this run's counter files are (so the next start removes them).
POINTER = "metrics.dir"


def metrics_dir(node_dir: Path) -> Path:
    """The counter files' directory when no memory file system is usable."""
    return node_dir / "metrics"


def _memory_dir(node_dir: Path) -> Path | None:
    """A new private directory on a memory file system (random name: those places are world-writable)."""
    for base in MEMORY_FILE_SYSTEMS:
        if not (base.is_dir() and os.access(base, os.W_OK | os.X_OK)):
            continue
        try:
            path = Path(tempfile.mkdtemp(prefix=_PREFIX, dir=base))
        except OSError:
            continue
        (node_dir / POINTER).write_text(f"{path}\n")
        return path
    return None


def release(node_dir: Path) -> None:
    """Remove the counter files of the run named in the node's directory (at a stop, or at the next start
    after a crash). Only a real directory of ours, with our prefix, directly in a memory file system."""
    pointer = node_dir / POINTER
    try:
        path = Path(pointer.read_text().strip())
    except OSError:
        return
    try:
        ours = (path.parent in MEMORY_FILE_SYSTEMS and path.name.startswith(_PREFIX) and not path.is_symlink()
                and path.is_dir() and path.stat().st_uid == os.getuid())
    except OSError:
        ours = False
    if ours:
        shutil.rmtree(path, ignore_errors=True)
    pointer.unlink(missing_ok=True)


def prepare(config: NodeSettings) -> None:
    """First thing in a node process: the directory the workers it will fork count in (a memory file
    system if there is one, else DIR/metrics)."""
    if config.metrics.listen is not None:
        release(config.node_dir)  # a previous run that did not stop cleanly
        registry.use_multiprocess(_memory_dir(config.node_dir) or metrics_dir(config.node_dir))


#: Label children by the request's own values: ``labels()`` costs a lock and a validation on every request.
#: A peer chooses those values, so the caches stop growing at CACHE_LIMIT (then ``labels()`` each time).
_counted: dict[tuple[str, int], Counter] = {}
_timed: dict[tuple[str, object], Histogram] = {}
CACHE_LIMIT = 4096
#: Requests are counted in the worker's memory and added to the shared (multiprocess) counters this often: each
#: shared increment takes a lock and writes an mmap'd file (three per request, 10-13% of a worker's CPU on a
#: crypto call); a scrape sees a worker's requests at most this late.
FLUSH_SECONDS = 0.5


class _Latencies:
    """Observations of one histogram child not yet added to it: their sum and a count per bucket."""

    __slots__ = ("child", "bounds", "total", "counts")

    def __init__(self, child: Histogram) -> None:
        self.child = child
        # prometheus_client has no call that adds many observations at once; a child keeps its upper bounds,
        # one value per bucket and the sum (what Histogram.observe adds to), which flush adds to likewise.
        self.bounds: list[float] = list(getattr(child, "_upper_bounds", ()))
        self.total = 0.0
        self.counts = [0] * len(self.bounds)

    def add(self, seconds: float) -> None:
        self.total += seconds
        for i, bound in enumerate(self.bounds):
            if seconds <= bound:
                self.counts[i] += 1
                return

    def flush(self) -> None:
        buckets = getattr(self.child, "_buckets", None)
        total = getattr(self.child, "_sum", None)
        if buckets is None or total is None or len(buckets) != len(self.counts):
            return  # a prometheus_client without these fields: those observations are not kept
        total.inc(self.total)
        for bucket, count in zip(buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)


class _Tally:
    __slots__ = ("counts", "latencies", "armed")

    def __init__(self) -> None:
        self.counts: dict[Counter, int] = {}
        self.latencies: dict[Histogram, _Latencies] = {}
        self.armed = False


_tally = _Tally()


def flush_requests() -> None:
    """Add what this worker counted since the last flush to the shared counters."""
    _tally.armed = False
    counts, _tally.counts = _tally.counts, {}
    latencies, _tally.latencies = _tally.latencies, {}
    for counter, count in counts.items():
        counter.inc(count)
    for pending in latencies.values():
        pending.flush()


def _arm_flush() -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # counted outside an event loop: no later turn to flush in
        flush_requests()
        return
    _tally.armed = True
    loop.call_later(FLUSH_SECONDS, flush_requests)


def observe_request(request: NodeRequest, code: int, seconds: float) -> None:
    op_name = request.op
    args = request.args
    raw_mechanism = args.get("mechanism") if isinstance(args, dict) else None
    counter = _counted.get((op_name, code))
    if counter is None:
        metrics = names.node()
        op, outcome = _OPS(op_name), labels.outcome(code)
        counter = metrics.requests.labels(op, outcome)
        if len(_counted) < CACHE_LIMIT:
            _counted[(op_name, code)] = counter
        if op == "session.login":
            metrics.logins.labels(outcome).inc()  # (a login's outcome first seen here; later ones below)
    elif op_name == "session.login":
        names.node().logins.labels(labels.outcome(code)).inc()
    key = (op_name, raw_mechanism if isinstance(raw_mechanism, int) else None)
    histogram = _timed.get(key)
    if histogram is None:
        histogram = names.node().request_seconds.labels(_OPS(op_name), labels.mechanism(key[1]))
        if len(_timed) < CACHE_LIMIT:
            _timed[key] = histogram
    tally = _tally
    tally.counts[counter] = tally.counts.get(counter, 0) + 1
    pending = tally.latencies.get(histogram)
    if pending is None:
        pending = tally.latencies[histogram] = _Latencies(histogram)
    pending.add(seconds)
    if not tally.armed:
        _arm_flush()


def timed(handle: Handler[R, P]) -> Handler[R, P]:
    """The pipeline's handler, counting each request by operation and outcome and timing it."""

    async def timed_handle(request: R, connection_id: int, peer: P) -> tuple[int, Any]:
        start = time.perf_counter()
        code, result = await handle(request, connection_id, peer)
        observe_request(request, code, time.perf_counter() - start)
        return code, result

    return timed_handle


def count_lockout(locked_now: bool) -> None:
    """Called on each failed password check; ``locked_now``: this failure locked the account."""
    if locked_now:
        names.node().lockouts.inc()


def set_worker_gauges(*, login_sessions: int, pkcs11_sessions: int, keys_by_class: Mapping[str, int] | None,
                      token_objects: int, session_objects: int,
                      backup_created: float | None, backup_known: bool) -> None:
    """A worker's sample (see strongroom.services.telemetry). ``keys_by_class`` None: no key yet;
    ``backup_known`` False: the backup record was not read this time (leave the backup gauges)."""
    metrics = names.node()
    metrics.login_sessions.set(login_sessions)
    metrics.pkcs11_sessions.set(pkcs11_sessions)
    for object_class, count in (keys_by_class or {}).items():
        metrics.keys.labels(object_class).set(count)
    metrics.cache_objects.labels("token").set(token_objects)
    metrics.cache_objects.labels("session").set(session_objects)
    if backup_known:
        metrics.backup_last.set(backup_created or 0.0)
        metrics.backup_age.set(-1.0 if backup_created is None else max(0.0, time.time() - backup_created))


# --- the supervisor's listener ----------------------------------------------------------------------

#: The seal states a node reports (node.status seal.state).
SEAL_STATES = ("sealed", "unsealed", "uninitialized")


def _seal_metrics(seal_status: Callable[[], dict[str, Any]]) -> Callable[[], Iterable[Metric]]:
    def collect() -> Iterable[Metric]:
        status = seal_status()
        unsealed = GaugeMetricFamily("strongroom_seal_unsealed",
                                     "1 if the node holds the cluster key (unsealed), else 0.", labels=["type"])
        unsealed.add_metric([str(status.get("type"))], 1.0 if status.get("state") == "unsealed" else 0.0)
        state = GaugeMetricFamily("strongroom_seal_state", "The node's seal state (1 for the current one).",
                                  labels=["type", "state"])
        for name in SEAL_STATES:
            state.add_metric([str(status.get("type")), name], 1.0 if status.get("state") == name else 0.0)
        return [unsealed, state]

    return collect


async def _serve_supervisor(config: NodeSettings, seal_status: Callable[[], dict[str, Any]]) -> None:
    extra = [
        registry.info_metric("node", {"node_id": config.node_id, "zone": config.zone}),
        registry.Collected(_seal_metrics(seal_status)),
        registry.certificate_metrics(lambda: [(f"node {config.node_id}", config.tls_cert), ("ca", config.ca_cert)]),
    ]
    names.node()
    listener = await server.start(config.metrics, registry.serving_registry(extra))
    if listener is None:
        return
    try:
        await asyncio.Event().wait()  # until the supervisor's loop ends
    finally:
        await listener.stop()


def start_supervisor(config: NodeSettings, seal_status: Callable[[], dict[str, Any]]) -> None:
    """In the supervisor's loop: serve /metrics for the whole node (no-op without ``[metrics] listen``)."""
    if config.metrics.listen is None:
        return
    task = asyncio.get_running_loop().create_task(_serve_supervisor(config, seal_status))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)

"""The agent's metrics: each PKCS#11 call it serves, the relayed SDK requests, and (read when
Prometheus asks) its applications, sessions and node connections."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from strongroom.metrics import labels, names, registry, server
from strongroom.metrics.settings import MetricsSettings

_FUNCTIONS = labels.BoundedLabel(re.compile(r"C_[A-Za-z]{1,40}"))
_tasks: set[asyncio.Task[None]] = set()


class AppView(Protocol):
    @property
    def sessions(self) -> Mapping[int, object]: ...


class NodeView(Protocol):
    @property
    def node_id(self) -> str: ...


class LinkView(Protocol):
    @property
    def connected(self) -> bool: ...
    @property
    def node(self) -> NodeView: ...


class PoolView(Protocol):
    @property
    def links(self) -> Sequence[LinkView]: ...


class AgentView(Protocol):
    @property
    def apps(self) -> Mapping[bytes, AppView]: ...
    @property
    def pool(self) -> PoolView: ...


class AgentSettings(Protocol):
    @property
    def cert(self) -> Path: ...
    @property
    def ca(self) -> Path: ...
    @property
    def metrics(self) -> MetricsSettings: ...


#: Label children by the call's own values (``labels()`` costs a lock and a validation on every call, about as
#: much as the rest of counting). An application chooses the function name, so the cache stops growing at
#: CACHE_LIMIT (then ``labels()`` each time).
_counted: dict[tuple[str, int], tuple[Counter, Histogram]] = {}
CACHE_LIMIT = 1024


def _children(function: str, rv: int) -> tuple[Counter, Histogram]:
    children = _counted.get((function, rv))
    if children is None:
        metrics = names.agent()
        name = _FUNCTIONS(function)
        children = metrics.agent_calls.labels(name, labels.outcome(rv)), metrics.agent_call_seconds.labels(name)
        if len(_counted) < CACHE_LIMIT:
            _counted[(function, rv)] = children
    return children


async def timed_call(function: str, call: Awaitable[tuple[int, list[Any]]]) -> tuple[int, list[Any]]:
    """Serve one PKCS#11 call, counting it by function and return value and timing it."""
    start = time.perf_counter()
    rv, outputs = await call
    counter, histogram = _children(function, rv)
    counter.inc()
    histogram.observe(time.perf_counter() - start)
    return rv, outputs


def relayed() -> None:
    names.agent().agent_relayed.inc()


def _state(agent: AgentView) -> Iterable[Metric]:
    apps = GaugeMetricFamily("strongroom_agent_applications", "PKCS#11 applications (C_Initialize) attached.")
    apps.add_metric([], len(agent.apps))
    sessions = GaugeMetricFamily("strongroom_agent_sessions", "PKCS#11 sessions open through the agent.")
    sessions.add_metric([], sum(len(app.sessions) for app in list(agent.apps.values())))
    links = list(agent.pool.links)
    # The agent keeps several links per node (links_per_node): a node counts as connected while
    # any of its links is, so the gauge counts nodes whatever that setting is.
    by_node: dict[str, bool] = {}
    for link in links:
        by_node[link.node.node_id] = by_node.get(link.node.node_id, False) or link.connected
    nodes = GaugeMetricFamily("strongroom_agent_nodes", "Nodes the agent knows, by connection state.",
                              labels=["state"])
    connected = sum(1 for up in by_node.values() if up)
    nodes.add_metric(["connected"], connected)
    nodes.add_metric(["disconnected"], len(by_node) - connected)
    link_gauge = GaugeMetricFamily("strongroom_agent_node_links", "The agent's connections to nodes, by state.",
                                   labels=["state"])
    linked = sum(1 for link in links if link.connected)
    link_gauge.add_metric(["connected"], linked)
    link_gauge.add_metric(["disconnected"], len(links) - linked)
    return [apps, sessions, nodes, link_gauge]


async def _serve(config: AgentSettings, agent: AgentView) -> None:
    extra = [registry.info_metric("agent", {}), registry.Collected(lambda: _state(agent)),
             registry.certificate_metrics(lambda: [("agent", config.cert), ("ca", config.ca)])]
    names.agent()
    listener = await server.start(config.metrics, registry.serving_registry(extra))
    if listener is None:
        return
    try:
        await asyncio.Event().wait()
    finally:
        await listener.stop()


def start(config: AgentSettings, agent: AgentView) -> None:
    """In the agent's loop: serve /metrics until the loop ends (no-op without ``[metrics] listen``)."""
    if config.metrics.listen is None:
        return
    task = asyncio.get_running_loop().create_task(_serve(config, agent))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)

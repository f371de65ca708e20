"""What a process serves at /metrics: its own metrics (agent, gateway), or those of every worker
of a node (prometheus_client's multiprocess mode), plus what is read when Prometheus asks
(certificate expiry, seal state, agent connections)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import prometheus_client
from prometheus_client import values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from strongroom import __version__
from strongroom.metrics import names
from strongroom.metrics.certificates import read_all

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# prometheus_client leaves these two untyped; their types as documented.
_multiprocess_value: Callable[[], type] = values.MultiProcessValue
_multiprocess_collector: Callable[[CollectorRegistry], Collector] = MultiProcessCollector
_disable_created_metrics: Callable[[], None] = prometheus_client.disable_created_metrics


def use_multiprocess(directory: Path) -> None:
    """Count in ``directory`` (emptied first) so that the supervisor can add up its workers' counts.

    Called by a node before it forks its workers and before anything is counted."""
    if names.made():
        raise RuntimeError("metrics were made before the switch to multiprocess mode")
    if directory.is_dir() and not directory.is_symlink():
        # Emptied, not replaced: the directory may be a fresh private one in a world-writable place
        # (metrics/node.py), whose name nobody else could take in between.
        for child in directory.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
    else:
        directory.mkdir(mode=0o700, parents=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    values.ValueClass = _multiprocess_value()


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Collected(Collector):
    """Metrics read at scrape time from a callable (which must be quick and never raise)."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


def certificate_metrics(certificates: Callable[[], list[tuple[str, Path]]]) -> Collected:
    """``strongroom_certificate_expiry_timestamp_seconds`` and ``…_expiring`` for each certificate."""

    def collect() -> Iterable[Metric]:
        expiry = GaugeMetricFamily("strongroom_certificate_expiry_timestamp_seconds",
                                   "When each certificate this process uses expires (Unix time).",
                                   labels=["certificate", "subject"])
        expiring = GaugeMetricFamily("strongroom_certificate_expiring",
                                     "1 if the certificate expires within 30 days (rotate it), else 0.",
                                     labels=["certificate", "subject"])
        for cert in read_all(certificates()):
            expiry.add_metric([cert.name, cert.subject], cert.not_after.timestamp())
            expiring.add_metric([cert.name, cert.subject], 1.0 if cert.expiring() else 0.0)
        return [expiry, expiring]

    return Collected(collect)


def info_metric(component: str, labels: dict[str, str]) -> Collected:
    """``strongroom_build_info{component, version, …} 1``."""

    def collect() -> Iterable[Metric]:
        keys = ["component", "version", *labels]
        family = GaugeMetricFamily("strongroom_build_info", "The process's Strongroom version (always 1).",
                                   labels=keys)
        family.add_metric([component, __version__, *labels.values()], 1.0)
        up_since = GaugeMetricFamily("strongroom_start_time_seconds", "When the process started (Unix time).")
        up_since.add_metric([], _STARTED)
        return [family, up_since]

    return Collected(collect)


_STARTED = time.time()


def serving_registry(extra: Iterable[Collector]) -> CollectorRegistry:
    """The registry /metrics serves: the workers' files in multiprocess mode, the process's own metrics
    (and its CPU and memory) otherwise; plus ``extra``. The caller makes its metrics first (names.node()
    …), so that every unlabelled name shows before its first count."""
    # No `*_created` series: a node (multiprocess mode) has none, and the table is the same everywhere.
    _disable_created_metrics()
    registry = CollectorRegistry(auto_describe=True)
    if multiprocess():
        _multiprocess_collector(registry)
        prometheus_client.ProcessCollector(registry=registry)
    else:
        # The default registry holds the metrics and the process's CPU, memory and GC collectors.
        registry.register(Collected(prometheus_client.REGISTRY.collect))
    for collector in extra:
        registry.register(collector)
    return registry

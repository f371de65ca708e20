"""The /metrics listener: plain HTTP on ``[metrics] listen``, prometheus_client's aiohttp handler."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.registry import CollectorRegistry

from strongroom.metrics.settings import MetricsSettings

log = logging.getLogger("strongroom.metrics")


@dataclass
class MetricsServer:
    runner: web.AppRunner
    url: str

    async def stop(self) -> None:
        await self.runner.cleanup()


async def _index(_request: web.Request) -> web.Response:
    return web.Response(text="Strongroom metrics: /metrics\n")


async def start(settings: MetricsSettings, registry: CollectorRegistry) -> MetricsServer | None:
    """Serve ``registry`` at /metrics on ``settings.listen``; None when metrics are off or the address is
    taken (logged: a node without its metrics listener still serves keys)."""
    if settings.listen is None:
        return None
    host, port = settings.host_port()
    app = web.Application()
    app.router.add_get("/metrics", make_aiohttp_handler(registry))
    app.router.add_get("/", _index)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        log.error("metrics: cannot listen on %s: %s (serving without metrics)", settings.listen, exc)
        return None
    url = settings.url or ""
    log.info("metrics on %s", url)
    return MetricsServer(runner, url)

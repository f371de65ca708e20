"""``strongroom status-page``: serve the page on loopback (it has no login of its own), or write it once."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from pathlib import Path

from aiohttp import web

from strongroom.statuspage.collect import StatusPageError, collect
from strongroom.statuspage.render import render

log = logging.getLogger("strongroom.statuspage")
DIRECTORY = web.AppKey("directory", Path)


def check_listen(listen: str) -> tuple[str, int]:
    """HOST:PORT on a loopback address: the page has no login, so only this machine may see it (put a proxy
    with the operator's authentication in front to show it elsewhere)."""
    host, colon, port = listen.rpartition(":")
    host = host.strip("[]")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise StatusPageError(f"--listen is HOST:PORT, not {listen!r}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise StatusPageError(f"--listen {listen}: the status page serves loopback only (it has no login); "
                              "put an authenticating proxy in front of it to show it elsewhere")
    return host, int(port)


async def _page(request: web.Request) -> web.Response:
    try:
        status = await asyncio.to_thread(collect, request.app[DIRECTORY])
    except StatusPageError as exc:
        return web.Response(status=503, text=f"status unavailable: {exc}")
    return web.Response(text=render(status), content_type="text/html", headers={"Cache-Control": "no-store"})


async def _json(request: web.Request) -> web.Response:
    try:
        status = await asyncio.to_thread(collect, request.app[DIRECTORY])
    except StatusPageError as exc:
        return web.json_response({"error": str(exc)}, status=503)
    return web.Response(text=json.dumps(status, indent=2), content_type="application/json")


def make_app(directory: Path) -> web.Application:
    app = web.Application()
    app[DIRECTORY] = directory
    app.router.add_get("/", _page)
    app.router.add_get("/status.json", _json)
    return app


async def serve(directory: Path, listen: str, ready: asyncio.Event | None = None) -> None:
    """Serve until cancelled (or SIGINT/SIGTERM); prints the URL on stdout once listening."""
    host, port = check_listen(listen)
    runner = web.AppRunner(make_app(directory), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port  # the port given, or the one port 0 got
    print(f"status page: http://{host}:{bound}/ (read-only; ^C stops it)", flush=True)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def write_once(directory: Path, out: Path) -> None:
    out.write_text(render(collect(directory)))

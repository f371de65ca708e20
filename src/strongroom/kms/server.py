"""The HTTP(S) server (aiohttp): AWS JSON 1.1 in, AWS JSON 1.1 out.

Every answer carries ``x-amzn-RequestId`` and ``Content-Type: application/x-amz-json-1.1``;
bodies above ``max_body_bytes`` are refused before they are read whole. :func:`serve` runs the
gateway in the foreground until SIGTERM/SIGINT (``strongroom kms serve``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import sys
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web

from strongroom.kms.backend import Backend, ClusterError
from strongroom.kms.config import ConfigError, GatewayConfig
from strongroom.kms.errors import SerializationError
from strongroom.kms.gateway import Gateway
from strongroom.kms.sigv4 import Headers

log = logging.getLogger("strongroom.kms")
CONTENT_TYPE = "application/x-amz-json-1.1"
GATEWAY_KEY = web.AppKey("gateway", Gateway)


def _response(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        headers={"Content-Type": CONTENT_TYPE, "x-amzn-RequestId": str(uuid.uuid4())},
    )


async def _handle(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    limit = gateway.config.kms.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        error = SerializationError(f"The request body is larger than {limit} bytes")
        return _response(error.status, error.body())
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            error = SerializationError(f"The request body is larger than {limit} bytes")
            return _response(error.status, error.body())
    raw_path, _, raw_query = request.raw_path.partition("?")
    # Raw headers as received (every occurrence, original values): SigV4 signs what was sent.
    headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
    status, result = await gateway.handle(request.method, raw_path, raw_query, headers, bytes(body))
    return _response(status, result)


def make_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=gateway.config.kms.max_body_bytes)
    app[GATEWAY_KEY] = gateway
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


def ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    cert, key = config.path(config.kms.tls_cert), config.path(config.kms.tls_key)
    if cert is None or key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    return context


async def run(config: GatewayConfig, *, ready: asyncio.Event | None = None,
              stop: asyncio.Event | None = None) -> None:
    password = config.read_password()
    backend = Backend(config, password)
    await backend.start()
    gateway = Gateway(config, backend)
    runner = web.AppRunner(make_app(gateway), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.kms.host, config.kms.port, ssl_context=ssl_context(config),
                       reuse_address=True)
    await site.start()
    gateway.start_background()
    scheme = "https" if config.kms.tls_cert else "http"
    log.info("KMS endpoint %s://%s:%d (region %s, account %s) serving as %s", scheme, config.kms.host,
             config.kms.port, config.kms.region, config.kms.account_id, config.cluster.username)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await gateway.stop_background()
        await runner.cleanup()
        await backend.close()


def serve(config_path: Path) -> int:
    """``strongroom kms serve --config F``: run in the foreground; logs to stderr."""
    try:
        config = GatewayConfig.load(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.kms.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run(config))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    except ClusterError as exc:
        log.error("cannot start: the cluster refused or could not be reached: %s", exc.message)
        return 1
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0

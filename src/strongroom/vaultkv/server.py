"""The Vault KV service's HTTPS server (aiohttp) and ``strongroom vault-kv serve``.

HTTPS (TLS 1.2 and 1.3, forward-secret AEAD suites only, the KMS gateway's choice) with a
certificate the database trusts (MariaDB: ``hashicorp-key-management-vault-ca``; pg_tde: the
provider's ``ca_path``). Plain HTTP only when asked for, with a warning in the log: tokens and data
keys would cross the network in clear.

Limits on what is read from the network: request and header lines of at most
:data:`MAX_LINE_BYTES`, at most :data:`MAX_HEADERS` headers, a body of at most ``max_body_bytes``
read within :data:`BODY_READ_SECONDS`; the routes' own limits are :mod:`.api`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import sys
import time
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from strongroom.hardening import harden_process
from strongroom.kms.auth_limits import FailureLimiter
from strongroom.kms.backend import Backend, ClusterError
from strongroom.kms.server import https_context
from strongroom.vaultkv.api import Request, VaultApi, errors
from strongroom.vaultkv.config import ConfigError, VaultKvConfig

log = logging.getLogger("strongroom.vaultkv")
API_KEY = web.AppKey("vault_api", VaultApi)
LIMIT_KEY = web.AppKey("max_body_bytes", int)
MAX_LINE_BYTES = 8190
MAX_HEADERS = 32
BODY_READ_SECONDS = 30.0
MALFORMED_LOG_SECONDS = 10.0
PLAIN_HTTP_WARNING = ("serving plain HTTP (insecure_http): Vault tokens and the data keys released to databases "
                      "cross the network unencrypted. Use HTTPS (vault_kv.tls_cert / vault_kv.tls_key) unless this "
                      "is a test or a TLS-terminating proxy on the same host is in front.")


class _QuietMalformed(logging.Filter):
    """One line, at most every few seconds, for requests aiohttp's parser refuses (not a traceback each:
    a flood of them must not fill the disk)."""

    def __init__(self) -> None:
        super().__init__()
        self._last = -MALFORMED_LOG_SECONDS
        self._hidden = 0

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, BadHttpMessage):
            return True
        now = time.monotonic()
        if now - self._last < MALFORMED_LOG_SECONDS:
            self._hidden += 1
            return False
        record.msg, record.args = "refused a malformed request with 400 (%d more not logged)", (self._hidden,)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        self._last, self._hidden = now, 0
        return True


def _json(status: int, body: object) -> web.Response:
    return web.Response(status=status, body=json.dumps(body, separators=(",", ":")).encode(),
                        content_type="application/json")


def _token(request: web.Request) -> str | None:
    token = request.headers.get("X-Vault-Token")
    if token is None:
        authorization = request.headers.get("Authorization", "")
        if authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
    return token


async def _handle(request: web.Request) -> web.Response:
    limit = request.app[LIMIT_KEY]
    if request.content_length is not None and request.content_length > limit:
        return _json(*errors(413, f"the request body is larger than {limit} bytes"))
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_READ_SECONDS):
            async for chunk in request.content.iter_chunked(16 * 1024):
                body += chunk
                if len(body) > limit:
                    return _json(*errors(413, f"the request body is larger than {limit} bytes"))
    except TimeoutError:
        return _json(*errors(408, f"the request body did not arrive within {BODY_READ_SECONDS:g} seconds"))
    path, _, query = request.raw_path.partition("?")
    status, reply = await request.app[API_KEY].handle(Request(
        method=request.method, path=path, query=query, token=_token(request),
        namespace=request.headers.get("X-Vault-Namespace"), body=bytes(body), source=request.remote or ""))
    return _json(status, reply)


def make_app(api: VaultApi, max_body_bytes: int) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes)
    app[API_KEY] = api
    app[LIMIT_KEY] = max_body_bytes
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


def ssl_context(config: VaultKvConfig) -> ssl.SSLContext | None:
    cert, key = config.path(config.vault_kv.tls_cert), config.path(config.vault_kv.tls_key)
    if cert is None or key is None:
        if not config.vault_kv.insecure_http:
            raise ConfigError("no vault_kv.tls_cert / vault_kv.tls_key, and vault_kv.insecure_http is not set")
        return None
    return https_context(cert, key, ConfigError)


async def run(config: VaultKvConfig, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    tls = ssl_context(config)  # before logging in: a bad certificate stops the start at once
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _QuietMalformed) for f in server_log.filters):
        server_log.addFilter(_QuietMalformed())
    backend = Backend(config.backend_config(), config.read_password())
    await backend.start()
    settings = config.vault_kv
    limiter = FailureLimiter(settings.auth_failures_per_second, settings.auth_failure_burst,
                             settings.auth_failures_per_second_total)
    runner = web.AppRunner(make_app(VaultApi(backend.call, limiter), settings.max_body_bytes), access_log=None,
                           handle_signals=False, max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES,
                           max_headers=MAX_HEADERS)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, ssl_context=tls, reuse_address=True)
    await site.start()
    if tls is None:
        log.warning("%s", PLAIN_HTTP_WARNING)
    log.info("Vault KV v2 endpoint %s (use %s/v1/<mount>) serving as %s", config.address, config.address,
             config.cluster.username)
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
        await runner.cleanup()
        await backend.close()


def serve(config_path: Path, *, insecure_http: bool = False) -> int:
    """``strongroom vault-kv serve --config F``: run in the foreground; logs to stderr."""
    hardening = harden_process()  # before the service user's password or any key is in memory
    try:
        config = VaultKvConfig.load(config_path, validate=not insecure_http)
        if insecure_http:
            config.vault_kv.insecure_http, config.vault_kv.tls_cert, config.vault_kv.tls_key = True, None, None
            config.validate()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.vault_kv.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    steps = ", ".join(f"{step.name} {'ok' if step.ok else 'FAILED'} ({step.detail})" for step in hardening.steps)
    (log.info if hardening.ok else log.warning)("hardening: %s", steps)
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

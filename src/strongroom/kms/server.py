"""The HTTPS server (aiohttp): AWS JSON 1.1 in, AWS JSON 1.1 out.

Every answer carries ``x-amzn-RequestId`` and ``Content-Type: application/x-amz-json-1.1``.
HTTPS (TLS 1.2 and 1.3, forward-secret AEAD suites only) is the default; plain HTTP only with
``insecure_http`` (kms.toml or ``--insecure-http``), and then a warning goes to the log.

Limits on what is read from the network, before anything else looks at it: a request line and
each header line at most :data:`MAX_LINE_BYTES`, at most :data:`MAX_HEADERS` headers (aiohttp's
parser answers 400 beyond them); a body of at most ``max_body_bytes``, refused before it is read
whole and read within :data:`BODY_READ_SECONDS`; JSON nesting (after authentication) in
:mod:`.gateway`. :func:`serve` runs the gateway in the foreground until SIGTERM/SIGINT
(``strongroom kms serve``), hardened (:func:`strongroom.hardening.harden_process`) before it
reads any secret.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import ssl
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from strongroom import __version__
from strongroom.hardening import HardeningReport, harden_process
from strongroom.kms.backend import Backend, ClusterError
from strongroom.kms.config import ConfigError, GatewayConfig
from strongroom.kms.errors import SerializationError
from strongroom.kms.gateway import Gateway
from strongroom.kms.sigv4 import Headers
from strongroom.metrics import kms as kms_metrics
from strongroom.transport import loop as event_loop

log = logging.getLogger("strongroom.kms")
CONTENT_TYPE = "application/x-amz-json-1.1"
GATEWAY_KEY = web.AppKey("gateway", Gateway)
#: HTTP parser limits. botocore sends about 10 headers of at most a few hundred bytes (the
#: Authorization header is at most 2048, see sigv4.MAX_AUTHORIZATION).
MAX_LINE_BYTES = 8190
MAX_HEADERS = 48
#: A body must arrive within this time (a slow sender does not hold a request open for ever).
BODY_READ_SECONDS = 30.0
#: Requests the HTTP parser refuses are logged in one line at most this often.
MALFORMED_LOG_SECONDS = 10.0
#: TLS 1.2 suites: ECDHE and AEAD only (TLS 1.3's are all of that kind). Every AWS SDK offers them.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
PLAIN_HTTP_WARNING = ("serving plain HTTP (insecure_http): SigV4 protects requests from change, not from being "
                     "read — plaintexts, data keys and private keys of GenerateDataKey(Pair) cross the network "
                     "unencrypted. Use HTTPS (kms.tls_cert / kms.tls_key) unless this is a test or a "
                     "TLS-terminating proxy on the same host is in front.")


class _MalformedRequests(logging.Filter):
    """aiohttp logs every request its parser refuses (too many headers, a line too long, not HTTP —
    e.g. plain HTTP sent to the HTTPS port is a TLS error first) as an ERROR with a traceback:
    a flood of them would fill the disk with logs. One line instead, at most every
    :data:`MALFORMED_LOG_SECONDS`, with the count of those not logged."""

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
        reason = str(exc).strip().splitlines()[-1].strip()[:120]
        record.msg, record.args = "%s (refused with 400: %s; %d more not logged)", (
            record.getMessage(), reason, self._hidden)
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        self._last, self._hidden = now, 0
        return True


def _response(status: int, body: dict[str, Any], request_id: str | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":")).encode(),
        headers={"Content-Type": CONTENT_TYPE, "x-amzn-RequestId": request_id or str(uuid.uuid4())},
    )


async def _handle(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    limit = gateway.config.kms.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        error = SerializationError(f"The request body is larger than {limit} bytes")
        return _response(error.status, error.body())
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_READ_SECONDS):
            async for chunk in request.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > limit:
                    error = SerializationError(f"The request body is larger than {limit} bytes")
                    return _response(error.status, error.body())
    except TimeoutError:
        error = SerializationError(f"The request body did not arrive within {BODY_READ_SECONDS:g} seconds")
        return _response(error.status, error.body())
    raw_path, _, raw_query = request.raw_path.partition("?")
    # Raw headers as received (every occurrence, original values): SigV4 signs what was sent.
    headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
    request_id = str(uuid.uuid4())
    status, result = await kms_metrics.timed(headers.get("x-amz-target"), gateway.handle(
        request.method, raw_path, raw_query, headers, bytes(body), source=request.remote or "", request_id=request_id))
    return _response(status, result, request_id)


def make_app(gateway: Gateway) -> web.Application:
    app = web.Application(client_max_size=gateway.config.kms.max_body_bytes)
    app[GATEWAY_KEY] = gateway
    app.router.add_route("*", "/{tail:.*}", _handle)
    return app


def ssl_context(config: GatewayConfig) -> ssl.SSLContext | None:
    """The server's TLS context; None only for ``insecure_http``. Unreadable files: ConfigError."""
    cert, key = config.path(config.kms.tls_cert), config.path(config.kms.tls_key)
    if cert is None or key is None:
        if not config.kms.insecure_http:
            raise ConfigError("no kms.tls_cert / kms.tls_key, and kms.insecure_http is not set")
        return None
    return https_context(cert, key, ConfigError)


def https_context(cert: Path, key: Path, error: type[Exception]) -> ssl.SSLContext:
    """The TLS context of an HTTP front door (this gateway, the Vault KV service): TLS 1.2+ with
    forward-secret AEAD suites only. Files that cannot be used raise ``error`` (the caller's ConfigError)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise error(f"cannot use the TLS certificate {cert} and key {key}: {exc}") from None
    return context


async def run(config: GatewayConfig, *, ready: asyncio.Event | None = None,
              stop: asyncio.Event | None = None) -> None:
    tls = ssl_context(config)  # before logging in: a bad certificate stops the start at once
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedRequests) for f in server_log.filters):
        server_log.addFilter(_MalformedRequests())
    password = config.read_password()
    backend = Backend(config, password)
    await backend.start()
    gateway = Gateway(config, backend)
    runner = web.AppRunner(make_app(gateway), access_log=None, handle_signals=False, max_line_size=MAX_LINE_BYTES,
                           max_field_size=MAX_LINE_BYTES, max_headers=MAX_HEADERS)
    await runner.setup()
    site = web.TCPSite(runner, config.kms.host, config.kms.port, ssl_context=tls, reuse_address=True)
    await site.start()
    from strongroom.sdnotify import notify_ready  # systemd Type=notify: it serves

    notify_ready(f"KMS endpoint port {config.kms.port}")
    gateway.start_background()
    kms_metrics.start(config.metrics, config.path(config.kms.tls_cert))
    scheme = "https" if tls is not None else "http"
    if tls is None:
        log.warning("%s", PLAIN_HTTP_WARNING)
    log.info("Strongroom %s KMS endpoint %s://%s:%d (region %s, account %s) serving as %s", __version__, scheme,
             config.kms.host, config.kms.port, config.kms.region, config.kms.account_id, config.cluster.username)
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


def _log_hardening(report: HardeningReport) -> None:
    steps = ", ".join(f"{step.name} {'ok' if step.ok else 'FAILED'} ({step.detail})" for step in report.steps)
    if report.ok:
        log.info("hardening: %s", steps)
    else:
        log.warning("hardening incomplete: %s", steps)


def serve(config_path: Path, *, insecure_http: bool = False) -> int:
    """``strongroom kms serve --config F [--insecure-http]``: run in the foreground; logs to stderr.

    ``insecure_http``: plain HTTP whatever the file says (with the warning)."""
    # First of all, before any secret (the service user's password, signing keys) is in memory.
    hardening = harden_process()
    try:
        config = GatewayConfig.load(config_path, validate=not insecure_http)
        if insecure_http:
            config.kms.insecure_http, config.kms.tls_cert, config.kms.tls_key = True, None, None
            config.validate()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.kms.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _log_hardening(hardening)
    try:
        event_loop.run(run(config))  # uvloop, as the node and the agent (bench/README.md, KMS)
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

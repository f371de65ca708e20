"""Certificates replaced while a process runs (``strongroom cert rotate``): on SIGHUP a process loads its
certificate and key again into the TLS context it already uses, so new connections present the new
certificate while established ones carry on. Nothing restarts: no request fails."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from pathlib import Path

from strongroom.pki.certs import PkiError, load_certificate

log = logging.getLogger("strongroom.pki")


def reload(context: ssl.SSLContext, cert: Path, key: Path) -> bool:
    """Load ``cert`` and ``key`` into ``context`` again; False (and the old pair stays) if they do not load
    or do not match."""
    try:
        serial = load_certificate(cert).serial_number
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError, PkiError, ValueError) as exc:
        log.error("SIGHUP: cannot load the certificate %s and key %s (the previous pair stays): %s", cert, key, exc)
        return False
    log.info("SIGHUP: TLS certificate %s (serial %x) loaded for new connections", cert, serial)
    return True


def reload_on_sighup(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    """In the running loop: SIGHUP reloads ``cert``/``key`` into ``context``."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload, context, Path(cert), Path(key))

"""The KMS gateway of a ``strongroom up`` directory in the background: start it, stop it, check it.

For ``strongroom up --kms`` / ``down`` / ``status`` and ``strongroom kms start / stop``. Its set-up
(service user, access key, HTTPS certificate, DIR/kms.toml) is :mod:`strongroom.kms.local`'s; here
it runs as ``strongroom kms serve --config DIR/kms.toml``, with DIR/kms.pid, DIR/kms.log and
DIR/kms.serving (the endpoint it was started with: when DIR/kms.toml says another scheme or port,
the next start restarts it).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from strongroom.kms.config import GatewayConfig
from strongroom.kms.local import CONFIG_FILE, HOST, GatewayStartError, ca_bundle, endpoint, setup, write_config
from strongroom.local.layout import Layout
from strongroom.local.processes import Background, LaunchError

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def gateway_process(layout: Layout) -> Background:
    config = str(layout.root / CONFIG_FILE)
    return Background("the KMS gateway", (sys.executable, "-m", "strongroom", "kms", "serve", "--config", config),
                      layout.gateway_pid, layout.gateway_log, marks=("kms", "serve"))


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _serving(layout: Layout) -> str | None:
    try:
        return layout.gateway_serving.read_text().strip()
    except FileNotFoundError:
        return None


def _summary(layout: Layout, config: GatewayConfig, key: dict[str, str], pid: int | None) -> dict[str, Any]:
    return {
        "kms_endpoint": endpoint(config),
        "kms_ca_bundle": ca_bundle(layout.root, config),
        "kms_region": config.kms.region,
        "kms_account_id": config.kms.account_id,
        "kms_access_key_id": key["access_key_id"],
        "kms_secret_access_key": key["secret_access_key"],
        "kms_pid": pid,
        "kms_log": str(layout.gateway_log),
    }


def start_gateway(root: Path, *, port: int | None = None, region: str | None = None,
                  account_id: str | None = None, check_seconds: float | None = None,
                  day_seconds: float | None = None, admin: tuple[str, str] | None = None,
                  insecure_http: bool | None = None) -> dict[str, Any]:
    """Set up (once) and start the gateway of DIR unless it runs; wait until it answers.

    Returns ``{"kms_endpoint" (https://…), "kms_ca_bundle" (the CA file that verifies it; None for
    plain HTTP), "kms_region", "kms_account_id", "kms_access_key_id", "kms_secret_access_key",
    "kms_pid", "kms_log"}`` — what ``strongroom up --kms`` adds to its JSON. ``admin``: (user,
    password) of an admin, needed only by the first set-up (else STRONGROOM_PIN).
    ``insecure_http``: see :func:`strongroom.kms.local.write_config`. ``day_seconds``/``check_seconds``
    are test knobs (how long a day of a deletion window lasts, how often deletions are swept).
    """
    layout = Layout(Path(root).resolve())
    key = setup(layout.root, admin=admin)
    config = write_config(layout.root, port=port, region=region, account_id=account_id,
                          check_seconds=check_seconds, day_seconds=day_seconds, insecure_http=insecure_http)
    process = gateway_process(layout)
    pid = process.pid()
    if pid is not None and _answers(config.kms.port) and _serving(layout) == endpoint(config):
        return _summary(layout, config, key, pid)
    # It serves another scheme or port than the configuration now says, or it does not answer.
    stop_gateway(layout.root)
    pid = process.spawn()
    layout.gateway_serving.write_text(endpoint(config) + "\n")
    try:
        process.wait(pid, lambda: _answers(config.kms.port), goal=f"listen on port {config.kms.port}",
                     timeout=START_TIMEOUT)
    except LaunchError as exc:
        raise GatewayStartError(str(exc)) from None
    return _summary(layout, config, key, pid)


def stop_gateway(root: Path) -> int | None:
    """SIGTERM the gateway of DIR (SIGKILL if it hangs); returns its pid, or None if none ran."""
    layout = Layout(Path(root).resolve())
    layout.gateway_serving.unlink(missing_ok=True)
    return gateway_process(layout).stop(STOP_TIMEOUT)


def gateway_status(root: Path) -> dict[str, Any]:
    """``{"pid", "endpoint", "health"}``: running, stopped or unresponsive."""
    layout = Layout(Path(root).resolve())
    pid = gateway_process(layout).pid()
    path = layout.root / CONFIG_FILE
    config = GatewayConfig.load(path, validate=False) if path.exists() else None
    port = None if config is None else config.kms.port
    health = "stopped" if pid is None else ("running" if port is not None and _answers(port) else "unresponsive")
    return {"pid": pid, "endpoint": None if config is None else endpoint(config), "health": health}

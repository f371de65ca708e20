"""The Vault KV service of a ``strongroom up`` directory in the background: start it, stop it, check it.

For ``strongroom up --vault-kv`` / ``down`` and ``strongroom vault-kv start / stop``. Its set-up
(service user, local token, HTTPS certificate, DIR/vaultkv.toml) is :mod:`strongroom.vaultkv.local`'s;
here it runs as ``strongroom vault-kv serve --config DIR/vaultkv.toml``, with DIR/vaultkv.pid,
DIR/vaultkv.log and DIR/vaultkv.serving (the address it was started with: when the configuration
now says another scheme or port, the next start restarts it).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from strongroom.local.layout import LocalClusterError
from strongroom.local.processes import Background, LaunchError
from strongroom.vaultkv import local as setup_local
from strongroom.vaultkv.config import VaultKvConfig

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


def _files(root: Path) -> tuple[Path, Path, Path]:
    """pid file, log, serving marker."""
    return root / "vaultkv.pid", root / "vaultkv.log", root / "vaultkv.serving"


def service_process(root: Path) -> Background:
    pid_file, log_file, _ = _files(root)
    config = str(root / setup_local.CONFIG_FILE)
    return Background("the Vault KV service",
                      (sys.executable, "-m", "strongroom", "vault-kv", "serve", "--config", config),
                      pid_file, log_file, marks=("vault-kv", "serve"))


def _answers(config: VaultKvConfig) -> bool:
    try:
        with socket.create_connection((config.vault_kv.host, config.vault_kv.port), timeout=1):
            return True
    except OSError:
        return False


def _summary(root: Path, config: VaultKvConfig, token: dict[str, Any], pid: int | None) -> dict[str, Any]:
    return {
        "vault_kv_url": config.address,
        "vault_kv_token": token["token"],
        "vault_kv_mount": token.get("mount", setup_local.LOCAL_MOUNT),
        "vault_kv_ca_bundle": setup_local.ca_bundle(root, config),
        "vault_kv_pid": pid,
        "vault_kv_log": str(_files(root)[1]),
    }


def start_vault_kv(root: Path, *, port: int | None = None, admin: tuple[str, str] | None = None,
                   insecure_http: bool | None = None) -> dict[str, Any]:
    """Set up (once) and start the service of DIR unless it runs; wait until it answers.

    Returns ``{"vault_kv_url" (https://…: VAULT_ADDR), "vault_kv_token" (the local write token for the
    mount ``secret``), "vault_kv_mount", "vault_kv_ca_bundle", "vault_kv_pid", "vault_kv_log"}``.
    ``admin``: (user, password) of an admin, needed only by the first set-up (else STRONGROOM_PIN)."""
    root = Path(root).resolve()
    try:
        token = setup_local.setup(root, admin=admin)
        config = setup_local.write_config(root, port=port, insecure_http=insecure_http)
    except setup_local.VaultKvStartError as exc:
        raise LocalClusterError(str(exc)) from None
    process = service_process(root)
    serving = _files(root)[2]
    pid = process.pid()
    if pid is not None and _answers(config) and serving.exists() and serving.read_text().strip() == config.address:
        return _summary(root, config, token, pid)
    stop_vault_kv(root)
    pid = process.spawn()
    serving.write_text(config.address + "\n")
    try:
        process.wait(pid, lambda: _answers(config), goal=f"listen on port {config.vault_kv.port}",
                     timeout=START_TIMEOUT)
    except LaunchError as exc:
        raise LocalClusterError(str(exc)) from None
    return _summary(root, config, token, pid)


def start_if_wanted(root: Path, wanted: bool, admin: tuple[str, str] | None) -> dict[str, Any]:
    """``up``: start the service when asked (``--vault-kv``) or when DIR was set up for it before; else ``{}``."""
    root = Path(root).resolve()
    if not wanted and not (root / setup_local.CONFIG_FILE).exists():
        return {}
    return start_vault_kv(root, admin=admin)


def stop_vault_kv(root: Path) -> int | None:
    """SIGTERM the service of DIR (SIGKILL if it hangs); its pid, or None if none ran."""
    root = Path(root).resolve()
    _files(root)[2].unlink(missing_ok=True)
    return service_process(root).stop(STOP_TIMEOUT)


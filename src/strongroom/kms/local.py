"""The KMS gateway of a ``strongroom up`` directory: set it up, start it in the background, stop it.

For ``strongroom up --kms`` / ``down`` and ``strongroom kms serve --dir``. Files in DIR::

    kms.toml                the gateway's configuration (kept across restarts: same port)
    kms.pid, kms.log        the running gateway's pid and its log
    kms/kmsuser.password    the KMS service user's generated password (0600)
    kms/access-key.json     a generated access key with every right (0600; local use only)

Setting up logs in as the directory's first admin (``credentials.json``), creates the crypto
user ``kmsuser`` with a random password (or resets it when the password file was lost) and
an access key bound to it.
"""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from strongroom.seal import write_private_file
from strongroom.kms.config import ClusterSettings, DeletionSettings, GatewayConfig, ServerSettings
from strongroom.local.processes import terminate

CONFIG_FILE = "kms.toml"
PID_FILE = "kms.pid"
LOG_FILE = "kms.log"
STATE_DIR = "kms"
PASSWORD_FILE = "kms/kmsuser.password"
ACCESS_KEY_FILE = "kms/access-key.json"
SERVICE_USER = "kmsuser"
HOST = "127.0.0.1"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class GatewayStartError(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _admin(root: Path) -> tuple[str, str]:
    try:
        credentials = json.loads((root / "credentials.json").read_text())
        return credentials["admin_user"], credentials["admin_password"]
    except (FileNotFoundError, KeyError, ValueError):
        raise GatewayStartError(f"{root} has no admin credentials (credentials.json): run `strongroom up` "
                                "first") from None


def setup(root: Path, *, service_user: str = SERVICE_USER) -> dict[str, str]:
    """Create (once) the service user and a full-rights access key; returns the access key."""
    from strongroom.client import Client, ClientError

    root = Path(root).resolve()
    (root / STATE_DIR).mkdir(mode=0o700, exist_ok=True)
    password_path, key_path = root / PASSWORD_FILE, root / ACCESS_KEY_FILE
    if password_path.exists() and key_path.exists():
        return json.loads(key_path.read_text())
    admin_user, admin_password = _admin(root)
    with Client.from_dir(root, timeout=30) as client:
        client.login(admin_user, admin_password)
        try:
            if not password_path.exists():
                password = secrets.token_urlsafe(24)[:32]
                try:
                    client.user_create(service_user, "crypto-user", password)
                except ClientError:
                    if not any(u["username"] == service_user for u in client.user_list()):
                        raise
                    client.user_change_password(service_user, password)  # the file was lost: reset
                write_private_file(password_path, (password + "\n").encode())
            if not key_path.exists():
                created = client.call("kms.access_key.create", name="local-full-access", service_user=service_user)
                record = {"access_key_id": created["access_key_id"],
                          "secret_access_key": created["secret_access_key"]}
                write_private_file(key_path, json.dumps(record).encode())
        finally:
            client.logout()
    return json.loads(key_path.read_text())


def write_config(root: Path, *, port: int | None = None, region: str | None = None, account_id: str | None = None,
                 check_seconds: float | None = None, day_seconds: float | None = None) -> GatewayConfig:
    """DIR/kms.toml: created on first use, kept afterwards (same port), overridden where given."""
    root = Path(root).resolve()
    path = root / CONFIG_FILE
    if path.exists():
        config = GatewayConfig.load(path)
    else:
        config = GatewayConfig(
            kms=ServerSettings(host=HOST, port=_free_port()),
            cluster=ClusterSettings(profile="client.json", username=SERVICE_USER, password_file=PASSWORD_FILE),
            deletion=DeletionSettings(),
            base=root,
        )
    if port is not None:
        config.kms.port = port
    if region is not None:
        config.kms.region = region
    if account_id is not None:
        config.kms.account_id = account_id
    if check_seconds is not None:
        config.deletion.check_seconds = check_seconds
    if day_seconds is not None:
        config.deletion.day_seconds = day_seconds
    config.validate()
    config.write(path)
    return config


def _pid(root: Path) -> int | None:
    try:
        pid = int((root / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return None
    if state == "Z" or b"kms" not in cmdline or b"serve" not in cmdline:
        return None  # gone, or the pid now belongs to something else
    return pid


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _log_tail(root: Path, lines: int = 15) -> str:
    try:
        return "\n".join((root / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _summary(root: Path, config: GatewayConfig, key: dict[str, str], pid: int | None) -> dict[str, Any]:
    scheme = "https" if config.kms.tls_cert else "http"
    return {
        "kms_endpoint": f"{scheme}://{config.kms.host}:{config.kms.port}",
        "kms_region": config.kms.region,
        "kms_account_id": config.kms.account_id,
        "kms_access_key_id": key["access_key_id"],
        "kms_secret_access_key": key["secret_access_key"],
        "kms_pid": pid,
        "kms_log": str(root / LOG_FILE),
    }


def start_gateway(root: Path, *, port: int | None = None, region: str | None = None,
                  account_id: str | None = None, check_seconds: float | None = None,
                  day_seconds: float | None = None) -> dict[str, Any]:
    """Set up (once) and start the gateway of DIR unless it runs; wait until it answers.

    Returns ``{"kms_endpoint", "kms_region", "kms_account_id", "kms_access_key_id",
    "kms_secret_access_key", "kms_pid", "kms_log"}``. ``day_seconds``/``check_seconds`` are test
    knobs (how long a day of a deletion window lasts, how often deletions are swept).
    """
    root = Path(root).resolve()
    key = setup(root)
    config = write_config(root, port=port, region=region, account_id=account_id,
                          check_seconds=check_seconds, day_seconds=day_seconds)
    pid = _pid(root)
    if pid is not None and _answers(config.kms.port):
        return _summary(root, config, key, pid)
    with open(root / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "strongroom", "kms", "serve", "--config", str(root / CONFIG_FILE)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
        )
    (root / PID_FILE).write_text(f"{process.pid}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise GatewayStartError(f"the KMS gateway exited during start-up; its log ends with:\n{_log_tail(root)}")
        if _answers(config.kms.port):
            return _summary(root, config, key, process.pid)
        time.sleep(0.05)
    raise GatewayStartError(f"the KMS gateway did not listen on port {config.kms.port} within {START_TIMEOUT:.0f} s")


def stop_gateway(root: Path) -> int | None:
    """SIGTERM the gateway of DIR (SIGKILL if it hangs); returns its pid, or None if none ran."""
    root = Path(root).resolve()
    pid = _pid(root)
    (root / PID_FILE).unlink(missing_ok=True)
    if pid is None:
        return None
    terminate(pid, STOP_TIMEOUT)
    return pid


def gateway_status(root: Path) -> dict[str, Any]:
    """``{"pid", "endpoint", "health"}``: running, stopped or unresponsive."""
    root = Path(root).resolve()
    pid = _pid(root)
    path = root / CONFIG_FILE
    port = GatewayConfig.load(path).kms.port if path.exists() else None
    health = "stopped" if pid is None else ("running" if port is not None and _answers(port) else "unresponsive")
    return {"pid": pid, "endpoint": None if port is None else f"http://{HOST}:{port}", "health": health}

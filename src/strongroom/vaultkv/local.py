"""The Vault KV service of a ``strongroom up`` directory: its set-up and configuration.

For ``strongroom up --vault-kv`` and ``strongroom vault-kv serve / start --dir``; the background
process itself is :mod:`strongroom.local.vaultkv`'s. Files in DIR::

    vaultkv.toml              the service's configuration (kept across restarts: same port, same scheme)
    vaultkv/vaultkv.password  the service user's generated password (0600)
    vaultkv/token.json        a local write token for the mount ``secret`` (all names, no expiry; 0600):
                              what a Vault dev server hands out, for trying things; databases get
                              tokens of their own (``strongroom vault-kv token create``)
    vaultkv/tls.crt, tls.key  the HTTPS certificate from DIR's CA (serverAuth only, SAN 127.0.0.1 and
                              localhost; issued again near its end or when the CA changed) and its key

Setting up (once: when the password or token file is missing) logs in as an admin — the one the
caller passes, else ``STRONGROOM_PIN=user:password`` — creates the crypto user ``vaultkv`` with a
random password (or resets it when the password file was lost) and the local token. No admin
password is written to DIR.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from strongroom import pki
from strongroom.kms.config import ClusterSettings
from strongroom.ports import free_port
from strongroom.seal import write_private_file
from strongroom.vaultkv.config import SERVICE_USER, ConfigError, ServiceSettings, VaultKvConfig

CONFIG_FILE = "vaultkv.toml"
STATE_DIR = "vaultkv"
PASSWORD_FILE = "vaultkv/vaultkv.password"
TOKEN_FILE = "vaultkv/token.json"
TLS_CERT_FILE = "vaultkv/tls.crt"
TLS_KEY_FILE = "vaultkv/tls.key"
CA_CERT_FILE = "ca/ca.crt"
CA_KEY_FILE = "ca/ca.key"
#: The mount of the local token (a Vault dev server's KV v2 mount is ``secret`` too).
LOCAL_MOUNT = "secret"
HOST = "127.0.0.1"
TLS_HOSTS = ("127.0.0.1", "localhost")
TLS_DAYS = 825
TLS_RENEW_DAYS = 30
PIN_VARIABLE = "STRONGROOM_PIN"


class VaultKvStartError(Exception):
    """Set-up or start refused or failed; the message says what to do."""


def _admin(root: Path, admin: tuple[str, str] | None) -> tuple[str, str]:
    if admin is not None:
        return admin
    pin = os.environ.get(PIN_VARIABLE)
    if pin:
        user, sep, password = pin.partition(":")
        if sep and user and password:
            return user, password
        raise VaultKvStartError(f"{PIN_VARIABLE} must be user:password")
    raise VaultKvStartError(
        f"setting up the Vault KV service of {root} (its service user and local token) needs an admin: set "
        f"{PIN_VARIABLE}=user:password")


def setup(root: Path, *, admin: tuple[str, str] | None = None) -> dict[str, Any]:
    """Create (once) the service user and the local token; returns the token record."""
    import secrets

    from strongroom.client import Client, ClientError

    root = Path(root).resolve()
    (root / STATE_DIR).mkdir(mode=0o700, exist_ok=True)
    password_path, token_path = root / PASSWORD_FILE, root / TOKEN_FILE
    if password_path.exists() and token_path.exists():
        return read_token(root)
    admin_user, admin_password = _admin(root, admin)
    try:
        with Client.from_dir(root, timeout=30) as client:
            client.login(admin_user, admin_password)
            try:
                if not password_path.exists():
                    password = secrets.token_urlsafe(24)[:32]
                    try:
                        client.user_create(SERVICE_USER, "crypto-user", password)
                    except ClientError:
                        if not any(u["username"] == SERVICE_USER for u in client.user_list()):
                            raise
                        client.user_change_password(SERVICE_USER, password)  # the file was lost: reset
                    write_private_file(password_path, (password + "\n").encode())
                if not token_path.exists():
                    made = client.call("vaultkv.token.create", mount=LOCAL_MOUNT, policy="write", names=["*"],
                                       ttl_seconds=0, service_user=SERVICE_USER, display_name="local up token")
                    record = {"token": made["token"], "accessor": made["accessor"], "mount": LOCAL_MOUNT}
                    write_private_file(token_path, json.dumps(record).encode())
            finally:
                client.logout()
    except ClientError as exc:
        raise VaultKvStartError(f"setting up the Vault KV service failed: {exc.message}") from None
    return read_token(root)


def read_token(root: Path) -> dict[str, Any]:
    path = Path(root) / TOKEN_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise VaultKvStartError(f"{path} cannot be read ({exc}); remove it and start again to make a new one") from None
    if not isinstance(record, dict) or not isinstance(record.get("token"), str):
        raise VaultKvStartError(f"{path} holds no token; remove it and start again to make one")
    return record


def _usable(cert: Any, ca_cert: Any) -> bool:
    from cryptography import x509

    if not pki.verify_issued_by(cert, ca_cert):
        return False
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=TLS_RENEW_DAYS):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    names = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    return set(TLS_HOSTS) <= names


def ensure_certificate(root: Path) -> None:
    """DIR/vaultkv/tls.{crt,key} from DIR's CA: a plain server certificate (serverAuth only, no Strongroom role,
    so it can never stand for a node, agent or operator of the cluster)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = root / TLS_CERT_FILE, root / TLS_KEY_FILE
    try:
        ca_cert = pki.load_certificate(root / CA_CERT_FILE)
        if cert_path.exists() and key_path.exists() and _usable(pki.load_certificate(cert_path), ca_cert):
            return
        ca_key = pki.load_private_key(root / CA_KEY_FILE)
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.IPAddress(ipaddress.ip_address(TLS_HOSTS[0])), x509.DNSName(TLS_HOSTS[1])]
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strongroom-vault-kv")]))
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
               .sign(key, hashes.SHA256()))
        cert = pki.sign_csr(ca_key, ca_cert, csr.public_bytes(serialization.Encoding.PEM), days=TLS_DAYS,
                            server=True, client=False)
        (root / STATE_DIR).mkdir(mode=0o700, exist_ok=True)
        pki.write_private_key(key_path, key)
        pki.write_cert(cert_path, cert)
    except pki.PkiError as exc:
        raise VaultKvStartError(f"cannot issue the Vault KV service's certificate from the directory's CA ({exc}); "
                                f"name a certificate in {CONFIG_FILE} or start with --insecure-http") from None


def write_config(root: Path, *, port: int | None = None, insecure_http: bool | None = None) -> VaultKvConfig:
    """DIR/vaultkv.toml: created on first use, kept afterwards (same port), overridden where given."""
    root = Path(root).resolve()
    path = root / CONFIG_FILE
    try:
        if path.exists():
            config = VaultKvConfig.load(path, validate=False)
        else:
            config = VaultKvConfig(vault_kv=ServiceSettings(host=HOST, port=free_port(HOST)),
                                   cluster=ClusterSettings(profile="client.json", username=SERVICE_USER,
                                                           password_file=PASSWORD_FILE),
                                   base=root)
        if port is not None:
            config.vault_kv.port = port
        if insecure_http is not None:
            config.vault_kv.insecure_http = insecure_http
        if config.vault_kv.insecure_http:
            config.vault_kv.tls_cert = config.vault_kv.tls_key = None
        elif config.vault_kv.tls_cert is None or config.vault_kv.tls_cert == TLS_CERT_FILE:
            ensure_certificate(root)
            config.vault_kv.tls_cert, config.vault_kv.tls_key = TLS_CERT_FILE, TLS_KEY_FILE
        config.validate()
    except ConfigError as exc:
        raise VaultKvStartError(str(exc)) from None
    config.write(path)
    return config


def ca_bundle(root: Path, config: VaultKvConfig) -> str | None:
    """The CA file that verifies the service: DIR's CA for the local certificate; None for plain HTTP."""
    if config.vault_kv.insecure_http or config.vault_kv.tls_cert != TLS_CERT_FILE:
        return None
    return str(Path(root).resolve() / CA_CERT_FILE)

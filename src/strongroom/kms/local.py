"""The KMS gateway of a ``strongroom up`` directory: its set-up and configuration.

For ``strongroom up --kms`` and ``strongroom kms serve / setup --dir``; the background process
itself (start, stop, status) is :mod:`strongroom.local.gateway`'s. Files in DIR::

    kms.toml                the gateway's configuration (kept across restarts: same port, same scheme)
    kms/kmsgateway.password the gateway's service user's generated password (0600)
    kms/keystore.password   the custom key stores' crypto user's generated password (0600): what
                            CreateCustomKeyStore's KeyStorePassword takes
    kms/access-key.json     a generated access key with every right (0600; local use only)
    kms/tls.crt, tls.key    the gateway's HTTPS certificate, issued by DIR/ca (serverAuth only,
                            SAN 127.0.0.1 and localhost; issued again when it nears its end or
                            the CA changed) and its key (0600)

The gateway serves HTTPS; clients trust DIR/ca/ca.crt (``kms_ca_bundle``: boto3 ``verify=``,
AWS CLI ``--ca-bundle``, ``AWS_CA_BUNDLE``). Plain HTTP only when asked (``insecure_http``).

Setting up (once: when a password or the access-key file is missing) logs in as an admin — the
one the caller passes, else ``STRONGROOM_PIN=user:password`` — and creates two crypto users with
random passwords (or resets one whose password file was lost): the gateway's own service user
``kmsgateway``, with an access key bound to it, and ``kmsuser``, the crypto user custom key
stores log in as (AWS's name for it; ``[cluster] key_store_user``). They are distinct so that the
keys of a key store are the store's, out of reach of the gateway's own session. A directory set
up before (its kms.toml names ``kmsuser`` as the gateway's user) keeps its users; its key stores
log in as ``kmskeystore``. No admin password is written to DIR.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from pathlib import Path
from typing import Any

from strongroom import pki
from strongroom.kms.config import ClusterSettings, ConfigError, DeletionSettings, GatewayConfig, ServerSettings
from strongroom.metrics.settings import MetricsSettings
from strongroom.ports import free_port
from strongroom.seal import write_private_file

CONFIG_FILE = "kms.toml"
STATE_DIR = "kms"
PASSWORD_FILE = "kms/kmsgateway.password"
ACCESS_KEY_FILE = "kms/access-key.json"
SERVICE_USER = "kmsgateway"
#: The crypto user custom key stores log in as (AWS: kmsuser), and its password file.
KEY_STORE_USER = "kmsuser"
KEY_STORE_PASSWORD_FILE = "kms/keystore.password"
#: The key stores' user of a directory whose gateway itself runs as ``kmsuser`` (set up before).
LEGACY_KEY_STORE_USER = "kmskeystore"
TLS_CERT_FILE = "kms/tls.crt"
TLS_KEY_FILE = "kms/tls.key"
CA_CERT_FILE = "ca/ca.crt"
CA_KEY_FILE = "ca/ca.key"
HOST = "127.0.0.1"
#: The names the local gateway's certificate is valid for (clients dial 127.0.0.1 or localhost).
TLS_HOSTS = ("127.0.0.1", "localhost")
TLS_DAYS = 825
#: A certificate this close to its end is issued again at the next start.
TLS_RENEW_DAYS = 30


class GatewayStartError(Exception):
    pass


#: ``user:password`` of an admin, when the caller passes none (the CLI's convention).
PIN_VARIABLE = "STRONGROOM_PIN"


def _admin(root: Path, admin: tuple[str, str] | None) -> tuple[str, str]:
    """The admin that set-up logs in as: the one given, else STRONGROOM_PIN."""
    if admin is not None:
        return admin
    pin = os.environ.get(PIN_VARIABLE)
    if pin:
        user, sep, password = pin.partition(":")
        if not sep or not user or not password:
            raise GatewayStartError(f"{PIN_VARIABLE} must be user:password")
        return user, password
    raise GatewayStartError(
        f"setting up the KMS gateway of {root} (its service user and access key) needs an admin: pass "
        f"admin=(user, password) to start_gateway, or set {PIN_VARIABLE}=user:password") from None


def users_of(root: Path, service_user: str | None = None) -> tuple[str, Path, str]:
    """(the gateway's service user, its password file, the key stores' user) of DIR: what DIR/kms.toml says
    when it exists, else the defaults (``service_user`` overrides the gateway's user)."""
    root = Path(root).resolve()
    gateway_user, password_file, store_user = SERVICE_USER, PASSWORD_FILE, KEY_STORE_USER
    path = root / CONFIG_FILE
    if path.exists():
        try:
            cluster = GatewayConfig.load(path, validate=False).cluster
        except ConfigError as exc:
            raise GatewayStartError(str(exc)) from None
        gateway_user, password_file, store_user = cluster.username, cluster.password_file, cluster.key_store_user
    gateway_user = service_user or gateway_user
    if store_user == gateway_user:
        store_user = LEGACY_KEY_STORE_USER if gateway_user == KEY_STORE_USER else KEY_STORE_USER
    return gateway_user, root / password_file, store_user


def _ensure_user(client: Any, username: str, password_path: Path) -> None:
    """A crypto user whose password is in ``password_path``: made, or its password reset when the file was lost."""
    from strongroom.client import ClientError

    if password_path.exists():
        return
    password = secrets.token_urlsafe(24)[:32]
    try:
        client.user_create(username, "crypto-user", password)
    except ClientError:
        if not any(u["username"] == username for u in client.user_list()):
            raise
        client.user_change_password(username, password)  # the file was lost: reset
    write_private_file(password_path, (password + "\n").encode())


def setup(root: Path, *, service_user: str | None = None, admin: tuple[str, str] | None = None) -> dict[str, str]:
    """Create (once) the gateway's service user, a full-rights access key bound to it, and the key stores'
    crypto user (distinct from the gateway's); returns the access key."""
    from strongroom.client import Client

    root = Path(root).resolve()
    (root / STATE_DIR).mkdir(mode=0o700, exist_ok=True)
    service_user, password_path, store_user = users_of(root, service_user)
    key_path, store_password_path = root / ACCESS_KEY_FILE, root / KEY_STORE_PASSWORD_FILE
    if password_path.exists() and key_path.exists() and store_password_path.exists():
        return _read_access_key(key_path)
    admin_user, admin_password = _admin(root, admin)
    with Client.from_dir(root, timeout=30) as client:
        client.login(admin_user, admin_password)
        try:
            _ensure_user(client, service_user, password_path)
            _ensure_user(client, store_user, store_password_path)
            if not key_path.exists():
                created = client.call("kms.access_key.create", name="local-full-access", service_user=service_user)
                record = {"access_key_id": created["access_key_id"],
                          "secret_access_key": created["secret_access_key"]}
                write_private_file(key_path, json.dumps(record).encode())
        finally:
            client.logout()
    return _read_access_key(key_path)


def _read_access_key(path: Path) -> dict[str, str]:
    """The access key that set-up wrote: ``{"access_key_id": ..., "secret_access_key": ...}``."""
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in _ACCESS_KEY_FIELDS):
        raise GatewayStartError(f"{path} does not hold an access key; remove it and start again to make one")
    return {k: record[k] for k in _ACCESS_KEY_FIELDS}


_ACCESS_KEY_FIELDS = ("access_key_id", "secret_access_key")


def _certificate_usable(cert: Any, ca_cert: Any) -> bool:
    import datetime as dt

    from cryptography import x509

    if not pki.verify_issued_by(cert, ca_cert):
        return False  # the directory's CA changed
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=TLS_RENEW_DAYS):
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    names = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))
    return set(TLS_HOSTS) <= names


def ensure_certificate(root: Path) -> tuple[Path, Path]:
    """DIR/kms/tls.{crt,key}: the gateway's HTTPS certificate from DIR's CA, issued when missing, near
    its end, or not from the current CA. A plain server certificate (serverAuth only, no Strongroom
    role): it cannot act as a client, agent, operator or node certificate of the cluster."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root = Path(root).resolve()
    cert_path, key_path = root / TLS_CERT_FILE, root / TLS_KEY_FILE
    try:
        ca_cert = pki.load_certificate(root / CA_CERT_FILE)
        if cert_path.exists() and key_path.exists() and _certificate_usable(pki.load_certificate(cert_path), ca_cert):
            return cert_path, key_path
        ca_key = pki.load_private_key(root / CA_KEY_FILE)
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.IPAddress(ipaddress.ip_address(TLS_HOSTS[0])), x509.DNSName(TLS_HOSTS[1])]
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strongroom-kms")]))
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
               .sign(key, hashes.SHA256()))
        cert = pki.sign_csr(ca_key, ca_cert, csr.public_bytes(serialization.Encoding.PEM), days=TLS_DAYS,
                            server=True, client=False)
        (root / STATE_DIR).mkdir(mode=0o700, exist_ok=True)
        pki.write_private_key(key_path, key)
        pki.write_cert(cert_path, cert)
    except pki.PkiError as exc:
        raise GatewayStartError(f"cannot issue the KMS gateway's HTTPS certificate from the directory's CA ({exc}); "
                                f"put a certificate in {CONFIG_FILE} (kms.tls_cert / kms.tls_key) or start with "
                                "--insecure-http") from None
    return cert_path, key_path


def write_config(root: Path, *, port: int | None = None, region: str | None = None, account_id: str | None = None,
                 check_seconds: float | None = None, day_seconds: float | None = None,
                 insecure_http: bool | None = None) -> GatewayConfig:
    """DIR/kms.toml: created on first use, kept afterwards (same port), overridden where given.

    HTTPS with DIR/kms/tls.crt (issued or renewed here) unless the file names a certificate of
    its own; ``insecure_http`` True: plain HTTP from now on, False: HTTPS again, None: as the file
    says (a new file: HTTPS). An older kms.toml without TLS is moved to HTTPS."""
    root = Path(root).resolve()
    path = root / CONFIG_FILE
    if path.exists():
        try:
            config = GatewayConfig.load(path, validate=False)
        except ConfigError as exc:
            raise GatewayStartError(str(exc)) from None
    else:
        config = GatewayConfig(
            kms=ServerSettings(host=HOST, port=free_port(HOST)),
            cluster=ClusterSettings(profile="client.json", username=SERVICE_USER, password_file=PASSWORD_FILE,
                                    key_store_user=KEY_STORE_USER),
            deletion=DeletionSettings(),
            base=root,
        )
    # Custom key stores never log in as the gateway's own user (a directory set up before this rule).
    config.cluster.key_store_user = users_of(root, config.cluster.username)[2]
    if config.metrics.listen is None:  # every local gateway serves /metrics (up's metrics_urls)
        config.metrics = MetricsSettings(f"{HOST}:{free_port(HOST)}")
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
    if insecure_http is not None:
        config.kms.insecure_http = insecure_http
    if config.kms.insecure_http:
        config.kms.tls_cert = config.kms.tls_key = None
    elif config.kms.tls_cert is None or config.kms.tls_cert == TLS_CERT_FILE:
        ensure_certificate(root)
        config.kms.tls_cert, config.kms.tls_key = TLS_CERT_FILE, TLS_KEY_FILE
    try:
        config.validate()
    except ConfigError as exc:
        raise GatewayStartError(str(exc)) from None
    config.write(path)
    return config


def endpoint(config: GatewayConfig) -> str:
    scheme = "http" if config.kms.insecure_http else "https"
    return f"{scheme}://{config.kms.host}:{config.kms.port}"


def ca_bundle(root: Path, config: GatewayConfig) -> str | None:
    """The CA file clients verify the gateway with: DIR's CA for the local certificate; None for plain HTTP.
    (A certificate of another CA named in kms.toml: that CA is the operator's to hand out.)"""
    if config.kms.insecure_http or config.kms.tls_cert != TLS_CERT_FILE:
        return None
    return str(Path(root).resolve() / CA_CERT_FILE)

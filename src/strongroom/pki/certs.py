"""Certificates for the cluster's mTLS: the CA, node and client certificates.

The trust anchor is a CA that belongs to the customer; for a local ``strongroom up``
:func:`create_ca` makes one that stands in for it. Every node and client
certificate is signed by that CA, and a peer is only accepted if its certificate
chains to it, so everything here is about producing certificates OpenSSL will
verify strictly (critical BasicConstraints, SKI/AKI, explicit EKU).

Every certificate Strongroom issues or accepts for a connection carries its **role** as a
SubjectAlternativeName URI, ``urn:strongroom:<role>:<name>``:

============  ==========================================================================
``node``      an HSM node (name: its node id). Only a node certificate of an enrolled node
              receives the cluster key; nodes accept nothing else from it.
``agent``     an application host (the agent, the CLI and SDK of the customer's users): may
              log in as an HSM user; never performs an operator act.
``operator``  the people who run the machines: backups, zeroize, revoke, remove; no HSM login.
============  ==========================================================================

The role is the CA's decision: :func:`sign_csr` drops any role a request asks for and writes
the one the signer chose. A customer issuing certificates with their own CA adds the URI in
its extension config (``subjectAltName = URI:urn:strongroom:agent:web-17, ...``).

Private keys are written once, with mode 0600, and never leave their directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Key types we accept as a CA key: ours is P-384, a customer's may be anything common.
CAPrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
PathLike = str | os.PathLike[str]

# Backdate notBefore so a peer whose clock is slightly behind still accepts a
# certificate issued a moment ago.
_CLOCK_SKEW = dt.timedelta(minutes=5)

__all__ = [
    "AGENT",
    "NODE",
    "OPERATOR",
    "ROLES",
    "CertificateRole",
    "CAPrivateKey",
    "certificate_role",
    "role_uri",
    "KeyPair",
    "PkiError",
    "cert_to_pem",
    "create_ca",
    "fingerprint_sha256",
    "fsync_dir",
    "is_ca",
    "issue_client_certificate",
    "issue_node_certificate",
    "key_to_pem",
    "load_certificate",
    "load_private_key",
    "sign_csr",
    "verify_issued_by",
    "write_cert",
    "write_private_key",
]


class PkiError(Exception):
    """A certificate or key could not be made, read or used.

    ``path`` names the offending file when there is one, so the operator knows
    which file of the cluster directory to look at.
    """

    def __init__(self, message: str, path: PathLike | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)


# --------------------------------------------------------------------- roles

ROLE_URI_PREFIX = "urn:strongroom:"
NODE, AGENT, OPERATOR = "node", "agent", "operator"
ROLES = (NODE, AGENT, OPERATOR)


@dataclass(frozen=True)
class CertificateRole:
    role: str
    name: str


def role_uri(role: str, name: str) -> str:
    if role not in ROLES:
        raise PkiError(f"unknown certificate role {role!r} (one of: {', '.join(ROLES)})")
    if not name or ":" in name or not name.isprintable():
        raise PkiError(f"a certificate role needs a printable name without ':', not {name!r}")
    return f"{ROLE_URI_PREFIX}{role}:{name}"


def _role_uris(san: x509.SubjectAlternativeName | None) -> list[str]:
    if san is None:
        return []
    return [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.lower().startswith(ROLE_URI_PREFIX)]


def certificate_role(cert: x509.Certificate) -> CertificateRole | None:
    """The Strongroom role the certificate carries, or None (none, several, or malformed: no role)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = _role_uris(san)
    if len(uris) != 1:
        return None
    role, _, name = uris[0][len(ROLE_URI_PREFIX):].partition(":")
    if role not in ROLES or not name:
        return None
    return CertificateRole(role, name)


# --------------------------------------------------------------------- PEM / files


def key_to_pem(key: CAPrivateKey) -> bytes:
    # Unencrypted on purpose: the file's 0600 mode and the cluster directory are
    # the protection; a passphrase would have to live next to it anyway.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class KeyPair:
    """A private key and its certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes

    @classmethod
    def from_objects(cls, key: CAPrivateKey, cert: x509.Certificate) -> KeyPair:
        return cls(key_to_pem(key), cert_to_pem(cert))

    def write(self, key_path: PathLike, cert_path: PathLike) -> None:
        _atomic_write(key_path, self.key_pem, 0o600)
        _atomic_write(cert_path, self.cert_pem, 0o644)


def _atomic_write(path: PathLike, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new
    one, and so the file never exists, even briefly, with a wider mode than ``mode``."""
    path = Path(path)
    directory = path.parent
    # A random name plus O_EXCL: we never open (and so never chmod or truncate) a
    # file someone else created, e.g. a planted symlink. Same directory, so that
    # os.replace is a rename on one filesystem.
    tmp = directory / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    except OSError as e:
        raise PkiError(f"cannot create file: {e.strerror or e}", path) from e
    try:
        with os.fdopen(fd, "wb") as f:
            # The umask can only narrow the mode; fchmod makes it exact either way.
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make a create, rename or delete in ``directory`` durable; not every platform/filesystem allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_private_key(path: PathLike, key: CAPrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, mode 0600, atomically."""
    _atomic_write(path, key_to_pem(key), 0o600)


def write_cert(path: PathLike, cert: x509.Certificate) -> None:
    """Write ``cert`` as PEM, mode 0644 (certificates are public), atomically."""
    _atomic_write(path, cert_to_pem(cert), 0o644)


def _read(path: PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise PkiError(f"{what} file not found", path) from None
    except OSError as e:
        raise PkiError(f"cannot read {what} file: {e.strerror or e}", path) from e


def load_certificate(path: PathLike) -> x509.Certificate:
    """The first certificate of the PEM file at ``path``."""
    data = _read(path, "certificate")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise PkiError(f"not a PEM certificate ({e})", path) from e


def load_private_key(path: PathLike) -> CAPrivateKey:
    """The unencrypted PEM private key at ``path``."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as e:
        # cryptography raises TypeError for "encrypted but no password".
        raise PkiError("private key is encrypted; Strongroom expects an unencrypted key", path) from e
    except ValueError as e:
        raise PkiError(f"not a PEM private key ({e})", path) from e
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey,
                            ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        raise PkiError(f"unsupported private key type {type(key).__name__}", path)
    return key


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate as ``AB:CD:...``, like ``openssl x509 -fingerprint``."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


# ------------------------------------------------------------------- issuing


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _signing_hash(key: CAPrivateKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    # Match the hash to the key's strength; Ed25519/Ed448 take no separate hash.
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _name(common_name: str) -> x509.Name:
    if not common_name:
        raise PkiError("a certificate needs a non-empty common name")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_alt_name(hosts: list[str], role: str | None = None) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = [] if role is None else [x509.UniformResourceIdentifier(role)]
    for host in hosts:
        host = host.strip()
        if not host:
            raise PkiError("empty host name in the SAN list")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _check_ca(ca_key: CAPrivateKey, ca_cert: x509.Certificate) -> None:
    # Signing with the wrong key yields certificates that fail at handshake time
    # with an opaque error; catch the mix-up here instead.
    if ca_key.public_key() != ca_cert.public_key():
        raise PkiError("the CA private key does not match the CA certificate")
    if not is_ca(ca_cert):
        raise PkiError("the issuing certificate is not a CA (BasicConstraints ca=False or absent)")


def is_ca(cert: x509.Certificate) -> bool:
    """Whether ``cert`` says it is a CA (BasicConstraints CA:TRUE)."""
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _authority_key_identifier(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # Use the CA's own SKI when it has one: chain building matches AKI to SKI, and a
    # customer CA's SKI need not be the SHA-1 of its key that we would compute.
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        public_key = ca_cert.public_key()
        # The key of a CAPrivateKey (the only kinds of CA key that sign here).
        if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey,
                                       ed448.Ed448PublicKey)):
            raise PkiError(f"the CA certificate's key ({type(public_key).__name__}) is not a CA key") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)


def _leaf(
    ca_key: CAPrivateKey,
    ca_cert: x509.Certificate,
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey,
    *,
    days: int,
    server: bool,
    client: bool,
    san: x509.SubjectAlternativeName | None,
) -> x509.Certificate:
    if not (server or client):
        raise PkiError("a leaf certificate must allow serverAuth, clientAuth or both")
    if days <= 0:
        raise PkiError(f"validity must be at least one day, not {days}")
    _check_ca(ca_key, ca_cert)
    now = _now()
    # A certificate cannot usefully outlive its issuer: verification would fail
    # from the CA's expiry on, so say so in the certificate itself.
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    eku = [oid for oid, wanted in ((ExtendedKeyUsageOID.SERVER_AUTH, server),
                                   (ExtendedKeyUsageOID.CLIENT_AUTH, client)) if wanted]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_identifier(ca_cert), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return builder.sign(ca_key, _signing_hash(ca_key))


def create_ca(common_name: str, *, days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed ECDSA P-384 CA: the stand-in for the customer's CA."""
    if days <= 0:
        raise PkiError(f"validity must be at least one day, not {days}")
    key = ec.generate_private_key(ec.SECP384R1())
    name = _name(common_name)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        # path_length=1 leaves room for one intermediate (a cluster CA under the
        # customer's root) and no deeper.
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def issue_node_certificate(
    ca_key: CAPrivateKey,
    ca_cert: x509.Certificate,
    node_id: str,
    *,
    hosts: list[str],
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-256 key and certificate for a node.

    ``hosts`` become the SAN (IP literals as IP addresses, the rest as DNS names):
    clients check the name they dialled against it. Both serverAuth and clientAuth,
    since a node is a client when it talks to another node.
    """
    if not hosts:
        # With check_hostname on, a certificate without SAN matches no address.
        raise PkiError("a node certificate needs at least one host name or IP address")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_key, ca_cert, _name(node_id), key.public_key(), days=days,
                 server=True, client=True, san=_subject_alt_name(hosts, role_uri(NODE, node_id)))
    return key, cert


def issue_client_certificate(
    ca_key: CAPrivateKey,
    ca_cert: x509.Certificate,
    name: str,
    *,
    role: str = AGENT,
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A P-256 key and clientAuth-only certificate for an application host (``agent``: the agent,
    CLI or SDK) or for the ``operator``.

    clientAuth only: OpenSSL checks the purpose, so this certificate cannot be used
    to impersonate a node to a client (nor can its role: clients check for ``node``).
    """
    if role == NODE:
        raise PkiError("a node certificate comes from issue_node_certificate (it needs host names)")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _leaf(ca_key, ca_cert, _name(name), key.public_key(), days=days,
                 server=False, client=True, san=x509.SubjectAlternativeName(
                     [x509.UniformResourceIdentifier(role_uri(role, name))]))
    return key, cert


def sign_csr(
    ca_key: CAPrivateKey,
    ca_cert: x509.Certificate,
    csr_pem: bytes,
    *,
    days: int,
    server: bool,
    client: bool,
    role: CertificateRole | None = None,
) -> x509.Certificate:
    """Sign a PEM CSR, so a key generated elsewhere never has to travel.

    Only the subject and the SubjectAlternativeName are taken from the request;
    every other extension is the CA's decision, not the requester's. So is the
    Strongroom role: a role URI in the request is dropped, ``role`` (if any) written.
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise PkiError(f"not a PEM certificate signing request ({e})") from e
    if not csr.is_signature_valid:
        raise PkiError("the CSR's signature does not verify (it was not made with its key)")
    try:
        san: x509.SubjectAlternativeName | None = csr.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None or role is not None:
        kept = [] if san is None else [n for n in san if not (isinstance(n, x509.UniformResourceIdentifier)
                                                             and n.value.lower().startswith(ROLE_URI_PREFIX))]
        if role is not None:
            kept.insert(0, x509.UniformResourceIdentifier(role_uri(role.role, role.name)))
        san = x509.SubjectAlternativeName(kept) if kept else None
    if server and (san is None or not san.get_values_for_type(x509.DNSName) + [
            str(ip) for ip in san.get_values_for_type(x509.IPAddress)]):
        raise PkiError("a server certificate needs a SubjectAlternativeName in the CSR")
    public_key = csr.public_key()
    if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey,
                                   ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        raise PkiError(f"unsupported CSR key type {type(public_key).__name__}")
    return _leaf(ca_key, ca_cert, csr.subject, public_key, days=days,
                 server=server, client=client, san=san)


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether ``ca_cert`` directly signed ``cert`` (signature and names; no time check)."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True

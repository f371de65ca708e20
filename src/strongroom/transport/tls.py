"""mTLS contexts for nodes and clients, and who is on the other end.

Both sides trust exactly one thing: the cluster CA file (the customer's CA, or the
stand-in ``strongroom up`` generates). Never the system store: a certificate from a
public CA for the right host name must not get into an HSM cluster.

TLS 1.3 only. One consequence callers must expect: in TLS 1.3 the client finishes
its handshake before the server has checked the client's certificate, so a
refused client does not see an error from the handshake but from its first read
(an alert, or EOF).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from strongroom.pki.certs import (
    NODE,
    PathLike,
    PkiError,
    certificate_role,
    fingerprint_sha256,
    load_certificate,
    load_private_key,
)

__all__ = ["NotANode", "PeerIdentity", "client_context", "peer_identity", "require_node", "server_context"]


def _base_context(protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert_file: PathLike, key_file: PathLike) -> None:
    try:
        ctx.load_cert_chain(certfile=cert_file, keyfile=key_file)
    except OSError as e:  # ssl.SSLError is an OSError
        # OpenSSL's message ("[SSL] PEM lib") names neither file: parse them ourselves
        # to say which one is missing or broken.
        load_certificate(cert_file)
        load_private_key(key_file)
        raise PkiError(f"certificate does not match private key {key_file} ({e})", cert_file) from e


def _load_ca(ctx: ssl.SSLContext, ca_file: PathLike) -> None:
    load_certificate(ca_file)  # a named error for a missing or garbled file
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except OSError as e:
        raise PkiError(f"cannot use as CA file ({e})", ca_file) from e


def server_context(cert_file: PathLike, key_file: PathLike, ca_file: PathLike) -> ssl.SSLContext:
    """A node's listening context: TLS 1.3, and a client certificate chaining to
    ``ca_file`` is required (OpenSSL also requires it to allow clientAuth)."""
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, cert_file, key_file)
    _load_ca(ctx, ca_file)
    return ctx


def client_context(cert_file: PathLike, key_file: PathLike, ca_file: PathLike) -> ssl.SSLContext:
    """A client's (or a node dialling a peer's) context: TLS 1.3, the server must
    chain to ``ca_file`` alone, allow serverAuth, and match the dialled host name."""
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True
    _load_chain(ctx, cert_file, key_file)
    # Only the cluster CA: PROTOCOL_TLS_CLIENT loads no default store, and we must
    # not call load_default_certs().
    _load_ca(ctx, ca_file)
    return ctx


@dataclass(frozen=True)
class PeerIdentity:
    """The verified certificate of the other end of a connection."""

    common_name: str | None
    #: DNS names and IP addresses (as text) of the SubjectAlternativeName, in order.
    san: tuple[str, ...]
    #: ``AB:CD:...`` SHA-256 of the DER certificate: the stable handle for pinning/audit.
    fingerprint_sha256: str
    client_auth: bool
    server_auth: bool
    #: The Strongroom role the certificate carries (node, agent, operator; None: none or ambiguous)
    #: and the name that goes with it (a node's id). See strongroom.pki.certs.
    role: str | None = None
    role_name: str | None = None

    @property
    def is_node(self) -> bool:
        """A node certificate: the node role and both TLS purposes (nodes dial each other)."""
        return self.role == NODE and self.server_auth and self.client_auth


def _common_name(cert: x509.Certificate) -> str | None:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _san(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(
        str(name.value)
        for name in ext
        if isinstance(name, (x509.DNSName, x509.IPAddress))
    )


def _eku_allows(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        # No EKU means no restriction (RFC 5280 4.2.1.12); OpenSSL agrees, so this
        # reports what the handshake accepted.
        return True
    return oid in eku or ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE in eku


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> PeerIdentity:
    """Identity of the peer of a completed handshake.

    Takes an ``SSLSocket`` or the ``SSLObject`` asyncio exposes as
    ``transport.get_extra_info("ssl_object")``.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PkiError("the peer presented no certificate")
    cert = x509.load_der_x509_certificate(der)
    role = certificate_role(cert)
    return PeerIdentity(
        common_name=_common_name(cert),
        san=_san(cert),
        fingerprint_sha256=fingerprint_sha256(cert),
        client_auth=_eku_allows(cert, ExtendedKeyUsageOID.CLIENT_AUTH),
        server_auth=_eku_allows(cert, ExtendedKeyUsageOID.SERVER_AUTH),
        role=None if role is None else role.role,
        role_name=None if role is None else role.name,
    )


class NotANode(PkiError):
    """The server a client dialled presented a certificate without the node role."""


def require_node(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> PeerIdentity:
    """Check, after the handshake, that the server is a node: a certificate of the customer's CA
    issued for an application host or the operator must not impersonate a node (and collect PINs)."""
    identity = peer_identity(ssl_object)
    if not identity.is_node:
        raise NotANode(f"the server's certificate (CN={identity.common_name!r}) does not carry the node role "
                       "(SAN URI urn:strongroom:node:<id>, serverAuth and clientAuth): not a Strongroom node")
    return identity

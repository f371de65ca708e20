"""Cluster PKI (strongroom.pki) and the mTLS contexts built on it (strongroom.transport.tls).

The TLS tests run real handshakes on 127.0.0.1. In TLS 1.3 the client's handshake
completes before the server has judged the client's certificate, so a refused
client learns it only when it reads: the tests assert on that read, and every
socket has a timeout so a wrong outcome fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from strongroom.pki import (
    KeyPair,
    PkiError,
    create_ca,
    fingerprint_sha256,
    issue_client_certificate,
    issue_node_certificate,
    load_certificate,
    load_private_key,
    sign_csr,
    write_cert,
    write_private_key,
)
from strongroom.transport.tls import PeerIdentity, client_context, peer_identity, server_context

TIMEOUT = 5.0
NODE_HOSTS = ["127.0.0.1", "localhost", "node1"]


# ------------------------------------------------------------------ fixtures


@dataclass
class Files:
    cert: Path
    key: Path


@dataclass
class Pki:
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    ca_file: Path
    other_ca_file: Path
    node: Files
    client: Files
    client_cert: x509.Certificate
    node_cert: x509.Certificate
    other_client: Files  # signed by the other CA
    other_node: Files  # signed by the other CA


def _save(directory: Path, name: str, key, cert: x509.Certificate) -> Files:
    files = Files(directory / f"{name}.crt", directory / f"{name}.key")
    write_private_key(files.key, key)
    write_cert(files.cert, cert)
    return files


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = create_ca("Strongroom Test CA")
    other_key, other_cert = create_ca("Someone Else's CA")
    write_cert(d / "ca.crt", ca_cert)
    write_cert(d / "other-ca.crt", other_cert)
    node_key, node_cert = issue_node_certificate(ca_key, ca_cert, "node1", hosts=NODE_HOSTS)
    client_key, client_cert = issue_client_certificate(ca_key, ca_cert, "alice")
    return Pki(
        ca_key=ca_key,
        ca_cert=ca_cert,
        ca_file=d / "ca.crt",
        other_ca_file=d / "other-ca.crt",
        node=_save(d, "node1", node_key, node_cert),
        client=_save(d, "alice", client_key, client_cert),
        client_cert=client_cert,
        node_cert=node_cert,
        other_client=_save(d, "mallory", *issue_client_certificate(other_key, other_cert, "mallory")),
        other_node=_save(d, "evil-node", *issue_node_certificate(other_key, other_cert, "evil", hosts=NODE_HOSTS)),
    )


def _ext(cert: x509.Certificate, cls):
    return cert.extensions.get_extension_for_class(cls)


# ------------------------------------------------------------ certificates


def test_ca_has_ca_extensions(pki: Pki) -> None:
    ca = pki.ca_cert
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp384r1"
    assert ca.issuer == ca.subject
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Strongroom Test CA"
    bc = _ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length in (1, None)
    ku = _ext(ca, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    assert _ext(ca, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    ca.verify_directly_issued_by(ca)  # self-signed
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= dt.timedelta(days=3650)


def _assert_leaf(cert: x509.Certificate, pki: Pki, cn: str) -> None:
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == cn
    assert cert.issuer == pki.ca_cert.subject
    cert.verify_directly_issued_by(pki.ca_cert)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    assert _ext(cert, x509.KeyUsage).value.digital_signature
    assert not _ext(cert, x509.KeyUsage).value.key_cert_sign
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(pki.ca_cert, x509.SubjectKeyIdentifier).value.digest
    assert _ext(cert, x509.SubjectKeyIdentifier)
    assert cert.serial_number > 0
    assert cert.not_valid_after_utc <= pki.ca_cert.not_valid_after_utc
    assert cert.not_valid_before_utc <= dt.datetime.now(dt.UTC)


def test_node_certificate(pki: Pki) -> None:
    cert = pki.node_cert
    _assert_leaf(cert, pki, "node1")
    eku = _ext(cert, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "node1"]
    # 825 days, the most public clients accept for a leaf; it is well inside the CA's life.
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=825) <= life <= dt.timedelta(days=825, minutes=10)


def test_node_certificate_ipv6_host(pki: Pki) -> None:
    _, cert = issue_node_certificate(pki.ca_key, pki.ca_cert, "n6", hosts=["::1", "n6.example"])
    san = _ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.DNSName) == ["n6.example"]


def test_client_certificate(pki: Pki) -> None:
    cert = pki.client_cert
    _assert_leaf(cert, pki, "alice")
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_serials_are_random(pki: Pki) -> None:
    serials = {issue_client_certificate(pki.ca_key, pki.ca_cert, "x")[1].serial_number for _ in range(3)}
    assert len(serials) == 3


def test_leaf_does_not_outlive_its_ca() -> None:
    ca_key, ca_cert = create_ca("short-lived", days=10)
    _, cert = issue_client_certificate(ca_key, ca_cert, "bob", days=825)
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_issuing_refuses_mismatched_ca_key(pki: Pki) -> None:
    other_key, _ = create_ca("other")
    with pytest.raises(PkiError, match="does not match"):
        issue_client_certificate(other_key, pki.ca_cert, "bob")


def test_issuing_refuses_non_ca_issuer(pki: Pki) -> None:
    key = load_private_key(pki.client.key)
    with pytest.raises(PkiError, match="not a CA"):
        issue_client_certificate(key, pki.client_cert, "bob")


def test_node_certificate_needs_hosts(pki: Pki) -> None:
    with pytest.raises(PkiError):
        issue_node_certificate(pki.ca_key, pki.ca_cert, "n", hosts=[])


def _csr(extra_ca: bool = False, san: list[str] | None = None) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node9")]))
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in san]), critical=False)
    if extra_ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_sign_csr_takes_subject_and_san_only(pki: Pki) -> None:
    cert = sign_csr(pki.ca_key, pki.ca_cert, _csr(extra_ca=True, san=["node9"]), days=30, server=True, client=True)
    _assert_leaf(cert, pki, "node9")
    # The request asked to be a CA; the CA decides otherwise.
    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert _ext(cert, x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName) == ["node9"]
    assert set(_ext(cert, x509.ExtendedKeyUsage).value) == {ExtendedKeyUsageOID.SERVER_AUTH,
                                                            ExtendedKeyUsageOID.CLIENT_AUTH}


def test_sign_csr_refusals(pki: Pki) -> None:
    with pytest.raises(PkiError, match="SubjectAlternativeName"):
        sign_csr(pki.ca_key, pki.ca_cert, _csr(), days=30, server=True, client=False)
    with pytest.raises(PkiError):
        sign_csr(pki.ca_key, pki.ca_cert, _csr(), days=30, server=False, client=False)
    with pytest.raises(PkiError, match="signing request"):
        sign_csr(pki.ca_key, pki.ca_cert, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", days=30,
                 server=False, client=True)


def test_fingerprint_is_openssl_style(pki: Pki) -> None:
    fp = fingerprint_sha256(pki.ca_cert)
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fp)
    der = pki.ca_cert.public_bytes(serialization.Encoding.DER)
    assert fp.replace(":", "").lower() == hashlib.sha256(der).hexdigest()


# ------------------------------------------------------------------ files


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    key, cert = create_ca("ca")
    old = os.umask(0)  # the most permissive umask must not widen the key file
    try:
        write_private_key(tmp_path / "ca.key", key)
        write_cert(tmp_path / "ca.crt", cert)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "ca.key") == 0o600
    assert _mode(tmp_path / "ca.crt") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ca.crt", "ca.key"]  # no temp files left


def test_rewriting_a_key_replaces_a_wider_file(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    key = ec.generate_private_key(ec.SECP256R1())
    write_private_key(path, key)
    assert _mode(path) == 0o600
    assert load_private_key(path).private_numbers() == key.private_numbers()


def test_fixture_keys_are_0600(pki: Pki) -> None:
    for files in (pki.node, pki.client, pki.other_client):
        assert _mode(files.key) == 0o600


def test_key_pair_round_trip(tmp_path: Path, pki: Pki) -> None:
    key, cert = issue_client_certificate(pki.ca_key, pki.ca_cert, "carol")
    pair = KeyPair.from_objects(key, cert)
    pair.write(tmp_path / "carol.key", tmp_path / "carol.crt")
    assert _mode(tmp_path / "carol.key") == 0o600
    assert load_certificate(tmp_path / "carol.crt") == cert
    assert load_private_key(tmp_path / "carol.key").private_numbers() == key.private_numbers()


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    garbled = tmp_path / "garbled.pem"
    garbled.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw")))
    cases = [
        (load_certificate, missing, "not found"),
        (load_private_key, missing, "not found"),
        (load_certificate, garbled, "not a PEM certificate"),
        (load_private_key, garbled, "not a PEM private key"),
        (load_private_key, encrypted, "encrypted"),
        (load_certificate, tmp_path, "cannot read"),  # a directory
    ]
    for loader, path, words in cases:
        with pytest.raises(PkiError, match=words) as info:
            loader(path)
        assert str(path) in str(info.value)
        assert info.value.path == path


def test_write_into_missing_directory_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "k.key"
    with pytest.raises(PkiError) as info:
        write_private_key(path, ec.generate_private_key(ec.SECP256R1()))
    assert info.value.path == path


# ------------------------------------------------------------------ contexts


def test_contexts_are_tls13_mutual_and_trust_only_the_ca(pki: Pki) -> None:
    server = server_context(pki.node.cert, pki.node.key, pki.ca_file)
    client = client_context(pki.client.cert, pki.client.key, pki.ca_file)
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        # Exactly the cluster CA, no system store.
        assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "Strongroom Test CA"),),)]
    assert client.check_hostname


def test_context_file_errors(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(PkiError) as info:
        server_context(pki.node.cert, tmp_path / "absent.key", pki.ca_file)
    assert info.value.path == tmp_path / "absent.key"
    with pytest.raises(PkiError, match="does not match"):
        client_context(pki.node.cert, pki.client.key, pki.ca_file)
    with pytest.raises(PkiError) as info:
        client_context(pki.client.cert, pki.client.key, tmp_path / "absent-ca.crt")
    assert info.value.path == tmp_path / "absent-ca.crt"


# --------------------------------------------------------------- handshakes


class OneShotServer:
    """Accepts one connection in a thread: handshake, peer_identity, read "ping",
    answer "pong". Records the identity or the exception."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._ctx = ctx
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(TIMEOUT)
        self.port: int = self._listener.getsockname()[1]
        self.identity = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except BaseException as e:  # noqa: BLE001 - the server thread hands any failure to the test
            self.error = e
            return
        conn.settimeout(TIMEOUT)
        try:
            with self._ctx.wrap_socket(conn, server_side=True) as tls:
                self.identity = peer_identity(tls)
                if tls.recv(4) == b"ping":
                    tls.sendall(b"pong")
        except BaseException as e:  # noqa: BLE001 - the server thread hands any failure to the test
            self.error = e
        finally:
            conn.close()

    def __enter__(self) -> OneShotServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(TIMEOUT * 2)
        self._listener.close()
        assert not self._thread.is_alive(), "server thread hung"


@dataclass
class Exchange:
    data: bytes
    version: str | None
    server: PeerIdentity


def _exchange(ctx: ssl.SSLContext, port: int, host: str = "localhost") -> Exchange:
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise
    with tls:
        tls.sendall(b"ping")
        data = tls.recv(4)
        return Exchange(data, tls.version(), peer_identity(tls))


def _client_is_refused(ctx: ssl.SSLContext, port: int, host: str = "localhost") -> None:
    """The client fails during the handshake or, TLS 1.3 style, on its first read."""
    try:
        data = _exchange(ctx, port, host).data
    except TimeoutError:
        pytest.fail("the client neither got an answer nor an error: it hung")
    except (ssl.SSLError, ConnectionError):
        return
    assert data == b"", f"a refused client read {data!r}"


@pytest.mark.parametrize("strict", [False, True], ids=["default", "x509-strict"])
def test_mutual_tls_accepts_cluster_client(pki: Pki, strict: bool) -> None:
    server = server_context(pki.node.cert, pki.node.key, pki.ca_file)
    client = client_context(pki.client.cert, pki.client.key, pki.ca_file)
    if strict:
        # Python 3.13's defaults; our certificates must already pass them.
        for ctx in (server, client):
            ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    with OneShotServer(server) as srv:
        answer = _exchange(client, srv.port)
    assert answer.data == b"pong"
    assert answer.version == "TLSv1.3"
    assert srv.error is None, srv.error
    ident = srv.identity
    assert ident.common_name == "alice"
    assert ident.client_auth and not ident.server_auth
    assert ident.san == ()
    assert ident.fingerprint_sha256 == fingerprint_sha256(pki.client_cert)
    node = answer.server
    assert node.common_name == "node1"
    assert node.san == ("127.0.0.1", "localhost", "node1")
    assert node.server_auth and node.client_auth


@pytest.mark.parametrize("host", ["127.0.0.1", "node1"])
def test_client_can_dial_by_any_san(pki: Pki, host: str) -> None:
    server = server_context(pki.node.cert, pki.node.key, pki.ca_file)
    client = client_context(pki.client.cert, pki.client.key, pki.ca_file)
    with OneShotServer(server) as srv:
        assert _exchange(client, srv.port, host).data == b"pong"


def test_asyncio_node_to_node(pki: Pki, tmp_path: Path) -> None:
    """A node dialling a node with its own certificate, through asyncio (SSLObject)."""
    key2, cert2 = issue_node_certificate(pki.ca_key, pki.ca_cert, "node2", hosts=NODE_HOSTS)
    node2 = _save(tmp_path, "node2", key2, cert2)
    server_ctx = server_context(pki.node.cert, pki.node.key, pki.ca_file)
    client_ctx = client_context(node2.cert, node2.key, pki.ca_file)
    seen = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(peer_identity(writer.get_extra_info("ssl_object")))
        writer.write(await reader.readexactly(4))
        await writer.drain()
        writer.close()

    async def main() -> bytes:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="node1")
            writer.write(b"ping")
            data = await reader.readexactly(4)
            writer.close()
            await writer.wait_closed()
            return data

    assert asyncio.run(asyncio.wait_for(main(), TIMEOUT)) == b"ping"
    assert [(i.common_name, i.server_auth, i.client_auth) for i in seen] == [("node2", True, True)]


def test_client_certificate_from_another_ca_is_refused(pki: Pki) -> None:
    server = server_context(pki.node.cert, pki.node.key, pki.ca_file)
    # Trusts the right CA, so only the server can object.
    client = client_context(pki.other_client.cert, pki.other_client.key, pki.ca_file)
    with OneShotServer(server) as srv:
        _client_is_refused(client, srv.port)
    assert isinstance(srv.error, ssl.SSLCertVerificationError), srv.error
    assert srv.identity is None


def test_node_certificate_from_another_ca_is_refused_as_client(pki: Pki) -> None:
    server = server_context(pki.node.cert, pki.node.key, pki.ca_file)
    client = client_context(pki.other_node.cert, pki.other_node.key, pki.ca_file)
    with OneShotServer(server) as srv:
        _client_is_refused(client, srv.port)
    assert isinstance(srv.error, ssl.SSLCertVerificationError), srv.error


def test_client_trusting_another_ca_refuses_the_node(pki: Pki) -> None:
    server = server_context(pki.node.cert, pki.node.key, pki.ca_file)
    client = client_context(pki.client.cert, pki.client.key, pki.other_ca_file)
    with OneShotServer(server) as srv:
        with pytest.raises(ssl.SSLCertVerificationError):
            _exchange(client, srv.port)
    assert isinstance(srv.error, ssl.SSLError)
    assert srv.identity is None


def test_impostor_node_from_another_ca_is_refused_by_client(pki: Pki) -> None:
    server = server_context(pki.other_node.cert, pki.other_node.key, pki.ca_file)
    client = client_context(pki.client.cert, pki.client.key, pki.ca_file)
    with OneShotServer(server) as srv:
        with pytest.raises(ssl.SSLCertVerificationError):
            _exchange(client, srv.port)


def test_client_without_certificate_is_refused(pki: Pki) -> None:
    server = server_context(pki.node.cert, pki.node.key, pki.ca_file)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    client.load_verify_locations(cafile=pki.ca_file)
    with OneShotServer(server) as srv:
        _client_is_refused(client, srv.port)
    assert isinstance(srv.error, ssl.SSLError), srv.error
    assert srv.identity is None


def test_hostname_mismatch_is_refused(pki: Pki) -> None:
    server = server_context(pki.node.cert, pki.node.key, pki.ca_file)
    client = client_context(pki.client.cert, pki.client.key, pki.ca_file)
    with OneShotServer(server) as srv:
        with pytest.raises(ssl.SSLCertVerificationError, match="[Hh]ostname"):
            _exchange(client, srv.port, host="wrong.example")


def test_client_certificate_cannot_impersonate_a_node(pki: Pki) -> None:
    """clientAuth-only means a stolen client certificate cannot serve."""
    server = server_context(pki.client.cert, pki.client.key, pki.ca_file)
    client = client_context(pki.node.cert, pki.node.key, pki.ca_file)
    with OneShotServer(server) as srv:
        with pytest.raises(ssl.SSLCertVerificationError, match="purpose"):
            _exchange(client, srv.port, host="alice")

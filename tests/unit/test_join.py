"""Joining a node: the clone-key exchange, who may ask for the key (role, enrollment), revocation.

In-process: the two halves of the exchange as functions; then a real node worker (its services
and request pipeline) over SQLite serving ``hsm.enroll``/``hsm.clone_key``/``hsm.revoke`` to peers built from
real certificates; then the whole path over mTLS through a NodeListener on loopback.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from strongroom import pki
from strongroom.audit import AuditLog
from strongroom.client import ClientError
from strongroom.errors import CKR
from strongroom.node.worker import build_worker
from strongroom.services.config import NodeConfig
from strongroom.services.health import SelfTestReport
from strongroom.services.join import JoinError, JoinKeyPair, fetch_cluster_key, open_cluster_key, seal_for_newcomer
from strongroom.store.sqlite import SqliteStore
from strongroom.transport.protocol import Request
from strongroom.transport.server import ConnectionPeer, NodeListener, connection_peer
from strongroom.transport.tls import server_context

CLUSTER_ID = "8d0c6a9e-cluster"


# --- the exchange, both halves --------------------------------------------------------------


def test_round_trip_gives_the_newcomer_the_key() -> None:
    key = os.urandom(32)
    pair = JoinKeyPair.generate()
    reply = seal_for_newcomer(key, CLUSTER_ID, "node2", pair.public)
    assert key not in reply["ciphertext"]
    assert len(reply["server_public"]) == 32 and len(reply["nonce"]) == 12
    cluster_id, received = open_cluster_key(pair, "node2", reply)
    assert cluster_id == CLUSTER_ID and bytes(received) == key


def test_each_reply_uses_a_fresh_server_key() -> None:
    pair = JoinKeyPair.generate()
    first = seal_for_newcomer(os.urandom(32), CLUSTER_ID, "node2", pair.public)
    second = seal_for_newcomer(os.urandom(32), CLUSTER_ID, "node2", pair.public)
    assert first["server_public"] != second["server_public"]


def _flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1:]


@pytest.mark.parametrize("tamper", [
    lambda r: dict(r, ciphertext=_flip(r["ciphertext"])),
    lambda r: dict(r, ciphertext=_flip(r["ciphertext"], -1)),  # the tag
    lambda r: dict(r, ciphertext=r["ciphertext"][:-1]),
    lambda r: dict(r, nonce=_flip(r["nonce"])),
    lambda r: dict(r, server_public=_flip(r["server_public"], 5)),
    lambda r: dict(r, server_public=JoinKeyPair.generate().public),
    lambda r: dict(r, cluster_id="another-cluster"),  # HKDF info and AAD bind the cluster id
], ids=["ciphertext", "tag", "truncated", "nonce", "server-key-bit", "server-key-swapped", "cluster-id"])
def test_tampered_reply_fails(tamper: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    pair = JoinKeyPair.generate()
    reply = seal_for_newcomer(os.urandom(32), CLUSTER_ID, "node2", pair.public)
    with pytest.raises(JoinError):
        open_cluster_key(pair, "node2", tamper(reply))


def test_reply_made_for_another_node_or_key_fails() -> None:
    pair = JoinKeyPair.generate()
    reply = seal_for_newcomer(os.urandom(32), CLUSTER_ID, "node2", pair.public)
    with pytest.raises(JoinError, match="failed authentication"):
        open_cluster_key(pair, "node3", reply)  # HKDF info names node2
    with pytest.raises(JoinError):
        open_cluster_key(JoinKeyPair.generate(), "node2", reply)


@pytest.mark.parametrize("reply", [None, {}, {"cluster_id": 1, "server_public": b"", "nonce": b"", "ciphertext": b""}])
def test_malformed_reply_fails(reply: Any) -> None:
    with pytest.raises(JoinError):
        open_cluster_key(JoinKeyPair.generate(), "node2", reply)


@pytest.mark.parametrize("public", [bytes(32), b"\x01" + bytes(31), os.urandom(31)], ids=["zero", "order-1", "short"])
def test_server_refuses_unusable_ephemeral_keys(public: bytes) -> None:
    with pytest.raises(ValueError):
        seal_for_newcomer(os.urandom(32), CLUSTER_ID, "node2", public)


# --- a node serving hsm.clone_key and hsm.revoke ---------------------------------------------


class FakeSsl:
    """What connection_peer reads from an ssl object: the peer's DER certificate."""

    def __init__(self, cert: x509.Certificate) -> None:
        self._der = cert.public_bytes(serialization.Encoding.DER)

    def getpeercert(self, binary_form: bool = False) -> bytes:
        assert binary_form
        return self._der


class Pki:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca_key, self.ca_cert = pki.create_ca("test customer CA")
        self.ca_path = root / "ca.crt"
        pki.write_cert(self.ca_path, self.ca_cert)

    def node(self, node_id: str) -> tuple[Path, Path, x509.Certificate]:
        key, cert = pki.issue_node_certificate(self.ca_key, self.ca_cert, node_id, hosts=["127.0.0.1", node_id])
        return self._write(node_id, key, cert)

    def client(self, name: str, role: str = pki.AGENT) -> tuple[Path, Path, x509.Certificate]:
        key, cert = pki.issue_client_certificate(self.ca_key, self.ca_cert, name, role=role)
        return self._write(name, key, cert)

    def _write(self, name: str, key: Any, cert: x509.Certificate) -> tuple[Path, Path, x509.Certificate]:
        (self.root / "certs").mkdir(exist_ok=True)
        cert_path, key_path = self.root / "certs" / f"{name}.crt", self.root / "certs" / f"{name}.key"
        pki.write_cert(cert_path, cert)
        pki.write_private_key(key_path, key)
        return cert_path, key_path, cert


def peer_of(cert: x509.Certificate) -> ConnectionPeer:
    return connection_peer(FakeSsl(cert))


def node_config(root: Path, authority: Pki, node_id: str, port: int = 0) -> NodeConfig:
    node_dir = root / node_id
    node_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path, _ = authority.node(node_id)
    return NodeConfig(node_id=node_id, node_dir=node_dir, host="127.0.0.1", port=port, tls_cert=cert_path,
                      tls_key=key_path, ca_cert=authority.ca_path, store_path=root / "store.db")


class Node:
    """node1 of a fresh cluster, in this process."""

    def __init__(self, tmp: Path) -> None:
        self.pki = Pki(tmp)
        self.config = node_config(tmp, self.pki, "node1")
        AuditLog.create(self.config.audit_path)
        self.store = SqliteStore(self.config.store_path)
        self.worker = build_worker(self.config, self.store, SelfTestReport((), (), 0.0), boot=1)
        self.services = self.worker.services
        self.node1_peer = peer_of(x509.load_pem_x509_certificate(self.config.tls_cert.read_bytes()))
        self.operator = peer_of(self.pki.client("operator", role=pki.OPERATOR)[2])
        self.agent = peer_of(self.pki.client("agent")[2])
        self.admin: bytes | None = None

    async def call(self, op: str, args: dict[str, Any], peer: Any, session: bytes | None = None) -> tuple[int, Any]:
        return await self.worker.pipeline.handle(Request(1, op, session, args), 1, peer)

    async def initialize(self) -> None:
        code, body = await self.call("cluster.initialize", {}, self.agent)
        assert code == CKR.OK, body
        cert = pki.sign_csr(self.pki.ca_key, self.pki.ca_cert, body["csr"].encode(), days=30, server=False,
                            client=True)
        code, body = await self.call("cluster.install_certificate",
                                     {"certificate": pki.cert_to_pem(cert).decode(),
                                      "trust_anchor": pki.cert_to_pem(self.pki.ca_cert).decode()}, self.agent)
        assert code == CKR.OK, body
        code, body = await self.call("cluster.activate", {"password": "first-admin-pw",
                                                          "activation_secret": body["activation_secret"]}, self.agent)
        assert code == CKR.OK, body
        code, body = await self.call("session.login", {"username": "admin", "password": "first-admin-pw"}, self.agent)
        assert code == CKR.OK, body
        self.admin = body["session"]

    async def enroll(self, node_id: str, cert: x509.Certificate) -> tuple[int, Any]:
        return await self.call("hsm.enroll", {"node_id": node_id, "certificate": pki.cert_to_pem(cert).decode()},
                               self.agent, self.admin)

    async def close(self) -> None:
        await self.services.keyring.stop_background()
        await self.store.close()


def run_node(tmp: Path, scenario: Callable[[Node], Awaitable[None]]) -> None:
    async def main() -> None:
        node = Node(tmp)
        try:
            await node.initialize()
            await scenario(node)
        finally:
            await node.close()

    asyncio.run(main())


def audit_events(node: Node) -> list[tuple[str, str]]:
    import json

    lines = node.config.audit_path.read_text().splitlines()
    return [(r["event"], r["outcome"]) for r in map(json.loads, lines)]


def test_a_node_certificate_receives_the_key_once_enrolled(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        cert = node.pki.node("node2")[2]
        newcomer = peer_of(cert)
        pair = JoinKeyPair.generate()
        code, reply = await node.call("hsm.clone_key", {"node_id": "node2", "ephemeral_public": pair.public},
                                      newcomer)
        assert code == CKR.ACTION_PROHIBITED and "not enrolled" in reply
        # Enrollment is an admin's act: the operator cannot, nor can an admin enroll a certificate of another role.
        code, reply = await node.call("hsm.enroll", {"node_id": "node2", "certificate": pki.cert_to_pem(cert).decode()},
                                      node.operator, node.admin)
        assert code == CKR.ACTION_PROHIBITED, reply
        code, reply = await node.enroll("node2", node.pki.client("node2-agent")[2])
        assert code == CKR.ARGUMENTS_BAD and "node role" in reply
        code, reply = await node.enroll("node3", cert)
        assert code == CKR.ARGUMENTS_BAD and "node role" in reply
        code, reply = await node.enroll("node2", cert)
        assert code == CKR.OK, reply
        # Another certificate with the same node id is not the enrolled one.
        code, reply = await node.call("hsm.clone_key", {"node_id": "node2", "ephemeral_public": pair.public},
                                      peer_of(node.pki.node("node2")[2]))
        assert code == CKR.ACTION_PROHIBITED and "not the one enrolled" in reply
        code, reply = await node.call("hsm.clone_key", {"node_id": "node2", "ephemeral_public": pair.public},
                                      newcomer)
        assert code == CKR.OK, reply
        cluster_id, key = open_cluster_key(pair, "node2", reply)
        assert cluster_id == node.services.keyring.cluster_id
        assert key == node.services.keyring.cluster_key
        assert ("hsm.clone_key", "ok") in audit_events(node)

    run_node(tmp_path, scenario)


def test_wrong_certificates_are_refused(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        pair = JoinKeyPair.generate()
        cases = {
            "operator certificate": (node.operator, "node2", "node role"),
            "agent certificate": (node.agent, "node2", "node role"),
            "another node's certificate": (peer_of(node.pki.node("node3")[2]), "node2", "not for node 'node2'"),
            "no certificate known": ("node2", "node2", "no Strongroom role"),
        }
        for what, (peer, node_id, message) in cases.items():
            code, body = await node.call("hsm.clone_key", {"node_id": node_id, "ephemeral_public": pair.public}, peer)
            assert code == CKR.ACTION_PROHIBITED, what
            assert message in body, (what, body)
        assert ("hsm.clone_key", "CKR_ACTION_PROHIBITED") in audit_events(node)
        cert = node.pki.node("node2")[2]
        assert (await node.enroll("node2", cert))[0] == CKR.OK
        code, body = await node.call("hsm.clone_key", {"node_id": "node2", "ephemeral_public": bytes(32)},
                                     peer_of(cert))
        assert code == CKR.ARGUMENTS_BAD, body

    run_node(tmp_path, scenario)


def test_revoked_certificate_is_refused_and_its_connections_closed(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        _, _, cert = node.pki.node("node2")
        newcomer = peer_of(cert)
        assert await node.services.revocation.admit_connection(newcomer) is None
        args = {"node_id": "node2", "serial": f"{cert.serial_number:x}"}
        assert (await node.enroll("node2", cert))[0] == CKR.OK
        # Only the operator's certificate may revoke (not a node's, not an application host's), and a node
        # not its own certificate.
        for other in (peer_of(node.pki.node("node3")[2]), node.agent):
            code, body = await node.call("hsm.revoke", args, other)
            assert code == CKR.ACTION_PROHIBITED and "operator role" in body
        own = {"node_id": "node1", "serial": f"{node.node1_peer.serial:x}"}
        code, body = await node.call("hsm.revoke", own, node.operator)
        assert code == CKR.ACTION_PROHIBITED and "its own certificate" in body
        code, body = await node.call("hsm.revoke", dict(args, serial="xyz"), node.operator)
        assert code == CKR.ARGUMENTS_BAD

        code, body = await node.call("hsm.revoke", args, node.operator)
        assert code == CKR.OK, body
        assert body["serial"] == f"{cert.serial_number:x}" and not body["already_revoked"]
        code, again = await node.call("hsm.revoke", args, node.operator)
        assert code == CKR.OK and again["already_revoked"]
        assert await node.services.revocation.is_revoked(cert.serial_number)
        # The record is encrypted like every other one: the serial is in the key, the rest is not.
        record = await node.store.get(f"revoked/{cert.serial_number:x}")
        assert record is not None and b"node2" not in record.value

        pair = JoinKeyPair.generate()
        code, body = await node.call("hsm.clone_key", {"node_id": "node2", "ephemeral_public": pair.public},
                                     newcomer)
        assert code == CKR.ACTION_PROHIBITED and "enrolled" in body  # revocation also ends the enrollment
        assert "revoked" in (await node.services.revocation.admit_connection(newcomer) or "")
        assert await node.services.revocation.admit_connection(node.operator) is None
        assert ("hsm.revoke", "ok") in audit_events(node)

    run_node(tmp_path, scenario)


def test_forget_cluster_key_wipes_the_copy(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        held = node.services.keyring.cluster_key
        assert held is not None and any(held)
        node.services.keyring.forget_cluster_key()
        assert node.services.keyring.cluster_key is None and not any(held)

    run_node(tmp_path, scenario)


# --- the whole path over mTLS ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_join_over_mtls(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sock.setblocking(False)
        address = f"127.0.0.1:{sock.getsockname()[1]}"
        listener = NodeListener(node.worker.pipeline.handle, max_frame=1 << 20, max_in_flight=8, max_connections=16,
                                admit=node.services.revocation.admit_connection)
        config = node.config
        await listener.start(sock, server_context(config.tls_cert, config.tls_key, config.ca_cert))
        try:
            newcomer = node_config(tmp_path, node.pki, "node2")
            dead = f"127.0.0.1:{_free_port()}"
            with pytest.raises((ClientError, OSError)):
                await fetch_cluster_key(newcomer, dead)
            with pytest.raises(ClientError, match="not enrolled"):
                await fetch_cluster_key(newcomer, address)
            assert (await node.enroll("node2", x509.load_pem_x509_certificate(newcomer.tls_cert.read_bytes())))[0] \
                == CKR.OK
            cluster_id, key = await fetch_cluster_key(newcomer, address)
            assert cluster_id == node.services.keyring.cluster_id and key == node.services.keyring.cluster_key

            # An application host's certificate in a node's configuration does not get the key; an operator's
            # certificate is not even admitted past the role check.
            impostor = node_config(tmp_path, node.pki, "node3")
            impostor.tls_cert, impostor.tls_key, _ = node.pki.client("node3")
            with pytest.raises(ClientError, match="node role"):
                await fetch_cluster_key(impostor, address)

            # Revoked: the connection is closed on arrival.
            revoked = node_config(tmp_path, node.pki, "node4")
            serial = x509.load_pem_x509_certificate(revoked.tls_cert.read_bytes()).serial_number
            code, body = await node.call("hsm.revoke", {"node_id": "node4", "serial": f"{serial:x}"}, node.operator)
            assert code == CKR.OK, body
            with pytest.raises((ClientError, ConnectionError)):
                await fetch_cluster_key(revoked, address)
        finally:
            await listener.close()

    run_node(tmp_path, scenario)

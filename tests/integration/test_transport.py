"""The wire protocol and mTLS against a real node: bad frames, limits, pipelining, foreign peers."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from pathlib import Path

import msgpack
import pytest

from strongroom import pki
from strongroom.client import Client, ClientError, Connection
from strongroom.errors import CKR
from strongroom.transport.protocol import encode_request
from strongroom.transport.tls import client_context

from .conftest import LocalCluster


def _connect(cluster: LocalCluster) -> Connection:
    client = cluster.client()
    return client.connection


def test_malformed_messages_get_errors_and_the_connection_survives(shared_cluster: LocalCluster) -> None:
    conn = _connect(shared_cluster)
    frame = lambda payload: struct.pack(">I", len(payload)) + payload  # noqa: E731
    cases = [
        (frame(b"\xc1garbage"), CKR.ARGUMENTS_BAD),  # not msgpack
        (frame(msgpack.packb({"not": "an array"})), CKR.ARGUMENTS_BAD),
        (frame(msgpack.packb([1, 5, "node.status", None])), CKR.ARGUMENTS_BAD),  # 4 elements
    ]
    for data, _code in cases:
        conn.send_raw(data)
    deadline = time.monotonic() + 5
    while len(conn.unattributed) < len(cases) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [r.code for r in conn.unattributed] == [c for _, c in cases]
    # Errors that can name the request come back under its id.
    for request_id, message, code in [
        (7001, [2, 7001, "node.status", None, {}], CKR.ARGUMENTS_BAD),  # protocol version 2
        (7002, [1, 7002, "no.such_op", None, {}], CKR.FUNCTION_NOT_SUPPORTED),
        (7003, [1, 7003, "random.generate", b"x" * 32, {"length": "8"}], CKR.SESSION_HANDLE_INVALID),
        (7004, [1, 7004, "node.status", None, {"unexpected": 1}], CKR.ARGUMENTS_BAD),
        (7005, [1, 7005, "node.status", None, []], CKR.ARGUMENTS_BAD),
    ]:
        future = conn.expect_reply(request_id)
        time.sleep(0.05)  # the expectation is registered on the client's loop before the reply can arrive
        conn.send_raw(frame(msgpack.packb(message, use_bin_type=True)))
        reply = conn.wait(future, 5)
        assert reply.code == code, (message, reply)
        assert isinstance(reply.body, str) and reply.body
    assert conn.call("node.status")["state"] == "active"


def test_wrong_argument_types_are_refused_with_arguments_bad(shared_cluster: LocalCluster) -> None:
    admin = shared_cluster.admin()
    for args in [{"username": 5, "role": "crypto-user", "password": "password1"},
                 {"username": "typed", "role": "crypto-user"},
                 {"username": "typed", "role": "crypto-user", "password": b"password1"},
                 {"username": "typed", "role": True, "password": "password1"}]:
        with pytest.raises(ClientError) as failure:
            admin.connection.call("user.create", args, admin.session)
        assert failure.value.code == CKR.ARGUMENTS_BAD
    assert "typed" not in [u["username"] for u in admin.user_list()]


def test_an_oversized_request_gets_data_len_range_and_the_connection_survives(shared_cluster: LocalCluster) -> None:
    user = shared_cluster.crypto_user("bigsender")
    conn = user.connection
    big = encode_request(8001, "random.generate", user.session, {"length": 8, "pad": b"x" * (20 << 20)})
    future = conn.expect_reply(8001)
    time.sleep(0.05)
    conn.send_raw(big)  # 20 MiB: skipped as it streams, never buffered by the node
    reply = conn.wait(future, 30)
    assert reply.code == CKR.DATA_LEN_RANGE and "limit" in reply.body
    assert len(user.generate_random(8)) == 8  # same connection, still in sync


def test_a_frame_beyond_any_reason_closes_the_connection(shared_cluster: LocalCluster) -> None:
    conn = _connect(shared_cluster)
    conn.send_raw(struct.pack(">I", 1 << 30))  # announces 1 GiB: not our protocol; the node hangs up
    deadline = time.monotonic() + 5
    while conn.closed is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert conn.closed is not None
    assert [r.code for r in conn.unattributed] == [CKR.DATA_LEN_RANGE]
    assert shared_cluster.client().node_status()["state"] == "active"


def test_replies_come_back_out_of_order_on_one_connection(shared_cluster: LocalCluster) -> None:
    shared_cluster.crypto_user("pipeliner")
    conn = _connect(shared_cluster)
    slow = conn.submit("session.login", {"username": "pipeliner", "password": "password1"})
    fast = conn.submit("node.status")
    order = []
    slow.add_done_callback(lambda _f: order.append("login"))
    fast.add_done_callback(lambda _f: order.append("status"))
    assert conn.wait(slow).ok and conn.wait(fast).ok
    # Argon2id makes the login take tens of milliseconds; the status sent after it answers first.
    assert order == ["status", "login"]


def test_many_requests_in_flight_beyond_the_limit_all_complete(shared_cluster: LocalCluster) -> None:
    user = shared_cluster.crypto_user("flooder")
    conn = user.connection
    futures = [conn.submit("random.generate", {"length": 32}, user.session) for _ in range(600)]
    replies = [conn.wait(f, 30) for f in futures]
    assert all(r.ok and len(r.body["random"]) == 32 for r in replies)
    assert len({r.body["random"] for r in replies}) == 600


def _foreign_identity(tmp_path: Path) -> tuple[Path, Path, Path]:
    ca_key, ca_cert = pki.create_ca("someone else's CA")
    key, cert = pki.issue_client_certificate(ca_key, ca_cert, "intruder")
    paths = (tmp_path / "intruder.crt", tmp_path / "intruder.key", tmp_path / "other-ca.crt")
    pki.write_cert(paths[0], cert)
    pki.write_private_key(paths[1], key)
    pki.write_cert(paths[2], ca_cert)
    return paths


def test_a_client_certificate_from_another_ca_is_refused(shared_cluster: LocalCluster, tmp_path: Path) -> None:
    cert, key, _ = _foreign_identity(tmp_path)
    node = shared_cluster.client().node
    context = client_context(cert, key, shared_cluster.dir / "ca" / "ca.crt")
    with pytest.raises((ClientError, ssl.SSLError, ConnectionError, OSError)):
        conn = Connection(node.host, node.port, context, timeout=5)
        try:
            conn.call("node.status", timeout=5)
        finally:
            conn.close()
    # No certificate at all is refused too.
    bare = ssl.create_default_context(cafile=str(shared_cluster.dir / "ca" / "ca.crt"))
    with socket.create_connection((node.host, node.port), timeout=5) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with bare.wrap_socket(raw, server_hostname=node.host) as tls:
                tls.sendall(encode_request(1, "node.status", None, {}))
                assert tls.recv(1024) == b""  # a refused peer reads nothing
                raise ConnectionError("closed without reply")
    assert shared_cluster.client().node_status()["state"] == "active"


def test_a_node_certificate_from_another_ca_is_refused_by_the_client(
    shared_cluster: LocalCluster, tmp_path: Path
) -> None:
    _, _, other_ca = _foreign_identity(tmp_path)
    client = shared_cluster.client()
    node = client.node
    context = client_context(shared_cluster.dir / "client" / "client.crt",
                             shared_cluster.dir / "client" / "client.key", other_ca)
    with pytest.raises((ssl.SSLError, OSError)):
        Connection(node.host, node.port, context, timeout=5)


def test_sdk_reports_an_unreachable_node_clearly(tmp_path: Path, shared_cluster: LocalCluster) -> None:
    client = Client.from_dir(shared_cluster.dir)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    object.__setattr__(client.node, "port", port)  # a port where nothing listens
    with pytest.raises(ClientError) as failure:
        client.node_status()
    assert failure.value.code == CKR.DEVICE_REMOVED and "cannot reach node" in failure.value.message

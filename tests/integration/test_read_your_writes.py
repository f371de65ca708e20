"""Read-your-writes without a store query per key use (issue 15).

A worker uses keys from its watch-fed cache. On the SQLite store a worker's watch polls for
what the node's *other* workers wrote (up to ``watch_poll_interval``, 50 ms, behind), so a
client whose connections reach both workers (the agent's do) would see its own unshare or
destroy ignored for a moment, if it were not for the revision token: each reply carries the
revision its writes made, the client sends it back with its next requests, and a worker
whose cache is behind it catches up first.

The attacks here are the changes a stale cache gets wrong in the client's favour.
"""

from __future__ import annotations

import pytest

from strongroom.client import Client, ClientError
from strongroom.client.connection import RevisionClock
from strongroom.constants import CKA, CKM
from strongroom.errors import CKR

from .conftest import LocalCluster

ROUNDS = 20
GCM = {"iv": None, "aad": b"", "tag_bits": 128}


def _clients_on_both_workers(cluster: LocalCluster, user: str, tries: int = 40) -> tuple[Client, Client]:
    """Two logged-in clients of ``user`` whose connections were accepted by different workers."""
    by_worker: dict[int, Client] = {}
    for _ in range(tries):
        client = cluster.client()
        pid = client.node_status()["pid"]
        if pid not in by_worker:
            client.login(user, "password1")
            by_worker[pid] = client
        if len(by_worker) == 2:
            first, second = by_worker.values()
            return first, second
    raise AssertionError(f"{tries} connections all reached one worker")


def _share_then_unshare_then_destroy(writer: Client, reader_other: Client, reader_owner: Client) -> list[str]:
    """What a stale cache let through, round by round (empty: nothing)."""
    leaks = []
    for round_ in range(ROUNDS):
        private = writer.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.LABEL: b"ryw"})
        writer.share(private, "ryw_reader")
        reader_other.encrypt(private, CKM.AES_GCM, b"shared", GCM)
        writer.unshare(private, "ryw_reader")
        try:
            reader_other.encrypt(private, CKM.AES_GCM, b"unshared", GCM)
            leaks.append(f"round {round_}: an unshared key was used")
        except ClientError as exc:
            assert exc.code in (CKR.KEY_HANDLE_INVALID, CKR.OBJECT_HANDLE_INVALID), exc
        writer.destroy_object(private)
        try:
            reader_owner.encrypt(private, CKM.AES_GCM, b"destroyed", GCM)
            leaks.append(f"round {round_}: a destroyed key was used")
        except ClientError as exc:
            assert exc.code == CKR.KEY_HANDLE_INVALID, exc
    return leaks


def test_a_client_sees_its_own_unshare_and_destroy_on_the_other_worker(cluster: LocalCluster) -> None:
    admin = cluster.admin()
    admin.user_create("ryw_owner", "crypto-user", "password1")
    admin.user_create("ryw_reader", "crypto-user", "password1")
    owner_a, owner_b = _clients_on_both_workers(cluster, "ryw_owner")
    reader_a, reader_b = _clients_on_both_workers(cluster, "ryw_reader")
    owner_pid = owner_a.node_status()["pid"]
    reader = reader_b if reader_b.node_status()["pid"] != owner_pid else reader_a
    owner_elsewhere = owner_b
    assert reader.node_status()["pid"] != owner_pid and owner_elsewhere.node_status()["pid"] != owner_pid
    # One application (as behind the agent): its connections share one token.
    clock = RevisionClock()
    for client in (owner_a, reader, owner_elsewhere):
        client.connection.aio.clock = clock
    assert _share_then_unshare_then_destroy(owner_a, reader, owner_elsewhere) == []
    assert clock.revision > 0, "the writes' replies carried their revision"


def test_a_client_without_the_token_is_still_refused_at_once_for_a_grant(cluster: LocalCluster) -> None:
    """Grants need no token: a refusal is checked again against the store (what the key was
    created or shared with a moment ago through the other worker is usable at once)."""
    admin = cluster.admin()
    admin.user_create("ryw_owner", "crypto-user", "password1")
    admin.user_create("ryw_reader", "crypto-user", "password1")
    owner_a, _owner_b = _clients_on_both_workers(cluster, "ryw_owner")
    reader_a, reader_b = _clients_on_both_workers(cluster, "ryw_reader")
    owner_pid = owner_a.node_status()["pid"]
    reader = reader_b if reader_b.node_status()["pid"] != owner_pid else reader_a
    for _ in range(ROUNDS):
        key = owner_a.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32})
        owner_a.share(key, "ryw_reader")
        assert reader.encrypt(key, CKM.AES_GCM, b"x", GCM)
        owner_a.destroy_object(key)


@pytest.mark.parametrize("revision", [1 << 40])
def test_a_token_from_the_future_costs_a_wait_not_a_refusal(cluster: LocalCluster, revision: int) -> None:
    """A token the store never reached (a confused or hostile client) makes the worker catch up the
    strict way after its wait; the call is served and nothing else is held up."""
    client = cluster.crypto_user("ryw_future")
    key = client.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.VALUE_LEN: 32})
    client.connection.aio.clock.revision = revision
    assert client.encrypt(key, CKM.AES_GCM, b"x", GCM)

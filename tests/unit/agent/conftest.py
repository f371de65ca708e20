"""Fixtures of the agent's unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom import pki


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    ca_key, ca_cert = pki.create_ca("test CA")
    node_key, node_cert = pki.issue_node_certificate(ca_key, ca_cert, "node1", hosts=["127.0.0.1"])
    client_key, client_cert = pki.issue_client_certificate(ca_key, ca_cert, "agent")
    paths = {name: tmp_path / name for name in ("ca", "node_crt", "node_key", "client_crt", "client_key")}
    pki.write_cert(paths["ca"], ca_cert)
    pki.write_cert(paths["node_crt"], node_cert)
    pki.write_private_key(paths["node_key"], node_key)
    pki.write_cert(paths["client_crt"], client_cert)
    pki.write_private_key(paths["client_key"], client_key)
    return paths

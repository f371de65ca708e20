"""``strongroom cert rotate``: new certificates for a local cluster's nodes, agent and operator, without
downtime.

For each node: a new key and certificate from DIR's CA, with the same names (SAN) and role, written
in place; then SIGHUP to the node's processes, whose workers load the new pair into the TLS context
they listen with (strongroom.pki.reload): new connections get the new certificate, established ones
carry on, nothing restarts. With an admin (``STRONGROOM_PIN``) the new certificate is enrolled too,
so that the node can receive the cluster key again later (a ``shares`` seal, a zeroized node); without
one the enrollment still names the old certificate and the result says so. The agent's certificate
is replaced the same way (its new connections to the nodes present it); the operator's is a file the
CLI reads at each command.

With a CA kept elsewhere (production), do the same by hand: issue the new certificate for the same
key usage, role URI and names, replace node.crt/node.key (client.crt/client.key), ``kill -HUP`` the
node's process group (the agent), and ``strongroom hsm enroll`` it.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from cryptography import x509

from strongroom import pki
from strongroom.client import ClientError, ClientProfile
from strongroom.local.agent import agent_process
from strongroom.local.cluster import enroll_nodes
from strongroom.local.layout import Layout, LocalClusterError
from strongroom.local.nodes import running_pid
from strongroom.metrics.certificates import iso8601
from strongroom.transport.tls import client_context

WHAT = ("nodes", "agent", "operator")
#: How long a node gets to serve its new certificate after SIGHUP.
RELOAD_SECONDS = 15.0


def _hosts(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    # In the certificate's order: the new one names the same hosts the same way.
    return [str(name.value) for name in san if isinstance(name, x509.DNSName | x509.IPAddress)]


def _served_serial(profile: ClientProfile, host: str, port: int) -> int | None:
    """The serial of the certificate a new TLS connection to the node gets (operator identity)."""
    context = client_context(profile.cert, profile.key, profile.ca)
    try:
        with socket.create_connection((host, port), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                der = tls.getpeercert(binary_form=True)
    except OSError:
        return None
    return None if der is None else x509.load_der_x509_certificate(der).serial_number


def _signal_group(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.killpg(os.getpgid(pid), signal.SIGHUP)
    except ProcessLookupError:
        return False
    return True


def rotate(directory: Path, *, days: int = 825, what: tuple[str, ...] = WHAT,
           admin: tuple[str, str] | None = None) -> dict[str, Any]:
    layout = Layout(Path(directory).resolve())
    if not layout.profile.exists():
        raise LocalClusterError(f"{directory} holds no Strongroom cluster")
    unknown = set(what) - set(WHAT)
    if unknown:
        raise LocalClusterError(f"cert rotate: nothing called {', '.join(sorted(unknown))} (one of {', '.join(WHAT)})")
    if not layout.ca_key.exists():
        raise LocalClusterError(f"{layout.ca_key} is not here (your CA is kept elsewhere): issue the new certificates "
                                "with it and replace them as `strongroom cert rotate --help` describes")
    try:
        ca_key, ca_cert = pki.load_private_key(layout.ca_key), pki.load_certificate(layout.ca_cert)
    except pki.PkiError as exc:
        raise LocalClusterError(str(exc)) from None
    profile = ClientProfile.load(layout.profile)
    rotated: list[dict[str, Any]] = []
    waiting: list[tuple[dict[str, Any], str, int, int]] = []
    if "nodes" in what:
        for node in profile.nodes:
            cert_path = layout.node_dir(node.node_id) / "tls" / "node.crt"
            key_path = layout.node_dir(node.node_id) / "tls" / "node.key"
            old = pki.load_certificate(cert_path)
            key, cert = pki.issue_node_certificate(ca_key, ca_cert, node.node_id, hosts=_hosts(old) or [node.host],
                                                   days=days)
            pki.write_private_key(key_path, key)
            pki.write_cert(cert_path, cert)
            entry: dict[str, Any] = {"name": f"node {node.node_id}", "serial": f"{cert.serial_number:x}",
                                     "previous_serial": f"{old.serial_number:x}",
                                     "not_after": iso8601(cert.not_valid_after_utc),
                                     "reloaded": _signal_group(running_pid(layout, node.node_id))}
            if admin is not None:
                try:
                    enroll_nodes(profile, admin, [(node.node_id, cert_path)])
                    entry["enrolled"] = True
                except ClientError as exc:
                    entry["enrolled"] = False
                    entry["enrollment"] = f"not renewed: {exc.message}"
            else:
                entry["enrolled"] = False
                entry["enrollment"] = ("not renewed (no admin): it names the previous certificate; before this node "
                                       "must receive the cluster key again, run `strongroom hsm enroll --id "
                                       f"{node.node_id} --cert {cert_path}` with STRONGROOM_PIN=admin:...")
            rotated.append(entry)
            if entry["reloaded"]:
                waiting.append((entry, node.host, node.port, cert.serial_number))
    for name, role, cert_path, key_path in (("agent", pki.AGENT, layout.client_cert, layout.client_key),
                                            ("operator", pki.OPERATOR, layout.operator_cert, layout.operator_key)):
        if name not in what:
            continue
        old = pki.load_certificate(cert_path)
        holder = pki.certificate_role(old)
        key, cert = pki.issue_client_certificate(ca_key, ca_cert, holder.name if holder else f"local-{name}",
                                                 role=role, days=days)
        pki.write_private_key(key_path, key)
        pki.write_cert(cert_path, cert)
        entry = {"name": name, "serial": f"{cert.serial_number:x}", "previous_serial": f"{old.serial_number:x}",
                 "not_after": iso8601(cert.not_valid_after_utc)}
        if name == "agent":
            entry["reloaded"] = _signal_group(agent_process(layout).pid())
        rotated.append(entry)
    # Each node's workers reload on their own: wait until a new connection gets the new certificate.
    operator = profile.as_operator()
    deadline = time.monotonic() + RELOAD_SECONDS
    for entry, host, port, serial in waiting:
        while _served_serial(operator, host, port) != serial:
            if time.monotonic() > deadline:
                entry["reloaded"] = False
                entry["reload_problem"] = "the node still serves its previous certificate (see its node.log)"
                break
            time.sleep(0.1)
    return {"dir": str(layout.root), "rotated": rotated}


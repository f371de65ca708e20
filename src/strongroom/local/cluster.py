"""``strongroom up / down / status``: a working local cluster in one directory.

The directory's layout is :mod:`strongroom.local.layout`'s; the processes ``up`` starts are
launched by :mod:`strongroom.local.processes` (nodes: :mod:`.nodes`, the agent: :mod:`.agent`,
the KMS gateway: :mod:`.gateway`, etcd members: :mod:`.etcd`).
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from strongroom import pki
from strongroom.client import Client, ClientError, ClientProfile, NodeAddress
from strongroom.kms.local import CONFIG_FILE as KMS_CONFIG_FILE
from strongroom.kms.local import GatewayStartError
from strongroom.local import etcd
from strongroom.local.agent import agent_status, start_agent, stop_agent, write_config
from strongroom.local.gateway import gateway_status, start_gateway, stop_gateway
from strongroom.local.layout import HOST, Layout, LocalClusterError, free_port
from strongroom.local.nodes import running_pid, start_and_check, stop_node, wait_for_key
from strongroom.local.vaultkv import start_if_wanted, stop_vault_kv
from strongroom.metrics.certificates import read_all
from strongroom.metrics.settings import MetricsSettings
from strongroom.pkcs11_module import find_module
from strongroom.seal import SHARES, SealSettings, write_private_file
from strongroom.services.config import BackupPolicy, NodeConfig


def create(layout: Layout, nodes: int, workers: int, cluster_name: str,
            ca: tuple[pki.CAPrivateKey, Any] | None = None, seal: SealSettings | None = None) -> None:
    """Lay out DIR: certificates from ``ca`` (the customer's CA; default a throw-away one), node configs."""
    if not 1 <= nodes <= 8:
        raise LocalClusterError("--nodes is 1 (embedded SQLite store) to 8 (one etcd member and node per zone)")
    layout.root.mkdir(parents=True, exist_ok=True)
    endpoints: list[str] = []
    if nodes > 1:
        try:
            etcd.etcd_binary()
        except etcd.EtcdError as exc:
            raise LocalClusterError(str(exc)) from None
        endpoints = [m.client_url for m in etcd.plan(layout.root, nodes)]
    for sub in ("ca", "client", "operator", "store", "nodes", "backups"):
        (layout.root / sub).mkdir(mode=0o700, exist_ok=True)
    ca_key, ca_cert = ca or pki.create_ca(f"{cluster_name} local customer CA")
    pki.write_private_key(layout.ca_key, ca_key)
    pki.write_cert(layout.ca_cert, ca_cert)
    # Two identities, two roles: the agent's certificate (on every application host) never reaches an
    # operator act, and the operator's never logs in.
    client_key, client_cert = pki.issue_client_certificate(ca_key, ca_cert, "local-agent", role=pki.AGENT)
    pki.write_private_key(layout.client_key, client_key)
    pki.write_cert(layout.client_cert, client_cert)
    operator_key, operator_cert = pki.issue_client_certificate(ca_key, ca_cert, "local-operator", role=pki.OPERATOR)
    pki.write_private_key(layout.operator_key, operator_key)
    pki.write_cert(layout.operator_cert, operator_cert)
    ports = {f"node{index}": free_port() for index in range(1, nodes + 1)}
    addresses = []
    for index in range(1, nodes + 1):
        node_id = f"node{index}"
        node_dir = layout.node_dir(node_id)
        (node_dir / "tls").mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(node_dir, 0o700)
        key, cert = pki.issue_node_certificate(ca_key, ca_cert, node_id, hosts=[HOST, "localhost", node_id])
        pki.write_private_key(node_dir / "tls" / "node.key", key)
        pki.write_cert(node_dir / "tls" / "node.crt", cert)
        config = NodeConfig(
            node_id=node_id,
            node_dir=node_dir,
            host=HOST,
            port=ports[node_id],
            tls_cert=node_dir / "tls" / "node.crt",
            tls_key=node_dir / "tls" / "node.key",
            ca_cert=layout.ca_cert,
            store_path=layout.store,
            zone="abcdefgh"[index - 1],
            cluster_name=cluster_name,
            workers=workers,
            store_backend="etcd" if endpoints else "sqlite",
            store_endpoints=endpoints,
            # A local cluster looks often, so its first backup follows activation within seconds.
            backup=BackupPolicy(dir=layout.backups, check_seconds=5.0),
            seal=seal or SealSettings(),
            peers=[f"{HOST}:{port}" for other, port in ports.items() if other != node_id],
            metrics=MetricsSettings(f"{HOST}:{free_port()}"),
        )
        layout.node_config(node_id).write_text(config.to_toml())
        addresses.append(NodeAddress(node_id, HOST, config.port, config.zone))
    ClientProfile(cluster_name, layout.ca_cert, layout.client_cert, layout.client_key, tuple(addresses),
                  layout.operator_cert, layout.operator_key).write(layout.profile)


@dataclass
class Initialized:
    """What initialization gives the customer once, and only here."""

    admin_user: str
    admin_password: str
    cluster_id: str
    shares: list[str]


def initialize_cluster(client: Client, cluster_name: str, ca_key: pki.CAPrivateKey, ca_cert: Any,
                       custodians: list[str] | None = None, threshold: int = 0) -> dict[str, Any]:
    """The customer's initialization, done with a CA at hand: CSR -> signature -> certificate installed."""
    made = client.cluster_initialize(cluster_name)
    cert = pki.sign_csr(ca_key, ca_cert, made["csr"].encode(), days=3650, server=False, client=True)
    return client.cluster_install_certificate(pki.cert_to_pem(cert).decode(), pki.cert_to_pem(ca_cert).decode(),
                                              custodians, threshold)


def _custodians(layout: Layout, custodians: list[Path], threshold: int | None,
                seal: SealSettings) -> tuple[list[str], int]:
    """The custodians' public keys (PEM) and the threshold; for a shares seal without any given, throw-away
    custodians in DIR/custodians (local use: their private keys lie beside the shares)."""
    if custodians:
        try:
            pems = [path.read_text() for path in custodians]
        except OSError as exc:
            raise LocalClusterError(f"cannot read a custodian key: {exc}") from None
        return pems, threshold or (len(pems) // 2 + 1)
    if seal.type != SHARES:
        return [], 0
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    layout.custodians.mkdir(mode=0o700, exist_ok=True)
    pems = []
    for index in range(1, 4):
        key = ec.generate_private_key(ec.SECP384R1())
        pki.write_private_key(layout.custodians / f"custodian-{index}.key", key)
        pems.append(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode())
    return pems, threshold or 2


def _initialize(layout: Layout, profile: ClientProfile, cluster_name: str, node: NodeAddress,
                custodians: list[Path], threshold: int | None, seal: SealSettings) -> Initialized | None:
    """Initialize and activate a fresh cluster; None when it was initialized before."""
    with Client(profile, node) as client:
        state = client.cluster_status()["state"]
        if state == "active":
            return None
        if state not in ("uninitialized", "initialize_in_progress"):
            raise LocalClusterError(
                f"the cluster is {state}: an initialization was interrupted after its activation secret was "
                "given out; finish it with `strongroom cluster activate --activation-secret ...` or start over "
                "in a new directory")
        if state == "uninitialized":
            client.cluster_initialize(cluster_name)
        # `up` plays the customer with its throw-away CA: sign the cluster CSR and install it.
        ca_key, ca_cert = pki.load_private_key(layout.ca_key), pki.load_certificate(layout.ca_cert)
        cert = pki.sign_csr(ca_key, ca_cert, client.cluster_csr().encode(), days=3650, server=False, client=True)
        pems, needed = _custodians(layout, custodians, threshold, seal)
        installed = client.cluster_install_certificate(pki.cert_to_pem(cert).decode(),
                                                       pki.cert_to_pem(ca_cert).decode(), pems, needed)
        shares = []
        if installed["shares"]:
            layout.custodians.mkdir(mode=0o700, exist_ok=True)
            for index, share in enumerate(installed["shares"], start=1):
                path = layout.custodians / f"share-{index}.json"
                write_private_file(path, share.encode())
                shares.append(str(path))
        password = secrets.token_urlsafe(18)
        client.cluster_activate(password, installed["activation_secret"], "admin")
    write_private_file(layout.cluster_id_file, f"{installed['cluster_id']}\n".encode())
    return Initialized("admin", password, str(installed["cluster_id"]), shares)


def enroll_nodes(profile: ClientProfile, admin: tuple[str, str], nodes: list[tuple[str, Path]]) -> None:
    """As an admin, enroll node certificates (node id, certificate file) so they may receive the key."""
    with Client(profile, timeout=30) as client:
        client.login(admin[0], admin[1], "admin")
        for node_id, cert_path in nodes:
            client.hsm_enroll(node_id, cert_path.read_text())
        client.logout()


def _cluster_existed(layout: Layout) -> bool:
    """Whether DIR ever held an initialized cluster (initialized by up, or a node zeroized since)."""
    from strongroom.seal import zeroized

    return layout.cluster_id_file.exists() or any(zeroized(layout.node_dir(n)) for n in layout.node_ids())


def up(directory: Path, *, nodes: int | None = None, workers: int | None = None, cluster_name: str = "strongroom",
       ca_cert: Path | None = None, ca_key: Path | None = None, initialize: bool = True,
       kms: bool = False, vault_kv: bool = False, seal: SealSettings | None = None,
       custodians: list[Path] | None = None,
       threshold: int | None = None, socket_group: str | None = None) -> dict[str, Any]:
    """Start the cluster in ``directory``, creating it first if needed.

    ``ca_cert``/``ca_key``: the customer's CA for a new directory's certificates (default: a
    throw-away CA). ``initialize=False`` leaves a new cluster uninitialized, for the customer's
    own ``cluster init`` / ``cluster initialize`` / ``cluster activate``. ``kms``: also start the
    KMS gateway (and on later ``up`` runs it starts again by itself: DIR has a kms.toml then).
    ``seal``: how a new directory's nodes keep the cluster key at rest (default ``file``);
    ``custodians``/``threshold``: who receives the recovery shares (a shares seal needs some:
    without any, throw-away custodians are made in DIR/custodians). ``nodes``: for a new directory
    (default 1); an existing one keeps its nodes (``hsm add``/``hsm remove`` change them), and a
    ``nodes`` that differs is refused rather than ignored. ``socket_group``: the group that may use
    the agent's socket (kept in agent.toml; hand edits of agent.toml are kept too).

    The first admin's password is in the result of the ``up`` that initialized the cluster, and
    nowhere else (nor in cluster.json).
    """
    layout = Layout(directory.resolve())
    workers = workers or min(os.cpu_count() or 1, 8)
    if not layout.profile.exists():
        ca = None
        if ca_cert is not None or ca_key is not None:
            if ca_cert is None or ca_key is None:
                raise LocalClusterError("give both --ca-cert and --ca-key, or neither")
            try:
                ca = (pki.load_private_key(ca_key), pki.load_certificate(ca_cert))
            except pki.PkiError as exc:
                raise LocalClusterError(str(exc)) from None
        create(layout, nodes or 1, workers, cluster_name, ca=ca, seal=seal)
    elif seal is not None:
        raise LocalClusterError(f"{layout.root} exists: its nodes keep their seal; change one node's seal with "
                                "`strongroom seal migrate --dir DIR --node ID --to TYPE`")
    profile = ClientProfile.load(layout.profile)
    if nodes is not None and nodes != len(profile.nodes):
        raise LocalClusterError(_nodes_refusal(layout, profile, nodes))
    cluster_name = profile.cluster_name
    seal_settings = NodeConfig.load(layout.node_config(profile.nodes[0].node_id)).seal
    if etcd.load(layout.root):
        try:
            etcd.start(layout.root)
        except etcd.EtcdError as exc:
            raise LocalClusterError(str(exc)) from None
    # A node that holds a seal starts first (on a new cluster: the first node, which initializes
    # it); the others receive the key from a running node once the admin enrolled them.
    from strongroom.seal import clear_zeroized, seal_exists

    sealed = [n for n in profile.nodes if seal_exists(layout.node_dir(n.node_id))]
    if not sealed and _cluster_existed(layout):
        raise LocalClusterError(
            "no node of this cluster holds the cluster key any more (every node was zeroized): only backups "
            "remain; rebuild the cluster in a new directory with `strongroom cluster recover --backup FILE "
            "--share SHARE ...` (recovery shares) or `strongroom backup restore --from DIR` (a surviving cluster)")
    leader = sealed[0] if sealed else profile.nodes[0]
    started = [start_and_check(layout, leader)]
    made: Initialized | None = None
    if initialize and started[0]["state"] != "sealed":
        made = _initialize(layout, profile, cluster_name, leader, custodians or [], threshold, seal_settings)
        started[0] = start_and_check(layout, leader)
    newcomers = [n for n in profile.nodes if n is not leader and not seal_exists(layout.node_dir(n.node_id))]
    for node in newcomers:
        # A node zeroized earlier rejoins when `up` starts it: its certificate is still enrolled, so it
        # receives the key from a running node again (a node that must never come back is removed:
        # `hsm remove` revokes its certificate).
        clear_zeroized(layout.node_dir(node.node_id))
    if made is not None and newcomers:
        enroll_nodes(profile, (made.admin_user, made.admin_password),
                     [(n.node_id, layout.node_dir(n.node_id) / "tls" / "node.crt") for n in newcomers])
    for node in profile.nodes:
        if node is leader or (not initialize and not sealed):
            continue
        entry = start_and_check(layout, node)
        if node in newcomers:
            entry.update(state=wait_for_key(layout, node, entry["pid"])["state"])
        started.append(entry)
    order = [n.node_id for n in profile.nodes]
    started.sort(key=lambda entry: order.index(entry["id"]))
    agent_pid = start_agent(layout.root, socket_group=socket_group)
    agent_socket = str(layout.agent_socket)
    found = find_module()
    module = None if found is None else str(found)
    env_lines = [
        f"export STRONGROOM_DIR={layout.root}",
        f"export STRONGROOM_AGENT_SOCKET={agent_socket}",
        f"export STRONGROOM_PKCS11_MODULE={module or ''}",
    ]
    gateway: dict[str, Any] = {}
    if kms or (layout.root / KMS_CONFIG_FILE).exists():
        try:
            gateway = start_gateway(layout.root, admin=None if made is None else (made.admin_user,
                                                                                  made.admin_password))
        except GatewayStartError as exc:
            raise LocalClusterError(str(exc)) from None
        env_lines.append(f"export STRONGROOM_KMS_ENDPOINT={gateway['kms_endpoint']}")
        if gateway.get("kms_ca_bundle"):
            # boto3 and the AWS CLI verify the gateway's HTTPS certificate against the cluster's CA.
            env_lines.append(f"export AWS_CA_BUNDLE={gateway['kms_ca_bundle']}")
    # The Vault KV endpoint for databases (docs/tde.md): like the gateway, it starts again when DIR has its config.
    vault_kv_fields = start_if_wanted(layout.root, vault_kv, None if made is None else (made.admin_user,
                                                                                       made.admin_password))
    layout.env_file.write_text("\n".join(env_lines) + "\n")
    summary: dict[str, Any] = {
        "dir": str(layout.root),
        "cluster_name": cluster_name,
        "token_label": cluster_name,
        "agent_socket": agent_socket,
        "agent_pid": agent_pid,
        "pkcs11_module": module,
        "admin_user": "admin",
        "admin_password": None,
        "env_file": str(layout.env_file),
        "client_profile": str(layout.profile),
        "ca_cert": str(layout.ca_cert),
        "seal": seal_settings.type,
        "sealed": [n["id"] for n in started if n.get("state") == "sealed"],
        "nodes": started,
        **gateway,
        **vault_kv_fields,
        "metrics_urls": metrics_urls(layout),
    }
    if seal_settings.type == "file":
        from strongroom.seal.file import WARNING

        summary["warning"] = WARNING
    write_private_file(layout.summary, json.dumps(summary, indent=2).encode())
    if made is not None:
        # Printed this once; kept nowhere (not in cluster.json).
        summary.update(admin_password=made.admin_password, cluster_id=made.cluster_id)
        if made.shares:
            summary["recovery_shares"] = made.shares
    return summary


def _nodes_refusal(layout: Layout, profile: ClientProfile, nodes: int) -> str:
    have = len(profile.nodes)
    store = "etcd" if etcd.load(layout.root) else "an embedded SQLite store"
    message = (f"{layout.root} already holds a cluster of {have} node{'s' if have != 1 else ''} ({store}); "
               f"--nodes {nodes} only shapes a new directory, and `up` would otherwise start the {have} it has. ")
    if etcd.load(layout.root):
        return message + ("Change the count with `strongroom hsm add --dir DIR` / `strongroom hsm remove --dir DIR "
                          "--id ID` (an admin's STRONGROOM_PIN), or run `up` without --nodes.")
    return message + (f"A SQLite cluster cannot grow: for {nodes} nodes over etcd use a new directory "
                      f"(`strongroom up --dir NEW_DIR --nodes {nodes}`; move the keys with `strongroom backup "
                      "restore`), or run `up` without --nodes.")


def metrics_urls(layout: Layout) -> dict[str, str]:
    """Where Prometheus scrapes each process of the directory (``[metrics] listen`` of its config)."""
    from strongroom.agent.config import AgentConfig
    from strongroom.agent.config import ConfigError as AgentConfigError
    from strongroom.kms.config import ConfigError as KmsConfigError
    from strongroom.kms.config import GatewayConfig
    from strongroom.services.config import ConfigError

    urls: dict[str, str] = {}
    for node_id in layout.node_ids():
        try:
            url = NodeConfig.load(layout.node_config(node_id)).metrics.url
        except ConfigError:
            continue
        if url:
            urls[node_id] = url
    try:
        url = AgentConfig.load(layout.agent_config).metrics.url if layout.agent_config.exists() else None
    except AgentConfigError:
        url = None
    if url:
        urls["agent"] = url
    kms_config = layout.root / KMS_CONFIG_FILE
    try:
        url = GatewayConfig.load(kms_config, validate=False).metrics.url if kms_config.exists() else None
    except KmsConfigError:
        url = None
    if url:
        urls["kms"] = url
    return urls


def certificates(layout: Layout) -> list[tuple[str, Path]]:
    """Every certificate of the directory, by what it is: the CA, each node's, the agent's, the operator's,
    the KMS gateway's."""
    found = [("ca", layout.ca_cert)]
    found += [(f"node {n}", layout.node_dir(n) / "tls" / "node.crt") for n in layout.node_ids()]
    found += [("agent", layout.client_cert), ("operator", layout.operator_cert)]
    kms_cert = layout.root / "kms" / "tls.crt"
    if kms_cert.exists():
        found.append(("kms gateway", kms_cert))
    return found


def rename(directory: Path, name: str) -> None:
    """The cluster is called ``name`` now (``cluster init --name``): client.json, the agent's token label
    (agent.toml; a running agent restarts) and ``status`` follow it."""
    from dataclasses import replace

    layout = Layout(directory.resolve())
    if not layout.profile.exists():
        return
    profile = ClientProfile.load(layout.profile)
    if profile.cluster_name == name:
        return
    replace(profile, cluster_name=name).write(layout.profile)
    if layout.agent_config.exists():
        from strongroom.local.agent import agent_process

        if agent_process(layout).pid() is not None:
            start_agent(layout.root)  # rewrites agent.toml with the new label, restarts the agent
        else:
            write_config(layout.root)


def down(directory: Path) -> dict[str, Any]:
    layout = Layout(directory.resolve())
    if not layout.profile.exists():
        raise LocalClusterError(f"{directory} holds no Strongroom cluster")
    stopped = []
    gateway_pid = stop_gateway(layout.root)
    vault_kv_pid = stop_vault_kv(layout.root)
    if vault_kv_pid is not None:
        stopped.append({"id": "vault-kv", "pid": vault_kv_pid})
    if gateway_pid is not None:
        stopped.append({"id": "kms", "pid": gateway_pid})
    agent_pid = stop_agent(layout.root)  # before the nodes: the gateway and the agent log out cleanly
    if agent_pid is not None:
        stopped.append({"id": "agent", "pid": agent_pid})
    for node_id in layout.node_ids():
        pid, leftovers = stop_node(layout, node_id)
        pids = ([] if pid is None else [pid]) + leftovers
        stopped += [{"id": node_id, "pid": stopped_pid} for stopped_pid in pids]
    stopped += etcd.stop(layout.root)
    return {"dir": str(layout.root), "stopped": stopped}


def _cluster_name(profile: ClientProfile, node: NodeAddress) -> tuple[str | None, dict[str, str] | None]:
    """The name the cluster was initialized with (``cluster init --name``) and its policies, as a node tells them."""
    try:
        with Client(profile, node, timeout=5) as client:
            status = client.cluster_status()
    except ClientError:
        return None, None
    name, policies = status.get("name"), status.get("policies")
    return (str(name) if name else None), (policies if isinstance(policies, dict) else None)


def status(directory: Path) -> dict[str, Any]:
    layout = Layout(directory.resolve())
    if not layout.profile.exists():
        raise LocalClusterError(f"{directory} holds no Strongroom cluster")
    profile = ClientProfile.load(layout.profile)
    nodes = []
    cluster_name: str | None = None
    policies: dict[str, str] | None = None
    urls = metrics_urls(layout)
    for node in profile.nodes:
        pid = running_pid(layout, node.node_id)
        entry: dict[str, Any] = {"id": node.node_id, "zone": node.zone, "address": node.address, "pid": pid}
        if pid is None:
            entry["health"] = "stopped"
        else:
            try:
                with Client(profile, node, timeout=5) as client:
                    node_status = client.node_status()
                entry["health"] = {"error": "error", "sealed": "sealed"}.get(node_status["state"], "healthy")
                entry["state"] = node_status["state"]
                entry["version"] = node_status.get("version")
                seal = node_status.get("seal") or {}
                entry["seal"] = seal.get("type")
                entry["seal_detail"] = seal.get("detail")
                entry["error"] = node_status["error"]
                entry["self_tests_failed"] = node_status["self_tests"]["failed"]
                workers = node_status.get("workers") or []
                entry["workers"] = workers
                entry["restarts"] = sum(int(w.get("restarts") or 0) for w in workers)
                if cluster_name is None and entry["health"] == "healthy":
                    cluster_name, policies = _cluster_name(profile, node)
            except ClientError as exc:
                entry["health"] = "unreachable"
                entry["error"] = exc.message
        entry["metrics_url"] = urls.get(node.node_id)
        nodes.append(entry)
    agent = agent_status(layout.root)
    agent["metrics_url"] = urls.get("agent")
    members = etcd.status(layout.root)
    healthy = (all(n["health"] == "healthy" for n in nodes) and agent["health"] == "running"
               and all(m["health"] == "healthy" for m in members))
    certs = [c.to_dict() for c in read_all(certificates(layout))]
    result = {"dir": str(layout.root), "cluster_name": cluster_name or profile.cluster_name, "healthy": healthy,
              "nodes": nodes, "agent": agent, "etcd": members, "certificates": certs,
              "certificates_expiring": [c["name"] for c in certs if c["expiring"]], "policies": policies}
    if (layout.root / KMS_CONFIG_FILE).exists():
        kms = gateway_status(layout.root)
        kms["metrics_url"] = urls.get("kms")
        result["kms"] = kms
        result["healthy"] = healthy and kms["health"] == "running"
    return result


"""Prometheus metrics of a real local cluster: a node (two workers), its agent and the KMS gateway,
scraped at the addresses `up` lists as metrics_urls after real clients used them (the SDK, the
PKCS#11 module through python-pkcs11, boto3). docs/metrics.md must list exactly what is exported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError as BotoClientError
from prometheus_client.parser import text_string_to_metric_families

from strongroom.client import Client, ClientError
from strongroom.constants import CKA, CKM
from tests.integration.conftest import LocalCluster, Pkcs11Module

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sum over every series of ``name`` whose labels include ``labels`` (None: no such series)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls)]
    return sum(found) if found else None


def eventually(url: str, check: Callable[[Samples], bool], timeout: float = 60.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.5)


def documented_names() -> set[str]:
    return set(re.findall(r"^\| `(strongroom_[a-z0-9_]+)`", DOC.read_text(), re.MULTILINE))


def exported_families(url: str) -> set[str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {f.name + ("_total" if f.type == "counter" else "") for f in text_string_to_metric_families(text)
            if f.name.startswith("strongroom_")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("metrics") / "cluster", up_args=("--kms",))
    local.up()
    try:
        yield local
    finally:
        local.down()


def test_up_lists_every_process_metrics_url(cluster: LocalCluster) -> None:
    urls = cluster.summary["metrics_urls"]
    assert set(urls) == {"node1", "agent", "kms"}, urls
    for url in urls.values():
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url), url
    status = cluster.cli("status")[1]["data"]
    assert status["nodes"][0]["metrics_url"] == urls["node1"]
    assert status["agent"]["metrics_url"] == urls["agent"]


def test_node_counts_requests_logins_lockouts_keys_store_audit(cluster: LocalCluster) -> None:
    url = cluster.summary["metrics_urls"]["node1"]
    before = scrape(url)
    user = cluster.crypto_user("metricuser", "password1")
    key = user.generate_key(CKM.AES_KEY_GEN, {CKA.TOKEN: True, CKA.LABEL: b"metrics-aes", CKA.VALUE_LEN: 32})
    for _ in range(3):
        user.encrypt(key, CKM.AES_GCM, b"row", {"iv": None, "aad": b"", "tag_bits": 128})
    admin = cluster.admin()
    admin.user_create("lockme", "crypto-user", "password1")
    for _ in range(5):
        with pytest.raises(ClientError):
            cluster.client().login("lockme", "wrong-password")

    def settled(samples: Samples) -> bool:
        # Gauges are sampled every few seconds; request counts reach the shared files within half a second.
        return ((value(samples, "strongroom_keys", **{"class": "secret_key"}) or 0) >= 1
                and (value(samples, "strongroom_requests_total", op="session.login",
                           outcome="CKR_PIN_INCORRECT") or 0) >= 5
                and (value(samples, "strongroom_requests_total", op="crypto.encrypt", outcome="ok") or 0) >= 3
                and (value(samples, "strongroom_requests_total", op="key.generate", outcome="ok") or 0) >= 1)

    after = eventually(url, settled)
    assert value(after, "strongroom_keys", **{"class": "secret_key"}) == 1
    assert value(after, "strongroom_requests_total", op="crypto.encrypt", outcome="ok") == 3
    assert value(after, "strongroom_request_duration_seconds_count", op="crypto.encrypt",
                 mechanism="CKM_AES_GCM") == 3
    assert value(after, "strongroom_request_duration_seconds_count", op="key.generate",
                 mechanism="CKM_AES_KEY_GEN") == 1
    assert value(after, "strongroom_logins_total", outcome="CKR_PIN_INCORRECT") == 5
    assert (value(after, "strongroom_logins_total", outcome="ok") or 0) >= 2
    assert value(after, "strongroom_requests_total", op="session.login", outcome="CKR_PIN_INCORRECT") == 5
    assert value(after, "strongroom_lockouts_total") == (value(before, "strongroom_lockouts_total") or 0) + 1
    # Two logins stay open (the crypto user, the admin), each on the worker that served it.
    assert (value(after, "strongroom_login_sessions") or 0) >= 2
    assert (value(after, "strongroom_cache_objects", kind="token") or 0) >= 2  # each worker caches the key
    appends = value(after, "strongroom_audit_appends_total", outcome="ok") or 0
    assert appends > (value(before, "strongroom_audit_appends_total", outcome="ok") or 0) + 5
    assert value(after, "strongroom_audit_fsync_duration_seconds_count") == appends
    assert (value(after, "strongroom_store_request_duration_seconds_count", backend="sqlite") or 0) > 0
    assert value(after, "strongroom_seal_unsealed", type="file") == 1
    assert value(after, "strongroom_seal_state", type="file", state="unsealed") == 1
    assert value(after, "strongroom_build_info", component="node", node_id="node1", zone="a") == 1
    expiry = value(after, "strongroom_certificate_expiry_timestamp_seconds", certificate="node node1")
    assert expiry is not None and expiry > time.time() + 300 * 86400
    assert value(after, "strongroom_certificate_expiring", certificate="node node1") == 0


def test_node_reports_the_newest_backup(cluster: LocalCluster) -> None:
    url = cluster.summary["metrics_urls"]["node1"]
    samples = eventually(url, lambda s: (value(s, "strongroom_backup_last_timestamp_seconds") or 0) > 0)
    created = value(samples, "strongroom_backup_last_timestamp_seconds") or 0
    assert time.time() - 600 < created <= time.time()
    age = value(samples, "strongroom_backup_age_seconds")
    assert age is not None and 0 <= age < 600


def admin_once_unpaused(cluster: LocalCluster, patience: float = 180.0) -> Client:
    """An admin login from the suite's client certificate, waiting out the pause of that source's admin
    logins (auth/throttle.py) that test_node_counts_requests_logins_lockouts_keys_store_audit's five wrong
    passwords start; the pause lives in the worker that counted them, so whether it bites depends on the
    worker a connection lands on."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return cluster.admin()
        except ClientError as exc:
            if "too many failed admin logins" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(2)


def test_agent_counts_pkcs11_calls_and_relayed_requests(cluster: LocalCluster, pkcs11_module: Pkcs11Module) -> None:
    url = cluster.summary["metrics_urls"]["agent"]
    admin = admin_once_unpaused(cluster)
    admin.user_create("p11metrics", "crypto-user", "password1")
    admin.logout()
    before = scrape(url)
    script = (
        "import os, pkcs11\n"
        "lib = pkcs11.lib(os.environ['MODULE'])\n"
        "token = lib.get_token(token_label=os.environ['LABEL'])\n"
        "with token.open(user_pin=os.environ['PIN']) as session:\n"
        "    assert len(session.generate_random(256)) == 32\n"
        "try:\n"
        "    token.open(user_pin='nobody:wrong-password')\n"
        "except pkcs11.exceptions.PinIncorrect:\n"
        "    print('refused')\n"
    )
    env = {**os.environ, "MODULE": str(pkcs11_module.path), "LABEL": cluster.summary["token_label"],
           "STRONGROOM_AGENT_SOCKET": cluster.summary["agent_socket"], "PIN": "p11metrics:password1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and "refused" in result.stdout, result.stdout + result.stderr
    from strongroom.client import Client

    with Client.from_agent(cluster.summary["agent_socket"], timeout=30) as sdk:
        sdk.cluster_status()
    after = scrape(url)

    def grew(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    assert grew("strongroom_agent_calls_total", function="C_GenerateRandom", outcome="ok") == 1
    assert grew("strongroom_agent_calls_total", function="C_Login", outcome="CKR_PIN_INCORRECT") == 1
    assert grew("strongroom_agent_call_duration_seconds_count", function="C_OpenSession") >= 2
    assert grew("strongroom_agent_relayed_requests_total") >= 1
    assert value(after, "strongroom_agent_nodes", state="connected") == 1  # one node, whatever links_per_node
    assert (value(after, "strongroom_agent_node_links", state="connected") or 0) >= 1
    assert value(after, "strongroom_certificate_expiring", certificate="agent") == 0
    assert value(after, "strongroom_build_info", component="agent") == 1


def test_gateway_counts_kms_requests_by_operation_and_outcome(cluster: LocalCluster) -> None:
    summary = cluster.summary
    url = summary["metrics_urls"]["kms"]

    def kms(secret: str) -> object:
        return boto3.client("kms", endpoint_url=summary["kms_endpoint"], region_name=summary["kms_region"],
                            aws_access_key_id=summary["kms_access_key_id"], aws_secret_access_key=secret,
                            verify=summary.get("kms_ca_bundle") or True,
                            config=Config(retries={"max_attempts": 1, "mode": "standard"}))

    client = kms(summary["kms_secret_access_key"])
    assert len(client.generate_random(NumberOfBytes=16)["Plaintext"]) == 16  # type: ignore[attr-defined]
    with pytest.raises(BotoClientError):
        kms("not-the-secret").generate_random(NumberOfBytes=16)  # type: ignore[attr-defined]
    samples = scrape(url)
    assert value(samples, "strongroom_kms_requests_total", operation="GenerateRandom", outcome="ok") == 1
    refused = [ls for (n, ls), v in samples.items()
               if n == "strongroom_kms_requests_total" and ("operation", "GenerateRandom") in ls
               and ("outcome", "ok") not in ls and v >= 1]
    assert refused, samples
    assert value(samples, "strongroom_kms_request_duration_seconds_count", operation="GenerateRandom") == 2


def test_the_metrics_table_names_exactly_what_is_exported(cluster: LocalCluster) -> None:
    urls = cluster.summary["metrics_urls"]
    # Every family shows once used, and the tests above used all but one: store errors appear with the first
    # failed store request (tests/unit/test_metrics.py makes some, and counts etcd elections).
    exported = set().union(*(exported_families(u) for u in urls.values()))
    documented = documented_names()
    assert exported - documented == set(), "exported but not in docs/metrics.md"
    assert documented - exported <= {"strongroom_store_errors_total"}, \
        "in docs/metrics.md but not exported"

"""The operator's status page in a real browser: Debian's chromium, headless, loads the page that
`strongroom status-page` serves for a running cluster; the test reads what it shows (the DOM after
rendering) and takes a screenshot. The page is read-only, loopback-only and shows no secret."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import STRONGROOM, LocalCluster

#: The probe flags: no sandbox (root in CI), nothing fetched from outside, a fresh profile each run.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("the status page test needs Debian's chromium (apt-get install chromium; .ci/run installs it)")
    return found


def browse(url: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path_factory.mktemp("statuspage") / "cluster")
    local.up()
    try:
        yield local
    finally:
        local.down()


@pytest.fixture(scope="module")
def page_url(cluster: LocalCluster) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    process = subprocess.Popen([*STRONGROOM, "status-page", "--dir", str(cluster.dir), "--listen", "127.0.0.1:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match, line + (process.stdout.read() if process.poll() is not None else "")
        yield match.group(0)
    finally:
        process.terminate()
        process.wait(30)


def wait_for_backup(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "status.json", timeout=30) as answer:
            if b'"backup_id"' in answer.read():
                return
        time.sleep(1)
    raise AssertionError("no backup shown within 60 s (the first follows activation within seconds)")


def test_chromium_shows_cluster_nodes_seal_backup_certificates_and_audit(cluster: LocalCluster, page_url: str,
                                                                         tmp_path: Path) -> None:
    wait_for_backup(page_url)
    dom = browse(page_url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    text = re.sub(r"<[^>]+>", " ", html)
    words = " ".join(text.split())
    assert re.search(r'data-testid="cluster-name">strongroom<', html), html[:2000]
    assert "Strongroom cluster strongroom" in words
    assert re.search(r'data-testid="zone-a".*node1.*healthy.*active.*file.*unsealed', html, re.DOTALL)
    assert "zone a" in words and "etcd members" in words
    assert re.search(r'data-testid="last-backup"><b>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ</b>', html), html
    for name in ("ca", "node node1", "agent", "operator"):
        assert re.search(rf"<td>{name}</td><td>\d{{4}}-\d\d-\d\dT", html), name
    assert re.search(r'data-testid="recent-events".*cluster\.activate.*admin', html, re.DOTALL)
    # Read-only and secret-free: no form, no script, no key or password.
    assert "<form" not in html and "<script" not in html
    assert cluster.summary["admin_password"] not in html
    assert "PRIVATE KEY" not in html and "BEGIN" not in html
    shot = tmp_path / "status-page.png"
    taken = browse(page_url, f"--screenshot={shot}", "--window-size=1280,1000")
    assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000


def test_the_page_changes_nothing_and_is_json_too(page_url: str) -> None:
    request = urllib.request.Request(page_url, data=b"x=1", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 405
    with urllib.request.urlopen(page_url + "status.json", timeout=30) as answer:
        assert answer.headers["Content-Type"].startswith("application/json")
        assert b'"zones"' in answer.read()


def test_the_page_refuses_to_listen_beyond_loopback(cluster: LocalCluster) -> None:
    result = subprocess.run([*STRONGROOM, "status-page", "--dir", str(cluster.dir), "--listen", "0.0.0.0:0",
                             "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "loopback only" in result.stdout, result.stdout + result.stderr


def test_a_directory_without_a_cluster_is_an_error_not_a_page(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "strongroom", "status-page", "--dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "holds no client.json" in result.stderr and "Traceback" not in result.stderr

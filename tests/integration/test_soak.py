"""The soak run's CI version (bench/soak.py --minutes 3): a 3-zone cluster in network namespaces under load
through every fault of the schedule; no half-written object, no audit record without an outcome or with a
false one, every audit log verifies, and every fault is recovered from. The 30-minute figures are in the
README ("Faults and abuse")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.etcd_cluster import etcd_binary
from tests.netns import netns_unavailable_reason

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_the_three_minute_soak_run_passes(tmp_path: Path) -> None:
    reason = netns_unavailable_reason()
    if reason:
        pytest.fail(reason)
    if etcd_binary() is None:
        pytest.fail("etcd is not installed (apt-get install etcd-server, or set STRONGROOM_ETCD)")
    figures = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--minutes", "3", "--json",
                             str(figures)], capture_output=True, text=True, timeout=840, cwd=ROOT)
    print(result.stdout[-8000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
    summary = json.loads(figures.read_text())
    faults = summary["faults"]
    assert summary["ok"]
    assert len({row["fault"] for row in faults}) == 7, "every fault of the schedule ran"
    for row in faults:
        assert row["half_written"] == 0 and row["audit_without_outcome"] == 0, row
        assert row["audit_false_outcome"] == 0 and all(row["audit_verify"].values()), row
        assert row["recovery_seconds"] is not None, row
        if row["fault"].startswith("etcd quorum lost"):
            # Issue 14 item 4: without a store majority, logged-in applications go on signing and
            # encrypting with the cached keys, and new logins work; only creations are refused for want
            # of the store. (A call that timed out on a starved machine is not counted here: no timing.)
            assert set(row["store_refusals_by_kind"]) <= {"create"}, row
    assert summary["verify_exit"] == 0

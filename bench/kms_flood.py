#!/usr/bin/env python3
"""What a flood of unauthenticated requests costs the cluster behind the KMS gateway.

Run: ``.venv/bin/python bench/kms_flood.py [--seconds 5] [--threads 4] [--json FILE]``.

1. ``strongroom up --dir TMP`` (one node, its workers, the agent) and
   ``strongroom.local.gateway.start_gateway`` (HTTPS with the cluster's CA, or HTTP on builds that
   had no HTTPS);
2. for each scenario, ``--threads`` client threads, each with one keep-alive HTTP(S) connection,
   replay requests signed beforehand (botocore's SigV4 signer) as fast as the gateway answers,
   for ``--seconds``:

   * ``unknown key (one id)``: one access key id the cluster does not know;
   * ``unknown key (new id each)``: a different unknown access key id per request;
   * ``bad signature``: the real access key id with a wrong secret;
   * ``valid``: real, correctly signed ListKeys requests (the reference);
   * ``valid during flood``: valid requests from one thread while the other threads send
     ``unknown key (new id each)`` from the same address — do legitimate clients still pass?

3. per scenario: requests/s answered, the answers' error codes, the CPU used meanwhile by the
   node (all its processes) and by the gateway, and how many audit records the node wrote
   (lines added to ``nodes/*/audit.log``; the node also writes aggregated records at the end
   of its interval, counted after a pause at the end).

Nothing is asserted; it measures and prints.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import http.client
import json
import os
import secrets
import ssl
import string
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
CLK_TCK = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from botocore.auth import SigV4Auth  # noqa: E402
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials  # noqa: E402
from kms import descendants, machine_info, proc_cpu  # noqa: E402

from strongroom.local.gateway import start_gateway, stop_gateway  # noqa: E402

ALPHABET = string.ascii_uppercase + string.digits


def log(msg: str) -> None:
    print(f"[kms-flood {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def random_akid() -> str:
    return "AKIA" + "".join(secrets.choice(ALPHABET) for _ in range(16))


def sign(endpoint: str, region: str, akid: str, secret: str) -> tuple[bytes, dict[str, str]]:
    request = AWSRequest(method="POST", url=endpoint + "/", data=b"{}",
                         headers={"X-Amz-Target": "TrentService.ListKeys",
                                  "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(akid, secret), "kms", region).add_auth(request)
    return request.body, dict(request.headers.items())


class Target:
    def __init__(self, endpoint: str, ca_bundle: str | None) -> None:
        parts = urlsplit(endpoint)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or (443 if self.https else 80)
        self.context = ssl.create_default_context(cafile=ca_bundle) if self.https else None

    def connect(self) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=30)
        return http.client.HTTPConnection(self.host, self.port, timeout=30)


def flood(target: Target, requests: list[list[tuple[bytes, dict[str, str]]]], seconds: float,
          pids: dict[str, list[int]]) -> dict[str, Any]:
    """One thread per list of requests, each cycling through its list on one connection."""
    codes: list[collections.Counter[str]] = [collections.Counter() for _ in requests]
    counts = [0] * len(requests)
    errors: list[BaseException] = []
    start = threading.Barrier(len(requests) + 1)
    stop_at = [0.0]

    def worker(i: int) -> None:
        connection = target.connect()
        mine = requests[i]
        start.wait()
        n = 0
        try:
            while time.perf_counter() < stop_at[0]:
                body, headers = mine[n % len(mine)]
                n += 1
                connection.request("POST", "/", body=body, headers=headers)
                reply = connection.getresponse()
                data = reply.read()
                code = "200" if reply.status == 200 else json.loads(data).get("__type", str(reply.status))
                codes[i][code] += 1
                counts[i] += 1
                if reply.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = target.connect()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    cpu_before = {name: sum(proc_cpu(p) for p in group) for name, group in pids.items()}
    stop_at[0] = time.perf_counter() + seconds
    began = time.perf_counter()
    start.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    cpu_after = {name: sum(proc_cpu(p) for p in group) for name, group in pids.items()}
    if errors:
        raise RuntimeError(f"a request failed: {errors[0]!r}")
    return {"wall": wall, "per_thread": [{"requests": c, "per_s": c / wall, "codes": dict(k)}
                                         for c, k in zip(counts, codes, strict=True)],
            "requests": sum(counts), "per_s": sum(counts) / wall,
            "cpu_pct": {k: 100 * (cpu_after[k] - cpu_before[k]) / wall for k in pids}}


def audit_records(root: Path) -> int:
    return sum(len(path.read_bytes().splitlines()) for path in (root / "nodes").glob("*/audit.log"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--settle", type=float, default=65.0,
                        help="seconds to wait at the end for the node's aggregated audit records")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    machine = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="kms-flood-"))
    root = tmp / "cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "AWS_"))}
    results: dict[str, Any] = {}
    up = False
    try:
        log(f"strongroom up --dir {root}")
        p = subprocess.run([str(PYTHON), "-m", "strongroom", "up", "--dir", str(root)], capture_output=True,
                           text=True, env=env, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"strongroom up failed: {p.stderr.strip()[-2000:]}")
        up = True
        summary = json.loads(p.stdout)
        try:
            info = start_gateway(root, admin=(summary["admin_user"], summary["admin_password"]))
        except TypeError:  # a build whose start_gateway takes no admin (it read credentials.json)
            info = start_gateway(root)
        endpoint, region = info["kms_endpoint"], info["kms_region"]
        target = Target(endpoint, info.get("kms_ca_bundle"))
        log(f"gateway at {endpoint} (pid {info['kms_pid']})")
        node_pids = [pid for n in summary["nodes"] for pid in descendants(int(n["pid"]))]
        pids = {"node": node_pids, "gateway": [int(info["kms_pid"])]}
        akid, secret = info["kms_access_key_id"], info["kms_secret_access_key"]
        pool = 2000

        def unknown_fixed() -> list[tuple[bytes, dict[str, str]]]:
            return [sign(endpoint, region, random_akid(), "x" * 40)]

        def unknown_each() -> list[tuple[bytes, dict[str, str]]]:
            return [sign(endpoint, region, random_akid(), "x" * 40) for _ in range(pool)]

        def bad_signature() -> list[tuple[bytes, dict[str, str]]]:
            return [sign(endpoint, region, akid, "y" * 40)]

        def valid() -> list[tuple[bytes, dict[str, str]]]:
            return [sign(endpoint, region, akid, secret)]

        scenarios = {
            "unknown key (one id)": [unknown_fixed() for _ in range(args.threads)],
            "unknown key (new id each)": [unknown_each() for _ in range(args.threads)],
            "bad signature": [bad_signature() for _ in range(args.threads)],
            "valid": [valid() for _ in range(args.threads)],
            "valid during flood": [valid()] + [unknown_each() for _ in range(args.threads - 1)],
        }
        for name, requests in scenarios.items():
            time.sleep(2)  # let earlier limits refill between scenarios
            before = audit_records(root)
            log(f"{name}: {args.threads} thread(s), {args.seconds:g} s")
            row = flood(target, requests, args.seconds, pids)
            row["audit_records"] = audit_records(root) - before
            results[name] = row
        log(f"waiting {args.settle:g} s for aggregated audit records")
        before = audit_records(root)
        time.sleep(args.settle)
        results["after the pause"] = {"audit_records": audit_records(root) - before}
    finally:
        stop_gateway(root)
        if up:
            subprocess.run([str(PYTHON), "-m", "strongroom", "down", "--dir", str(root)], capture_output=True,
                           env=env, timeout=180)
    m = machine
    print(f"\n{m['date']}, commit {m['commit']}; {m['nproc']} x {m['cpu']}, Linux {m['kernel']}, "
          f"Python {m['python']}; {args.threads} threads, {args.seconds:g} s per scenario\n")
    print("| scenario | requests/s | answers | node CPU % | node ms/request | gateway CPU % | audit records |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for name, row in results.items():
        if "per_s" not in row:
            print(f"| {name} | | | | | | {row['audit_records']} |")
            continue
        codes: collections.Counter[str] = collections.Counter()
        for thread in row["per_thread"]:
            codes.update(thread["codes"])
        answers = ", ".join(f"{code} {n}" for code, n in codes.most_common())
        cpu = row["cpu_pct"]
        print(f"| {name} | {row['per_s']:,.0f} | {answers} | {cpu['node']:.0f} | "
              f"{10 * cpu['node'] / max(row['per_s'], 1e-9):.3f} | {cpu['gateway']:.0f} | {row['audit_records']} |")
    during = results["valid during flood"]["per_thread"][0]
    print(f"\nvalid during flood: the legitimate thread made {during['per_s']:,.0f} requests/s, answers "
          f"{during['codes']}")
    if args.json:
        args.json.write_text(json.dumps({"machine": m, "seconds": args.seconds, "results": results,
                                         "at": datetime.datetime.now(datetime.UTC).isoformat()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The KMS gateway through boto3: requests/s of Encrypt (1 KiB), Decrypt and GenerateDataKey
(AES_256) with 1 and 8 client threads, against two references measured in the same run.

Run through ``bench/kms`` (which sets up the venv first). One run:

1. ``strongroom up --dir TMP`` (one node, its worker processes, the agent) and
   ``strongroom.local.gateway.start_gateway(TMP, admin=…)`` (the gateway process, HTTPS with a
   certificate of the cluster's CA — ``--insecure-http``: plain HTTP —, talking to the node over
   mTLS with its own pipelined connections); one symmetric KMS key;
2. **gateway**: each thread has its own boto3 client (own botocore session, own HTTP
   connection pool), makes 3 warm-up calls, waits at a barrier, then calls the operation in a
   loop for ``--seconds`` (default 5). Every request is a full KMS request: botocore serializes
   and SigV4-signs it, the gateway checks the signature with the day's signing key (issued by
   the node once, ``kms.sigv4.signing_key``, then cached), reads the key's record (from the
   cluster at most once a second), and runs AES-GCM in the node (GenerateDataKey also draws
   the data key from the node's CSPRNG);
3. **echo** (the client's ceiling): the same boto3 loop against a local aiohttp server in its
   own process (the gateway's HTTP stack, HTTPS with the gateway's certificate when the gateway
   serves HTTPS) that answers every request at once with a canned KMS-shaped response,
   verifying nothing. The difference between the two is what the gateway
   and the cluster add; the echo rate is what this client (Python threads, one GIL) can
   drive at most;
4. **in-process AES-GCM** (the crypto alone): ``cryptography``'s AESGCM encrypting 1 KiB (for
   Decrypt: decrypting it) in the same threads, no network, no KMS semantics;
5. a table: ops/s, p50/p99 of one call, gateway/echo and gateway/AES-GCM, and the CPU used
   meanwhile by the gateway, the node (all its processes) and the client process.

Nothing is asserted about speed; it measures and prints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
CLK_TCK = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, str(ROOT / "src"))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402

from strongroom.local.gateway import start_gateway, stop_gateway  # noqa: E402

OPS = ("Encrypt", "Decrypt", "GenerateDataKey")
PAYLOAD = os.urandom(1024)

ECHO_SERVER = r'''
import base64, json, os, ssl, sys
from aiohttp import web
blob = base64.b64encode(os.urandom(1024 + 50)).decode()
arn = "arn:aws:kms:us-east-1:111122223333:key/00000000-0000-0000-0000-000000000000"
answers = {
    "TrentService.Encrypt": {"CiphertextBlob": blob, "KeyId": arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"},
    "TrentService.Decrypt": {"Plaintext": base64.b64encode(os.urandom(1024)).decode(), "KeyId": arn,
                             "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"},
    "TrentService.GenerateDataKey": {"CiphertextBlob": base64.b64encode(os.urandom(82)).decode(), "KeyId": arn,
                                     "Plaintext": base64.b64encode(os.urandom(32)).decode()},
}
async def handle(request):
    await request.read()
    body = json.dumps(answers.get(request.headers.get("x-amz-target", ""), {})).encode()
    return web.Response(body=body, headers={"Content-Type": "application/x-amz-json-1.1",
                                            "x-amzn-RequestId": "echo"})
app = web.Application()
app.router.add_route("*", "/{tail:.*}", handle)
tls = None
if len(sys.argv) > 2:  # the gateway's certificate and key: the same TLS as the gateway
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.minimum_version = ssl.TLSVersion.TLSv1_2
    tls.load_cert_chain(sys.argv[2], sys.argv[3])
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, ssl_context=tls)
'''


def log(msg: str) -> None:
    print(f"[kms-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def machine_info() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        commit += " (uncommitted changes)" if dirty else ""
    except OSError:
        commit = "unknown"
    import botocore

    return {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(), "python": platform.python_version(),
            "boto3": boto3.__version__, "botocore": botocore.__version__, "commit": commit}


def run_threads(threads: int, seconds: float, make: Callable[[], Callable[[], Any]],
                pids: dict[str, list[int]]) -> dict[str, Any]:
    """Each thread: make() its own callable, 3 warm-ups, barrier, loop for `seconds`."""
    ready = threading.Barrier(threads + 1)  # every thread made its client and warmed up
    barrier = threading.Barrier(threads + 1)  # go
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    stop_at = [0.0]

    def worker(i: int) -> None:
        try:
            call = make()
            for _ in range(3):
                call()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            ready.abort()
            barrier.abort()
            return
        ready.wait()
        barrier.wait()
        mine = latencies[i]
        try:
            while True:
                t0 = time.perf_counter()
                call()
                t1 = time.perf_counter()
                mine.append(t1 - t0)
                if t1 >= stop_at[0]:
                    return
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    ready.wait()
    cpu_before = {name: sum(proc_cpu(p) for p in group) for name, group in pids.items()}
    stop_at[0] = time.perf_counter() + seconds
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    wall = time.perf_counter() - start
    cpu_after = {name: sum(proc_cpu(p) for p in group) for name, group in pids.items()}
    if errors:
        raise RuntimeError(f"a call failed: {errors[0]!r}")
    samples = [x for lat in latencies for x in lat]
    return {"ops": len(samples), "wall": wall, "ops_per_s": len(samples) / wall,
            "p50_ms": 1000 * statistics.median(samples), "p99_ms": 1000 * percentile(samples, 99),
            "cpu_pct": {k: 100 * (cpu_after[k] - cpu_before[k]) / wall for k in pids}}


def kms_client(endpoint: str, info: dict[str, Any]) -> Any:
    session = boto3.session.Session()
    return session.client("kms", endpoint_url=endpoint, region_name=info["kms_region"],
                          aws_access_key_id=info["kms_access_key_id"],
                          aws_secret_access_key=info["kms_secret_access_key"],
                          verify=info.get("kms_ca_bundle") or True,
                          config=Config(retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=4))


def boto_op(op: str, endpoint: str, info: dict[str, Any], key_id: str, blob: bytes) -> Callable[[], Callable[[], Any]]:
    def make() -> Callable[[], Any]:
        client = kms_client(endpoint, info)
        if op == "Encrypt":
            return lambda: client.encrypt(KeyId=key_id, Plaintext=PAYLOAD)
        if op == "Decrypt":
            return lambda: client.decrypt(CiphertextBlob=blob)
        return lambda: client.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    return make


def local_op(op: str) -> Callable[[], Callable[[], Any]]:
    key = AESGCM.generate_key(256)

    def make() -> Callable[[], Any]:
        aead = AESGCM(key)
        if op == "Decrypt":
            nonce = os.urandom(12)
            sealed = aead.encrypt(nonce, PAYLOAD, b"")
            return lambda: aead.decrypt(nonce, sealed, b"")
        if op == "GenerateDataKey":
            return lambda: aead.encrypt(os.urandom(12), os.urandom(32), b"")
        return lambda: aead.encrypt(os.urandom(12), PAYLOAD, b"")
    return make


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--insecure-http", action="store_true",
                        help="the gateway (and the echo server) in plain HTTP instead of HTTPS")
    args = parser.parse_args()
    info_machine = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="kms-bench-"))
    root = tmp / "cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "AWS_"))}
    started = time.monotonic()
    echo = None
    up = False
    results: list[dict[str, Any]] = []
    try:
        log(f"strongroom up --dir {root}")
        p = subprocess.run([str(PYTHON), "-m", "strongroom", "up", "--dir", str(root)], capture_output=True,
                           text=True, env=env, timeout=300)
        if p.returncode != 0:
            raise RuntimeError(f"strongroom up failed: {p.stderr.strip()[-2000:]}")
        up = True
        summary = json.loads(p.stdout)
        info = start_gateway(root, admin=(summary["admin_user"], summary["admin_password"]),
                             insecure_http=True if args.insecure_http else None)
        log(f"gateway at {info['kms_endpoint']} (pid {info['kms_pid']})")
        node_pids = [pid for n in summary["nodes"] for pid in descendants(int(n["pid"]))]
        pids = {"gateway": [int(info["kms_pid"])], "node": node_pids, "client": [os.getpid()]}
        client = kms_client(info["kms_endpoint"], info)
        key_id = client.create_key(Description="bench")["KeyMetadata"]["KeyId"]
        blob = client.encrypt(KeyId=key_id, Plaintext=PAYLOAD)["CiphertextBlob"]
        port = free_port()
        tls = [] if args.insecure_http else [str(root / "kms" / "tls.crt"), str(root / "kms" / "tls.key")]
        echo = subprocess.Popen([str(PYTHON), "-c", ECHO_SERVER, str(port), *tls], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        echo_endpoint = f"{'http' if args.insecure_http else 'https'}://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the echo server did not start") from None
                time.sleep(0.05)
        echo_pids = {"echo server": [echo.pid], "client": [os.getpid()]}
        for op in OPS:
            for threads in args.threads:
                row: dict[str, Any] = {"op": op, "threads": threads}
                log(f"{op}, {threads} thread(s): gateway")
                row["gateway"] = run_threads(threads, args.seconds,
                                             boto_op(op, info["kms_endpoint"], info, key_id, blob), pids)
                log(f"{op}, {threads} thread(s): echo")
                row["echo"] = run_threads(threads, args.seconds,
                                          boto_op(op, echo_endpoint, info, key_id, blob), echo_pids)
                log(f"{op}, {threads} thread(s): in-process AES-GCM")
                row["aesgcm"] = run_threads(threads, args.seconds, local_op(op), {"client": [os.getpid()]})
                results.append(row)
    finally:
        if echo is not None:
            echo.terminate()
            echo.wait(10)
        stop_gateway(root)
        if up:
            subprocess.run([str(PYTHON), "-m", "strongroom", "down", "--dir", str(root)], capture_output=True,
                           env=env, timeout=180)
    elapsed = time.monotonic() - started
    m = info_machine
    scheme = "plain HTTP" if args.insecure_http else "HTTPS"
    print(f"\n{m['date']}, commit {m['commit']}; {m['nproc']} x {m['cpu']}, Linux {m['kernel']}, "
          f"Python {m['python']}, boto3 {m['boto3']} / botocore {m['botocore']}; {scheme}; {args.seconds:g} s per "
          f"measurement; the run took {elapsed:.0f} s\n")
    print("| operation | threads | gateway ops/s | p50 ms | p99 ms | echo ops/s | gateway/echo | "
          "AES-GCM in-process ops/s | gateway/AES-GCM |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        g, e, a = r["gateway"], r["echo"], r["aesgcm"]
        print(f"| {r['op']} | {r['threads']} | {g['ops_per_s']:,.0f} | {g['p50_ms']:.2f} | {g['p99_ms']:.2f} | "
              f"{e['ops_per_s']:,.0f} | {g['ops_per_s'] / e['ops_per_s']:.2f} | {a['ops_per_s']:,.0f} | "
              f"{g['ops_per_s'] / a['ops_per_s']:.4f} |")
    print("\nCPU during the gateway measurements (% of one core) and per request (ms):\n")
    print("| operation | threads | gateway % | node % | client % | gateway ms/req | node ms/req | client ms/req |"
          " echo: server % | echo: client % |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        g, e = r["gateway"], r["echo"]
        cpu, rate = g["cpu_pct"], g["ops_per_s"]
        print(f"| {r['op']} | {r['threads']} | {cpu['gateway']:.0f} | {cpu['node']:.0f} | {cpu['client']:.0f} | "
              f"{10 * cpu['gateway'] / rate:.2f} | {10 * cpu['node'] / rate:.2f} | {10 * cpu['client'] / rate:.2f} | "
              f"{e['cpu_pct']['echo server']:.0f} | {e['cpu_pct']['client']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": m, "seconds": args.seconds, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

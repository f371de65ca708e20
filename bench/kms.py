#!/usr/bin/env python3
"""The KMS gateway: requests/s of Encrypt (1 KiB), Decrypt and GenerateDataKey (AES_256) from two load
generators, each against the gateway and against an echo server, with the CPU each process spends.

Run through ``bench/kms`` (which sets up the venv first). One run:

1. ``strongroom up --dir TMP`` (one node, its worker processes, the agent) and
   ``strongroom.local.gateway.start_gateway(TMP, admin=…)`` (the gateway process, HTTPS with a
   certificate of the cluster's CA — ``--insecure-http``: plain HTTP —, talking to the node over
   mTLS with its own pipelined connections); one symmetric KMS key;
2. **async generator** (the load generator that is not the ceiling): ``--processes`` client
   processes (default 2), each an asyncio loop with aiohttp and ``--concurrency`` requests in
   flight (default 8). Every request is signed anew with botocore's ``SigV4Auth`` (the signer
   boto3 uses; a fresh X-Amz-Date and signature, which the gateway verifies) over a body
   serialized once per run, and its answer is read whole and checked for HTTP 200. The
   processes warm up, say they are ready, then start together on one line from this process;
3. **boto3** (what users run; ``--threads``, default 8; ``--threads`` alone skips it): each
   thread has its own boto3 client (own botocore session, own HTTP connection pool), makes 3
   warm-up calls, waits at a barrier, then calls the operation in a loop. One Python process:
   its GIL is the ceiling of these rows;
4. each generator is run against the gateway and then against the **echo** server: a local
   aiohttp server in its own process (the gateway's HTTP stack and event loop, HTTPS with the
   gateway's certificate when the gateway serves HTTPS) that answers every request at once with
   a canned KMS-shaped response, verifying nothing. gateway/echo of one generator is the share
   of its ceiling the gateway and the cluster leave;
5. **in-process AES-GCM** with the boto3 rows' threads (the crypto alone, no network);
6. tables: ops/s, p50/p99 of one call, gateway/echo, and the CPU used meanwhile by the gateway,
   the node (all its processes) and the client process(es), in % of a core and per request.

Every gateway row counts the requests that failed; nothing is asserted about speed.
``--profile DIR`` runs ``py-spy record`` on the gateway and the node's processes during the
async generator's gateway rows and prints where their time goes.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import shutil
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
import asyncio, base64, json, os, ssl, sys
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
async def serve():
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1]), ssl_context=tls).start()
    await asyncio.Event().wait()
try:  # the event loop the gateway runs on (STRONGROOM_EVENT_LOOP=asyncio: asyncio's, as the gateway's)
    from strongroom.kms.server import event_loop
    loop_factory = event_loop.loop_factory()
except ImportError:  # a gateway before it ran on strongroom.transport.loop: asyncio's
    loop_factory = None
with asyncio.Runner(loop_factory=loop_factory) as r:
    r.run(serve())
'''


def log(msg: str) -> None:
    print(f"[kms-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def proc_cpu(pid: int, system_only: bool = False) -> float:
    """CPU seconds of ``pid``: user + system, or (``system_only``) the kernel's share alone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[12]) if system_only else int(fields[11]) + int(fields[12])) / CLK_TCK


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


def run_async(processes: int, concurrency: int, seconds: float, spec: dict[str, Any],
              pids: dict[str, list[int]]) -> dict[str, Any]:
    """``processes`` bench/kms_async.py processes, started together once each has warmed up."""
    spec = {**spec, "concurrency": concurrency, "seconds": seconds}
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    workers = [subprocess.Popen([str(PYTHON), str(HERE / "kms_async.py"), json.dumps(spec)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env) for _ in range(processes)]
    try:
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a load generator process did not start (exit {w.wait(30)})")
        pids = {**pids, "client": [w.pid for w in workers]}
        cpu_before = {name: sum(proc_cpu(p) for p in group) for name, group in pids.items()}
        sys_before = {name: sum(proc_cpu(p, True) for p in group) for name, group in pids.items()}
        client_before = [proc_cpu(w.pid) for w in workers]
        start = time.perf_counter()
        for w in workers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        answers = []
        for w in workers:
            assert w.stdout is not None
            line = w.stdout.readline()
            if not line:
                raise RuntimeError(f"a load generator process failed (exit {w.wait(30)})")
            answers.append(json.loads(line))
        wall = time.perf_counter() - start
        # Read before the processes exit (an exited child's /proc entry is gone once reaped).
        cpu_after = {name: sum(proc_cpu(p) for p in group) for name, group in pids.items()}
        sys_after = {name: sum(proc_cpu(p, True) for p in group) for name, group in pids.items()}
        client_after = [proc_cpu(w.pid) for w in workers]
    finally:
        for w in workers:
            if w.stdin is not None:
                w.stdin.close()
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
    samples = [x for a in answers for x in a["latencies_ms"]]
    failures = sum(a["failures"] for a in answers)
    return {"ops": len(samples), "wall": wall, "ops_per_s": len(samples) / wall, "failures": failures,
            "first_failure": next((a["first_failure"] for a in answers if a["first_failure"]), ""),
            "p50_ms": statistics.median(samples), "p99_ms": percentile(samples, 99),
            "cpu_pct": {k: 100 * (cpu_after[k] - cpu_before[k]) / wall for k in pids},
            "system_pct": {k: 100 * (sys_after[k] - sys_before[k]) / wall for k in pids},
            "client_process_pct": [100 * (b - a) / wall for a, b in zip(client_before, client_after, strict=True)]}


def pyspy_start(outdir: Path, watch: dict[str, int], rate: int) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    outdir.mkdir(parents=True, exist_ok=True)
    started = []
    for name, pid in watch.items():
        out = outdir / f"{name}.raw.txt"
        cmd = [str(PYTHON.parent / "py-spy"), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
               "--output", str(out), "--nonblocking"]
        started.append((name, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out))
    time.sleep(1.0)  # let py-spy attach before the load starts
    return started


def pyspy_stop(started: list[tuple[str, subprocess.Popen[bytes], Path]], top: int = 25) -> str:
    """Self share per function over every sample of each process (bench/run.py's summary, shorter)."""
    import signal
    from collections import Counter

    for _name, proc, _out in started:
        proc.send_signal(signal.SIGINT)
    lines = []
    for name, proc, out in started:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not out.exists():
            continue
        own: Counter[str] = Counter()
        total = 0
        for line in out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            total += int(count)
            own[stack.split(";")[-1]] += int(count)
        lines.append(f"\n{name}: {total} samples, self share of the top functions ({out})")
        lines += [f"  {100 * n / total:5.1f}%  {frame}" for frame, n in own.most_common(top)]
    return "\n".join(lines)


def cpu_row(label: str, r: dict[str, Any]) -> str:
    cpu, rate = r["cpu_pct"], r["ops_per_s"]
    per = {k: (10 * v / rate if rate else 0.0) for k, v in cpu.items()}
    system = r.get("system_pct", {})
    kernel = "/".join(f"{100 * system[k] / cpu[k]:.0f}" if cpu[k] else "-" for k in ("gateway", "node")) \
        if system else ""
    return (f"| {label} | {cpu['gateway']:.0f} | {cpu['node']:.0f} | {cpu['client']:.0f} | {per['gateway']:.3f} | "
            f"{per['node']:.3f} | {per['gateway'] + per['node']:.3f} | {per['client']:.3f} | {kernel} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2,
                        help="async load generator processes (default 2; 0: none)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per async process")
    parser.add_argument("--threads", type=int, nargs="*", default=[8],
                        help="boto3 thread counts (default 8; the option alone: no boto3 rows)")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=OPS)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="py-spy record the gateway and node processes during the async gateway rows")
    parser.add_argument("--profile-rate", type=int, default=200)
    parser.add_argument("--insecure-http", action="store_true",
                        help="the gateway (and the echo server) in plain HTTP instead of HTTPS")
    args = parser.parse_args()
    info_machine = machine_info()
    tmp = Path(tempfile.mkdtemp(prefix="kms-bench-"))
    root = tmp / "cluster"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "AWS_"))}
    # STRONGROOM_EVENT_LOOP reaches the gateway (started with this process's environment) and the echo
    # server, not the node: an A/B of the gateway's event loop.
    echo_env = {**env, "PYTHONPATH": str(ROOT / "src"),
                **{k: v for k, v in os.environ.items() if k == "STRONGROOM_EVENT_LOOP"}}
    started = time.monotonic()
    echo = None
    up = False
    results: list[dict[str, Any]] = []
    profiles: list[str] = []
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
                                stderr=subprocess.DEVNULL, env=echo_env)
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
        echo_pids = {"gateway": [echo.pid], "node": [], "client": [os.getpid()]}
        spec = {"key_id": key_id, "plaintext": PAYLOAD.hex(), "blob_b64": base64.b64encode(blob).decode(),
                "access_key_id": info["kms_access_key_id"], "secret_access_key": info["kms_secret_access_key"],
                "region": info["kms_region"], "ca_bundle": info.get("kms_ca_bundle")}
        watch = {"gateway": int(info["kms_pid"]), **{f"node-{i}": pid for i, pid in enumerate(node_pids)}}
        for op in args.ops:
            if args.processes:
                row: dict[str, Any] = {"op": op, "generator": f"async {args.processes}x{args.concurrency}"}
                log(f"{op}, async {args.processes} x {args.concurrency}: gateway")
                spy = pyspy_start(args.profile / op, watch, args.profile_rate) if args.profile else None
                row["gateway"] = run_async(args.processes, args.concurrency, args.seconds,
                                           {**spec, "op": op, "endpoint": info["kms_endpoint"]}, pids)
                if spy is not None:
                    profiles.append(f"\n### {op}\n" + pyspy_stop(spy))
                log(f"{op}, async {args.processes} x {args.concurrency}: echo")
                row["echo"] = run_async(args.processes, args.concurrency, args.seconds,
                                        {**spec, "op": op, "endpoint": echo_endpoint}, echo_pids)
                results.append(row)
            for threads in args.threads:
                row = {"op": op, "generator": f"boto3 {threads} thread(s)"}
                log(f"{op}, boto3 {threads} thread(s): gateway")
                row["gateway"] = run_threads(threads, args.seconds,
                                             boto_op(op, info["kms_endpoint"], info, key_id, blob), pids)
                log(f"{op}, boto3 {threads} thread(s): echo")
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
            shutil.rmtree(tmp, ignore_errors=True)  # the cluster's store, logs and keys of this run
    elapsed = time.monotonic() - started
    m = info_machine
    scheme = "plain HTTP" if args.insecure_http else "HTTPS"
    loop = os.environ.get("STRONGROOM_EVENT_LOOP", "default")
    print(f"\n{m['date']}, commit {m['commit']}; {m['nproc']} x {m['cpu']}, Linux {m['kernel']}, "
          f"Python {m['python']}, boto3 {m['boto3']} / botocore {m['botocore']}; {scheme}; gateway event loop: {loop}; "
          f"{args.seconds:g} s per measurement; load average {os.getloadavg()[0]:.1f}; the run took {elapsed:.0f} s\n")
    print("| operation | generator | gateway ops/s | p50 ms | p99 ms | failed | echo ops/s | **gateway/echo** | "
          "client % of a core per process (gateway; echo) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        g, e = r["gateway"], r["echo"]
        per_process = "; ".join(" ".join(f"{x:.0f}" for x in x_["client_process_pct"]) if "client_process_pct" in x_
                                else f"{x_['cpu_pct']['client']:.0f}" for x_ in (g, e))
        print(f"| {r['op']} | {r['generator']} | {g['ops_per_s']:,.0f} | {g['p50_ms']:.2f} | {g['p99_ms']:.2f} | "
              f"{g.get('failures', 0)} | {e['ops_per_s']:,.0f} | **{g['ops_per_s'] / e['ops_per_s']:.2f}** | "
              f"{per_process} |")
    print("\nCPU (% of one core, and ms per request; 'gateway' is the echo server in the echo rows):\n")
    print("| operation, generator, target | gateway % | node % | client % | gateway ms/req | node ms/req | "
          "**gateway + node ms/req** | client ms/req | kernel share % gateway/node |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(cpu_row(f"{r['op']}, {r['generator']}, gateway", r["gateway"]))
        print(cpu_row(f"{r['op']}, {r['generator']}, echo", r["echo"]))
    aes = [r for r in results if "aesgcm" in r]
    if aes:
        print("\nIn-process AES-GCM (the boto3 rows' threads): " + ", ".join(
            f"{r['op']} {r['aesgcm']['ops_per_s']:,.0f}/s" for r in aes))
    for text in profiles:
        print(text)
    failed = sum(r["gateway"].get("failures", 0) + r["echo"].get("failures", 0) for r in results)
    if failed:
        first = next(x["first_failure"] for r in results for x in (r["gateway"], r["echo"]) if x.get("first_failure"))
        print(f"\n{failed} requests failed; the first: {first}")
    if args.json:
        args.json.write_text(json.dumps({"machine": m, "seconds": args.seconds, "results": results}, indent=2))
    return 1 if failed else 0

if __name__ == "__main__":
    sys.exit(main())

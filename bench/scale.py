#!/usr/bin/env python3
"""Strongroom at scale: a cluster holding many keys (issue 15's 100,000), and what grows with them.

Run through ``bench/scale`` (which sets up the venv first). One run:

1. ``strongroom up --dir TMP`` (one node, its worker processes, the embedded SQLite store: an etcd
   cluster on this 2-core machine creates keys several times slower, see bench/cluster), the node's
   ``[limits] max_objects`` raised above the target, a crypto user;
2. AES-256 token keys created through the SDK straight to the node (``key.generate``, each with its
   own label ``scale-<n>``): several client connections (``--connections``), each keeping a window of
   requests in flight (``--window``), until the next checkpoint's count;
3. at each checkpoint (default 1,000, 10,000, 100,000; the last one is ``--keys``), measured:

   * **creation rate** of the keys since the previous checkpoint;
   * **resident memory** (VmRSS) of the node's supervisor and of each worker (each worker holds every
     token object decrypted in its cache);
   * **C_FindObjects by label** (``object.find`` with ``{CKA_LABEL: scale-<n>}``, a random existing
     label each time) p50/p99, and **AES-GCM encrypt** of 1 KiB with one of the keys p50: what must
     not grow with the number of keys (indexed search, cached keys);
   * **backup** (``strongroom backup create --out``): time and size, and the SQLite file's size;
   * **node start and cache fill**: ``strongroom down`` then ``strongroom up`` timed (the node
     answers), then the time until the first C_FindObjects of the newest key answers from a new login
     (the workers load and decrypt every object before a search answers: the cache fill);

4. a table per checkpoint, and per key (bytes of memory, backup, store; µs of start) between the
   first and the last checkpoint: what grows linearly shows a steady per-key figure, what must not
   grow shows the same p50 at every checkpoint.

``--minutes`` bounds the creation time (default 20): when it runs out, the run measures the count it
reached as its last checkpoint and says so. It measures and asserts nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = ROOT / ".venv" / "bin" / "python"

from strongroom.client import Client, ClientProfile  # noqa: E402
from strongroom.client.calls import pairs  # noqa: E402
from strongroom.constants import CKA, CKM, CKO  # noqa: E402

USER, PASSWORD = "scale", "scale-pass-1"


def log(msg: str) -> None:
    print(f"[scale-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def label_of(n: int) -> bytes:
    return b"scale-%d" % n


def rss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(found.group(1)) if found else 0


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        return []
    return [int(x) for x in out.split()]


def percentiles(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    if not s:
        return {"p50_ms": 0.0, "p99_ms": 0.0}
    return {"p50_ms": 1000.0 * s[len(s) // 2], "p99_ms": 1000.0 * s[min(len(s) - 1, int(len(s) * 0.99))]}


class Cluster:
    def __init__(self, directory: Path, workers: int | None, env: dict[str, str]) -> None:
        self.dir, self.workers, self.env = directory, workers, env
        self.summary: dict[str, Any] | None = None

    def strongroom(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([str(PYTHON), "-m", "strongroom", *args, "--dir", str(self.dir)], capture_output=True,
                           text=True, env=self.env, timeout=timeout)
        if p.returncode != 0:
            raise RuntimeError(f"strongroom {' '.join(args)} failed: {p.stderr.strip()[-2000:]}")
        return p

    def up(self) -> float:
        args = ["up"] + (["--workers", str(self.workers)] if self.workers else [])
        t0 = time.monotonic()
        p = self.strongroom(*args)
        took = time.monotonic() - t0
        summary = json.loads(p.stdout)
        if self.summary is None or "admin_password" in summary:
            self.summary = summary
        else:
            self.summary["nodes"] = summary.get("nodes", self.summary["nodes"])
        self.profile = ClientProfile.load(self.dir)
        return took

    def down(self) -> None:
        self.strongroom("down", timeout=300)

    def set_max_objects(self, count: int) -> None:
        path = self.dir / "nodes" / "node1" / "node.toml"
        text = path.read_text()
        path.write_text(re.sub(r"(?m)^max_objects = \d+$", f"max_objects = {count}", text))

    def node_pids(self) -> tuple[int, list[int]]:
        assert self.summary is not None
        supervisor = int(self.summary["nodes"][0]["pid"])
        return supervisor, children(supervisor)

    def client(self) -> Client:
        c = Client(self.profile, node=self.profile.nodes[0], timeout=120)
        c.login(USER, PASSWORD)
        return c


#: Numbers whose key.generate failed (kept out of the look-ups), with the failures' messages.
FAILED: dict[int, str] = {}
MAX_FAILURES = 200


def create_keys(cluster: Cluster, start: int, stop: int, connections: int, window: int,
                deadline: float) -> tuple[int, float]:
    """Keys ``start`` .. ``stop - 1`` (their labels), until ``deadline``; returns the next number and the time.

    A refused creation is counted (reported at the end) and its number skipped; more than
    :data:`MAX_FAILURES` stop the run."""
    clients = [cluster.client() for _ in range(connections)]
    lock = threading.Lock()
    next_n = [start]
    errors: list[str] = []

    def take() -> int | None:
        with lock:
            if next_n[0] >= stop or time.monotonic() >= deadline or errors:
                return None
            n = next_n[0]
            next_n[0] += 1
            return n

    def run(c: Client) -> None:
        conn, session = c.connection, c.session
        pending: deque[Any] = deque()

        def submit() -> bool:
            n = take()
            if n is None:
                return False
            template = {CKA.CLASS: CKO.SECRET_KEY, CKA.TOKEN: True, CKA.VALUE_LEN: 32, CKA.LABEL: label_of(n)}
            pending.append((n, conn.submit("key.generate", {"mechanism": int(CKM.AES_KEY_GEN),
                                                            "template": pairs(template)}, session)))
            return True

        try:
            for _ in range(window):
                if not submit():
                    break
            while pending:
                n, future = pending.popleft()
                reply = conn.wait(future)
                if not reply.ok:
                    with lock:
                        FAILED[n] = f"CKR {reply.code:#x} {reply.body}"
                        if len(FAILED) > MAX_FAILURES:
                            errors.append(f"key.generate: more than {MAX_FAILURES} failures, the last: {FAILED[n]}")
                            return
                    log(f"key.generate of key {n} failed: {FAILED[n]}")
                submit()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    t0 = time.monotonic()
    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    for c in clients:
        c.close()
    if errors:
        raise RuntimeError(errors[0])
    # Every number below next_n was submitted and answered (a connection stops on its first failure).
    return next_n[0], took


def measure(cluster: Cluster, count: int, lookups: int) -> dict[str, Any]:
    out: dict[str, Any] = {"keys": count}
    supervisor, workers = cluster.node_pids()
    out["rss_supervisor_mib"] = rss_kib(supervisor) / 1024
    out["rss_workers_mib"] = [rss_kib(pid) / 1024 for pid in workers]
    out["rss_node_mib"] = out["rss_supervisor_mib"] + sum(out["rss_workers_mib"])
    client = cluster.client()
    try:
        times = []
        for _ in range(lookups):
            n = random.randrange(count)
            while n in FAILED:
                n = random.randrange(count)
            t0 = time.perf_counter()
            found = client.find_objects({CKA.LABEL: label_of(n)})
            times.append(time.perf_counter() - t0)
            if len(found) != 1:
                raise RuntimeError(f"label {label_of(n)!r}: {len(found)} objects")
        out["find"] = percentiles(times)
        first = min(n for n in range(count) if n not in FAILED)
        (key,) = client.find_objects({CKA.LABEL: label_of(first)})
        data = os.urandom(1024)
        times = []
        for _ in range(lookups):
            t0 = time.perf_counter()
            client.encrypt(key, CKM.AES_GCM, data, {"iv": None, "aad": b"", "tag_bits": 128})
            times.append(time.perf_counter() - t0)
        out["encrypt"] = percentiles(times)
    finally:
        client.close()
    backup = cluster.dir / f"scale-{count}.backup"
    t0 = time.monotonic()
    cluster.strongroom("backup", "create", "--out", str(backup), "--json")
    out["backup_s"] = time.monotonic() - t0
    out["backup_mib"] = backup.stat().st_size / 2**20
    backup.unlink()
    store = cluster.dir / "store"
    out["store_mib"] = sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 2**20
    # Restart: the node's start, then its cache fill (a search answers once the worker holds every object).
    cluster.down()
    out["start_s"] = cluster.up()
    t0 = time.monotonic()
    client = cluster.client()
    try:
        last = max(n for n in range(count) if n not in FAILED)
        found = client.find_objects({CKA.LABEL: label_of(last)})
    finally:
        client.close()
    out["fill_s"] = time.monotonic() - t0
    if len(found) != 1:
        raise RuntimeError(f"after the restart, label {label_of(last)!r}: {len(found)} objects")
    out["failed_creations"] = len(FAILED)
    supervisor, workers = cluster.node_pids()
    out["rss_after_restart_mib"] = rss_kib(supervisor) / 1024 + sum(rss_kib(pid) / 1024 for pid in workers)
    return out


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |",
             "| " + " | ".join("-" * w for w in widths) + " |"]
    lines += ["| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
              + " |" for r in rows]
    return "\n".join(lines)


def report(points: list[dict[str, Any]]) -> str:
    rows = []
    for p in points:
        rows.append([f"{p['keys']:,}", f"{p['create_per_s']:,.0f}", f"{p['start_s']:.1f}", f"{p['fill_s']:.1f}",
                     f"{p['rss_node_mib']:.0f} ({' + '.join(f'{w:.0f}' for w in p['rss_workers_mib'])})",
                     f"{p['find']['p50_ms']:.2f} / {p['find']['p99_ms']:.2f}",
                     f"{p['encrypt']['p50_ms']:.2f}", f"{p['backup_s']:.1f}", f"{p['backup_mib']:.1f}",
                     f"{p['store_mib']:.1f}"])
    out = table(["keys", "created keys/s", "node start s", "cache fill s", "node RSS MiB (workers)",
                 "FindObjects by label p50 / p99 ms", "GCM 1 KiB p50 ms", "backup s", "backup MiB", "store MiB"],
                rows)
    if len(points) >= 2:
        a, b = points[0], points[-1]
        dk = b["keys"] - a["keys"]

        def per_key(name: str, scale: float, unit: str) -> str:
            return f"{(b[name] - a[name]) * scale / dk:,.1f} {unit}"

        out += ("\n\nPer key between the first and the last checkpoint (what grows linearly): node memory "
                + per_key("rss_node_mib", 2**20, "bytes")
                + f" ({len(b['rss_workers_mib'])} workers, each with every object), backup "
                + per_key("backup_mib", 2**20, "bytes") + ", store " + per_key("store_mib", 2**20, "bytes")
                + ", backup time " + per_key("backup_s", 1e6, "µs") + ", start + cache fill "
                + f"{((b['start_s'] + b['fill_s']) - (a['start_s'] + a['fill_s'])) * 1e6 / dk:,.1f} µs."
                + f"\nWhat must not grow: FindObjects by label p50 {a['find']['p50_ms']:.2f} -> "
                + f"{b['find']['p50_ms']:.2f} ms, GCM encrypt p50 {a['encrypt']['p50_ms']:.2f} -> "
                + f"{b['encrypt']['p50_ms']:.2f} ms ({a['keys']:,} -> {b['keys']:,} keys).")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=100_000, help="keys the cluster holds at the end (default 100,000)")
    ap.add_argument("--checkpoints", default="1000,10000",
                    help="counts measured on the way, comma-separated (default 1000,10000; --keys is the last)")
    ap.add_argument("--minutes", type=float, default=20.0, help="bound on the creation time (default 20)")
    ap.add_argument("--connections", type=int, default=4, help="client connections creating keys (default 4)")
    ap.add_argument("--window", type=int, default=16, help="requests in flight per connection (default 16)")
    ap.add_argument("--workers", type=int, help="node worker processes (default: cores)")
    ap.add_argument("--lookups", type=int, default=200, help="C_FindObjects and GCM calls per checkpoint")
    ap.add_argument("--json", metavar="FILE", type=Path, help="also write every number as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    checkpoints = sorted({int(x) for x in args.checkpoints.split(",") if x.strip() and int(x) < args.keys}
                         | {args.keys})
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    tmp = Path(tempfile.mkdtemp(prefix="strongroom-scale-bench-"))
    cluster = Cluster(tmp / "cluster", args.workers, env)
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    data: dict[str, Any] = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                            "commit": commit, "nproc": os.cpu_count(), "python": platform.python_version(),
                            "loadavg_at_start": os.getloadavg(), "args": vars(args) | {"json": None},
                            "points": []}
    points: list[dict[str, Any]] = data["points"]
    stopped_early = False
    try:
        log(f"strongroom up --dir {cluster.dir}")
        cluster.up()
        assert cluster.summary is not None
        admin = Client(cluster.profile, node=cluster.profile.nodes[0], timeout=60)
        admin.login(cluster.summary["admin_user"], cluster.summary["admin_password"])
        admin.user_create(USER, "crypto-user", PASSWORD)
        admin.close()
        cluster.set_max_objects(args.keys + 10_000)
        cluster.down()
        cluster.up()
        deadline = time.monotonic() + 60 * args.minutes
        made = 0
        for target in checkpoints:
            log(f"creating keys {made:,} .. {target:,}")
            reached, took = create_keys(cluster, made, target, args.connections, args.window, deadline)
            rate = (reached - made) / took if took else 0.0
            made = reached
            if made < target:
                stopped_early = True
                log(f"the creation time ({args.minutes:g} min) ran out at {made:,} keys")
            if made == 0:
                break
            log(f"{made:,} keys ({rate:,.0f} keys/s); measuring")
            point = measure(cluster, made, args.lookups) | {"create_per_s": rate, "create_s": took}
            points.append(point)
            log(json.dumps(point))
            if stopped_early:
                break
    finally:
        try:
            cluster.down()
        except Exception as exc:  # noqa: BLE001 - still clean up below
            log(f"strongroom down failed: {exc}")
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"Date: {data['date']}  Strongroom {commit}; nproc {data['nproc']}; Python {data['python']}; load average "
          f"at start {' '.join(f'{x:.1f}' for x in data['loadavg_at_start'])}; one node (SQLite store), "
          f"{args.connections} connections × {args.window} in flight creating AES-256 token keys")
    if stopped_early:
        print(f"NOTE: the creation time ({args.minutes:g} min) ran out before {args.keys:,} keys: the last row is "
              f"the count reached.")
    if FAILED:
        print(f"NOTE: {len(FAILED)} key creations failed (skipped), e.g.: {next(iter(FAILED.values()))[:300]}")
    print()
    if points:
        print(report(points))
    print()
    if args.json:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

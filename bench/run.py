#!/usr/bin/env python3
"""Strongroom vs SoftHSMv2 vs `openssl speed`: RSA-2048 sign, ECDSA P-256 sign, AES-256-GCM 1 KiB.

Run through ``bench/run`` (which sets up the venv and the module first). One run:

1. compiles ``pkcs11_bench.c`` (the load generator) with gcc into a temporary directory;
2. SoftHSMv2: a temporary token directory with its own ``SOFTHSM2_CONF``,
   ``softhsm2-util --init-token --free``, then the load generator against libsofthsm2.so;
3. Strongroom: ``strongroom up`` in a temporary directory, a crypto user, the load generator
   against libstrongroom-pkcs11.so (sampling the CPU time of the agent and of every node
   process during each measurement), ``strongroom down``;
4. ``openssl speed`` for the same operations, single process and ``-multi <nproc>``;
5. prints the table of ops/s and ratios (and writes it as JSON with ``--json``).

Nothing here asserts a speed: it measures and prints.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV_BIN = ROOT / ".venv" / "bin"
STRONGROOM = VENV_BIN / "strongroom"
SOFTHSM_MODULE = Path("/usr/lib/softhsm/libsofthsm2.so")
CLK_TCK = os.sysconf("SC_CLK_TCK")

OPS = {
    "rsa": "RSA-2048 sign (SHA256_RSA_PKCS)",
    "ecdsa": "ECDSA P-256 sign (ECDSA, 32-byte digest)",
    "gcm": "AES-256-GCM encrypt 1 KiB",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- machine ------------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001 - informational only
            return "unknown"
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": version(["openssl", "version"]),
        "softhsm2": version(["softhsm2-util", "--version"]),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "machine_cpu_pct_before": busy_before(),
        "commit": version(["git", "-C", str(ROOT), "describe", "--always", "--dirty"]),
    }


def busy_before(seconds: float = 2.0) -> float:
    """How busy the machine was (% of one core) just before the run: others' work skews every number."""
    a = machine_cpu()
    time.sleep(seconds)
    b = machine_cpu()
    return round(100.0 * (b[0] - a[0]) / ((b[1] - a[1]) / (os.cpu_count() or 1)), 1)


# --- the load generator ----------------------------------------------------------------------------


def compile_loadgen(tmp: Path) -> Path:
    out = tmp / "pkcs11_bench"
    try:
        cflags = subprocess.run(["pkg-config", "--cflags", "p11-kit-1"], capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        cflags = ["-I/usr/include/p11-kit-1"]
    cmd = ["gcc", "-std=c11", "-O2", "-Wall", "-Wextra", "-pthread", *cflags,
           str(HERE / "pkcs11_bench.c"), "-o", str(out), "-ldl"]
    subprocess.run(cmd, check=True)
    return out


def proc_cpu(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds, or None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, summed over every CPU, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / CLK_TCK, total / CLK_TCK


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(entry.name))
    return sorted(out)


def run_loadgen(loadgen: Path, module: Path, token: str, pin: str, seconds: float, measurements: list[str],
                env: dict, watch: dict[str, int] | None = None) -> list[dict]:
    """Run the load generator; ``watch`` names processes whose CPU time is sampled per measurement."""
    cmd = [str(loadgen), str(module), token, pin, str(seconds), *measurements]
    timeout = len(measurements) * (seconds + 60) + 300
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(timeout, proc.kill)  # a hung call cannot hang the benchmark
    watchdog.start()
    results: list[dict] = []
    before: dict[str, float | None] = {}
    deadline = time.monotonic() + timeout
    error = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if time.monotonic() > deadline:
                error = "timed out"
                break
            if line.startswith("START "):
                m0 = machine_cpu()
                if watch:
                    before = {name: proc_cpu(pid) for name, pid in watch.items()}
                t_start = time.monotonic()
            elif line.startswith("RESULT "):
                res = json.loads(line[len("RESULT "):])
                if watch:
                    wall = time.monotonic() - t_start
                    cpu = {}
                    for name, pid in watch.items():
                        after, b = proc_cpu(pid), before.get(name)
                        if after is not None and b is not None:
                            cpu[name] = round(100.0 * (after - b) / wall, 1)
                    res["server_cpu_pct"] = cpu
                m1 = machine_cpu()
                # every CPU's busy time, as % of one core (so up to nproc × 100)
                res["machine_cpu_pct"] = round(100.0 * (m1[0] - m0[0]) / ((m1[1] - m0[1]) / (os.cpu_count() or 1)), 1)
                res["loadgen_cpu_pct"] = round(100.0 * res["cpu_s"] / res["seconds"], 1)
                results.append(res)
                log(f"  {res['op']:5} x{res['threads']}: {res['ops_per_s']:>10.1f} ops/s"
                    f"  p50 {res['p50_us']:.0f} us  p99 {res['p99_us']:.0f} us  machine cpu% {res['machine_cpu_pct']}"
                    + (f"  cpu% {res.get('server_cpu_pct')}" if watch else ""))
            elif line.startswith("ERROR"):
                error = line
            elif line.startswith("SETUP"):
                log(f"  {line}")
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        error = error or "timed out"
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if error or proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({module.name}): {error or f'exit {proc.returncode}'}")
    return results


# --- SoftHSMv2 ---------------------------------------------------------------------------------------


def bench_softhsm(tmp: Path, loadgen: Path, seconds: float, measurements: list[str]) -> list[dict]:
    log("SoftHSMv2: temporary token")
    home = tmp / "softhsm"
    (home / "tokens").mkdir(parents=True)
    conf = home / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {home / 'tokens'}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\nslots.mechanisms = ALL\n"
                    "library.reset_on_fork = false\n")
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "bench", "--so-pin", "12345678",
                    "--pin", "87654321"], env=env, check=True, capture_output=True, text=True)
    return run_loadgen(loadgen, SOFTHSM_MODULE, "bench", "87654321", seconds, measurements, env)


# --- Strongroom --------------------------------------------------------------------------------------


class PySpy:
    """``py-spy record --format raw`` on each watched process for the length of the Strongroom runs."""

    def __init__(self, outdir: Path, rate: int) -> None:
        self.outdir, self.rate = outdir, rate
        self.procs: list[tuple[str, subprocess.Popen, Path, float]] = []

    def start(self, watch: dict[str, int]) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        for name, pid in watch.items():
            out = self.outdir / f"{name}.raw.txt"
            cmd = [str(VENV_BIN / "py-spy"), "record", "--pid", str(pid), "--rate", str(self.rate),
                   "--format", "raw", "--output", str(out), "--nonblocking"]
            p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append((name, p, out, time.monotonic()))

    def stop(self) -> dict[str, dict]:
        summaries = {}
        for _name, p, _out, _t0 in self.procs:
            p.send_signal(signal.SIGINT)
        for name, p, out, t0 in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if out.exists():
                summaries[name] = summarize_raw(out, self.rate * (time.monotonic() - t0))
        self.procs = []
        return summaries


#: Leaf frames of a thread that waits (the event loop in epoll, an idle thread-pool thread):
#: py-spy does not always tell these apart from running code, so they are counted as idle.
IDLE_LEAF = re.compile(r"^(EpollSelector\.select|select|Condition\.wait|Event\.wait|_worker) \("
                       r"|^_worker \(concurrent/futures/thread\.py")


def summarize_raw(path: Path, expected_samples: float, top: int = 15) -> dict:
    """Self and inclusive shares per function from py-spy's collapsed stacks, over busy samples."""
    self_c: Counter = Counter()
    incl: Counter = Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [f.strip() for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        if IDLE_LEAF.search(frames[-1]):
            idle += count
            continue
        busy += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    skip = ("<module>", "_run_code", "_run_module_as_main", "Runner.run", "run (asyncio/runners.py",
            "run_until_complete", "run_forever", "main (strongroom/cli", "run (strongroom/cli",
            "cmd_", "Thread._bootstrap", "Thread.run", "_run_worker", "serve (strongroom/node/main",
            "_supervise", "run (strongroom/agent/main")
    inclusive = [(f, c) for f, c in incl.most_common() if not any(k in f for k in skip)]
    return {
        "busy_samples": busy,
        "idle_samples": idle,
        "busy_pct_est": round(100.0 * busy / expected_samples, 1) if expected_samples else None,
        "self": [(f, round(100.0 * c / busy, 1)) for f, c in self_c.most_common(top)] if busy else [],
        "inclusive": [(f, round(100.0 * c / busy, 1)) for f, c in inclusive[:top * 2]] if busy else [],
    }


def bench_strongroom(tmp: Path, loadgen: Path, seconds: float, measurements: list[str],
                     pyspy: PySpy | None) -> tuple[list[dict], dict]:
    cluster = tmp / "strongroom"
    env = dict(os.environ)
    for k in list(env):
        if k.startswith("STRONGROOM_"):
            del env[k]
    log("Strongroom: strongroom up")
    up = subprocess.run([str(STRONGROOM), "up", "--dir", str(cluster)], capture_output=True, text=True, env=env,
                        timeout=180)
    try:
        if up.returncode != 0:
            raise RuntimeError(f"strongroom up failed: {up.stderr.strip()[-2000:]}")
        summary = json.loads(up.stdout)
        if not summary.get("agent_socket") or not summary.get("pkcs11_module"):
            raise RuntimeError("strongroom up reported no agent_socket / pkcs11_module")
        admin = f"{summary['admin_user']}:{summary['admin_password']}"
        cli_env = dict(env, STRONGROOM_DIR=str(cluster), STRONGROOM_PIN=admin)
        subprocess.run([str(STRONGROOM), "user", "create", "--username", "bench", "--role", "crypto-user",
                        "--password", "bench-pass-1", "--json"], env=cli_env, check=True, capture_output=True,
                       timeout=60)
        node_pid = int(summary["nodes"][0]["pid"])
        watch = {"agent": int(summary["agent_pid"]), "node-main": node_pid}
        for i, pid in enumerate(children(node_pid), 1):
            watch[f"node-worker{i}"] = pid
        log(f"Strongroom processes: {watch}")
        run_env = dict(env, STRONGROOM_AGENT_SOCKET=summary["agent_socket"])
        profile: dict = {}
        if pyspy:
            pyspy.start(watch)
            time.sleep(1.0)  # let py-spy attach before the load starts
        try:
            results = run_loadgen(loadgen, Path(summary["pkcs11_module"]), summary.get("token_label", "strongroom"),
                                  "bench:bench-pass-1", seconds, measurements, run_env, watch)
        finally:
            if pyspy:
                profile = pyspy.stop()
        return results, {"processes": watch, "profile": profile}
    finally:
        log("Strongroom: strongroom down")
        down = subprocess.run([str(STRONGROOM), "down", "--dir", str(cluster)], capture_output=True, text=True,
                              env=env, timeout=120)
        if down.returncode != 0:
            log(f"strongroom down failed: {down.stderr.strip()}")


# --- openssl speed -------------------------------------------------------------------------------------


def openssl_speed(seconds: float, multi: int | None) -> dict[str, float]:
    """ops/s for rsa/ecdsa sign and 1 KiB AES-256-GCM, from `openssl speed -mr`."""
    extra = ["-multi", str(multi)] if multi and multi > 1 else []
    secs = str(max(1, int(round(seconds))))
    out: dict[str, float] = {}

    def run(args: list[str]) -> list[str]:
        cmd = ["openssl", "speed", "-mr", *extra, "-seconds", secs, *args]
        log("  " + " ".join(cmd))
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip()[-1000:]}")
        # with -multi the per-child lines start with "Got: "; the sums are the bare "+F" lines
        return [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("+F")]

    for ln in run(["rsa2048", "ecdsap256"]):
        parts = ln.split(":")
        if parts[0] == "+F2" and parts[2] == "2048":
            out["rsa"] = float(parts[3])
        elif parts[0] == "+F4" and parts[2] == "256":
            out["ecdsa"] = float(parts[3])
    for ln in run(["-evp", "aes-256-gcm", "-bytes", "1024"]):
        parts = ln.split(":")
        if parts[0] == "+F" and parts[2].upper() == "AES-256-GCM":
            out["gcm"] = float(parts[3]) / 1024.0
    missing = {"rsa", "ecdsa", "gcm"} - out.keys()
    if missing:
        raise RuntimeError(f"could not read openssl speed's output for {sorted(missing)}")
    return out


# --- report ---------------------------------------------------------------------------------------------


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "—"
    return f"{x:,.0f}"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or not b:
        return "—"
    r = a / b
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.3f}×"


def build_table(data: dict) -> str:
    sr = {(r["op"], r["threads"]): r for r in data["strongroom"]}
    sh = {(r["op"], r["threads"]): r for r in data["softhsm"]}
    ossl_1, ossl_n = data["openssl"].get("single", {}), data["openssl"].get("multi", {})
    multi = data["openssl"].get("multi_n")
    rows = []
    head = ["operation", "threads", "Strongroom", "SoftHSMv2", "openssl speed", "Strongroom/SoftHSM",
            "Strongroom/openssl"]
    for op in data["ops"]:
        for t in data["threads"]:
            s, h = sr.get((op, t)), sh.get((op, t))
            o = ossl_1.get(op) if t == 1 else ossl_n.get(op)
            o_label = "" if t == 1 else f" (-multi {multi})"
            sv, hv = (s["ops_per_s"] if s else None), (h["ops_per_s"] if h else None)
            rows.append([OPS[op], str(t), fmt_rate(sv), fmt_rate(hv), fmt_rate(o) + o_label,
                         fmt_ratio(sv, hv), fmt_ratio(sv, o)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(head)) + " |",
             "| " + " | ".join(("-" * widths[i]) if i < 2 else ("-" * (widths[i] - 1) + ":")
                               for i in range(len(head))) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                                       for i, c in enumerate(r)) + " |")
    return "\n".join(lines)


def build_detail(data: dict) -> str:
    """Latency and CPU use per PKCS#11 measurement.

    CPU% is % of one core over the measurement (the machine has nproc × 100); "other" is whatever
    else ran on the machine meanwhile (machine − load generator − agent − node). µs/op is CPU time
    per operation: where the machine's time goes for one operation.
    """
    head = ["backend", "op", "threads", "p50 µs", "p99 µs", "machine CPU%", "other CPU%", "loadgen CPU%",
            "agent CPU%", "node CPU% (busiest worker)", "loadgen µs/op", "agent µs/op", "node µs/op"]
    rows = []
    for backend, key in (("Strongroom", "strongroom"), ("SoftHSMv2", "softhsm")):
        for r in data[key]:
            cpu = r.get("server_cpu_pct", {})
            agent = cpu.get("agent")
            node = sum(v for k, v in cpu.items() if k.startswith("node")) if cpu else None
            busiest = max((v for k, v in cpu.items() if k.startswith("node-worker")), default=None)
            other = r["machine_cpu_pct"] - r["loadgen_cpu_pct"] - (agent or 0) - (node or 0)
            rate = r["ops_per_s"] or 1.0

            def per_op(pct: float | None, rate: float = rate) -> str:
                return "" if pct is None else f"{pct / 100.0 / rate * 1e6:.0f}"

            rows.append([backend, r["op"], str(r["threads"]), f"{r['p50_us']:.0f}", f"{r['p99_us']:.0f}",
                         f"{r['machine_cpu_pct']:.0f}", f"{max(other, 0.0):.0f}", f"{r['loadgen_cpu_pct']:.0f}",
                         "" if agent is None else f"{agent:.0f}",
                         "" if node is None else f"{node:.0f} ({busiest:.0f})",
                         per_op(r["loadgen_cpu_pct"]), per_op(agent), per_op(node)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(head)) + " |",
             "| " + " | ".join(("-" * widths[i]) if i < 2 else ("-" * (widths[i] - 1) + ":")
                               for i in range(len(head))) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i])
                                       for i, c in enumerate(r)) + " |")
    return "\n".join(lines)


def build_profile(profile: dict) -> str:
    out = []
    for name, s in profile.items():
        out.append(f"### {name}: {s['busy_samples']} busy samples ({s['idle_samples']} waiting), "
                   f"busy ≈ {s['busy_pct_est']}% of one core")
        out.append("self time (% of busy samples):")
        out += [f"  {pct:5.1f}%  {f}" for f, pct in s["self"]]
        out.append("inclusive (% of busy samples):")
        out += [f"  {pct:5.1f}%  {f}" for f, pct in s["inclusive"]]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each measurement (default 3)")
    ap.add_argument("--threads", default="1,8", help="thread counts of the load generator (default 1,8)")
    ap.add_argument("--ops", default="rsa,ecdsa,gcm", help="operations (default rsa,ecdsa,gcm)")
    ap.add_argument("--only", default="strongroom,softhsm,openssl",
                    help="backends to run (default strongroom,softhsm,openssl)")
    ap.add_argument("--multi", type=int, default=os.cpu_count() or 1,
                    help="openssl speed -multi N for the multi-thread row (default: nproc)")
    ap.add_argument("--profile", metavar="DIR", type=Path,
                    help="run py-spy record on the agent and node processes during the Strongroom runs "
                         "(costs CPU: the numbers of such a run are lower) and write raw stacks to DIR")
    ap.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second (default 200)")
    ap.add_argument("--json", metavar="FILE", type=Path, help="also write every number as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args()

    ops = [o for o in args.ops.split(",") if o]
    threads = [int(t) for t in args.threads.split(",") if t]
    only = set(args.only.split(","))
    if bad := set(ops) - OPS.keys():
        ap.error(f"unknown ops {sorted(bad)}")
    measurements = [f"{op}:{t}" for op in ops for t in threads]
    if args.profile and not (VENV_BIN / "py-spy").exists():
        ap.error(f"--profile needs py-spy in the venv: {VENV_BIN / 'pip'} install py-spy")

    data: dict = {"machine": machine_info(), "seconds": args.seconds, "ops": ops, "threads": threads,
                  "strongroom": [], "softhsm": [], "openssl": {}}
    t_begin = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="strongroom-bench-"))
    try:
        log(f"temporary directory {tmp}")
        loadgen = compile_loadgen(tmp)
        if "softhsm" in only:
            data["softhsm"] = bench_softhsm(tmp, loadgen, args.seconds, measurements)
        if "strongroom" in only:
            pyspy = PySpy(args.profile, args.profile_rate) if args.profile else None
            data["strongroom"], data["strongroom_meta"] = bench_strongroom(tmp, loadgen, args.seconds, measurements,
                                                                           pyspy)
        if "openssl" in only:
            log("openssl speed")
            data["openssl"]["single"] = openssl_speed(args.seconds, None)
            if max(threads) > 1:
                data["openssl"]["multi_n"] = args.multi
                data["openssl"]["multi"] = openssl_speed(args.seconds, args.multi)
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    data["total_seconds"] = round(time.monotonic() - t_begin, 1)

    m = data["machine"]
    print()
    print(f"Date: {m['date']}  Machine: {m['nproc']} × {m['cpu']}, kernel {m['kernel']}, "
          f"load average at start {' '.join(m['loadavg_at_start'])}, "
          f"machine CPU {m['machine_cpu_pct_before']}% of one core in the 2 s before")
    print(f"Strongroom {m['commit']}; {m['openssl']}; SoftHSM {m['softhsm2']}; Python {m['python']}; "
          f"{args.seconds:g} s per measurement; run took {data['total_seconds']} s")
    print()
    print("ops/s (PKCS#11 rows: the same load generator, one session per thread; openssl: "
          "`openssl speed`, 1 process, or -multi N processes on the multi-thread rows)")
    print()
    print(build_table(data))
    print()
    if data["strongroom"] or data["softhsm"]:
        print("Latency per operation (Init + single-part call), CPU use during each measurement (% of one "
              "core; 'other' = the rest of the machine) and CPU time per operation:")
        print()
        print(build_detail(data))
        print()
    prof = data.get("strongroom_meta", {}).get("profile")
    if prof:
        print(build_profile(prof))
        print()
    if args.json:
        args.json.write_text(json.dumps(data, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

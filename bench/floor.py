"""Where one request's microseconds go in a node: the floor of a TLS message through a Python event loop,
the node's whole cost per request driven directly (no agent), and the primitive alone.

    bench/floor                      # about 60 s
    bench/floor --seconds 1 --json /tmp/floor.json

Three measurements, each printed per number of requests in flight on ONE pipelined mTLS connection
(so one node worker serves them all):

1. **echo floor**: a uvloop ``asyncio.Protocol`` server in its own process that echoes length-prefixed
   frames over TLS 1.3 (a throwaway P-256 certificate) — the least a Python process can spend on
   receiving a message and sending one back: the wake-up, ``recv``, TLS decrypt, TLS encrypt, ``send``.
2. **node**: ``strongroom up`` (one node, its workers, the SQLite store), a crypto user logged in directly
   on the node (the client's certificate from the cluster's client profile, as the SDK does),
   ``random.generate`` (32 bytes: the request path with next to no work), ``crypto.sign`` (ECDSA P-256
   over a 32-byte digest) and ``crypto.encrypt`` (AES-256-GCM, 1 KiB, the node's IV): CPU time of the
   node's processes (from /proc) per request.
3. **primitive**: the same operation with ``cryptography`` in this process.

node − primitive − echo floor = what the node's Python adds per request (decoding, the dispatch
pipeline, authorization, the key cache, metrics, encoding, tasks). The client is Python too (the
SDK's ``AsyncConnection``): with many requests in flight it can be the ceiling, which the "client
CPU%" column shows. It asserts nothing; it is not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run as bench_run  # noqa: E402 - bench/run.py: /proc readers and the strongroom binary

from strongroom.client.connection import AsyncConnection  # noqa: E402
from strongroom.constants import CKA, CKM, CKO  # noqa: E402
from strongroom.mechanisms.ec import params_for_curve  # noqa: E402
from strongroom.transport.loop import loop_factory  # noqa: E402

CONCURRENCY = (1, 8, 32)
PAYLOAD = 100  # bytes of an echo frame: about the size of a crypto.sign request


def log(msg: str) -> None:
    print(f"[floor {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop the node and the agent run on (uvloop when installed), for the clients here too."""
    factory = loop_factory()
    return factory() if factory else asyncio.new_event_loop()


def cpu_seconds(pids: list[int]) -> float:
    return sum(bench_run.proc_cpu(pid) or 0.0 for pid in pids)


# --- 1. the echo floor ------------------------------------------------------------------------------


ECHO_SERVER = r"""
import asyncio, os, ssl, struct, sys
sys.path.insert(0, sys.argv[3])
from strongroom.transport.loop import loop_factory

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""
    def data_received(self, data):
        buffer, out = self.buffer + data, []
        while len(buffer) >= 4:
            size = struct.unpack(">I", buffer[:4])[0]
            if len(buffer) < 4 + size:
                break
            out.append(buffer[:4 + size])
            buffer = buffer[4 + size:]
        self.buffer = buffer
        if out:
            self.transport.write(b"".join(out))

async def main():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0, ssl=context)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

factory = loop_factory()
(factory() if factory else asyncio.new_event_loop()).run_until_complete(main())
"""


def throwaway_certificate(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "echo.crt", directory / "echo.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


async def echo_client(port: int, cafile: Path, in_flight: int, seconds: float) -> int:
    context = ssl.create_default_context(cafile=str(cafile))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    frame = struct.pack(">I", PAYLOAD) + b"x" * PAYLOAD
    done, end = 0, time.monotonic() + seconds
    for _ in range(in_flight):
        writer.write(frame)
    while time.monotonic() < end:
        await reader.readexactly(len(frame))
        done += 1
        writer.write(frame)
    writer.close()
    return done


def measure_echo(tmp: Path, seconds: float) -> list[dict[str, Any]]:
    cert, key = throwaway_certificate(tmp)
    server = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(cert), str(key), str(bench_run.ROOT / "src")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        rows = []
        for in_flight in CONCURRENCY:
            rows.append(timed(lambda n=in_flight: echo_client(port, cert, n, seconds), [server.pid],
                              {"what": "echo floor", "in_flight": in_flight}))
        return rows
    finally:
        server.kill()
        server.wait()


def timed(run: Callable[[], Awaitable[int]], pids: list[int], row: dict[str, Any]) -> dict[str, Any]:
    """Run ``run`` (it returns how many requests it made) on a new loop; CPU of ``pids`` and of this process."""
    loop = new_event_loop()
    try:
        before, client_before, start = cpu_seconds(pids), time.process_time(), time.monotonic()
        done = loop.run_until_complete(run())
        wall = time.monotonic() - start
        server_cpu, client_cpu = cpu_seconds(pids) - before, time.process_time() - client_before
    finally:
        loop.close()
    row.update(requests_per_s=done / wall, server_us=1e6 * server_cpu / max(done, 1),
               client_cpu_pct=100 * client_cpu / wall)
    log(f"  {row['what']:28} x{row['in_flight']:<3} {row['requests_per_s']:9.0f}/s  "
        f"server {row['server_us']:6.1f} µs/request  client CPU {row['client_cpu_pct']:.0f}%")
    return row


# --- 2. the node, directly ------------------------------------------------------------------------------


def start_node(tmp: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRONGROOM_")}
    cluster = tmp / "cluster"
    up = subprocess.run([str(bench_run.STRONGROOM), "up", "--dir", str(cluster)], capture_output=True, text=True,
                        env=env, timeout=180)
    if up.returncode != 0:
        raise RuntimeError(f"strongroom up failed: {up.stderr.strip()[-2000:]}")
    summary: dict[str, Any] = json.loads(up.stdout)
    admin = f"{summary['admin_user']}:{summary['admin_password']}"
    subprocess.run([str(bench_run.STRONGROOM), "user", "create", "--username", "floor", "--role", "crypto-user",
                    "--password", "floor-pass-1", "--json"],
                   env=dict(env, STRONGROOM_DIR=str(cluster), STRONGROOM_PIN=admin), check=True, capture_output=True,
                   timeout=60)
    summary["cluster"] = cluster
    return summary


def stop_node(summary: dict[str, Any]) -> None:
    subprocess.run([str(bench_run.STRONGROOM), "down", "--dir", str(summary["cluster"])], capture_output=True,
                   timeout=120)


async def node_connection(summary: dict[str, Any]) -> tuple[AsyncConnection, bytes]:
    cluster: Path = summary["cluster"]
    profile = json.loads((cluster / "client.json").read_text())
    context = ssl.create_default_context(cafile=str(cluster / profile["ca"]))
    context.load_cert_chain(str(cluster / profile["cert"]), str(cluster / profile["key"]))
    host, port = profile["nodes"][0]["address"].rsplit(":", 1)
    conn = await AsyncConnection.open(host, int(port), context, server_hostname=profile["nodes"][0]["id"])
    session = (await conn.call("session.login", {"username": "floor", "password": "floor-pass-1"}))["session"]
    return conn, session


async def node_requests(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The three requests, with keys made for them (token keys of the crypto user)."""
    conn, session = await node_connection(summary)
    try:
        pair = await conn.call("key.generate_pair", {
            "mechanism": int(CKM.EC_KEY_PAIR_GEN),
            "public_template": [[int(CKA.TOKEN), True], [int(CKA.EC_PARAMS), params_for_curve(ec.SECP256R1())]],
            "private_template": [[int(CKA.TOKEN), True]]}, session)
        aes = await conn.call("key.generate", {"mechanism": int(CKM.AES_KEY_GEN), "template": [
            [int(CKA.CLASS), int(CKO.SECRET_KEY)], [int(CKA.TOKEN), True], [int(CKA.VALUE_LEN), 32]]}, session)
    finally:
        await conn.close()
    return {
        "random.generate 32 B": {"op": "random.generate", "args": {"length": 32}},
        "crypto.sign ECDSA P-256": {"op": "crypto.sign", "args": {
            "mechanism": int(CKM.ECDSA), "key": pair["private"], "data": b"\x01" * 32}},
        "crypto.encrypt AES-GCM 1 KiB": {"op": "crypto.encrypt", "args": {
            "mechanism": int(CKM.AES_GCM), "key": aes["handle"], "data": b"\x02" * 1024,
            "params": {"iv": None, "aad": b"", "tag_bits": 128}}},
    }


async def drive_node(summary: dict[str, Any], op: str, args: dict[str, Any], in_flight: int, seconds: float) -> int:
    conn, session = await node_connection(summary)
    done, end = 0, time.monotonic() + seconds

    async def one_stream() -> None:
        nonlocal done
        while time.monotonic() < end:
            reply = await conn.send(op, args, session)
            if reply.code != 0:
                raise RuntimeError(f"{op}: {reply.code:#x} {reply.body}")
            done += 1

    try:
        await asyncio.gather(*(one_stream() for _ in range(in_flight)))
    finally:
        await conn.close()
    return done


def measure_node(tmp: Path, seconds: float) -> list[dict[str, Any]]:
    log("node: strongroom up")
    summary = start_node(tmp)
    try:
        node_pid = int(summary["nodes"][0]["pid"])
        pids = [node_pid, *bench_run.children(node_pid)]
        loop = new_event_loop()
        try:
            requests = loop.run_until_complete(node_requests(summary))
        finally:
            loop.close()
        rows = []
        for what, request in requests.items():
            for in_flight in CONCURRENCY:
                rows.append(timed(
                    lambda r=request, n=in_flight: drive_node(summary, r["op"], r["args"], n, seconds), pids,
                    {"what": what, "in_flight": in_flight}))
        return rows
    finally:
        stop_node(summary)


# --- 3. the primitive ------------------------------------------------------------------------------------


def measure_primitives(seconds: float) -> dict[str, float]:
    key = ec.generate_private_key(ec.SECP256R1())
    aes = AESGCM(os.urandom(32))
    digest, data = b"\x01" * 32, b"\x02" * 1024
    work: dict[str, Callable[[], object]] = {
        "random.generate 32 B": lambda: os.urandom(32),
        "crypto.sign ECDSA P-256": lambda: key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))),
        "crypto.encrypt AES-GCM 1 KiB": lambda: aes.encrypt(os.urandom(12), data, None),
    }
    out = {}
    for what, fn in work.items():
        done, end = 0, time.monotonic() + seconds
        start = time.process_time()
        while time.monotonic() < end:
            fn()
            done += 1
        out[what] = 1e6 * (time.process_time() - start) / done
    return out


def table(echo: list[dict[str, Any]], node: list[dict[str, Any]], primitive: dict[str, float]) -> str:
    floor = {row["in_flight"]: row["server_us"] for row in echo}
    lines = [
        "| request | in flight | requests/s | node CPU µs/request | primitive µs | echo floor µs | "
        "node Python µs (rest) | client CPU% |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in echo:
        lines.append(f"| TLS echo (uvloop Protocol) | {row['in_flight']} | {row['requests_per_s']:,.0f} | "
                     f"{row['server_us']:.1f} | | {row['server_us']:.1f} | | {row['client_cpu_pct']:.0f} |")
    for row in node:
        prim = primitive[row["what"]]
        rest = row["server_us"] - prim - floor[row["in_flight"]]
        lines.append(f"| {row['what']} | {row['in_flight']} | {row['requests_per_s']:,.0f} | {row['server_us']:.1f} | "
                     f"{prim:.1f} | {floor[row['in_flight']]:.1f} | {rest:.1f} | {row['client_cpu_pct']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    machine = bench_run.machine_info()
    with tempfile.TemporaryDirectory(prefix="strongroom-floor-") as tmp:
        log("primitives in this process")
        primitive = measure_primitives(min(args.seconds, 1.0))
        log("echo floor")
        echo = measure_echo(Path(tmp), args.seconds)
        node = measure_node(Path(tmp), args.seconds)
    print(f"\nMachine: {machine['nproc']} × {machine['cpu']}, Python {machine['python']}, {machine['openssl']}, "
          f"commit {machine['commit']}; load average at start {' '.join(machine['loadavg_at_start'])}\n")
    print(table(echo, node, primitive))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "echo": echo, "node": node, "primitive": primitive},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

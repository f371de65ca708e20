"""Real etcd members on loopback, for tests of the etcd store backend.

:class:`EtcdCluster` starts ``size`` members of one new cluster (``/usr/bin/etcd``
or ``$STRONGROOM_ETCD``) on free loopback ports, each with its own data directory
under ``base_dir``, and waits until the cluster answers. Members can be stopped
(SIGTERM), killed (SIGKILL) and restarted on the same ports and data, for failure
tests. :meth:`EtcdCluster.close` (or leaving the ``with`` block) kills every
member process and waits for it, so no etcd is left running.

The cluster is tuned for tests: quiet logs, no automatic compaction, and short
raft timers (50 ms heartbeat, 500 ms election) so that a lost leader is noticed
in well under a second. Optional TLS (``tls=TlsFiles(...)``) serves clients over
HTTPS and asks them for a certificate signed by the same CA.

Use :func:`etcd_binary` or :func:`require_etcd` to skip cleanly where etcd is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strongroom.ports import free_port

__all__ = ["EtcdCluster", "EtcdMember", "TlsFiles", "etcd_binary", "require_etcd", "write_test_pki"]

DEFAULT_ETCD = "/usr/bin/etcd"


def etcd_binary() -> str | None:
    """The etcd server binary to use, or ``None`` when there is none."""
    candidate = os.environ.get("STRONGROOM_ETCD") or DEFAULT_ETCD
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        return candidate
    return shutil.which("etcd") if not os.environ.get("STRONGROOM_ETCD") else None


def require_etcd() -> str:
    """The etcd binary, or skip the calling test (or fixture) when it is not installed."""
    import pytest

    binary = etcd_binary()
    if binary is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server, or set STRONGROOM_ETCD)")
    return binary


def _die_with_parent() -> None:
    """In the child before exec: have Linux kill etcd if the test process dies without tearing down."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for a TLS cluster: the CA, the server's pair and a client's pair (mTLS)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_test_pki(directory: Path, client_name: str | None = None) -> TlsFiles:
    """A throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate.

    The client certificate has no Common Name unless ``client_name`` is given:
    with client-cert-auth and auth both on, etcd's JSON gateway refuses (HTTP 400)
    any client certificate that has one, since it could not act as that user.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(common: str | None) -> x509.Name:
        if common is None:
            return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "strongroom test client")])
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("strongroom test CA"))
        .issuer_name(name("strongroom test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    write(directory / "ca", ca_key, ca_cert)

    def leaf(common: str | None, usages: list[x509.ObjectIdentifier], sans: list[x509.GeneralName]) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    # etcd's JSON gateway dials its own gRPC port with the server pair, so that pair
    # must also be good for client auth when the cluster asks clients for certificates.
    server_key, server_cert = leaf(
        "localhost",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    write(directory / "server", server_key, server_cert)
    client_key, client_cert = leaf(client_name, [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    write(directory / "client", client_key, client_cert)
    return TlsFiles(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    scheme: str = "http"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class EtcdCluster:
    """``size`` etcd members of a fresh cluster on loopback; see the module docstring."""

    def __init__(
        self,
        base_dir: Path,
        size: int = 1,
        *,
        tls: TlsFiles | None = None,
        extra_args: tuple[str, ...] = (),
        heartbeat_ms: int = 50,
        election_ms: int = 500,
        start_timeout: float = 20.0,
    ) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one member")
        self.binary = require_etcd()
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.tls = tls
        self.extra_args = tuple(extra_args)
        self.heartbeat_ms = heartbeat_ms
        self.election_ms = election_ms
        self.start_timeout = start_timeout
        self.token = f"strongroom-test-{os.getpid()}-{time.monotonic_ns()}"
        self.members = [
            EtcdMember(
                name=f"m{i}",
                client_port=free_port(),
                peer_port=free_port(),
                data_dir=self.base_dir / f"m{i}.etcd",
                log_path=self.base_dir / f"m{i}.log",
                scheme="https" if tls else "http",
            )
            for i in range(size)
        ]
        self._initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        try:
            for member in self.members:
                self._spawn(member, state="new")
            self.wait_healthy()
        except BaseException:
            self.close()
            raise

    # -- context manager -------------------------------------------------

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- addresses ---------------------------------------------------------

    @property
    def endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def member(self, index: int) -> EtcdMember:
        return self.members[index]

    # -- process control ---------------------------------------------------

    def _spawn(self, member: EtcdMember, state: str) -> None:
        args = [
            self.binary,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", self._initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", self.token,
            "--heartbeat-interval", str(self.heartbeat_ms),
            "--election-timeout", str(self.election_ms),
            "--auto-compaction-retention", "0",
            "--snapshot-count", "100000",
            "--logger", "zap",
            "--log-level", "error",
            "--log-outputs", "stderr",
        ]  # fmt: skip
        if self.tls is not None:
            args += [
                "--cert-file", str(self.tls.server_cert),
                "--key-file", str(self.tls.server_key),
                "--trusted-ca-file", str(self.tls.ca),
                "--client-cert-auth",
            ]  # fmt: skip
        args += self.extra_args
        with open(member.log_path, "ab") as log:
            member.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C of the test run reaches pytest, which tears down
                preexec_fn=_die_with_parent,
            )

    def stop(self, index: int, timeout: float = 10.0) -> None:
        """Stop member ``index`` gracefully (SIGTERM), killing it if it does not exit in time."""
        self._end(self.members[index], signal.SIGTERM, timeout)

    def kill(self, index: int) -> None:
        """Kill member ``index`` abruptly (SIGKILL), as a crash or power loss would."""
        self._end(self.members[index], signal.SIGKILL, 10.0)

    def restart(self, index: int, wait: bool = True) -> None:
        """Start a stopped member again on its ports and data directory."""
        member = self.members[index]
        if member.running:
            raise RuntimeError(f"etcd member {member.name} is still running")
        self._spawn(member, state="existing")
        if wait:
            self._wait_member_up(member)

    def _end(self, member: EtcdMember, sig: signal.Signals, timeout: float) -> None:
        process = member.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        member.process = None

    def close(self) -> None:
        """Kill every member and wait for it; the data directories are left to the caller's tmp dir."""
        for member in self.members:
            self._end(member, signal.SIGKILL, 10.0)

    # -- health --------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=str(self.tls.ca))
        context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
        return context

    def request(self, member: EtcdMember, path: str, body: dict[str, Any] | None = None, timeout: float = 2.0) -> Any:
        """One gateway call to ``member`` (POST with a JSON body, or GET); the decoded JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(member.client_url + path, data=data, method="GET" if body is None else "POST")
        with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context()) as answer:
            return json.loads(answer.read())

    def member_status(self, index: int) -> dict[str, Any] | None:
        """The member's /v3/maintenance/status answer, or ``None`` if it does not answer."""
        try:
            return self.request(self.members[index], "/v3/maintenance/status", {})
        except (OSError, ValueError):
            return None

    def leader_index(self, timeout: float = 10.0) -> int:
        """The index of the current leader, waiting for one to be elected."""
        ids: dict[str, int] = {}
        deadline = time.monotonic() + timeout
        while True:
            for i, member in enumerate(self.members):
                if not member.running:
                    continue
                status = self.member_status(i)
                if status is None:
                    continue
                ids[status["header"]["member_id"]] = i
                leader = status.get("leader")
                if leader and leader in ids and leader == status["header"]["member_id"]:
                    return i
            if time.monotonic() > deadline:
                raise TimeoutError("etcd cluster elected no leader in time")
            time.sleep(0.02)

    def wait_leaderless(self, index: int, timeout: float = 5.0) -> float:
        """Wait until member ``index`` knows it has no leader; returns how long that took."""
        start = time.monotonic()
        while True:
            status = self.member_status(index)
            if status is not None and not status.get("leader"):
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"etcd member {self.members[index].name} still follows a leader")
            time.sleep(0.02)

    def _wait_member_up(self, member: EtcdMember) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if not member.running:
                raise RuntimeError(
                    f"etcd member {member.name} exited; see {member.log_path}:\n{self._log_tail(member)}")
            try:
                self.request(member, "/v3/kv/range", {"key": "AA==", "serializable": True}, timeout=1.0)
                return
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"etcd member {member.name} did not start:\n{self._log_tail(member)}") from None
                time.sleep(0.02)

    def wait_healthy(self) -> None:
        """Wait until every running member answers and a linearizable read succeeds (a leader exists)."""
        for member in self.members:
            if member.running:
                self._wait_member_up(member)
        deadline = time.monotonic() + self.start_timeout
        running = [m for m in self.members if m.running]
        while True:
            try:
                for member in running:
                    self.request(member, "/v3/kv/range", {"key": "AA=="}, timeout=2.0)
                return
            except (OSError, ValueError, urllib.error.HTTPError):
                if time.monotonic() > deadline:
                    raise TimeoutError("etcd cluster did not become healthy") from None
                time.sleep(0.02)

    @staticmethod
    def _log_tail(member: EtcdMember, lines: int = 20) -> str:
        try:
            return "\n".join(member.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

"""OpenSSL 3 through the libp11 engine, and nginx serving HTTPS, with private keys that live in the cluster.

* `openssl dgst -engine pkcs11 -keyform engine -sign pkcs11:…` signs with an RSA and an EC key generated in the
  cluster (by pkcs11-tool through the Strongroom module); plain OpenSSL verifies with the public key exported
  through the engine.
* A self-signed CA whose key is in the cluster (`openssl req -x509 -engine pkcs11`) issues a leaf certificate
  (`openssl x509 -req -CAkeyform engine`) for a key made outside; `openssl verify` accepts the chain.
* nginx 1.22 (`ssl_certificate_key engine:pkcs11:pkcs11:…`, `worker_processes 2`): curl fetches pages over
  TLS 1.2 and TLS 1.3, verifying the server certificate against a test CA, until both workers have served
  (each worker forked from the master that loaded the key, so each re-initializes the module: fork safety).
* nginx without an `env STRONGROOM_AGENT_SOCKET` line (issue 13 item 10): its workers' environment is cleared,
  and their C_Initialize uses the socket the master used; and with no variable at all, a module whose system
  configuration file (built in: SYSTEM_CONF) names the socket.
* nginx serving TLS across an agent restart (issue 14 item 3): the agent is stopped and started again under
  it; the workers' module reopens the application (sessions, login) and nginx goes on serving, unrestarted.
* Public keys through the engine without `pin-value` (issue 13 item 1): the URI of a public key needs no login.

How the engine is configured (what nginx 1.22 + OpenSSL 3 + libp11 0.4 need): an OPENSSL_CONF file loads the
engine (`dynamic_path`, `MODULE_PATH` = the Strongroom module). nginx does not initialize an engine itself before
`ENGINE_load_private_key` ("engine routines::not initialised"), so nginx's copy says `init = 1`; the PIN is the
URI's `pin-value=user:pass`. nginx's workers get `STRONGROOM_AGENT_SOCKET` through `env`, and, when the test runs
as root, `user root root` (otherwise the workers run as `nobody`, who may not open the agent's 0660 socket).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_pem_x509_certificate

from strongroom.local.processes import process_group_members
from strongroom.ports import free_port

from ..conftest import PKCS11_DIR, Pkcs11Target

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
PASSWORD = "pass-word-1"


def _engine_path() -> Path | None:
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    out = subprocess.run([openssl, "version", "-e"], capture_output=True, text=True).stdout
    match = re.search(r'ENGINESDIR: "([^"]+)"', out)
    candidates = [Path(match.group(1)) / "pkcs11.so"] if match else []
    candidates.append(Path("/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"))
    return next((path for path in candidates if path.is_file()), None)


ENGINE = _engine_path()

pytestmark = [
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl"),
    pytest.mark.skipif(ENGINE is None, reason="needs the libp11 engine (apt-get install libengine-pkcs11-openssl)"),
    pytest.mark.skipif(shutil.which("pkcs11-tool") is None, reason="needs pkcs11-tool (apt-get install opensc)"),
]


# --- the cluster side ---------------------------------------------------------------------------------------


@dataclass
class Hsm:
    target: Pkcs11Target
    user: str
    workdir: Path

    @property
    def module(self) -> str:
        return str(self.target.module)

    @property
    def token(self) -> str:
        return self.target.token_label

    @property
    def pin(self) -> str:
        return f"{self.user}:{PASSWORD}"

    def clean_env(self) -> dict[str, str]:
        """No engine, no proxy, no inherited Strongroom settings: plain OpenSSL/curl."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("STRONGROOM_") and k != "OPENSSL_CONF" and "proxy" not in k.lower()}
        return env

    def module_env(self) -> dict[str, str]:
        env = self.clean_env()
        env["STRONGROOM_AGENT_SOCKET"] = self.target.socket
        return env

    def engine_env(self, conf: Path) -> dict[str, str]:
        env = self.module_env()
        env["OPENSSL_CONF"] = str(conf)
        return env

    def uri(self, label: str, kind: str = "private") -> str:
        return f"pkcs11:token={self.token};object={label};type={kind};pin-value={self.pin}"

    def keypair(self, kind: str, label: str, key_id: str) -> None:
        """Generate a token key pair in the cluster through the module (pkcs11-tool)."""
        key_type = {"rsa": "rsa:2048", "ec": "EC:prime256v1"}[kind]
        result = run(["pkcs11-tool", "--module", self.module, "--login", "--pin", self.pin, "--keypairgen",
                      "--key-type", key_type, "--label", label, "--id", key_id], env=self.module_env())
        assert "Private Key Object" in result.stdout, result.stdout


def run(args: list[str], env: dict[str, str], cwd: Path | None = None, check: bool = True,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    return result


def engine_conf(path: Path, module: str, init: bool) -> Path:
    path.write_text(
        "openssl_conf = openssl_init\n"
        "[openssl_init]\nengines = engine_section\n"
        "[engine_section]\npkcs11 = pkcs11_section\n"
        "[pkcs11_section]\n"
        "engine_id = pkcs11\n"
        f"dynamic_path = {ENGINE}\n"
        f"MODULE_PATH = {module}\n"
        f"init = {1 if init else 0}\n"
    )
    return path


@pytest.fixture(scope="module")
def hsm(pkcs11: Pkcs11Target, tmp_path_factory: pytest.TempPathFactory) -> Hsm:
    user = "openssl_user"
    pkcs11.crypto_user(user, PASSWORD)
    return Hsm(pkcs11, user, tmp_path_factory.mktemp("openssl"))


def public_pem_via_engine(hsm: Hsm, conf: Path, label: str, out: Path) -> bytes:
    run(["openssl", "pkey", "-engine", "pkcs11", "-inform", "engine", "-pubin", "-in", hsm.uri(label, "public"),
         "-pubout", "-out", str(out)], env=hsm.engine_env(conf))
    return serialization.load_pem_public_key(out.read_bytes()).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_public_der(pem: Path) -> bytes:
    return load_pem_x509_certificate(pem.read_bytes()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


# --- 1. openssl with the engine -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_engine_signs_and_openssl_verifies(hsm: Hsm, kind: str, tmp_path: Path) -> None:
    label = f"ossl-sign-{kind}"
    hsm.keypair(kind, label, {"rsa": "a1", "ec": "a2"}[kind])
    conf = engine_conf(tmp_path / "openssl.cnf", hsm.module, init=False)
    message = tmp_path / "message"
    message.write_bytes(b"signed inside the cluster\n" * 100)
    public = tmp_path / "public.pem"
    public_pem_via_engine(hsm, conf, label, public)

    variants = [[]]
    if kind == "rsa":   # PKCS#1 v1.5 and PSS
        variants.append(["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"])
    for n, options in enumerate(variants):
        signature = tmp_path / f"sig{n}"
        run(["openssl", "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign", hsm.uri(label),
             *options, "-out", str(signature), str(message)], env=hsm.engine_env(conf))
        assert signature.stat().st_size > 0
        verified = run(["openssl", "dgst", "-sha256", "-verify", str(public), *options, "-signature", str(signature),
                        str(message)], env=hsm.clean_env())
        assert "Verified OK" in verified.stdout
        # The same signature does not verify another message: the check above means something.
        other = tmp_path / "other"
        other.write_bytes(message.read_bytes() + b"!")
        refused = run(["openssl", "dgst", "-sha256", "-verify", str(public), *options, "-signature",
                       str(signature), str(other)], env=hsm.clean_env(), check=False)
        assert refused.returncode != 0 and "Verification failure" in refused.stdout + refused.stderr


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_ca_key_in_cluster_issues_leaf(hsm: Hsm, kind: str, tmp_path: Path) -> None:
    label = f"ossl-ca-{kind}"
    hsm.keypair(kind, label, {"rsa": "b1", "ec": "b2"}[kind])
    conf = engine_conf(tmp_path / "openssl.cnf", hsm.module, init=False)
    engine = ["-engine", "pkcs11"]
    ca = tmp_path / "ca.pem"
    run(["openssl", "req", "-new", "-x509", *engine, "-keyform", "engine", "-key", hsm.uri(label),
         "-subj", f"/CN=Strongroom test CA {kind}", "-days", "2", "-sha256",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-out", str(ca)], env=hsm.engine_env(conf))
    # The CA certificate carries the cluster key's public half (its self-signature is checked by verify below).
    assert cert_public_der(ca) == public_pem_via_engine(hsm, conf, label, tmp_path / "ca-public.pem")

    # A leaf key made outside the cluster, by plain OpenSSL.
    leaf_key, csr, leaf = tmp_path / "leaf.key", tmp_path / "leaf.csr", tmp_path / "leaf.pem"
    run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(leaf_key)],
        env=hsm.clean_env())
    run(["openssl", "req", "-new", "-key", str(leaf_key), "-subj", "/CN=leaf.example", "-out", str(csr)],
        env=hsm.clean_env())
    extensions = tmp_path / "leaf.ext"
    extensions.write_text("basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:leaf.example\n")
    run(["openssl", "x509", "-req", "-in", str(csr), *engine, "-CA", str(ca), "-CAkeyform", "engine",
         "-CAkey", hsm.uri(label), "-set_serial", "4242", "-days", "1", "-sha256", "-extfile", str(extensions),
         "-out", str(leaf)], env=hsm.engine_env(conf))

    verified = run(["openssl", "verify", "-CAfile", str(ca), str(leaf)], env=hsm.clean_env())
    assert verified.stdout.strip() == f"{leaf}: OK"
    # And a CA that did not sign it is refused.
    stranger_key, stranger = tmp_path / "stranger.key", tmp_path / "stranger.pem"
    run(["openssl", "req", "-new", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(stranger_key), "-subj", f"/CN=Strongroom test CA {kind}", "-days", "2", "-out", str(stranger)],
        env=hsm.clean_env())
    refused = run(["openssl", "verify", "-CAfile", str(stranger), str(leaf)], env=hsm.clean_env(), check=False)
    assert refused.returncode != 0


def test_engine_public_key_without_pin(hsm: Hsm, tmp_path: Path) -> None:
    """OpenSSL + libp11 with a public-key URI that carries no PIN: the engine reads it without C_Login."""
    label = "ossl-public"
    hsm.keypair("ec", label, "a9")
    conf = engine_conf(tmp_path / "openssl.cnf", hsm.module, init=False)
    with_pin = tmp_path / "with-pin.pem"
    public_pem_via_engine(hsm, conf, label, with_pin)
    no_pin = tmp_path / "no-pin.pem"
    uri = f"pkcs11:token={hsm.token};object={label};type=public"
    run(["openssl", "pkey", "-engine", "pkcs11", "-inform", "engine", "-pubin", "-in", uri, "-pubout", "-out",
         str(no_pin)], env=hsm.engine_env(conf))
    assert no_pin.read_bytes() == with_pin.read_bytes()
    # and it verifies a signature the cluster made, through the engine, still without a PIN
    message, signature = tmp_path / "m", tmp_path / "sig"
    message.write_bytes(b"verified without a login\n")
    run(["openssl", "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-sign", hsm.uri(label),
         "-out", str(signature), str(message)], env=hsm.engine_env(conf))
    verified = run(["openssl", "dgst", "-sha256", "-engine", "pkcs11", "-keyform", "engine", "-verify", uri,
                    "-signature", str(signature), str(message)], env=hsm.engine_env(conf))
    assert "Verified OK" in verified.stdout


# --- 2. nginx --------------------------------------------------------------------------------------------------


def nginx_conf(prefix: Path, port: int, cert: Path, key_uri: str, env_line: bool = True) -> Path:
    user = ""
    if os.geteuid() == 0:
        # A root master would run its workers as `nobody`, who may not open the agent socket (0660, owner root).
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"
    temp = prefix / "temp"
    conf = prefix / "nginx.conf"
    conf.write_text(f"""\
daemon off;
master_process on;
{user}worker_processes 2;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log info;
{"env STRONGROOM_AGENT_SOCKET;" if env_line else "# no env line: the workers get a cleared environment"}
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    default_type text/plain;
    keepalive_timeout 0;
    ssl_session_cache off;
    ssl_session_tickets off;
    server {{
        # reuseport: one listening socket per worker, connections spread by the kernel's hash of the source port
        listen 127.0.0.1:{port} ssl reuseport;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate {cert};
        ssl_certificate_key "engine:pkcs11:{key_uri}";
        location / {{
            root {prefix}/html;
            add_header X-Worker $pid always;
        }}
    }}
}}
""")
    for sub in ("logs", "html", "temp"):
        (prefix / sub).mkdir(exist_ok=True)
    (prefix / "html" / "index.html").write_text("hello from a key in the cluster\n")
    return conf


@contextmanager
def running_nginx(prefix: Path, conf: Path, env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    output = (prefix / "logs" / "nginx.out").open("wb")
    proc = subprocess.Popen([NGINX, "-p", str(prefix), "-c", str(conf)], env=env, stdout=output,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # Ready once the master listens (it binds before forking the workers; connections queue until they accept).
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"nginx exited {proc.returncode}:\n{nginx_logs(prefix)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError(f"nginx does not listen on {port}:\n{nginx_logs(prefix)}") from None
                time.sleep(0.05)
        yield proc
    except BaseException:
        print(nginx_logs(prefix))
        raise
    finally:
        pgid = proc.pid
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)          # fast shutdown: the master stops its workers
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if process_group_members(pgid):
            os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=30)
        output.close()


def nginx_logs(prefix: Path) -> str:
    parts = []
    for name in ("nginx.out", "error.log"):
        path = prefix / "logs" / name
        if path.exists():
            parts.append(f"--- {name}\n{path.read_text(errors='replace')}")
    return "\n".join(parts)


def fetch(hsm: Hsm, ca: Path, port: int, version: str, verify: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["curl", "--noproxy", "*", "-sS", "-v", "--max-time", "60", f"--tlsv{version}", "--tls-max", version,
            "-D", "-", f"https://127.0.0.1:{port}/"]
    if verify:
        args[1:1] = ["--cacert", str(ca)]
    return run(args, env=hsm.clean_env(), check=False)


def server_certificate(hsm: Hsm, label: str, tmp_path: Path) -> tuple[Path, Path]:
    """A test CA (plain OpenSSL) certifies the cluster key's public half, from a CSR the cluster key signed:
    (CA certificate, server certificate)."""
    cli_conf = engine_conf(tmp_path / "openssl-cli.cnf", hsm.module, init=False)
    ca_key, ca = tmp_path / "ca.key", tmp_path / "ca.pem"
    run(["openssl", "req", "-new", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(ca_key), "-subj", "/CN=nginx test CA", "-days", "2",
         "-addext", "basicConstraints=critical,CA:TRUE", "-out", str(ca)], env=hsm.clean_env())
    csr, cert = tmp_path / "server.csr", tmp_path / "server.pem"
    run(["openssl", "req", "-new", "-engine", "pkcs11", "-keyform", "engine", "-key", hsm.uri(label),
         "-subj", "/CN=localhost", "-out", str(csr)], env=hsm.engine_env(cli_conf))
    extensions = tmp_path / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial", "77",
         "-days", "1", "-sha256", "-extfile", str(extensions), "-out", str(cert)], env=hsm.clean_env())
    return ca, cert


def serve_until_both_workers(hsm: Hsm, ca: Path, port: int, prefix: Path, workers: set[int],
                             version: str = "1.3") -> None:
    """Fetch pages until each worker has done a handshake (signed with the cluster key)."""
    served: set[int] = set()
    for _ in range(64):
        result = fetch(hsm, ca, port, version)
        assert result.returncode == 0, f"curl TLS {version}: {result.stderr}\n{nginx_logs(prefix)}"
        assert "hello from a key in the cluster" in result.stdout
        match = re.search(r"^X-Worker: (\d+)", result.stdout, re.M | re.I)
        assert match, result.stdout
        served.add(int(match.group(1)))
        if served >= workers:
            break
    assert served == workers, f"TLS {version}: served by {served}, workers {workers}\n{nginx_logs(prefix)}"


@pytest.mark.skipif(not Path(NGINX).is_file(), reason="needs nginx (apt-get install nginx)")
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_nginx_serves_https_with_cluster_key(hsm: Hsm, kind: str, tmp_path: Path) -> None:
    label = f"nginx-{kind}"
    hsm.keypair(kind, label, {"rsa": "c1", "ec": "c2"}[kind])
    cli_conf = engine_conf(tmp_path / "openssl-cli.cnf", hsm.module, init=False)

    # A test CA (plain OpenSSL) certifies the cluster key's public half, from a CSR the cluster key signed.
    ca_key, ca = tmp_path / "ca.key", tmp_path / "ca.pem"
    run(["openssl", "req", "-new", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
         "-keyout", str(ca_key), "-subj", "/CN=nginx test CA", "-days", "2",
         "-addext", "basicConstraints=critical,CA:TRUE", "-out", str(ca)], env=hsm.clean_env())
    csr, cert = tmp_path / "server.csr", tmp_path / "server.pem"
    run(["openssl", "req", "-new", "-engine", "pkcs11", "-keyform", "engine", "-key", hsm.uri(label),
         "-subj", "/CN=localhost", "-out", str(csr)], env=hsm.engine_env(cli_conf))
    extensions = tmp_path / "server.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-set_serial", "77",
         "-days", "1", "-sha256", "-extfile", str(extensions), "-out", str(cert)], env=hsm.clean_env())
    assert cert_public_der(cert) == public_pem_via_engine(hsm, cli_conf, label, tmp_path / "server-public.pem")

    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = nginx_conf(prefix, port, cert, hsm.uri(label))
    nginx_env = hsm.engine_env(engine_conf(tmp_path / "openssl-nginx.cnf", hsm.module, init=True))

    with running_nginx(prefix, conf, nginx_env, port) as master:
        workers = process_group_members(master.pid) - {master.pid}
        assert len(workers) == 2, f"expected 2 workers, found {workers}\n{nginx_logs(prefix)}"
        for version in ("1.2", "1.3"):
            served: set[int] = set()
            # Until each worker has done a handshake (signed) with this version; the kernel's reuseport hash
            # picks the worker, so 64 connections all landing on one of two workers would be a 2^-63 event.
            for _ in range(64):
                result = fetch(hsm, ca, port, version)
                assert result.returncode == 0, f"curl TLS {version}: {result.stderr}\n{nginx_logs(prefix)}"
                assert f"SSL connection using TLSv{version}" in result.stderr, result.stderr
                assert re.search(r"^HTTP/1\.1 200", result.stdout, re.M), result.stdout
                assert "hello from a key in the cluster" in result.stdout
                match = re.search(r"^X-Worker: (\d+)", result.stdout, re.M | re.I)
                assert match, result.stdout
                served.add(int(match.group(1)))
                if served >= workers:
                    break
            assert served == workers, f"TLS {version}: served by {served}, workers {workers}\n{nginx_logs(prefix)}"
        # Without the test CA, curl refuses the certificate: the verification above is real.
        untrusted = fetch(hsm, ca, port, "1.3", verify=False)
        assert untrusted.returncode == 60, untrusted.stderr
        # No worker died and was replaced along the way.
        assert process_group_members(master.pid) - {master.pid} == workers
        error_log = (prefix / "logs" / "error.log").read_text()
        assert not re.search(r"\[(crit|alert|emerg)\]|exited on signal", error_log), error_log

    assert process_group_members(master.pid) == set(), "nginx left processes behind"


# --- 3. nginx without configuration for the module, and across an agent restart ------------------------------


def _nginx(hsm: Hsm, tmp_path: Path, label: str, key_id: str, *, module: str, env: dict[str, str],
           env_line: bool) -> tuple[Path, Path, int, Path, dict[str, str]]:
    hsm.keypair("ec", label, key_id)
    ca, cert = server_certificate(hsm, label, tmp_path)
    prefix = tmp_path / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = nginx_conf(prefix, port, cert, hsm.uri(label), env_line=env_line)
    nginx_env = dict(env, OPENSSL_CONF=str(engine_conf(tmp_path / "openssl-nginx.cnf", module, init=True)))
    return ca, prefix, port, conf, nginx_env


@pytest.mark.skipif(not Path(NGINX).is_file(), reason="needs nginx (apt-get install nginx)")
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_nginx_without_env_line_uses_the_masters_socket(hsm: Hsm, tmp_path: Path) -> None:
    """No `env STRONGROOM_AGENT_SOCKET` in nginx.conf: the master has the variable, its workers (environment
    cleared) reuse the socket the master's C_Initialize used."""
    ca, prefix, port, conf, env = _nginx(hsm, tmp_path, "nginx-noenv", "c3", module=hsm.module,
                                         env=hsm.module_env(), env_line=False)
    assert "env STRONGROOM_AGENT_SOCKET" not in conf.read_text()
    with running_nginx(prefix, conf, env, port) as master:
        workers = process_group_members(master.pid) - {master.pid}
        assert len(workers) == 2
        serve_until_both_workers(hsm, ca, port, prefix, workers)
        error_log = (prefix / "logs" / "error.log").read_text()
        assert not re.search(r"\[(crit|alert|emerg)\]|exited on signal", error_log), error_log


@pytest.fixture(scope="module")
def module_with_system_conf(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A build of the module whose system configuration file (SYSTEM_CONF, /etc/strongroom/pkcs11.conf in the
    real build) is a file of this test's: (module, configuration file)."""
    directory = tmp_path_factory.mktemp("module-conf")
    conf = directory / "pkcs11.conf"
    result = subprocess.run(["make", "-C", str(PKCS11_DIR), f"BUILD={directory / 'build'}",
                             f"SYSTEM_CONF={conf}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return directory / "build" / "libstrongroom-pkcs11.so", conf


@pytest.mark.skipif(not Path(NGINX).is_file(), reason="needs nginx (apt-get install nginx)")
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_nginx_with_the_system_configuration_file(hsm: Hsm, tmp_path: Path,
                                                  module_with_system_conf: tuple[Path, Path]) -> None:
    """No STRONGROOM_AGENT_SOCKET anywhere (not for nginx, not in nginx.conf): the module's system configuration
    file names the agent's socket."""
    module, conf_file = module_with_system_conf
    conf_file.write_text(f"# Strongroom PKCS#11 module\nsocket = {hsm.target.socket}\n")
    env = hsm.clean_env()
    assert "STRONGROOM_AGENT_SOCKET" not in env
    ca, prefix, port, conf, nginx_env = _nginx(hsm, tmp_path, "nginx-sysconf", "c4", module=str(module), env=env,
                                               env_line=False)
    with running_nginx(prefix, conf, nginx_env, port) as master:
        workers = process_group_members(master.pid) - {master.pid}
        assert len(workers) == 2
        serve_until_both_workers(hsm, ca, port, prefix, workers)


@pytest.mark.skipif(not Path(NGINX).is_file(), reason="needs nginx (apt-get install nginx)")
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_nginx_keeps_serving_across_an_agent_restart(hsm: Hsm, tmp_path: Path) -> None:
    """Issue 14 item 3: the agent is stopped and started again (only the agent: local.agent) while nginx serves
    TLS with a key in the cluster. nginx is not restarted, nothing re-initializes: the workers' module reopens
    its application in the new agent (sessions, login from the PIN it keeps) and the next handshakes sign. A
    request made while the agent is down waits for it (the module's reconnect_wait) rather than failing."""
    from strongroom.local.agent import agent_status, start_agent, stop_agent

    ca, prefix, port, conf, env = _nginx(hsm, tmp_path, "nginx-restart", "c5", module=hsm.module,
                                         env=hsm.module_env(), env_line=True)
    directory = hsm.target.cluster.dir
    with running_nginx(prefix, conf, env, port) as master:
        workers = process_group_members(master.pid) - {master.pid}
        serve_until_both_workers(hsm, ca, port, prefix, workers)
        old_agent = agent_status(directory)["pid"]
        for round_number in range(2):
            stop_agent(directory)
            # a request while the agent is down: it waits for the agent, which comes back meanwhile
            pending = subprocess.Popen(["curl", "--noproxy", "*", "-sS", "--max-time", "60", "--cacert", str(ca),
                                        f"https://127.0.0.1:{port}/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, env=hsm.clean_env())
            time.sleep(1.0)
            start_agent(directory)
            out, err = pending.communicate(timeout=90)
            assert pending.returncode == 0 and "hello from a key in the cluster" in out, \
                f"round {round_number}: {err}\n{nginx_logs(prefix)}"
            serve_until_both_workers(hsm, ca, port, prefix, workers)  # every worker signs again
        assert agent_status(directory)["pid"] != old_agent
        # the same workers served throughout: none died, none was replaced, nginx was never restarted
        assert process_group_members(master.pid) - {master.pid} == workers
        error_log = (prefix / "logs" / "error.log").read_text()
        assert not re.search(r"\[(crit|alert|emerg)\]|exited on signal", error_log), error_log

"""The C PKCS#11 module (pkcs11/) under AddressSanitizer + UBSan, driven by pkcs11/tests/p11driver.c.

* Against the real agent of a `strongroom up` cluster: the driver's basic, threads, fork, badargs,
  templates, endop (a failed call ends its operation wherever it is found), bigdata (updates of any
  size) and conffile scenarios; restart: the agent restarted under a logged-in application, which
  goes on without re-initializing.
* Without an agent: the error codes when the agent is not configured or not reachable, each
  failure explained once on stderr.
* Against a *hostile peer* (below; not an agent): every kind of malformed reply must give
  CKR_DEVICE_ERROR and leave the caller's buffers untouched; the next call works on a new
  connection; randomly corrupted replies must never crash or leak.

Leaks in the module are failures (ASAN_OPTIONS=detect_leaks=1; the driver is a pure C program).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from .conftest import PKCS11_DIR, Pkcs11Module, Pkcs11Target

SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=1:abort_on_error=0:detect_stack_use_after_return=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}
UNAVAILABLE = (1 << 64) - 1
CKR_BUFFER_TOO_SMALL = 0x150
CKR_SESSION_HANDLE_INVALID = 0xB3


# --- building and running the driver -------------------------------------------------------------


class Build:
    def __init__(self) -> None:
        self.driver = PKCS11_DIR / "build" / "asan" / "p11driver"
        self.module = PKCS11_DIR / "build" / "asan" / "libstrongroom-pkcs11.so"

    def run(self, scenario: str, *, socket_path: str | None, pin: str = "-", extra_env: dict[str, str] | None = None,
            timeout: float = 240) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "ASAN_", "UBSAN_", "LSAN_"))}
        env.update(SANITIZER_ENV)
        if socket_path is not None:
            env["STRONGROOM_AGENT_SOCKET"] = socket_path
        env.update(extra_env or {})
        result = subprocess.run([str(self.driver), str(self.module), pin, scenario], capture_output=True, text=True,
                                env=env, timeout=timeout)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"p11driver {scenario} exited {result.returncode}:\n{output}"
        assert not re.search(r"^(child: )?FAIL ", result.stdout, re.M), output
        assert "Sanitizer" not in result.stderr and "runtime error" not in result.stderr, output
        return output


@pytest.fixture(scope="session")
def build() -> Build:
    """`make -C pkcs11 asan test-bin`, once per session."""
    if shutil.which("make") is None or shutil.which("cc") is None:
        pytest.fail("building the PKCS#11 module needs make and a C compiler (apt-get install gcc make)")
    result = subprocess.run(["make", "-C", str(PKCS11_DIR), "asan", "test-bin"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return Build()


# --- against the real agent ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def agent(pkcs11: Pkcs11Target) -> tuple[str, str]:
    """(agent socket, PIN of a fresh crypto user) of the shared cluster."""
    return pkcs11.socket, pkcs11.crypto_user("p11driver", "password1")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["basic", "badargs", "templates", "fork", "endop", "bigdata"])
def test_scenario_against_agent(build: Build, agent: tuple[str, str], scenario: str) -> None:
    socket_path, pin = agent
    output = build.run(scenario, socket_path=socket_path, pin=pin)
    assert f"{scenario}: 0 failure(s)" in output


def test_agent_found_through_the_configuration_file(build: Build, agent: tuple[str, str], tmp_path: Path) -> None:
    """No STRONGROOM_AGENT_SOCKET: the socket named by the configuration file (issue 13 item 10)."""
    socket_path, pin = agent
    output = build.run("conffile", socket_path=socket_path, pin=pin, extra_env={"NOAGENT_DIR": str(tmp_path)})
    assert "conffile: 0 failure(s)" in output


@pytest.mark.slow
def test_agent_restart_under_a_logged_in_application(build: Build, pkcs11: Pkcs11Target) -> None:
    """Issue 14 item 3: the agent restarts (stopped, started again) while the application is logged in with two
    sessions; the next calls wait for it, the module reopens the application (same sessions, login from the PIN it
    keeps in locked memory) and nothing needs C_Finalize/C_Initialize/C_Login. Under ASan: the PIN page, the
    reconnect and the resume leak nothing."""
    from strongroom.local.agent import start_agent, stop_agent

    pin = pkcs11.crypto_user("p11driver_restart", "password1")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "ASAN_", "UBSAN_", "LSAN_"))}
    env.update(SANITIZER_ENV, STRONGROOM_AGENT_SOCKET=pkcs11.socket)
    proc = subprocess.Popen([str(build.driver), str(build.module), pin, "restart"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("RESTART-AGENT"):
            stop_agent(pkcs11.cluster.dir)
            proc.stdin.write("go\n")  # the calls start while the agent is down: they wait for it
            proc.stdin.flush()
            start_agent(pkcs11.cluster.dir)
    assert proc.wait(timeout=240) == 0, "".join(lines)
    output = "".join(lines)
    assert "restart: 0 failure(s)" in output
    assert "sessions and login were reopened" in output, output
    assert "Sanitizer" not in output and "runtime error" not in output, output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_threads_against_agent(build: Build, agent: tuple[str, str]) -> None:
    socket_path, pin = agent
    output = build.run("threads", socket_path=socket_path, pin=pin, timeout=580)
    assert "threads: 0 failure(s)" in output


def test_summary_names_the_module(pkcs11: Pkcs11Target) -> None:
    """`up` (after the build) names the module applications should load: the one built."""
    module = pkcs11.cluster.summary.get("pkcs11_module")
    assert module and Path(module).resolve() == pkcs11.module.resolve(), module


# --- without an agent ----------------------------------------------------------------------------


def test_plain_build_exports_only_pkcs11_symbols(pkcs11_module: Pkcs11Module) -> None:
    assert "warning" not in pkcs11_module.make_output.lower(), pkcs11_module.make_output
    nm = subprocess.run(["nm", "-D", "--defined-only", str(pkcs11_module.path)], capture_output=True, text=True,
                        check=True)
    symbols = [line.split()[-1] for line in nm.stdout.splitlines() if line.strip()]
    assert symbols and all(name.startswith("C_") for name in symbols), symbols
    # the 68 v2.40 functions and, since issue 17, the 24 of PKCS#11 3.0 and the 12 of 3.2 (test_pkcs11_module_v3.py)
    assert len(symbols) == 68 + 24 + 12 and "C_GetFunctionList" in symbols
    ldd = subprocess.run(["ldd", str(pkcs11_module.path)], capture_output=True, text=True, check=True).stdout
    needed = {line.split()[0] for line in ldd.splitlines() if "=>" in line}
    assert needed <= {"libc.so.6", "libpthread.so.0"}, needed


def test_agent_not_configured_or_unreachable(build: Build, tmp_path: Path) -> None:
    output = build.run("noagent", socket_path=None, extra_env={"NOAGENT_DIR": str(tmp_path)})
    # Every failed C_Initialize says why, once, without a debug switch (issue 13 item 10).
    assert "cannot reach the agent at /run/strongroom/agent.sock (the default" in output
    assert "no such socket (is the agent running?" in output
    assert "longer than a Unix socket path may be" in output
    assert f"cannot reach the agent at {tmp_path}/from-conf.sock (socket = in {tmp_path}/pkcs11.conf)" in output
    assert "line 1 is not 'key = value'" in output and "timeout is seconds" in output
    assert output.count("the default; STRONGROOM_AGENT_SOCKET") == 1  # the same failure twice: said once


def test_permission_denied_is_explained(build: Build, tmp_path: Path) -> None:
    """A socket the application may not open: CKR_GENERAL_ERROR (a retry cannot help) and the reason."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = Path(f"/tmp/sr-denied-{os.getpid()}.sock")
    path.unlink(missing_ok=True)
    listener.bind(str(path))
    listener.listen(1)
    os.chmod(path, 0o600)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STRONGROOM_", "ASAN_", "UBSAN_", "LSAN_"))}
        env.update(SANITIZER_ENV, STRONGROOM_AGENT_SOCKET=str(path))
        # As another user than the socket's owner (root bypasses file modes: drop to nobody then).
        if os.geteuid() == 0:
            os.chown(path, 0, 0)
            preexec = _as_nobody
        else:
            os.chmod(path, 0)
            preexec = None
        result = subprocess.run([str(PKCS11_DIR / "build" / "p11driver"), str(PKCS11_DIR / "build" /
                                 "libstrongroom-pkcs11.so"), "-", "denied"], capture_output=True, text=True, env=env,
                                timeout=60, preexec_fn=preexec)
    finally:
        listener.close()
        path.unlink(missing_ok=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "denied: 0 failure(s)" in output
    assert "permission denied: the agent's socket is mode 0660" in output, output


def _as_nobody() -> None:
    os.setgid(65534)
    os.setuid(65534)


# --- a hostile peer ------------------------------------------------------------------------------


def _raw_envelope(rid: int, rv: int = 0) -> bytes:
    """The start of a reply [1, rid, rv, <outputs follow>] (for hand-made invalid outputs)."""
    return b"\x94\x01" + msgpack.packb(rid) + msgpack.packb(rv)


SLOT_INFO = {"description": b"slot", "manufacturer": b"peer", "flags": 1, "hw": [0, 1], "fw": [0, 1]}
TOKEN_INFO: dict[str, Any] = {
    "label": b"peer", "manufacturer": b"peer", "model": b"m", "serial": b"1", "flags": 0x400,
    "max_session_count": 0, "session_count": 0, "max_rw_session_count": 0, "rw_session_count": 0,
    "max_pin_len": 64, "min_pin_len": 4, "total_public_memory": 0, "free_public_memory": 0,
    "total_private_memory": 0, "free_private_memory": 0, "hw": [0, 1], "fw": [0, 1], "utc_time": b"",
}


def _slot_info_case(k: int, rid: int) -> bytes | str:
    """C_GetSlotInfo(slot k): the k-th malformed reply body, or "close" / "hang"."""
    ok = dict(SLOT_INFO)
    pack = msgpack.packb
    cases: dict[int, Any] = {
        1: b"",                                                   # empty frame
        2: ("header", 0x7FFFFFFF),                                # frame far above 4 MiB
        3: ("header", (4 << 20) + 1),                             # just above 4 MiB
        4: ("truncated", pack([1, rid, 0, [ok]])),                # frame shorter than announced
        5: pack([1, rid + 1, 0, [ok]]),                           # wrong id
        6: pack([2, rid, 0, [ok]]),                               # wrong version
        7: pack({"a": 1}),                                        # not an array
        8: pack([1, rid, 0]),                                     # three elements
        9: pack([1, rid, 0, None]),                               # outputs not an array
        10: pack([1, rid, "0", [ok]]),                            # rv not an integer
        11: pack([1, rid, 0, [ok]]) + b"\xc0",                    # trailing bytes
        12: _raw_envelope(rid) + b"\x91\xc6\xff\xff\xff\xff",     # bin longer than the frame
        13: _raw_envelope(rid) + b"\x91" * 100 + b"\x90",         # nesting too deep
        14: _raw_envelope(rid) + b"\xdd\xff\xff\xff\xff",         # array count beyond the frame
        15: pack([1, rid, 0, [{1: b"x"}]]),                       # map with an integer key
        16: pack([1, rid, 0, [1.5]]),                             # float
        17: pack([1, rid, 0, [-5]]),                              # negative number other than -1
        18: pack([1, rid, 0, [dict(ok, description=b"d" * 65)]]),  # longer than the field
        19: pack([1, rid, 0, [dict(ok, hw=[300, 1])]]),           # version byte out of range
        20: pack([1, rid, 0, [{k: v for k, v in ok.items() if k != "fw"}]]),  # missing key
        21: "close",                                              # connection closed, no reply
        22: "hang",                                               # no reply: the timeout
        23: pack([1, rid, 0, [msgpack.ExtType(1, b"x")]]),        # ext type
        24: pack([1, rid, -1, [ok]]),                             # rv -1
        25: pack([1, rid, 0, [dict(ok, flags=b"\x01")]]),         # wrong type for a field
        26: pack([1, rid, 0, [dict(ok, hw=[0])]]),                # version of one element
        27: pack([1, rid, 0, [ok, ok]]),                          # two outputs
        28: pack([1, rid, 0, [dict(ok, description="slot")]]),    # str where bin is due
        29: _raw_envelope(rid) + b"\x91\xc1",                     # reserved byte 0xc1
        30: _raw_envelope(rid) + b"\x91\xda\x00",                 # header of a str cut short
    }
    return cases[k]


SLOT_CASES = 30


def _encrypt_case(k: int, rid: int, cap: int) -> bytes:
    pack = msgpack.packb
    outputs = {
        1: [cap + 4, b"x" * (cap + 4)],  # more data than the buffer holds
        2: [5, b"abc"],                  # needed_len differs from the data
        3: [cap, None],                  # CKR_OK with no data although a buffer was given
        5: [cap],                        # one output
        6: ["x", b""],                   # needed_len not an integer
        7: [3, b"abc"],                  # data in reply to a size query
    }
    if k == 4:                           # BUFFER_TOO_SMALL although it fits
        return pack([1, rid, CKR_BUFFER_TOO_SMALL, [cap, None]])
    return pack([1, rid, 0, outputs[k]])


def _attribute_case(k: int, rid: int) -> bytes:
    """Template [CKA_LABEL cap 8, CKA_WRAP_TEMPLATE cap one CK_ATTRIBUTE]."""
    pack = msgpack.packb
    label = [b"ab", 2]
    unavailable = [None, UNAVAILABLE]
    entries = {
        1: [label],                                              # one entry for two attributes
        2: [[b"x" * 9, 9], unavailable],                         # longer than the buffer
        3: [label, [b"x", 1]],                                   # bytes for an array attribute
        4: [[None, 5], unavailable],                             # nil but not "unavailable"
        5: [[[[0, b"x"]], 24], unavailable],                     # nested value for a plain attribute
        6: [label, [[[0, b"a"], [1, b"b"]], 48]],                # more nested entries than fit
        7: [label, [[[0]], 24]],                                 # malformed nested entry
        8: [[b"ab", "x"], unavailable],                          # length not an integer
    }
    return pack([1, rid, 0, [entries[k]]])


class HostilePeer:
    """A Unix-socket server that speaks the framing and answers the C_Initialize hello, then
    answers with malformed replies (mode "hostile") or randomly corrupted valid ones ("fuzz").
    It is no agent: it holds no state and implements no function."""

    def __init__(self, path: Path, mode: str, seed: int = 1) -> None:
        self.path = str(path)
        self.mode = mode
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(32)
        self.closing = False
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.closing = True
        self.server.close()
        for conn in self.connections:
            conn.close()

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def _serve(self, conn: socket.socket) -> None:
        try:
            while True:
                head = self._read(conn, 4)
                if head is None:
                    return
                body = self._read(conn, struct.unpack(">I", head)[0])
                if body is None:
                    return
                _, rid, fn, args = msgpack.unpackb(body, raw=False, strict_map_key=False)
                answer = self._answer(rid, fn, args)
                if answer == "close":
                    return
                if answer == "hang":
                    self._read(conn, 1)  # until the module gives up and closes
                    return
                if isinstance(answer, tuple) and answer[0] == "header":
                    conn.sendall(struct.pack(">I", answer[1]))
                    return
                if isinstance(answer, tuple) and answer[0] == "truncated":
                    conn.sendall(struct.pack(">I", len(answer[1]) + 10) + answer[1])
                    return
                if isinstance(answer, tuple) and answer[0] == "raw":  # fuzz: frame length may lie
                    conn.sendall(answer[1])
                    if answer[2]:
                        return
                    continue
                conn.sendall(struct.pack(">I", len(answer)) + answer)
        except OSError:
            return
        finally:
            conn.close()

    def _answer(self, rid: int, fn: str, args: list[Any]) -> Any:
        if fn in ("C_Initialize", "C_Finalize"):
            return msgpack.packb([1, rid, 0, []])
        if self.mode == "fuzz":
            return self._fuzz(rid, fn, args)
        pack = msgpack.packb
        if fn == "C_GetSlotInfo":
            return _slot_info_case(args[0], rid)
        if fn == "C_GetSlotList":
            return pack([1, rid, 0, [[1, "x"]]])
        if fn == "C_GetTokenInfo":
            bad = {1: dict(TOKEN_INFO, label=b"l" * 33), 2: dict(TOKEN_INFO, utc_time=b"t" * 17),
                   3: {k: v for k, v in TOKEN_INFO.items() if k != "free_private_memory"}}
            return pack([1, rid, 0, [bad[args[0]]]])
        if fn == "C_GetMechanismList":
            return pack([1, rid, 0, [[1, 2, b"x"]]])
        if fn == "C_Encrypt":
            return _encrypt_case(args[0], rid, args[2] if args[2] != -1 else 16)
        if fn == "C_GetAttributeValue":
            return _attribute_case(args[0], rid)
        if fn == "C_FindObjects":
            return pack([1, rid, 0, [[1, 2, 3]]])
        if fn == "C_GenerateRandom":
            return pack([1, rid, 0, [b"r" * (args[1] - 1)]])
        if fn == "C_OpenSession":  # a handle that is not an integer; two outputs
            return pack([1, rid, 0, [b"x"] if args[0] == 1 else [1, 2]])
        if fn == "C_GetSessionInfo":
            return pack([1, rid, CKR_SESSION_HANDLE_INVALID, []])
        return "close"

    # --- fuzz mode ----------------------------------------------------------------------------

    @staticmethod
    def _valid(fn: str, args: list[Any]) -> tuple[int, list[Any]]:
        def out(cap: int, data: bytes) -> tuple[int, list[Any]]:
            if cap == -1:
                return 0, [len(data), None]
            if cap < len(data):
                return CKR_BUFFER_TOO_SMALL, [len(data), None]
            return 0, [len(data), data]

        ulong = struct.Struct("<Q").pack
        if fn == "C_GetSlotList":
            return 0, [[1, 2]]
        if fn == "C_GetSlotInfo":
            return 0, [SLOT_INFO]
        if fn == "C_GetTokenInfo":
            return 0, [TOKEN_INFO]
        if fn == "C_GetMechanismList":
            return 0, [[0x1080, 0x1081, 0x1085, 0x1087]]
        if fn == "C_GetMechanismInfo":
            return 0, [16, 32, 0x300]
        if fn in ("C_OpenSession", "C_GenerateKey"):
            return 0, [5]
        if fn == "C_GetSessionInfo":
            return 0, [1, 3, 6, 0]
        if fn == "C_Encrypt":
            return out(args[2], b"e" * 16)
        if fn == "C_GetAttributeValue":
            entries = []
            for attr, cap in args[2]:
                if attr == 3:
                    entries.append([None, 5] if cap == -1 else [b"hello", 5])
                elif attr == 0x40000211:
                    entries.append([None, 48] if cap == -1 else [[[0, ulong(4)], [0x100, ulong(0x1F)]], 48])
                else:
                    entries.append([ulong(32), 8])
            return 0, [entries]
        if fn == "C_FindObjects":
            return 0, [[1, 2, 3][: args[1]]]
        if fn == "C_GenerateRandom":
            return 0, [b"r" * args[1]]
        return 0x54, []

    @staticmethod
    def _replace_one(r: random.Random, value: Any) -> Any:
        """A copy of value with one node (or the whole) replaced by an arbitrary value."""
        pool: list[Any] = [None, True, 0, 1, 47, 300, (1 << 32) + 1, (1 << 64) - 1, -1, b"", b"x" * 7,
                           b"y" * 70, "s", [], [None], [[0, b"x"]], [[1, 2, 3]], {}, {"iv": b""}]
        if not isinstance(value, (list, dict)) or not value or r.random() < 0.2:
            return r.choice(pool)
        if isinstance(value, dict):
            key = r.choice(list(value))
            return {**value, key: HostilePeer._replace_one(r, value[key])}
        at = r.randrange(len(value))
        return [*value[:at], HostilePeer._replace_one(r, value[at]), *value[at + 1:]]

    def _fuzz(self, rid: int, fn: str, args: list[Any]) -> Any:
        rv, outputs = self._valid(fn, args)
        with self.lock:
            r = self.random
            kind = r.randrange(9)
            if kind >= 6:  # well-formed msgpack, wrong content: one value replaced
                outputs = self._replace_one(r, outputs)
                if kind == 8:
                    rv = r.choice([0, CKR_BUFFER_TOO_SMALL, 0x11, 0x12, 0x150, 5])
            body = bytearray(msgpack.packb([1, rid, rv, outputs]))
            if kind == 0 or kind >= 6:  # untouched
                return bytes(body)
            if kind == 1:  # flip bytes
                for _ in range(r.randint(1, 3)):
                    body[r.randrange(len(body))] = r.randrange(256)
                return bytes(body)
            if kind == 2:  # cut short, frame length adjusted
                return bytes(body[: r.randrange(len(body))]) or b"\xc0"
            if kind == 3:  # extra bytes
                return bytes(body) + bytes(r.randrange(256) for _ in range(r.randint(1, 8)))
            if kind == 4:  # insert bytes in the middle
                at = r.randrange(len(body))
                return bytes(body[:at]) + bytes(r.randrange(256) for _ in range(r.randint(1, 4))) + bytes(body[at:])
            # a frame length that lies (then the connection closes)
            length = r.choice([0, 1, len(body) + 1, len(body) + 1000, 0xFFFFFFFF, r.randrange(1 << 32)])
            return ("raw", struct.pack(">I", length) + bytes(body), True)


@pytest.fixture
def peer_dir(tmp_path: Path) -> Iterator[Path]:
    # Unix socket paths are short (108 bytes): pytest's tmp_path can be long
    directory = Path(f"/tmp/sr-p11-{os.getpid()}-{tmp_path.name[-20:]}")
    directory.mkdir(exist_ok=True)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_malformed_replies(build: Build, peer_dir: Path) -> None:
    peer = HostilePeer(peer_dir / "peer.sock", "hostile")
    try:
        output = build.run("hostile", socket_path=peer.path, extra_env={
            "STRONGROOM_PKCS11_TIMEOUT": "1", "HOSTILE_SLOT_CASES": str(SLOT_CASES)})
    finally:
        peer.close()
    assert "hostile: 0 failure(s)" in output
    assert output.count("then the next call reconnects") >= SLOT_CASES + 20


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_corrupted_replies_never_crash(build: Build, peer_dir: Path, seed: int) -> None:
    peer = HostilePeer(peer_dir / "peer.sock", "fuzz", seed=seed)
    try:
        output = build.run("fuzz", socket_path=peer.path, extra_env={
            "STRONGROOM_PKCS11_TIMEOUT": "2", "FUZZ_ROUNDS": "1500"})
    finally:
        peer.close()
    assert "fuzz: 0 failure(s)" in output
